//! [`RemoteStore`] as DataFusion and the Parquet reader use it: an `ObjectStore` whose reads go
//! through the retrying, version-tied [`RemoteStore::fetch`] one range at a time, and whose
//! writes are refused.

use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;
use flightlm_shared::FileVersion;
use futures::stream::{self, BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    Attributes, CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

use super::{range_bytes, version_of, RemoteStore};

/// The ranges of `range`, [`range_bytes`] at most each, fetched one after another.
fn chunks(
    store: RemoteStore,
    key: Path,
    version: FileVersion,
    range: Range<u64>,
) -> BoxStream<'static, object_store::Result<Bytes>> {
    let step = range_bytes();
    let starts = (range.start..range.end).step_by(step as usize);
    stream::iter(starts)
        .then(move |start| {
            let store = store.clone();
            let key = key.clone();
            let version = version.clone();
            let end = (start + step).min(range.end);
            async move { store.fetch(&key, &version, start..end).await }
        })
        .boxed()
}

#[async_trait]
impl ObjectStore for RemoteStore {
    async fn put_opts(
        &self,
        _: &Path,
        _: PutPayload,
        _: PutOptions,
    ) -> object_store::Result<PutResult> {
        Err(self.refuse("put"))
    }

    async fn put_multipart_opts(
        &self,
        _: &Path,
        _: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        Err(self.refuse("put"))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let meta = self.meta_of(location).await?;
        let range = match &options.range {
            Some(range) => {
                range
                    .as_range(meta.size)
                    .map_err(|error| object_store::Error::Generic {
                        store: "remote",
                        source: Box::new(error),
                    })?
            }
            None => 0..meta.size,
        };
        let payload = if options.head {
            stream::empty().boxed()
        } else {
            chunks(
                self.clone(),
                location.clone(),
                version_of(&meta),
                range.clone(),
            )
        };
        Ok(GetResult {
            payload: GetResultPayload::Stream(payload),
            meta,
            range,
            attributes: Attributes::default(),
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let error = self.refuse("delete").to_string();
        locations
            .map(move |_| {
                Err(object_store::Error::NotSupported {
                    source: error.clone().into(),
                })
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.store.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.store.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, _: &Path, _: &Path, _: CopyOptions) -> object_store::Result<()> {
        Err(self.refuse("copy"))
    }
}
