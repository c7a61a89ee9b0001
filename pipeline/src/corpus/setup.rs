//! Turns `serve`'s arguments into a checked [`Corpus`]: parses `--source NAME=PATHS:WEIGHT`,
//! resolves every input, checks every local file and each source's first remote object up front
//! (so a bad corpus fails at start-up, not mid-stream, and start-up costs the same for ten
//! objects or ten thousand) and starts the `--watch` poller.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::access::allowed_roots;
use crate::corpus::control::watch_directory;
use crate::corpus::listing::continue_listing;
use crate::corpus::versions::ChangedObjectPolicy;
use crate::corpus::{Corpus, CorpusSettings, Source, HELD_OUT_SOURCE};
use crate::error::{PipelineError, Result};
use crate::read::bad_records::{BadRecordPolicy, BadRecords};
use crate::read::reader::CorpusReader;
use crate::read::remote::{self, listing::BucketListing};
use crate::read::sources::{resolve_inputs, CorpusFile};
use crate::tokenizer::file::load_tokenizer;
use flightlm_shared::tokenizer_file::DocumentTemplate;

/// The name of the source that `--input` feeds.
pub const DEFAULT_SOURCE: &str = "main";
/// Documents held out as the valid split when neither `--valid-fraction` nor `--valid-input`
/// is given.
pub const DEFAULT_VALID_FRACTION: f64 = 0.01;

pub struct ServeInputs {
    pub input: Vec<PathBuf>,
    pub sources: Vec<String>,
    pub tokenizer: PathBuf,
    /// Tokens added around every document (`--add-bos`, `--add-eos`).
    pub template: DocumentTemplate,
    /// `None`: the default, 0.01 without a held-out corpus and 0 with one.
    pub valid_fraction: Option<f64>,
    /// A held-out corpus for the valid split (`--valid-input`); empty for none.
    pub valid_input: Vec<PathBuf>,
    pub seed: u64,
    pub workers: Option<usize>,
    pub shuffle_window: usize,
    pub watch: Option<PathBuf>,
    pub watch_interval: Duration,
    pub sql: Option<String>,
    pub on_bad_record: BadRecordPolicy,
    pub max_document_bytes: usize,
    pub allow_roots: Vec<PathBuf>,
    /// `add-source` may name any remote URL (`--allow-any-url`).
    pub allow_any_url: bool,
    pub on_changed_object: ChangedObjectPolicy,
}

/// One `--source` argument.
#[derive(Debug, PartialEq)]
pub struct SourceSpec {
    pub name: String,
    pub inputs: Vec<String>,
    pub weight: f64,
}

/// Parses `NAME=PATH[,PATH…][:WEIGHT]`; the weight defaults to 1.
pub fn parse_source_spec(text: &str) -> Result<SourceSpec> {
    let invalid = |reason: &str| {
        PipelineError::Control(format!(
            "--source `{text}`: {reason} (expected NAME=PATH[,PATH…][:WEIGHT])"
        ))
    };
    let (name, rest) = text.split_once('=').ok_or_else(|| invalid("no `=`"))?;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_alphanumeric() || "-_.".contains(c))
    {
        return Err(invalid("the name must be letters, digits, `-`, `_` or `.`"));
    }
    let (paths, weight) = match rest.rsplit_once(':') {
        Some((paths, weight)) if weight.parse::<f64>().is_ok() => {
            (paths, weight.parse::<f64>().unwrap_or(1.0))
        }
        _ => (rest, 1.0),
    };
    if !(weight.is_finite() && weight >= 0.0) {
        return Err(invalid("the weight must be a number >= 0"));
    }
    let inputs: Vec<String> = paths
        .split(',')
        .filter(|path| !path.is_empty())
        .map(str::to_string)
        .collect();
    if inputs.is_empty() {
        return Err(invalid("no paths"));
    }
    Ok(SourceSpec {
        name: name.to_string(),
        inputs,
        weight,
    })
}

