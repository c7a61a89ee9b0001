//! The resume cursor: where a stream continues after the last block a consumer has used.
//!
//! A pipeline keeps no per-client state; instead every row it sends says how to get back to the
//! point right after it. The stream is produced in chunks (one shuffle window of blocks each), and
//! the state at the start of a chunk is small: for every source, the document and token at which
//! its next block begins, plus the number of mixture draws and blocks so far. A row carries the
//! state of its chunk (`resume_state`, dictionary-encoded, so it costs one string per batch) and
//! how many blocks of that chunk have been sent once it is consumed (`resume_skip`). Resuming
//! re-reads at most one file prefix per source and regenerates one chunk, whatever the number of
//! blocks consumed before.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where one source's next block begins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourcePosition {
    /// The source's name, as given to the pipeline (`--source NAME=…`).
    pub source: String,
    /// Completed passes over this source.
    pub pass: u64,
    /// The file being read, as the pipeline names it; `None` before the first row of a pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Row of `file` (counting every row, documents or not) whose document holds the block start.
    #[serde(default)]
    pub row: u64,
    /// Token offset of the block start within that document's ids as encoded (the special tokens
    /// of its tokenizer and document template included).
    #[serde(default)]
    pub token: u64,
    /// Which version of `file` the row and token count in, for remote objects (local files:
    /// `None`). A pipeline refuses to resume a position whose object has changed since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_version: Option<FileVersion>,
}

/// What identifies one version of a remote object: its size and the store's ETag or version id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileVersion {
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// The store's version id (S3 `VersionId`, GCS generation), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl FileVersion {
    /// Whether `other` is the same version. ETags compare by their opaque part (a weak `W/"…"`
    /// and a listing's unquoted form match the quoted one); a side without an ETag or version
    /// id is judged by size alone.
    pub fn same_as(&self, other: &FileVersion) -> bool {
        fn opaque(etag: &str) -> &str {
            etag.strip_prefix("W/").unwrap_or(etag).trim_matches('"')
        }
        let etags = match (&self.etag, &other.etag) {
            (Some(left), Some(right)) => opaque(left) == opaque(right),
            _ => true,
        };
        let versions = match (&self.version, &other.version) {
            (Some(left), Some(right)) => left == right,
            _ => true,
        };
        self.size == other.size && etags && versions
    }
}

impl std::fmt::Display for FileVersion {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{} bytes", self.size)?;
        if let Some(etag) = &self.etag {
            write!(formatter, ", ETag {etag}")?;
        }
        if let Some(version) = &self.version {
            write!(formatter, ", version {version}")?;
        }
        Ok(())
    }
}

impl SourcePosition {
    /// A source that has not been read yet.
    pub fn start(source: &str) -> Self {
        SourcePosition {
            source: source.to_string(),
            pass: 0,
            file: None,
            row: 0,
            token: 0,
            file_version: None,
        }
    }
}

/// The state of a stream at the start of a chunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamState {
    /// The corpus fingerprint the state belongs to; a pipeline refuses any other.
    pub fingerprint: String,
    /// `block_seq` of the chunk's first block.
    pub block_seq: u64,
    /// Blocks drawn from the sources before the chunk (before shuffling and sharding).
    pub draws: u64,
    /// One position per source, in the pipeline's source order.
    pub sources: Vec<SourcePosition>,
    /// The weights the chunk was drawn with, for a stream with weights of its own (every source
    /// it draws from named); absent for a stream that follows the pipeline's weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<BTreeMap<String, f64>>,
}

/// Everything a pipeline needs to continue a stream exactly after a consumed block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cursor {
    pub state: StreamState,
    /// Blocks of the chunk, in sending order, already consumed.
    pub skip: u64,
}

impl Cursor {
    /// The cursor after a row that carries `resume_state` (JSON) and `resume_skip`.
    pub fn from_row(resume_state: &str, resume_skip: u64) -> Result<Self, serde_json::Error> {
        Ok(Cursor {
            state: serde_json::from_str(resume_state)?,
            skip: resume_skip,
        })
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a Cursor always serializes")
    }

    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_weak_etags_by_their_opaque_part() {
        let version = |size, etag: &str| FileVersion {
            size,
            etag: Some(etag.to_string()),
            version: None,
        };
        assert!(version(10, "W/\"abc\"").same_as(&version(10, "\"abc\"")));
        assert!(version(10, "abc").same_as(&version(10, "\"abc\"")));
        assert!(!version(10, "\"abc\"").same_as(&version(10, "\"abd\"")));
        assert!(!version(10, "\"abc\"").same_as(&version(11, "\"abc\"")));
        let sized = FileVersion {
            size: 10,
            etag: None,
            version: None,
        };
        assert!(sized.same_as(&version(10, "\"x\"")));
    }

    #[test]
    fn cursor_round_trips_and_refuses_unknown_fields() {
        let cursor = Cursor {
            state: StreamState {
                fingerprint: "00ff".into(),
                block_seq: 64,
                draws: 64,
                sources: vec![SourcePosition {
                    source: "books".into(),
                    pass: 1,
                    file: Some("data/a.txt".into()),
                    row: 12,
                    token: 7,
                    file_version: Some(FileVersion {
                        size: 4096,
                        etag: Some("\"9b2cf535f27731c974343645a3985328\"".into()),
                        version: None,
                    }),
                }],
                weights: Some(BTreeMap::from([("books".to_string(), 0.5)])),
            },
            skip: 3,
        };
        assert_eq!(Cursor::from_json(&cursor.to_json()).unwrap(), cursor);
        let state = serde_json::to_string(&cursor.state).unwrap();
        assert_eq!(Cursor::from_row(&state, 3).unwrap(), cursor);
        let extra = cursor
            .to_json()
            .replacen("\"skip\"", "\"extra\":1,\"skip\"", 1);
        assert!(Cursor::from_json(&extra).is_err());
        let start = SourcePosition::start("wiki");
        let text = serde_json::to_string(&start).unwrap();
        assert!(!text.contains("file"), "{text}");
        // Cursors written before versions were recorded still read.
        let older = r#"{"source":"books","pass":0,"file":"a.txt","row":3,"token":0}"#;
        let position: SourcePosition = serde_json::from_str(older).unwrap();
        assert_eq!(position.file_version, None);
        assert_eq!(
            serde_json::from_str::<SourcePosition>(&text).unwrap(),
            start
        );
    }
}
