//! TensorBoard event files: every scalar of the `train` and `eval` metric lines, written to
//! `OUT/events.out.tfevents.<secs>.<host>` as the run goes, so TensorBoard (or anything that reads
//! its format) follows a run live.
//!
//! The format is TFRecord framing (u64 length, masked CRC-32C of it, the data, masked CRC-32C of
//! the data) around `Event` protobufs: first `file_version = "brain.Event:2"`, then one `Summary`
//! of `simple_value`s per metric line. Each session of a run (the fresh start and every resume)
//! opens a file of its own and begins with a `SessionLog START` at its first step: TensorBoard's
//! Python loaders then drop what an interrupted session wrote after the checkpoint it resumed
//! from, and its Rust loader does the same per tag because every tag is written again from there.
//!
//! Tags are `train/<field>` and `eval/<field>` (the line's field, `eval_` dropped; a field that
//! maps names to figures, such as `tokens_by_source`, gives `train/<field>/<name>`), so a field
//! added to a metric line becomes a tag without changes here.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::TrainError;
use crate::run::metrics::{Metric, MetricObserver};

/// What every event file's name contains: TensorBoard reads the files whose name has it.
pub const EVENT_FILE_MARK: &str = "tfevents";
const FILE_VERSION: &str = "brain.Event:2";
/// `SessionLog.SessionStatus.START`.
const SESSION_START: i32 = 1;

/// `tensorflow.Event`, the fields we write.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(oneof = "EventKind", tags = "3, 5, 7")]
    pub what: Option<EventKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum EventKind {
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
    #[prost(message, tag = "7")]
    SessionLog(SessionLog),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryValue {
    #[prost(string, tag = "1")]
    pub tag: String,
    /// Always present (a 0.0 included): TensorBoard tells scalars by the field being set.
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionLog {
    #[prost(int32, tag = "1")]
    pub status: i32,
}

/// The CRC TFRecord stores: CRC-32C, rotated and offset so that CRCs of data holding CRCs stay
/// well distributed.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord around `data`.
pub fn frame_record(data: &[u8]) -> Vec<u8> {
    let length = (data.len() as u64).to_le_bytes();
    let mut record = Vec::with_capacity(data.len() + 16);
    record.extend_from_slice(&length);
    record.extend_from_slice(&masked_crc32c(&length).to_le_bytes());
    record.extend_from_slice(data);
    record.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    record
}

/// An event file being written.
pub struct EventWriter {
    path: PathBuf,
    file: BufWriter<File>,
}

impl EventWriter {
    /// Opens a new event file in `dir`, named after the time and host, later in name order than
    /// any event file already there (TensorBoard reads a run's files in name order).
    pub fn create(dir: &Path) -> Result<Self, TrainError> {
        fs::create_dir_all(dir).map_err(|source| TrainError::io(dir, source))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let latest = event_files(dir)?
            .iter()
            .filter_map(|path| seconds_in_name(path))
            .max();
        let seconds = match latest {
            Some(latest) if latest >= now => latest + 1,
            _ => now,
        };
        let path = dir.join(format!(
            "events.out.{EVENT_FILE_MARK}.{seconds:010}.{}",
            host()
        ));
        let file = File::create(&path).map_err(|source| TrainError::io(&path, source))?;
        let mut writer = EventWriter {
            path,
            file: BufWriter::new(file),
        };
        writer.write(0, EventKind::FileVersion(FILE_VERSION.into()))?;
        writer.flush()?;
        Ok(writer)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Marks the start of a session at `step`: readers drop what earlier sessions wrote at
    /// `step` and after.
    pub fn session_start(&mut self, step: usize) -> Result<(), TrainError> {
        let log = SessionLog {
            status: SESSION_START,
        };
        self.write(step, EventKind::SessionLog(log))
    }

    /// One summary of `(tag, value)` scalars at `step`.
    pub fn scalars(&mut self, step: usize, scalars: &[(String, f64)]) -> Result<(), TrainError> {
        let value = scalars
            .iter()
            .map(|(tag, value)| SummaryValue {
                tag: tag.clone(),
                simple_value: Some(*value as f32),
            })
            .collect();
        self.write(step, EventKind::Summary(Summary { value }))
    }

    /// Pushes what was written to the file, so a reader (or a kill) sees whole records.
    pub fn flush(&mut self) -> Result<(), TrainError> {
        self.file
            .flush()
            .map_err(|source| TrainError::io(&self.path, source))
    }

    fn write(&mut self, step: usize, what: EventKind) -> Result<(), TrainError> {
        let event = Event {
            wall_time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |since| since.as_secs_f64()),
            step: step as i64,
            what: Some(what),
        };
        let data = prost::Message::encode_to_vec(&event);
        self.file
            .write_all(&frame_record(&data))
            .map_err(|source| TrainError::io(&self.path, source))
    }
}

/// The event files of `dir`, in name order.
pub fn event_files(dir: &Path) -> Result<Vec<PathBuf>, TrainError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(TrainError::io(dir, source)),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.contains(EVENT_FILE_MARK))
        })
        .collect();
    files.sort();
    Ok(files)
}

fn seconds_in_name(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let rest = name.split_once(&format!("{EVENT_FILE_MARK}."))?.1;
    rest.split('.').next()?.parse().ok()
}

