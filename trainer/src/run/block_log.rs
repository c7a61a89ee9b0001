//! `blocks.jsonl`: which stream blocks (by `block_seq`) every optimizer step trained on.
//!
//! One line per step, `{"step":12,"blocks":[[1408,1535]]}`, with the step's block sequence
//! numbers as inclusive ranges (a step's blocks are usually one contiguous run). The log is how a
//! run proves it saw every block of its stream once: concatenated, the ranges of a run that
//! survived pipeline restarts and its own resumes must cover `0..n` with no gap and no repeat.
//! A resumed run drops the lines after its checkpoint's step, exactly as the model forgets those
//! steps, and each line is flushed as written so a checkpoint never gets ahead of the log.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::TrainError;
use crate::run::metrics::replace_then_append;

pub const BLOCK_LOG_FILE: &str = "blocks.jsonl";

/// One step's line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepBlocks {
    pub step: usize,
    /// Inclusive `[first, last]` ranges of `block_seq`, in the order the step read them.
    pub blocks: Vec<[u64; 2]>,
}

impl StepBlocks {
    pub fn new(step: usize, block_seqs: &[u64]) -> Self {
        let mut blocks: Vec<[u64; 2]> = Vec::new();
        for &seq in block_seqs {
            match blocks.last_mut() {
                Some(range) if range[1].checked_add(1) == Some(seq) => range[1] = seq,
                _ => blocks.push([seq, seq]),
            }
        }
        StepBlocks { step, blocks }
    }

    /// Every `block_seq` of the step, in order.
    pub fn block_seqs(&self) -> impl Iterator<Item = u64> + '_ {
        self.blocks.iter().flat_map(|[first, last]| *first..=*last)
    }
}

#[derive(Debug)]
pub struct BlockLog {
    path: PathBuf,
    file: BufWriter<File>,
}

impl BlockLog {
    /// Starts `DIR/blocks.jsonl` afresh.
    pub fn create(dir: &Path) -> Result<Self, TrainError> {
        fs::create_dir_all(dir).map_err(|source| TrainError::io(dir, source))?;
        let path = dir.join(BLOCK_LOG_FILE);
        let file = File::create(&path).map_err(|source| TrainError::io(&path, source))?;
        Ok(BlockLog {
            path,
            file: BufWriter::new(file),
        })
    }

    /// Continues `DIR/blocks.jsonl` for a run resumed after `step`: lines of later steps (and a
    /// line cut short by a kill) are dropped.
    pub fn resume(dir: &Path, step: usize) -> Result<Self, TrainError> {
        let path = dir.join(BLOCK_LOG_FILE);
        let kept: String = read(&path)?
            .into_iter()
            .filter(|line| line.step <= step)
            .map(|line| serde_json::to_string(&line).expect("serializable") + "\n")
            .collect();
        let file = replace_then_append(&path, &kept)?;
        Ok(BlockLog {
            path,
            file: BufWriter::new(file),
        })
    }

    pub fn record(&mut self, step: usize, block_seqs: &[u64]) -> Result<(), TrainError> {
        let line = serde_json::to_string(&StepBlocks::new(step, block_seqs)).expect("serializable");
        writeln!(self.file, "{line}")
            .and_then(|()| self.file.flush())
            .map_err(|source| TrainError::io(&self.path, source))
    }
}

/// The parsed lines of a block log (a missing file is empty); a line cut short by a kill is
/// skipped.
pub fn read(path: &Path) -> Result<Vec<StepBlocks>, TrainError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => return Err(TrainError::io(path, source)),
    };
    Ok(text
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect())
}

/// What a block log says about a run's coverage of its stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockAudit {
    pub steps: usize,
    /// Block rows trained on.
    pub rows: u64,
    /// Distinct `block_seq`s, and the highest one seen.
    pub distinct: u64,
    pub last: Option<u64>,
    /// `block_seq`s below `last` that no step read.
    pub lost: u64,
    /// Rows that read a `block_seq` an earlier row had already read.
    pub repeated: u64,
}

impl BlockAudit {
    pub fn of(lines: &[StepBlocks]) -> Self {
        let mut seen = std::collections::HashSet::new();
        let (mut rows, mut repeated, mut last) = (0u64, 0u64, None::<u64>);
        for seq in lines.iter().flat_map(StepBlocks::block_seqs) {
            rows += 1;
            if !seen.insert(seq) {
                repeated += 1;
            }
            last = last.max(Some(seq));
        }
        let distinct = seen.len() as u64;
        BlockAudit {
            steps: lines.len(),
            rows,
            distinct,
            last,
            lost: last.map_or(0, |last| last + 1 - distinct),
            repeated,
        }
    }

    /// Every block from 0 to the last one read exactly once.
    pub fn is_exact(&self) -> bool {
        self.lost == 0 && self.repeated == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_written_as_ranges_and_read_back() {
        let line = StepBlocks::new(3, &[8, 9, 10, 4, 5, 12]);
        assert_eq!(line.blocks, vec![[8, 10], [4, 5], [12, 12]]);
        assert_eq!(
            line.block_seqs().collect::<Vec<_>>(),
            vec![8, 9, 10, 4, 5, 12]
        );
    }

    #[test]
    fn audit_counts_gaps_and_repeats() {
        let exact = [StepBlocks::new(1, &[0, 1, 2]), StepBlocks::new(2, &[3, 4])];
        let audit = BlockAudit::of(&exact);
        assert!(audit.is_exact());
        assert_eq!((audit.rows, audit.last), (5, Some(4)));
        let faulty = [StepBlocks::new(1, &[0, 1, 2]), StepBlocks::new(2, &[2, 5])];
        let audit = BlockAudit::of(&faulty);
        assert_eq!((audit.lost, audit.repeated), (2, 1));
        assert!(!audit.is_exact());
    }

    #[test]
    fn resume_drops_later_steps_and_torn_lines() {
        let dir = std::env::temp_dir().join(format!("flightlm-block-log-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut log = BlockLog::create(&dir).expect("creates");
        for step in 1..=4 {
            let first = (step as u64 - 1) * 2;
            log.record(step, &[first, first + 1]).expect("records");
        }
        drop(log);
        let path = dir.join(BLOCK_LOG_FILE);
        let mut text = fs::read_to_string(&path).expect("reads");
        text.push_str("{\"step\":5,\"blo");
        fs::write(&path, text).expect("writes");

        let mut log = BlockLog::resume(&dir, 2).expect("resumes");
        log.record(3, &[4, 5]).expect("records");
        let lines = read(&path).expect("reads");
        let steps: Vec<usize> = lines.iter().map(|line| line.step).collect();
        assert_eq!(steps, vec![1, 2, 3]);
        let seqs: Vec<u64> = lines.iter().flat_map(StepBlocks::block_seqs).collect();
        assert_eq!(seqs, (0..6).collect::<Vec<_>>());
        let _ = fs::remove_dir_all(&dir);
    }
}