pub async fn build_corpus(inputs: ServeInputs) -> Result<Corpus> {
    let valid_fraction = match (inputs.valid_fraction, inputs.valid_input.is_empty()) {
        (Some(fraction), false) if fraction > 0.0 => {
            return Err(PipelineError::Control(format!(
                "--valid-fraction {fraction} and --valid-input exclude each other: the valid split \
                 is either a fraction of the corpus or a corpus of its own"
            )));
        }
        (fraction, true) => fraction.unwrap_or(DEFAULT_VALID_FRACTION),
        (_, false) => 0.0,
    };
    if !(0.0..1.0).contains(&valid_fraction) {
        return Err(PipelineError::Control(format!(
            "--valid-fraction {valid_fraction} must be in [0, 1)"
        )));
    }
    let mut specs = Vec::new();
    if !inputs.input.is_empty() {
        specs.push(SourceSpec {
            name: DEFAULT_SOURCE.into(),
            inputs: inputs
                .input
                .iter()
                .map(|path| path.to_string_lossy().into_owned())
                .collect(),
            weight: 1.0,
        });
    }
    for text in &inputs.sources {
        specs.push(parse_source_spec(text)?);
    }
    if specs.is_empty() {
        return Err(PipelineError::Control(
            "give the corpus with --input or --source".into(),
        ));
    }
    let reader = CorpusReader::with_sql(inputs.sql.clone()).with_bad_records(
        BadRecords::new(inputs.on_bad_record),
        inputs.max_document_bytes,
    );
    let mut sources = Vec::new();
    let mut listings = Vec::new();
    for spec in specs {
        if sources
            .iter()
            .any(|source: &Source| source.name == spec.name)
        {
            return Err(PipelineError::Control(format!(
                "two sources are named `{}`",
                spec.name
            )));
        }
        // A watched directory may start empty: its files arrive later.
        let watched = inputs.watch.as_ref().is_some_and(|watch| {
            spec.inputs
                .iter()
                .any(|input| Path::new(input) == watch.as_path())
        });
        let (files, listing) = if watched {
            (resolve_inputs(&spec.inputs).unwrap_or_default(), None)
        } else {
            resolve_source(&spec.inputs)?
        };
        reader.check(&files).await?;
        match listing {
            Some(listing) => {
                let source = Source::still_listing(&spec.name, spec.inputs, files, spec.weight);
                listings.push((spec.name, listing));
                sources.push(source);
            }
            None => sources.push(Source::new(&spec.name, spec.inputs, files, spec.weight)),
        }
    }
    let held_out = if inputs.valid_input.is_empty() {
        None
    } else {
        let held_out_inputs: Vec<String> = inputs
            .valid_input
            .iter()
            .map(|path| path.to_string_lossy().into_owned())
            .collect();
        let files = resolve_inputs(&held_out_inputs)?;
        reader.check(&files).await?;
        Some(Source::new(HELD_OUT_SOURCE, held_out_inputs, files, 1.0))
    };
    let (tokenizer, tokenizer_info) = load_tokenizer(&inputs.tokenizer, &inputs.template)?;
    let workers = inputs
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let settings = CorpusSettings {
        tokenizer,
        tokenizer_path: inputs.tokenizer,
        tokenizer_info,
        valid_fraction,
        held_out,
        seed: inputs.seed,
        workers,
        shuffle_window: inputs.shuffle_window,
        sql: inputs.sql,
        bad_records: inputs.on_bad_record,
        max_document_bytes: inputs.max_document_bytes,
        allowed_roots: allowed_roots(&inputs.allow_roots)?,
        allow_any_url: inputs.allow_any_url,
        on_changed_object: inputs.on_changed_object,
    };
    let corpus = Corpus::new(sources, settings)?;
    for (name, listing) in listings {
        if let Some(source) = corpus.source(&name) {
            continue_listing(source, listing);
        }
    }
    if let Some(directory) = inputs.watch {
        let remote = crate::read::remote::is_remote(&directory.to_string_lossy());
        if !remote && !directory.is_dir() {
            return Err(PipelineError::InputNotFound(directory));
        }
        let sources = corpus.sources();
        let source = sources
            .iter()
            .find(|source| {
                source
                    .inputs
                    .iter()
                    .any(|input| Path::new(input) == directory.as_path())
            })
            .unwrap_or(&sources[0]);
        watch_directory(source.clone(), directory, inputs.watch_interval);
    }
    Ok(corpus)
}

/// The files of one source's inputs. A source of one bucket prefix or glob is returned after
/// the first page that holds a corpus file, with the listing to continue in the background:
/// start-up does not wait for ten thousand keys to be listed.
fn resolve_source(inputs: &[String]) -> Result<(Vec<CorpusFile>, Option<BucketListing>)> {
    let listed = match inputs {
        [input] if remote::is_remote(input) => {
            let parsed = remote::RemoteInput::parse(input)?;
            let scheme = parsed.root.split("://").next().unwrap_or_default();
            remote::is_bucket_scheme(scheme).then_some((input, parsed))
        }
        _ => None,
    };
    let Some((input, parsed)) = listed else {
        return Ok((resolve_inputs(inputs)?, None));
    };
    let (files, listing) = remote::block_on(async {
        let mut listing = BucketListing::start(&parsed).await?;
        let mut files = Vec::new();
        while files.is_empty() {
            match listing.next_files().await? {
                Some(page) => files.extend(page),
                None => break,
            }
        }
        Ok::<_, PipelineError>((files, listing))
    })?;
    if files.is_empty() {
        // Nothing to read: the full resolution names the reason.
        return Ok((resolve_inputs(std::slice::from_ref(input))?, None));
    }
    Ok((files, Some(listing)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_specs_parse_with_and_without_weights() {
        let spec = parse_source_spec("books=data/b/*.parquet,extra.txt:0.7").unwrap();
        assert_eq!(spec.name, "books");
        assert_eq!(spec.inputs, vec!["data/b/*.parquet", "extra.txt"]);
        assert_eq!(spec.weight, 0.7);
        let spec = parse_source_spec("wiki=wiki.jsonl").unwrap();
        assert_eq!((spec.inputs.len(), spec.weight), (1, 1.0));
        for bad in ["nothing", "=a.txt", "w=", "w=a.txt:-1", "bad name=a.txt"] {
            assert!(parse_source_spec(bad).is_err(), "{bad}");
        }
    }
}