/// This machine's name, as file names may hold it.
fn host() -> String {
    let name = fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let name: String = name
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

/// Writes a run's `train` and `eval` lines as TensorBoard scalars.
pub struct TensorBoardLog {
    writer: EventWriter,
    /// Where this session's first point goes, until its `SessionLog START` is written.
    session_start: Option<SessionStart>,
}

enum SessionStart {
    /// A fresh run: at its first step-bearing line (the evaluation before step 1).
    Fresh,
    /// A run resumed after this step: at the step after it.
    After(usize),
}

impl TensorBoardLog {
    /// A fresh run's log in `dir`; the event files of an earlier run there are removed, as
    /// `metrics.jsonl` is replaced.
    pub fn create(dir: &Path) -> Result<Self, TrainError> {
        for stale in event_files(dir)? {
            fs::remove_file(&stale).map_err(|source| TrainError::io(&stale, source))?;
        }
        Ok(TensorBoardLog {
            writer: EventWriter::create(dir)?,
            session_start: Some(SessionStart::Fresh),
        })
    }

    /// The log of a run resumed after `step`: a new event file whose session starts at the next
    /// step, so readers drop what the interrupted session wrote after `step`.
    pub fn resume(dir: &Path, step: usize) -> Result<Self, TrainError> {
        Ok(TensorBoardLog {
            writer: EventWriter::create(dir)?,
            session_start: Some(SessionStart::After(step)),
        })
    }

    pub fn path(&self) -> &Path {
        self.writer.path()
    }
}

/// The scalars of a `train` or `eval` line, tagged `train/<field>` or `eval/<field>`, and its
/// step; `None` for other lines.
pub fn scalars_of(metric: &Metric) -> Option<(usize, Vec<(String, f64)>)> {
    let prefix = match metric {
        Metric::Train { .. } => "train",
        Metric::Eval { .. } => "eval",
        _ => return None,
    };
    let value = serde_json::to_value(metric).ok()?;
    let fields = value.as_object()?;
    let step = fields.get("step")?.as_u64()? as usize;
    let mut scalars = Vec::new();
    for (name, value) in fields {
        if matches!(name.as_str(), "kind" | "step") {
            continue;
        }
        let tag = format!("{prefix}/{}", name.strip_prefix("eval_").unwrap_or(name));
        match value {
            // A map of figures (tokens per source): one tag each, `train/tokens_by_source/NAME`.
            serde_json::Value::Object(parts) => scalars.extend(
                parts
                    .iter()
                    .filter_map(|(part, value)| Some((format!("{tag}/{part}"), value.as_f64()?))),
            ),
            value => scalars.extend(value.as_f64().map(|value| (tag, value))),
        }
    }
    Some((step, scalars))
}

impl MetricObserver for TensorBoardLog {
    fn observe(&mut self, metric: &Metric) -> Result<(), TrainError> {
        let Some((step, scalars)) = scalars_of(metric) else {
            return Ok(());
        };
        if let Some(start) = self.session_start.take() {
            let first = match start {
                SessionStart::Fresh => step,
                SessionStart::After(resumed) => resumed + 1,
            };
            self.writer.session_start(first)?;
        }
        self.writer.scalars(step, &scalars)?;
        self.writer.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_is_castagnoli() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    }

    /// tensorboard's own test record (`data/server/tf_record.rs`): the file-version event of
    /// wall time 1599759586.0.
    #[test]
    fn frames_tensorboards_test_record() {
        let event = Event {
            wall_time: 1_599_759_586.0,
            step: 0,
            what: Some(EventKind::FileVersion(FILE_VERSION.into())),
        };
        let data = prost::Message::encode_to_vec(&event);
        assert_eq!(data.len(), 24);
        let record = frame_record(&data);
        assert_eq!(&record[..8], &24u64.to_le_bytes());
        assert_eq!(&record[8..12], &0x224B_7FA3u32.to_le_bytes());
        assert_eq!(&record[12..36], &data[..]);
        assert_eq!(&record[36..], &0xAB36_4B12u32.to_le_bytes());
    }

    #[test]
    fn train_lines_become_tagged_scalars() {
        let metric = Metric::Eval {
            step: 20,
            eval_loss: 2.5,
            eval_perplexity: 2.5f64.exp(),
            eval_tokens: 64,
            eval_seconds: 0.25,
            eval_loss_by_source: Default::default(),
        };
        let (step, scalars) = scalars_of(&metric).expect("an eval line has scalars");
        assert_eq!(step, 20);
        let tags: Vec<&str> = scalars.iter().map(|(tag, _)| tag.as_str()).collect();
        for tag in [
            "eval/loss",
            "eval/perplexity",
            "eval/tokens",
            "eval/seconds",
        ] {
            assert!(tags.contains(&tag), "{tag} in {tags:?}");
        }
        assert!(scalars_of(&Metric::Stop { step: 3 }).is_none());
    }

    #[test]
    fn each_session_gets_a_later_file_that_starts_after_the_checkpoint() {
        let dir = std::env::temp_dir().join(format!("flightlm-tfevents-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let first = TensorBoardLog::create(&dir).expect("creates");
        let second = TensorBoardLog::resume(&dir, 4).expect("resumes");
        assert!(second.path() > first.path(), "name order is session order");
        assert_eq!(event_files(&dir).expect("lists").len(), 2);
        TensorBoardLog::create(&dir).expect("a fresh run");
        assert_eq!(
            event_files(&dir).expect("lists").len(),
            1,
            "earlier runs removed"
        );
        fs::remove_dir_all(&dir).ok();
    }
}
