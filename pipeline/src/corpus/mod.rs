//! The corpus a pipeline serves: named sources, each a live sorted list of files with a mixture
//! weight, plus what every stream shares (tokenizer, split, seed, shuffle window).
//!
//! Sources and their file lists can grow while streams run (`--watch`, the `add-source` action)
//! and weights can change (`set-weight`); streams read them at file and chunk boundaries. A file is
//! found by its name, never by its index, so a list that grows keeps every cursor valid.

//!
//! The stage in order: [`setup`] turns `serve`'s arguments into a checked corpus, this module
//! holds it, and [`control`] changes it while streams run (`add-source`, `set-weight`, `--watch`).

pub mod control;
pub mod listing;
pub mod setup;
pub mod versions;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use flightlm_shared::hashing::stable_hash;
use flightlm_shared::{Split, TokenizerInfo};

use crate::error::{PipelineError, Result};
use crate::read::bad_records::BadRecordPolicy;
use crate::read::sources::CorpusFile;
use crate::tokenizer::file::DocumentEncoder;
use listing::ListingProgress;
use versions::ChangedObjectPolicy;

/// One named corpus of the mixture.
pub struct Source {
    pub name: String,
    /// The inputs as the user gave them (files, directories, globs): part of the fingerprint.
    pub inputs: Vec<String>,
    files: RwLock<Vec<CorpusFile>>,
    weight: RwLock<f64>,
    /// Whether the source's bucket is still being listed.
    pub listing: ListingProgress,
}

impl Source {
    pub fn new(name: &str, inputs: Vec<String>, files: Vec<CorpusFile>, weight: f64) -> Self {
        let mut files = files;
        files.sort_by_key(CorpusFile::name);
        files.dedup_by_key(|file| file.name());
        Source {
            name: name.to_string(),
            inputs,
            files: RwLock::new(files),
            weight: RwLock::new(weight),
            listing: ListingProgress::default(),
        }
    }

    /// A source whose listing goes on after `files` (see [`listing`]).
    pub fn still_listing(
        name: &str,
        inputs: Vec<String>,
        files: Vec<CorpusFile>,
        weight: f64,
    ) -> Self {
        Source {
            listing: ListingProgress::in_progress(),
            ..Source::new(name, inputs, files, weight)
        }
    }

    /// The file after `previous` (the first when `None`), waiting for the listing when it has
    /// not got that far yet; `None` at the end of the source.
    pub fn next_file(&self, previous: Option<&str>) -> Result<Option<CorpusFile>> {
        self.listing.wait_for(|| self.file_after(previous))
    }

    /// The file named `name`, waiting for the listing to reach it.
    pub fn listed_file(&self, name: &str) -> Result<Option<CorpusFile>> {
        self.listing.wait_for(|| self.file_named(name))
    }

    pub fn file_count(&self) -> usize {
        self.files.read().map_or(0, |files| files.len())
    }

    pub fn files(&self) -> Vec<CorpusFile> {
        self.files
            .read()
            .map(|files| files.clone())
            .unwrap_or_default()
    }

    /// The first file in name order after `previous` (the first file when `None`); files are
    /// kept sorted by name, so this is a binary search, whatever the number of objects.
    pub fn file_after(&self, previous: Option<&str>) -> Option<CorpusFile> {
        let files = self.files.read().ok()?;
        let index = match previous {
            Some(previous) => files.partition_point(|file| file.name().as_str() <= previous),
            None => 0,
        };
        files.get(index).cloned()
    }

    pub fn file_named(&self, name: &str) -> Option<CorpusFile> {
        let files = self.files.read().ok()?;
        let index = files.partition_point(|file| file.name().as_str() < name);
        files.get(index).filter(|file| file.name() == name).cloned()
    }

    /// Adds files not yet listed, and takes the new version of a remote object listed before at
    /// another (streams that follow read the new one; cursors into the old one are refused).
    /// Returns how many files were new or replaced.
    pub fn add_files(&self, new_files: Vec<CorpusFile>) -> usize {
        let Ok(mut files) = self.files.write() else {
            return 0;
        };
        let mut changed = 0;
        for file in new_files {
            match files.iter_mut().find(|known| known.path == file.path) {
                Some(known) if !same_version(known, &file) => {
                    *known = file;
                    changed += 1;
                }
                Some(_) => {}
                None => {
                    files.push(file);
                    changed += 1;
                }
            }
        }
        files.sort_by_key(CorpusFile::name);
        changed
    }

