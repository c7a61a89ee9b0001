//! Lists a remote input into manifest entries, the way local inputs are: a named object, every
//! corpus object under a prefix (hidden names skipped), or the objects a glob matches (`*` stays
//! within one `/` level, `**` crosses levels). Buckets are listed page by page from the longest
//! literal prefix of the key; HTTP inputs are single files; `hf://` inputs are listed with the
//! hub's tree API. Every entry carries the version it was listed at, so nothing is asked per
//! object before it is read.

use flightlm_shared::FileVersion;

use super::store::version_of;
use super::{hub, is_bucket_scheme, key_path, store_for, RemoteInput, RemoteObject, HUB_REVISION};
use crate::error::{PipelineError, Result};
use crate::read::sources::CorpusFile;

/// Adds the corpus files `input` names to `manifest`; an input that names none is an error.
pub async fn resolve(input: &str, manifest: &mut Vec<CorpusFile>) -> Result<()> {
    let parsed = RemoteInput::parse(input)?;
    let scheme = parsed.root.split("://").next().unwrap_or_default();
    let objects = if parsed.root == "hf://datasets" {
        list_hub(&parsed).await?
    } else if is_bucket_scheme(scheme) {
        list_bucket(&parsed).await?
    } else {
        vec![head_object(&parsed).await?]
    };
    let before = manifest.len();
    let single = objects.len() == 1 && objects[0].key == parsed.key;
    for object in objects {
        match CorpusFile::classify_remote(object.clone()) {
            Some(file) => manifest.push(file),
            None if single => return Err(PipelineError::UnsupportedFile(object.url().into())),
            None => {}
        }
    }
    if manifest.len() == before {
        return Err(PipelineError::InputNotFound(input.into()));
    }
    Ok(())
}

/// The part of `key` before its first glob character, cut back to a whole `/` level.
fn literal_directory(key: &str) -> &str {
    let first_glob = key.find(['*', '?', '[']).unwrap_or(key.len());
    match key[..first_glob].rfind('/') {
        Some(end) => &key[..end],
        None => "",
    }
}

/// The part of `key` before its first glob character: what a bucket listing starts from.
fn literal_prefix(key: &str) -> &str {
    &key[..key.find(['*', '?', '[']).unwrap_or(key.len())]
}

fn is_glob(key: &str) -> bool {
    key.contains(['*', '?', '['])
}
/// Which listed keys `key` selects: the key itself, everything under it as a directory, or the
/// glob's matches. Hidden names (a part starting with `.`) are never selected by a directory.
fn selector(key: &str) -> Result<impl Fn(&str) -> bool> {
    let pattern = if is_glob(key) {
        Some(
            glob::Pattern::new(key)
                .map_err(|error| PipelineError::Control(format!("bad glob `{key}`: {error}")))?,
        )
    } else {
        None
    };
    let key = key.to_string();
    let options = glob::MatchOptions {
        require_literal_separator: true,
        ..glob::MatchOptions::default()
    };
    Ok(move |candidate: &str| match &pattern {
        Some(pattern) => pattern.matches_with(candidate, options),
        None => {
            candidate == key
                || (key.is_empty() || candidate.starts_with(&format!("{key}/")))
                    && !candidate[key.len()..]
                        .split('/')
                        .any(|part| part.starts_with('.'))
        }
    })
}

/// A bucket listing in progress: the objects an input selects, one page at a time, in key order
/// (buckets list keys in byte order, which is the manifest's order).
pub struct BucketListing {
    input: RemoteInput,
    store: super::store::RemoteStore,
    prefix: String,
    /// `None` before the first page and after the last.
    token: Option<String>,
    started: bool,
    /// Set when the input named one object, already found.
    single: Option<RemoteObject>,
}

impl BucketListing {
    /// Starts listing `input`: a named object is asked for first (a prefix lists as `key/`).
    pub async fn start(input: &RemoteInput) -> Result<BucketListing> {
        let store = store_for(&input.root)?;
        let mut single = None;
        if !input.key.is_empty() && !is_glob(&input.key) {
            let path = key_path(&input.root, &input.key)?;
            match store.head(&path).await {
                Ok(meta) => {
                    let key = input.key.clone();
                    single = Some(RemoteObject::from_meta(&input.root, key, &meta));
                }
                Err(object_store::Error::NotFound { .. }) => {}
                Err(error) => return Err(remote_error(&input.root, &input.key, error)),
            }
        }
        let prefix = if is_glob(&input.key) {
            literal_prefix(&input.key).to_string()
        } else if input.key.is_empty() {
            String::new()
        } else {
            format!("{}/", input.key)
        };
        Ok(BucketListing {
            input: input.clone(),
            store,
            prefix,
            token: None,
            started: single.is_some(),
            single,
        })
    }

