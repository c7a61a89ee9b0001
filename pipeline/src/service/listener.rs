//! The listening side of the Flight service: binding, TLS, HTTP/2 windows and message limits,
//! the zstd IPC settings of every message sent, and the graceful shutdown that drains open
//! streams. What each call answers is [`crate::service::flight_server`].

use std::net::SocketAddr;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::ipc::writer::IpcWriteOptions;
use arrow::ipc::CompressionType;
use arrow_flight::encode::{DictionaryHandling, FlightDataEncoderBuilder};
use arrow_flight::flight_service_server::FlightServiceServer;
use flightlm_shared::client::MAX_MESSAGE_BYTES;
use futures::Future;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::ServerTlsConfig;

use crate::access::check_call;
use crate::observe::status::PipelineStatus;
use crate::service::flight_server::{Access, PipelineService};

/// IPC settings of every message the service sends: zstd-compressed bodies.
pub fn ipc_options() -> IpcWriteOptions {
    IpcWriteOptions::default()
        .try_with_compression(Some(CompressionType::ZSTD))
        .expect("arrow-ipc is built with zstd")
}

/// The encoder `do_get` turns a stream's record batches into Flight messages with; public so the
/// encoding stage can be benchmarked with the service's own settings.
pub fn flight_data_encoder(schema: SchemaRef) -> FlightDataEncoderBuilder {
    FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .with_options(ipc_options())
        // Each batch carries its own resume-state dictionary; hydrating it would repeat the
        // state string on every row.
        .with_dictionary_handling(DictionaryHandling::Resend)
}

/// Largest request (ticket, descriptor or action body) accepted.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// Serves `status.corpus` on `listener` until `shutdown` resolves (counting streams and actions
/// into `status`); then stops accepting calls, ends open streams after the batch each is sending,
/// and returns once they are closed.
pub async fn serve(
    status: Arc<PipelineStatus>,
    listener: TcpListener,
    access: Access,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let token = access.token.clone();
    let tls = access.tls.clone();
    let (start_draining, draining) = watch::channel(false);
    let server = FlightServiceServer::new(PipelineService::new(status, access, draining))
        .max_decoding_message_size(MAX_REQUEST_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let service = InterceptedService::new(server, move |request| check_call(&token, request));
    let mut builder = tonic::transport::Server::builder();
    if let Some(identity) = tls {
        builder = builder.tls_config(ServerTlsConfig::new().identity(identity))?;
    }
    let shutdown = async move {
        shutdown.await;
        tracing::info!("shutting down: ending open streams");
        let _ = start_draining.send(true);
    };
    builder
        .tcp_nodelay(true)
        .initial_connection_window_size(Some(16 * 1024 * 1024))
        .initial_stream_window_size(Some(8 * 1024 * 1024))
        .add_service(service)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
}

/// Binds `address`; port 0 picks a free port (read it back from the listener).
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}