    pub fn weight(&self) -> f64 {
        self.weight.read().map_or(0.0, |weight| *weight)
    }

    pub fn set_weight(&self, weight: f64) {
        if let Ok(mut current) = self.weight.write() {
            *current = weight;
        }
    }
}

/// Whether two entries of one path are the same file (local files always are).
fn same_version(known: &CorpusFile, listed: &CorpusFile) -> bool {
    match (&known.remote, &listed.remote) {
        (Some(known), Some(listed)) => known.version.same_as(&listed.version),
        _ => true,
    }
}

/// The name of the source that `--valid-input` feeds.
pub const HELD_OUT_SOURCE: &str = "valid";

/// Everything streams share about the corpus being served.
pub struct Corpus {
    sources: RwLock<Vec<Arc<Source>>>,
    /// The held-out corpus of `--valid-input`: the valid split reads it whole, and the train split
    /// reads every document of `sources` (no hash-chosen split).
    held_out: Option<Arc<Source>>,
    pub tokenizer: Arc<DocumentEncoder>,
    pub tokenizer_path: PathBuf,
    pub tokenizer_info: TokenizerInfo,
    pub valid_fraction: f64,
    pub seed: u64,
    /// Tokenizer threads per stream and source.
    pub workers: usize,
    /// Blocks shuffled together; 1 keeps corpus order.
    pub shuffle_window: usize,
    /// User SQL over the table `corpus` (one file at a time), or `None` for the `text` column.
    pub sql: Option<String>,
    pub bad_records: BadRecordPolicy,
    /// Longer documents are bad records.
    pub max_document_bytes: usize,
    /// Real paths that sources added at run time must lie under; empty disables adding.
    pub allowed_roots: Vec<PathBuf>,
    /// Remote sources may be added from any URL (`--allow-any-url`).
    pub allow_any_url: bool,
    /// What a cursor into a remote object that has changed since gets.
    pub on_changed_object: ChangedObjectPolicy,
    /// Hash of what was given at start-up: cursors from another corpus are refused.
    base_fingerprint: u64,
}

/// What a pipeline is started with, besides its sources.
pub struct CorpusSettings {
    pub tokenizer: DocumentEncoder,
    pub tokenizer_path: PathBuf,
    pub tokenizer_info: TokenizerInfo,
    pub valid_fraction: f64,
    /// A held-out corpus for the valid split (instead of `valid_fraction`).
    pub held_out: Option<Source>,
    pub seed: u64,
    pub workers: usize,
    pub shuffle_window: usize,
    pub sql: Option<String>,
    pub bad_records: BadRecordPolicy,
    pub max_document_bytes: usize,
    pub allowed_roots: Vec<PathBuf>,
    pub allow_any_url: bool,
    pub on_changed_object: ChangedObjectPolicy,
}

impl Corpus {
    pub fn new(sources: Vec<Source>, settings: CorpusSettings) -> Result<Self> {
        if sources.is_empty() {
            return Err(PipelineError::NoDocuments);
        }
        let mut description = format!(
            "tokenizer={};valid={};seed={};shuffle={};sql={:?}",
            settings.tokenizer_info.hash,
            settings.valid_fraction,
            settings.seed,
            settings.shuffle_window,
            settings.sql
        );
        // Only a template changes the blocks a tokenizer gives: without one the description
        // (and every cursor taken before templates existed) stays as it was.
        let info = &settings.tokenizer_info;
        if info.add_bos_id.is_some() || info.add_eos_id.is_some() {
            description.push_str(&format!(
                ";add_bos={:?};add_eos={:?}",
                info.add_bos_id, info.add_eos_id
            ));
        }
        for source in &sources {
            description.push_str(&format!(";source={}:{:?}", source.name, source.inputs));
        }
        if let Some(held_out) = &settings.held_out {
            if settings.valid_fraction > 0.0 {
                return Err(PipelineError::Control(
                    "a held-out valid corpus and a valid fraction exclude each other".into(),
                ));
            }
            description.push_str(&format!(";held_out={:?}", held_out.inputs));
        }
        Ok(Corpus {
            sources: RwLock::new(sources.into_iter().map(Arc::new).collect()),
            held_out: settings.held_out.map(Arc::new),
            tokenizer: Arc::new(settings.tokenizer),
            tokenizer_path: settings.tokenizer_path,
            tokenizer_info: settings.tokenizer_info,
            valid_fraction: settings.valid_fraction,
            seed: settings.seed,
            workers: settings.workers.max(1),
            shuffle_window: settings.shuffle_window.max(1),
            sql: settings.sql,
            bad_records: settings.bad_records,
            max_document_bytes: settings.max_document_bytes,
            allowed_roots: settings.allowed_roots,
            allow_any_url: settings.allow_any_url,
            on_changed_object: settings.on_changed_object,
            base_fingerprint: stable_hash(settings.seed, description.as_bytes()),
        })
    }

