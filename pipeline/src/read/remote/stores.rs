//! Builds the store underneath each remote root, from the environment the cloud tools read:
//! `s3://` (object_store's S3 client), `gs://` (GCS), `az://`/`abfs[s]://` (Azure Blob
//! Storage), `http(s)://` hosts and the HuggingFace hub (object_store's HTTP client).
//!
//! Every store is built with its own retries off and its connections on [`super::io_runtime`]:
//! retries happen in [`super::store::RemoteStore`], where they are counted.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
#[cfg(feature = "gcs-azure")]
use object_store::azure::MicrosoftAzureBuilder;
use object_store::client::SpawnedReqwestConnector;
#[cfg(feature = "gcs-azure")]
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::http::HttpBuilder;
use object_store::list::PaginatedListStore;
use object_store::{ClientOptions, ObjectStore, RetryConfig};

use super::hub;
use super::store::KeyMap;
use super::HUB_REVISION;

/// A store, its paged lister (buckets and containers only) and where its keys live in it.
pub struct BuiltStore {
    pub store: Arc<dyn ObjectStore>,
    pub lister: Option<Arc<dyn PaginatedListStore>>,
    pub keys: KeyMap,
}

/// Retries happen in [`super::store::RemoteStore`], where they are counted.
fn no_retries() -> RetryConfig {
    RetryConfig {
        max_retries: 0,
        ..RetryConfig::default()
    }
}

fn client_options(allow_http: bool) -> ClientOptions {
    ClientOptions::new()
        .with_allow_http(allow_http)
        .with_connect_timeout(Duration::from_secs(10))
        .with_timeout(Duration::from_secs(60))
}

fn connector() -> SpawnedReqwestConnector {
    SpawnedReqwestConnector::new(super::io_runtime().handle().clone())
}

fn bucket<T: ObjectStore + PaginatedListStore>(store: T) -> BuiltStore {
    let store = Arc::new(store);
    BuiltStore {
        store: store.clone(),
        lister: Some(store),
        keys: KeyMap::Same,
    }
}

pub fn build(root: &str) -> object_store::Result<BuiltStore> {
    let (scheme, authority) = root.split_once("://").unwrap_or((root, ""));
    match scheme {
        // AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION,
        // AWS_ENDPOINT_URL, AWS_ALLOW_HTTP, as the AWS tools read them.
        "s3" => AmazonS3Builder::from_env()
            .with_bucket_name(authority)
            .with_retry(no_retries())
            .with_http_connector(connector())
            .build()
            .map(bucket),
        // GOOGLE_APPLICATION_CREDENTIALS, GOOGLE_SERVICE_ACCOUNT(_KEY), GOOGLE_ALLOW_HTTP; an
        // emulator through the service account's `gcs_base_url` and `disable_oauth`.
        #[cfg(feature = "gcs-azure")]
        "gs" => GoogleCloudStorageBuilder::from_env()
            .with_bucket_name(authority)
            .with_retry(no_retries())
            .with_http_connector(connector())
            .build()
            .map(bucket),
        // AZURE_STORAGE_ACCOUNT_NAME, AZURE_STORAGE_ACCOUNT_KEY (or a SAS or bearer token),
        // AZURE_STORAGE_USE_EMULATOR with AZURITE_BLOB_STORAGE_URL for Azurite.
        #[cfg(feature = "gcs-azure")]
        "az" | "abfs" | "abfss" => MicrosoftAzureBuilder::from_env()
            .with_container_name(authority)
            .with_retry(no_retries())
            .with_http_connector(connector())
            .build()
            .map(bucket),
        #[cfg(not(feature = "gcs-azure"))]
        "gs" | "az" | "abfs" | "abfss" => Err(object_store::Error::NotSupported {
            source: "this build has no GCS or Azure client (feature `gcs-azure`)".into(),
        }),
        _ => {
            let (url, keys, headers) = if root == "hf://datasets" {
                let revision = HUB_REVISION.to_string();
                let keys = KeyMap::HubResolve { revision };
                (hub::endpoint(), keys, hub::headers())
            } else {
                (root.to_string(), KeyMap::Same, Default::default())
            };
            let options = client_options(url.starts_with("http://")).with_default_headers(headers);
            let store = HttpBuilder::new()
                .with_url(url)
                .with_client_options(options)
                .with_retry(no_retries())
                .with_http_connector(connector())
                .build()?;
            Ok(BuiltStore {
                store: Arc::new(store),
                lister: None,
                keys,
            })
        }
    }
}
