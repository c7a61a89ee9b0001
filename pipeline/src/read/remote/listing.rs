//! Lists a remote input into manifest entries, the way local inputs are: a named object, every
//! corpus object under a prefix (hidden names skipped), or the objects a glob matches (`*` stays
//! within one `/` level, `**` crosses levels). HTTP inputs are single files; `hf://` inputs are
//! listed with the hub's tree API.

use object_store::path::Path;

use super::{hub, store_for, RemoteInput, RemoteObject, HUB_REVISION};
use crate::error::{PipelineError, Result};
use crate::read::sources::CorpusFile;

/// Adds the corpus files `input` names to `manifest`; an input that names none is an error.
pub async fn resolve(input: &str, manifest: &mut Vec<CorpusFile>) -> Result<()> {
    let parsed = RemoteInput::parse(input)?;
    let objects = if parsed.root == "hf://datasets" {
        list_hub(&parsed).await?
    } else if parsed.root.starts_with("s3://") {
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

async fn list_bucket(input: &RemoteInput) -> Result<Vec<RemoteObject>> {
    let store = store_for(&input.root)?;
    // A listing's prefix is a directory (`key/`): a named object is asked for first.
    if !input.key.is_empty() && !is_glob(&input.key) {
        match store.pinned_meta(&Path::from(input.key.as_str())).await {
            Ok(meta) => {
                return Ok(vec![RemoteObject {
                    root: input.root.clone(),
                    key: input.key.clone(),
                    size: meta.size,
                }])
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(error) => return Err(remote_error(&input.root, &input.key, error)),
        }
    }
    let directory = if is_glob(&input.key) {
        literal_directory(&input.key).to_string()
    } else {
        input.key.clone()
    };
    let prefix = (!directory.is_empty()).then(|| Path::from(directory.as_str()));
    let listed = store
        .list_all(prefix.as_ref())
        .await
        .map_err(|error| remote_error(&input.root, &input.key, error))?;
    let selected = selector(&input.key)?;
    let mut objects: Vec<RemoteObject> = listed
        .into_iter()
        .filter(|meta| selected(meta.location.as_ref()))
        .map(|meta| RemoteObject {
            root: input.root.clone(),
            key: meta.location.to_string(),
            size: meta.size,
        })
        .collect();
    objects.sort_by(|left, right| left.key.cmp(&right.key));
    Ok(objects)
}

async fn head_object(input: &RemoteInput) -> Result<RemoteObject> {
    let store = store_for(&input.root)?;
    let key = Path::from(input.key.as_str());
    let meta = store
        .pinned_meta(&key)
        .await
        .map_err(|error| remote_error(&input.root, &input.key, error))?;
    Ok(RemoteObject {
        root: input.root.clone(),
        key: input.key.clone(),
        size: meta.size,
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
            size: file.size,
        })
        .collect();
    objects.sort_by(|left, right| left.key.cmp(&right.key));
    Ok(objects)
}

fn remote_error(root: &str, key: &str, error: object_store::Error) -> PipelineError {
    let url = format!("{root}/{key}");
    let error = super::errors::explain(&url, error, false);
    let message = match super::errors::find::<super::store::RemoteError>(&error) {
        Some(remote) => remote.message.clone(),
        None => error.to_string(),
    };
    PipelineError::Remote { url, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_list_from_their_literal_directory() {
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