    /// The sources in the order streams number them (start-up order, then additions).
    pub fn sources(&self) -> Vec<Arc<Source>> {
        self.sources.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// The sources a stream of `split` reads: the held-out corpus for the valid split when there
    /// is one, the mixture's sources otherwise.
    pub fn sources_for(&self, split: Split) -> Vec<Arc<Source>> {
        match (&self.held_out, split) {
            (Some(held_out), Split::Valid) => vec![held_out.clone()],
            _ => self.sources(),
        }
    }

    /// Whether the valid split is a held-out corpus (`--valid-input`).
    pub fn has_held_out(&self) -> bool {
        self.held_out.is_some()
    }

    /// Whether streams of the valid split have any documents to read.
    pub fn serves_valid(&self) -> bool {
        self.has_held_out() || self.valid_fraction > 0.0
    }

    pub fn source(&self, name: &str) -> Option<Arc<Source>> {
        self.sources()
            .into_iter()
            .find(|source| source.name == name)
    }

    /// Adds a source while streams run; its name must be new.
    pub fn add_source(&self, source: Source) -> Result<()> {
        let mut sources = self
            .sources
            .write()
            .map_err(|_| PipelineError::Control("the source list is unavailable".into()))?;
        if sources.iter().any(|known| known.name == source.name) {
            return Err(PipelineError::Control(format!(
                "a source named `{}` already exists",
                source.name
            )));
        }
        sources.push(Arc::new(source));
        Ok(())
    }

    /// Files over all sources.
    pub fn file_count(&self) -> usize {
        self.sources()
            .iter()
            .map(|source| source.file_count())
            .sum()
    }

    /// Sources, weights and file counts, for the `sources` action; a held-out valid corpus is
    /// listed last with `"split": "valid"`.
    pub fn describe_sources(&self) -> serde_json::Value {
        let mut sources: Vec<serde_json::Value> = self
            .sources()
            .iter()
            .map(|source| {
                serde_json::json!({
                    "source": source.name,
                    "inputs": source.inputs,
                    "weight": source.weight(),
                    "files": source.file_count(),
                })
            })
            .collect();
        if let Some(held_out) = &self.held_out {
            sources.push(serde_json::json!({
                "source": held_out.name,
                "split": "valid",
                "inputs": held_out.inputs,
                "files": held_out.file_count(),
            }));
        }
        serde_json::Value::Array(sources)
    }

    /// Identifies the block sequence of one split at one block length: a cursor is only valid
    /// for the fingerprint it was taken under.
    pub fn fingerprint(&self, split: Split, seq_len: usize) -> String {
        let text = format!("{split}:{seq_len}");
        format!(
            "{:016x}",
            stable_hash(self.base_fingerprint, text.as_bytes())
        )
    }

    /// Blocks drawn per chunk: the shuffle window, or a fixed run when shuffling is off, so that a
    /// resume regenerates a bounded number of blocks and rows share their resume state.
    pub fn chunk_blocks(&self) -> usize {
        if self.shuffle_window > 1 {
            self.shuffle_window
        } else {
            UNSHUFFLED_CHUNK_BLOCKS
        }
    }
}

/// Chunk length without shuffling.
const UNSHUFFLED_CHUNK_BLOCKS: usize = 64;