    /// The selected objects of the next page, in key order; `None` after the last page.
    pub async fn next_page(&mut self) -> Result<Option<Vec<RemoteObject>>> {
        if let Some(single) = self.single.take() {
            return Ok(Some(vec![single]));
        }
        if self.started && self.token.is_none() {
            return Ok(None);
        }
        self.started = true;
        let (listed, token) = self
            .store
            .list_page(&self.prefix, self.token.take())
            .await
            .map_err(|error| remote_error(&self.input.root, &self.input.key, error))?;
        self.token = token;
        let selected = selector(&self.input.key)?;
        let mut objects: Vec<RemoteObject> = listed
            .iter()
            .filter(|meta| selected(meta.location.as_ref()))
            .map(|meta| RemoteObject::from_meta(&self.input.root, meta.location.to_string(), meta))
            .collect();
        objects.sort_by(|left, right| left.key.cmp(&right.key));
        Ok(Some(objects))
    }

    /// Corpus files of the next page (others skipped); `None` after the last page.
    pub async fn next_files(&mut self) -> Result<Option<Vec<CorpusFile>>> {
        Ok(self.next_page().await?.map(|objects| {
            objects
                .into_iter()
                .filter_map(CorpusFile::classify_remote)
                .collect()
        }))
    }

    pub fn input(&self) -> &RemoteInput {
        &self.input
    }
}

async fn list_bucket(input: &RemoteInput) -> Result<Vec<RemoteObject>> {
    let mut listing = BucketListing::start(input).await?;
    let mut objects = Vec::new();
    while let Some(page) = listing.next_page().await? {
        objects.extend(page);
    }
    Ok(objects)
}

async fn head_object(input: &RemoteInput) -> Result<RemoteObject> {
    let store = store_for(&input.root)?;
    let meta = store
        .head(&key_path(&input.root, &input.key)?)
        .await
        .map_err(|error| remote_error(&input.root, &input.key, error))?;
    Ok(RemoteObject {
        root: input.root.clone(),
        key: input.key.clone(),
        version: version_of(&meta),
    })
}

async fn list_hub(input: &RemoteInput) -> Result<Vec<RemoteObject>> {
    let mut parts = input.key.splitn(3, '/');
    let owner = parts.next().unwrap_or_default();
    let name = parts.next().unwrap_or_default();
    let path = parts.next().unwrap_or_default();
    let repo = format!("{owner}/{name}");
    // A file path lists its directory; a directory (or the repository) lists itself.
    let directory = if is_glob(path) {
        literal_directory(path)
    } else {
        path
    };
    let mut files = hub::list_files(&repo, HUB_REVISION, directory).await;
    if !is_glob(path) && !path.is_empty() && files.is_err() {
        // Not a directory: the tree of its parent holds it.
        let parent = path.rfind('/').map_or("", |end| &path[..end]);
        files = hub::list_files(&repo, HUB_REVISION, parent).await;
    }
    let selected = selector(path)?;
    let mut objects: Vec<RemoteObject> = files?
        .into_iter()
        .filter(|file| selected(&file.path))
        .map(|file| RemoteObject {
            root: input.root.clone(),
            key: format!("{repo}/{}", file.path),
            // The git object id: it changes when the file does, whatever `main` points at.
            version: FileVersion {
                size: file.size,
                etag: None,
                version: file.oid,
            },
        })
        .collect();
    objects.sort_by(|left, right| left.key.cmp(&right.key));
    Ok(objects)
}

fn remote_error(root: &str, key: &str, error: object_store::Error) -> PipelineError {
    let url = format!("{root}/{key}");
    let error = super::errors::explain(&url, error, false);
    match super::errors::find::<super::store::RemoteError>(&error) {
        Some(remote) => PipelineError::from_remote(remote),
        None => PipelineError::Remote {
            url,
            message: super::errors::summary(&error),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_list_from_their_literal_prefix() {
        assert_eq!(literal_prefix("data/train-*.parquet"), "data/train-");
        assert_eq!(literal_prefix("a/b/**/x.jsonl"), "a/b/");
        assert_eq!(literal_prefix("plain/key"), "plain/key");
        assert_eq!(literal_directory("data/train-*.parquet"), "data");
        assert_eq!(literal_directory("*.txt"), "");
        assert_eq!(literal_directory("a/b/**/x.jsonl"), "a/b");
    }

    #[test]
    fn selectors_take_the_key_its_directory_or_its_glob() {
        let directory = selector("data").unwrap();
        assert!(directory("data/a.txt"));
        assert!(directory("data/deep/b.txt"));
        assert!(!directory("database.txt"));
        assert!(!directory("data/.hidden.txt"));
        let glob = selector("data/*.txt").unwrap();
        assert!(glob("data/a.txt"));
        assert!(!glob("data/deep/b.txt"), "`*` stays within one level");
        let deep = selector("data/**/*.txt").unwrap();
        assert!(deep("data/deep/b.txt"));
        let everything = selector("").unwrap();
        assert!(everything("a/b.txt"));
    }
}
