//! A source whose bucket is still being listed: streams start after the first page of keys and
//! the rest of the listing arrives while they read.
//!
//! Buckets list keys in byte order, the manifest's order, so each page only appends files after
//! the ones already known; a reader that reaches the end of the known files waits for the next
//! page instead of ending its pass, and a cursor naming a file not yet listed waits for it. Only
//! a source with a single listed input is listed this way: two inputs would interleave.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::corpus::Source;
use crate::error::{PipelineError, Result};
use crate::read::remote;
use crate::read::remote::listing::BucketListing;

/// Where a source's listing stands.
#[derive(Default)]
pub struct ListingProgress {
    state: Mutex<ListingState>,
    changed: Condvar,
}

#[derive(Default)]
struct ListingState {
    in_progress: bool,
    /// The listing failed after its retries: readers that need what is missing fail with it.
    failed: Option<PipelineError>,
}

/// How long a waiting reader sleeps before looking again (a page may land between its look and
/// its wait).
const RECHECK: Duration = Duration::from_millis(200);

impl ListingProgress {
    /// A listing that continues in the background.
    pub fn in_progress() -> Self {
        ListingProgress {
            state: Mutex::new(ListingState {
                in_progress: true,
                failed: None,
            }),
            changed: Condvar::new(),
        }
    }

    /// Waits until `found` finds something, the listing is over, or it failed. `found` is asked
    /// again after every page.
    pub fn wait_for<T>(&self, mut found: impl FnMut() -> Option<T>) -> Result<Option<T>> {
        loop {
            if let Some(value) = found() {
                return Ok(Some(value));
            }
            let state = self.state.lock().expect("listing state");
            if let Some(error) = &state.failed {
                return Err(error.shared_copy());
            }
            if !state.in_progress {
                drop(state);
                return Ok(found());
            }
            let _ = self.changed.wait_timeout(state, RECHECK);
        }
    }

    fn notify(&self) {
        self.changed.notify_all();
    }

    fn finish(&self, result: Result<()>) {
        let mut state = self.state.lock().expect("listing state");
        state.in_progress = false;
        state.failed = result.err();
        self.changed.notify_all();
    }
}

/// Lists the rest of `listing` into `source` on a thread of its own.
pub fn continue_listing(source: Arc<Source>, mut listing: BucketListing) {
    std::thread::Builder::new()
        .name(format!("list-{}", source.name))
        .spawn(move || {
            let result = remote::block_on(async {
                while let Some(files) = listing.next_files().await? {
                    source.add_files(files);
                    source.listing.notify();
                }
                Ok::<(), PipelineError>(())
            });
            if let Err(error) = &result {
                tracing::warn!("listing {}: {error}", listing.input().url());
            }
            source.listing.finish(result);
        })
        .expect("spawning a listing thread");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_wait_for_the_next_page_and_end_with_the_listing() {
        let progress = Arc::new(ListingProgress::in_progress());
        let listed = Arc::new(Mutex::new(None));
        let lister = {
            let (progress, listed) = (progress.clone(), listed.clone());
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                *listed.lock().unwrap() = Some(7);
                progress.notify();
                std::thread::sleep(Duration::from_millis(50));
                progress.finish(Ok(()));
            })
        };
        let found = progress.wait_for(|| *listed.lock().unwrap()).unwrap();
        assert_eq!(found, Some(7), "a file of a later page");
        let after = progress.wait_for(|| None::<u32>).unwrap();
        assert_eq!(after, None, "past the last page: the end of the source");
        lister.join().unwrap();

        let failed = ListingProgress::in_progress();
        failed.finish(Err(PipelineError::RemoteUnavailable {
            url: "s3://corpus/shards".into(),
            message: "still failing".into(),
        }));
        let error = failed.wait_for(|| None::<u32>).unwrap_err();
        assert!(matches!(error, PipelineError::RemoteUnavailable { .. }));
    }
}
