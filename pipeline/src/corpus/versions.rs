//! Which version of a remote object a cursor's offsets count in.
//!
//! Every position into a remote object records the object's version (size and ETag or version
//! id) as the stream read it ([`ReadVersions`]); a stream that resumes from a position whose
//! object is now listed at another version is refused with one line naming the object, or, with
//! `--on-changed-object restart-source`, reads that source again from its start. Row and token
//! offsets are never applied to other bytes than they were counted in.

use std::collections::HashMap;
use std::sync::Mutex;

use flightlm_shared::{FileVersion, SourcePosition, Split, StreamState};

use crate::corpus::Corpus;
use crate::error::{PipelineError, Result};
use crate::read::sources::CorpusFile;

/// What to do with a cursor whose position lies in an object that has changed since.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ChangedObjectPolicy {
    /// Refuse the cursor, naming the object.
    #[default]
    Refuse,
    /// Read the source of that position again from its start (same pass); other sources resume.
    RestartSource,
}

/// The version of each remote file a source stream opened, by pass and name, so the positions
/// of its blocks name the version their offsets count in (a watched prefix may list a newer one
/// while older blocks are still on their way).
#[derive(Default)]
pub struct ReadVersions(Mutex<HashMap<(u64, String), FileVersion>>);

impl ReadVersions {
    /// Records the version of `file` read in `pass`; entries of passes before the previous one
    /// are dropped.
    pub fn record(&self, pass: u64, file: &CorpusFile) {
        let Some(object) = &file.remote else { return };
        if let Ok(mut versions) = self.0.lock() {
            versions.retain(|(known_pass, _), _| *known_pass + 1 >= pass);
            versions.insert((pass, file.name()), object.version.clone());
        }
    }

    /// `position` with the version of the file it points into, when that file is remote.
    pub fn label(&self, mut position: SourcePosition) -> SourcePosition {
        if let (Some(file), Ok(versions)) = (&position.file, self.0.lock()) {
            position.file_version = versions.get(&(position.pass, file.clone())).cloned();
        }
        position
    }
}

/// Checks every position of `state` that names a remote object against the version its source
/// lists now; applies the policy to those that changed.
pub fn check_versions(corpus: &Corpus, split: Split, state: &mut StreamState) -> Result<()> {
    let sources = corpus.sources_for(split);
    for position in &mut state.sources {
        let (Some(name), Some(recorded)) = (&position.file, &position.file_version) else {
            continue;
        };
        let Some(source) = sources.iter().find(|source| source.name == position.source) else {
            continue;
        };
        let now = source
            .listed_file(name)?
            .and_then(|file| file.remote.map(|object| object.version));
        let Some(now) = now else { continue };
        if recorded.same_as(&now) {
            continue;
        }
        match corpus.on_changed_object {
            ChangedObjectPolicy::Refuse => {
                return Err(PipelineError::Cursor(format!(
                    "{name} has changed since the cursor was taken (then {recorded}; now \
                     {now}): its offsets would count in other bytes; to read source `{}` again \
                     from its start, serve with --on-changed-object restart-source",
                    position.source
                )));
            }
            ChangedObjectPolicy::RestartSource => {
                tracing::warn!(
                    "{name} has changed since the cursor was taken (then {recorded}; now {now}): \
                     source `{}` starts again (--on-changed-object restart-source)",
                    position.source
                );
                *position = SourcePosition {
                    pass: position.pass,
                    ..SourcePosition::start(&position.source)
                };
            }
        }
    }
    Ok(())
}
