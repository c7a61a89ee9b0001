//! Turns the user's `--input` arguments into a sorted manifest of corpus files.
//!
//! The manifest is the unit of determinism: the same inputs always give the same files in the same
//! order, so the same seed always gives the same block sequence.

use std::path::{Path, PathBuf};

use crate::error::{PipelineError, Result};
use crate::read::remote::{self, RemoteObject};

/// How a corpus file stores its documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One document per non-empty line.
    Text,
    /// One JSON object per line with a `text` field.
    JsonLines,
    /// Comma-separated with a header row naming a `text` column; quoted values may hold newlines.
    Csv,
    /// A `text` column (Utf8, LargeUtf8 or Utf8View).
    Parquet,
}

/// Whole-file compression, recognised by the last extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorpusFile {
    /// A local path, or the URL of a remote object (what cursors and errors name).
    pub path: PathBuf,
    pub format: Format,
    pub compression: Compression,
    /// Where a remote file is read from; `None` for local files.
    pub remote: Option<RemoteObject>,
}

impl CorpusFile {
    /// The name a cursor uses for this file; files are read in this order.
    pub fn name(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }

    /// Classifies a path by its extensions, e.g. `books.jsonl.zst`.
    pub fn classify(path: &Path) -> Option<CorpusFile> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        let (stem, compression) = if let Some(stem) = name.strip_suffix(".zst") {
            (stem, Compression::Zstd)
        } else if let Some(stem) = name.strip_suffix(".gz") {
            (stem, Compression::Gzip)
        } else {
            (name.as_str(), Compression::None)
        };
        let format = if stem.ends_with(".txt") {
            Format::Text
        } else if stem.ends_with(".jsonl") || stem.ends_with(".json") {
            Format::JsonLines
        } else if stem.ends_with(".csv") {
            Format::Csv
        } else if stem.ends_with(".parquet") && compression == Compression::None {
            Format::Parquet
        } else {
            return None;
        };
        Some(CorpusFile {
            path: path.to_path_buf(),
            format,
            compression,
            remote: None,
        })
    }

    /// Classifies a remote object by the extensions of its key.
    pub fn classify_remote(object: RemoteObject) -> Option<CorpusFile> {
        let mut file = CorpusFile::classify(Path::new(&object.url()))?;
        file.remote = Some(object);
        Some(file)
    }
}

/// Resolves files, directories and globs into a sorted, de-duplicated manifest.
///
/// A named file must exist and have a known format; a directory contributes every known file under
/// it (recursively, hidden entries skipped) and must contribute at least one; a glob
/// (`data/*.parquet`) must match at least one file of a known format. `s3://`, `http(s)://` and
/// `hf://datasets/` inputs are listed the same way (see [`remote::listing`]).
pub fn resolve_inputs<P: AsRef<Path>>(inputs: &[P]) -> Result<Vec<CorpusFile>> {
    let mut manifest = Vec::new();
    for input in inputs {
        let input = input.as_ref();
        let text = input.to_string_lossy();
        if remote::is_remote(&text) {
            remote::block_on(remote::listing::resolve(&text, &mut manifest))?;
            continue;
        }
        if text.contains(['*', '?', '[']) {
            expand_glob(&text, &mut manifest)?;
            continue;
        }
        let input = input.to_path_buf();
        let metadata =
            std::fs::metadata(&input).map_err(|_| PipelineError::InputNotFound(input.clone()))?;
        if metadata.is_dir() {
            let before = manifest.len();
            collect_directory(&input, &mut manifest)?;
            if manifest.len() == before {
                return Err(PipelineError::EmptyDirectory(input.clone()));
            }
        } else {
            let file = CorpusFile::classify(&input)
                .ok_or_else(|| PipelineError::UnsupportedFile(input.clone()))?;
            manifest.push(file);
        }
    }
    manifest.sort_by(|left, right| left.path.cmp(&right.path));
    manifest.dedup_by(|left, right| left.path == right.path);
    Ok(manifest)
}

fn expand_glob(pattern: &str, manifest: &mut Vec<CorpusFile>) -> Result<()> {
    let paths = glob::glob(pattern)
        .map_err(|error| PipelineError::Control(format!("bad glob `{pattern}`: {error}")))?;
    let before = manifest.len();
    for path in paths.flatten() {
        if path.is_file() {
            if let Some(file) = CorpusFile::classify(&path) {
                manifest.push(file);
            }
        }
    }
    if manifest.len() == before {
        return Err(PipelineError::InputNotFound(PathBuf::from(pattern)));
    }
    Ok(())
}

/// Adds every corpus file under `directory` (recursively, hidden entries skipped).
pub fn collect_directory(directory: &Path, manifest: &mut Vec<CorpusFile>) -> Result<()> {
    let entries = std::fs::read_dir(directory).map_err(|source| PipelineError::Io {
        path: directory.to_path_buf(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| PipelineError::Io {
            path: directory.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if hidden {
            continue;
        }
        if path.is_dir() {
            collect_directory(&path, manifest)?;
        } else if let Some(file) = CorpusFile::classify(&path) {
            manifest.push(file);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_by_extension() {
        let file = CorpusFile::classify(Path::new("a/books.JSONL.zst")).unwrap();
        assert_eq!(file.format, Format::JsonLines);
        assert_eq!(file.compression, Compression::Zstd);
        assert_eq!(
            CorpusFile::classify(Path::new("x.parquet")).unwrap().format,
            Format::Parquet
        );
        assert_eq!(
            CorpusFile::classify(Path::new("t.csv.gz")).unwrap().format,
            Format::Csv
        );
        assert!(CorpusFile::classify(Path::new("notes.md")).is_none());
    }

    #[test]
    fn directories_are_sorted_and_must_hold_a_corpus() {
        let root = std::env::temp_dir().join(format!("flightlm-sources-{}", std::process::id()));
        let nested = root.join("nested");
        std::fs::create_dir_all(&nested).unwrap();
        std::fs::write(root.join("b.txt"), "b\n").unwrap();
        std::fs::write(nested.join("a.jsonl"), "{}\n").unwrap();
        std::fs::write(root.join("readme.md"), "ignored").unwrap();
        let manifest = resolve_inputs(std::slice::from_ref(&root)).unwrap();
        let names: Vec<_> = manifest.iter().map(|file| file.path.clone()).collect();
        assert_eq!(names, vec![root.join("b.txt"), nested.join("a.jsonl")]);

        let empty = root.join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        let error = resolve_inputs(&[empty]).unwrap_err().to_string();
        assert!(error.contains("no readable corpus"), "{error}");
        let error = resolve_inputs(&[root.join("missing.txt")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("input not found"), "{error}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
