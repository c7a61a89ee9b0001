//! Changing the corpus while streams run: the `add-source`, `set-weight` and `stream-weights`
//! actions, and the `--watch` directory poller.
//!
//! Running streams pick changes up at their next file or chunk boundary; nothing restarts and every
//! cursor stays valid, because cursors name files and sources, never positions in a list.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use flightlm_shared::StreamWeights;
use serde::Deserialize;

use crate::access::{confine, confine_inputs};
use crate::corpus::{Corpus, Source};
use crate::error::{PipelineError, Result};
use crate::production::weight_schedule::WeightSchedules;
use crate::read::reader::{reader_runtime, CorpusReader};
use crate::read::remote;
use crate::read::sources::{collect_directory, resolve_inputs};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddSource {
    name: String,
    inputs: Vec<String>,
    #[serde(default = "default_weight")]
    weight: f64,
}

fn default_weight() -> f64 {
    1.0
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetWeight {
    source: String,
    weight: f64,
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8], action: &str) -> Result<T> {
    serde_json::from_slice(body)
        .map_err(|error| PipelineError::Control(format!("bad `{action}` body: {error}")))
}

fn check_weight(weight: f64) -> Result<()> {
    if weight.is_finite() && weight >= 0.0 {
        Ok(())
    } else {
        Err(PipelineError::Control(format!(
            "weight {weight} must be a finite number >= 0"
        )))
    }
}

/// Adds a named source, checked like start-up inputs (every file readable, with a text column)
/// and confined to the `--allow-root` directories: by the inputs' text before anything is listed
/// or read, then by the files they resolve to.
pub fn add_source(corpus: &Corpus, body: &[u8]) -> Result<()> {
    let request: AddSource = parse(body, "add-source")?;
    check_weight(request.weight)?;
    if request.name.is_empty() || request.inputs.is_empty() {
        return Err(PipelineError::Control(
            "add-source needs a name and at least one input".into(),
        ));
    }
    confine_inputs(&request.inputs, &corpus.allowed_roots, corpus.allow_any_url)?;
    let files = resolve_inputs(&request.inputs)?;
    confine(&files, &corpus.allowed_roots, corpus.allow_any_url)?;
    check_files(corpus, &files)?;
    let source = Source::new(&request.name, request.inputs, files, request.weight);
    corpus.add_source(source)?;
    tracing::info!(source = %request.name, weight = request.weight, "source added");
    Ok(())
}

/// Checks files on a throwaway thread: the caller may be on the async runtime.
fn check_files(corpus: &Corpus, files: &[crate::read::sources::CorpusFile]) -> Result<()> {
    let files = files.to_vec();
    let sql = corpus.sql.clone();
    std::thread::scope(|scope| {
        scope
            .spawn(move || reader_runtime()?.block_on(CorpusReader::with_sql(sql).check(&files)))
            .join()
            .unwrap_or_else(|_| Err(PipelineError::Control("checking the files failed".into())))
    })
}

pub fn set_weight(corpus: &Corpus, body: &[u8]) -> Result<()> {
    let request: SetWeight = parse(body, "set-weight")?;
    check_weight(request.weight)?;
    let source = corpus.source(&request.source).ok_or_else(|| {
        PipelineError::Control(format!("there is no source named `{}`", request.source))
    })?;
    source.set_weight(request.weight);
    tracing::info!(source = %request.source, weight = request.weight, "weight changed");
    Ok(())
}

/// Applies a run's change of weights to its open streams (`weight_schedule`): the sources it
/// names must be ones this pipeline serves. False when no stream of the run is open here.
pub fn stream_weights(corpus: &Corpus, schedules: &WeightSchedules, body: &[u8]) -> Result<bool> {
    let update: StreamWeights = parse(body, "stream-weights")?;
    if let Some(weights) = &update.weights {
        if let Some(unknown) = weights.keys().find(|name| corpus.source(name).is_none()) {
            return Err(PipelineError::Control(format!(
                "stream-weights names source `{unknown}`, which this pipeline does not serve"
            )));
        }
    }
    schedules.update(&update)
}

/// Polls `directory` (or a remote prefix, listed again at every poll) every `interval` and adds
/// new corpus files to `source`. A file is taken once its size has stayed the same over one
/// interval, so one still being written is not read half; hidden files (write to `.name`, then
/// rename) are never taken. A remote object listed at a new version (replaced in place) takes
/// the old one's place for the streams that follow, once that version has stayed one interval.
pub fn watch_directory(source: Arc<Source>, directory: PathBuf, interval: Duration) {
    std::thread::Builder::new()
        .name("watch".into())
        .spawn(move || {
            let mut sizes: HashMap<PathBuf, String> = HashMap::new();
            loop {
                std::thread::sleep(interval);
                let mut found = Vec::new();
                let listed = match directory.to_str().filter(|text| remote::is_remote(text)) {
                    // A prefix with no objects yet is not an error here.
                    Some(url) => {
                        match remote::block_on(remote::listing::resolve(url, &mut found)) {
                            Err(PipelineError::InputNotFound(_)) => Ok(()),
                            other => other,
                        }
                    }
                    None => collect_directory(&directory, &mut found),
                };
                if let Err(error) = listed {
                    tracing::warn!("watching {}: {error}", directory.display());
                    continue;
                }
                let mut ready = Vec::new();
                for file in found {
                    let (size, seen) = match &file.remote {
                        Some(object) => (object.size(), object.version.to_string()),
                        None => {
                            let size = file_size(&file.path);
                            (size, size.to_string())
                        }
                    };
                    let previous = sizes.insert(file.path.clone(), seen.clone());
                    if previous == Some(seen) && size > 0 {
                        ready.push(file);
                    }
                }
                let added = source.add_files(ready);
                if added > 0 {
                    tracing::info!(source = %source.name, added, "new or changed files picked up");
                }
            }
        })
        .expect("spawning the watch thread");
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |metadata| metadata.len())
}
