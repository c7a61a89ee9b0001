//! The Arrow Flight service: `do_get` streams token blocks for a [`StreamRequest`] ticket.
//!
//! Batches are Arrow IPC with zstd body compression. `get_flight_info` and `get_schema` describe a
//! stream before it is opened (a `FlightDescriptor` whose `cmd` is the same JSON request: schema,
//! contract version, tokenizer, and an endpoint whose ticket opens it), the `health` action
//! answers liveness probes and `stats` reports every stream's counters. Every stream is
//! independent: see [`crate::service::block_stream`]; the server around the service is
//! [`crate::service::listener`].

use std::pin::Pin;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaAsIpc, SchemaResult, Ticket,
};
use flightlm_shared::schema::stream_schema;
use flightlm_shared::{Split, StreamRequest, CONTRACT_VERSION};
use futures::stream;
use futures::StreamExt;
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Identity;
use tonic::{Request, Response, Status, Streaming};

use crate::access::{AuthToken, AUTHORIZATION};
use crate::corpus::control::{add_source, set_weight, stream_weights};
use crate::corpus::Corpus;
use crate::error::PipelineError;
use crate::observe::status::PipelineStatus;
use crate::production::chunk_hub::HubRegistry;
use crate::production::stats::StreamRegistry;
use crate::production::weight_schedule::WeightSchedules;
use crate::service::block_stream::open_stream;
use crate::service::listener::{flight_data_encoder, ipc_options};

pub const HEALTH_ACTION: &str = "health";
pub const STATS_ACTION: &str = "stats";
pub const SOURCES_ACTION: &str = "sources";
pub const ADD_SOURCE_ACTION: &str = "add-source";
pub const SET_WEIGHT_ACTION: &str = "set-weight";
pub const TOKENIZER_ACTION: &str = "tokenizer";
pub const STREAM_WEIGHTS_ACTION: &str = "stream-weights";

type FlightStream<T> = Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send + 'static>>;

pub struct PipelineService {
    corpus: Arc<Corpus>,
    streams: Arc<StreamRegistry>,
    /// What the metrics listener shows; control actions are counted into it.
    status: Arc<PipelineStatus>,
    /// Productions that the shards of one job share.
    hubs: HubRegistry,
    /// The weight changes of the runs whose streams are open (`stream-weights`).
    schedules: WeightSchedules,
    access: Access,
    /// Becomes true when the server starts shutting down: open streams end after the batch in
    /// flight, with UNAVAILABLE so their readers resume elsewhere or later.
    draining: watch::Receiver<bool>,
}

/// Who may call the service and how much of it one caller may hold.
#[derive(Clone)]
pub struct Access {
    pub token: Option<AuthToken>,
    /// Streams open at once; more are refused with RESOURCE_EXHAUSTED.
    pub max_streams: usize,
    /// Certificate and key to serve TLS with (`--tls-cert`, `--tls-key`).
    pub tls: Option<Identity>,
}

impl Default for Access {
    fn default() -> Self {
        Access {
            token: None,
            max_streams: 64,
            tls: None,
        }
    }
}

impl PipelineService {
    pub fn new(
        status: Arc<PipelineStatus>,
        access: Access,
        draining: watch::Receiver<bool>,
    ) -> Self {
        PipelineService {
            corpus: status.corpus.clone(),
            streams: status.streams.clone(),
            status,
            hubs: HubRegistry::default(),
            schedules: WeightSchedules::default(),
            access,
            draining,
        }
    }

    fn parse_request(&self, bytes: &[u8]) -> Result<StreamRequest, Status> {
        let request = StreamRequest::from_ticket_bytes(bytes)
            .map_err(|error| Status::invalid_argument(error.to_string()))?;
        if request.split == Split::Valid && !self.corpus.serves_valid() {
            return Err(Status::failed_precondition(
                "this pipeline serves no valid split (it was started with --valid-fraction 0 \
                 and no --valid-input)",
            ));
        }
        Ok(request)
    }
}

fn shutting_down() -> Status {
    Status::unavailable("the pipeline is shutting down; resume from the last cursor")
}

/// `batches` until the server starts draining, then one UNAVAILABLE error in place of the rest.
/// Batches already queued are not sent: the reader's cursor covers them.
fn until_draining<S>(
    batches: S,
    draining: watch::Receiver<bool>,
) -> impl futures::Stream<Item = Result<RecordBatch, FlightError>> + Send
where
    S: futures::Stream<Item = Result<RecordBatch, FlightError>> + Send + Unpin,
{
    stream::unfold(Some((batches, draining)), |state| async move {
        let (mut batches, mut draining) = state?;
        let next = tokio::select! {
            // Draining first: a producer that is always ahead would otherwise never be cut.
            biased;
            _ = draining.wait_for(|draining| *draining) => None,
            batch = batches.next() => Some(batch),
        };
        match next {
            None => Some((Err(FlightError::Tonic(Box::new(shutting_down()))), None)),
            Some(batch) => batch.map(|batch| (batch, Some((batches, draining)))),
        }
    })
}

#[tonic::async_trait]
impl FlightService for PipelineService {
    type HandshakeStream = FlightStream<HandshakeResponse>;
    type ListFlightsStream = FlightStream<FlightInfo>;
    type DoGetStream = FlightStream<FlightData>;
    type DoPutStream = FlightStream<PutResult>;
    type DoExchangeStream = FlightStream<FlightData>;
    type DoActionStream = FlightStream<arrow_flight::Result>;
    type ListActionsStream = FlightStream<ActionType>;

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        let client = request.remote_addr();
        let stream_request = self.parse_request(&request.into_inner().ticket)?;
        if *self.draining.borrow() {
            return Err(shutting_down());
        }
        if self.streams.active_count() >= self.access.max_streams {
            return Err(Status::resource_exhausted(format!(
                "this pipeline already serves {} streams (--max-streams)",
                self.access.max_streams
            )));
        }
        tracing::info!(?stream_request, "stream opened");
        let schema = stream_schema(&stream_request, &self.corpus.tokenizer_info);
        let stream = open_stream(&self.corpus, &self.hubs, &self.schedules, &stream_request)
            .map_err(|error| match error {
                PipelineError::Cursor(_) | PipelineError::Remote { .. } => {
                    Status::failed_precondition(error.to_string())
                }
                PipelineError::RemoteUnavailable { .. } => Status::unavailable(error.to_string()),
                PipelineError::Request(_) => Status::invalid_argument(error.to_string()),
                other => Status::internal(other.to_string()),
            })?;
        let stats = self
            .streams
            .register(&stream_request, stream.reading(), client);
        let receiver = stream.start(stats);
        let batches = ReceiverStream::new(receiver)
            .map(|batch| batch.map_err(|error| FlightError::ExternalError(Box::new(error))));
        let batches = until_draining(batches, self.draining.clone());
        let flight_data = flight_data_encoder(schema).build(batches).map(|data| {
            data.map_err(|error| match error {
                FlightError::Tonic(status) => *status,
                // A remote store that stayed down: reconnecting and resuming later will help.
                FlightError::ExternalError(inner)
                    if matches!(
                        inner.downcast_ref::<PipelineError>(),
                        Some(PipelineError::RemoteUnavailable { .. })
                    ) =>
                {
                    Status::unavailable(inner.to_string())
                }
                // The corpus itself failed (a bad record under `--on-bad-record error`, a file
                // gone or changed): a code that tells clients reconnecting will not help.
                FlightError::ExternalError(inner) => Status::failed_precondition(inner.to_string()),
                other => Status::internal(other.to_string()),
            })
        });
        Ok(Response::new(Box::pin(flight_data)))
    }

    async fn get_schema(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        let stream_request = self.parse_request(&request.into_inner().cmd)?;
        let schema = stream_schema(&stream_request, &self.corpus.tokenizer_info);
        let options = ipc_options();
        let result = SchemaResult::try_from(SchemaAsIpc::new(&schema, &options))
            .map_err(|error| Status::internal(error.to_string()))?;
        Ok(Response::new(result))
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        let action = request.into_inner();
        let control_error = |error: PipelineError| Status::invalid_argument(error.to_string());
        let body = match action.r#type.as_str() {
            HEALTH_ACTION => serde_json::json!({
                "status": "ok",
                "tokenizer": self.corpus.tokenizer_info,
                "files": self.corpus.file_count(),
            }),
            STATS_ACTION => {
                let mut stats = self.streams.snapshot();
                stats["files"] = self.corpus.file_count().into();
                stats["tokenizer"] = serde_json::json!(self.corpus.tokenizer_info);
                stats["sources"] = self.corpus.describe_sources();
                if let Some(remote) = crate::read::remote::stats() {
                    stats["remote"] = remote;
                }
                stats
            }
            SOURCES_ACTION => self.corpus.describe_sources(),
            TOKENIZER_ACTION => {
                // The file itself, so a trainer can ship it with the models it exports.
                let bytes = std::fs::read(&self.corpus.tokenizer_path)
                    .map_err(|error| Status::internal(error.to_string()))?;
                let result = arrow_flight::Result { body: bytes.into() };
                return Ok(Response::new(Box::pin(stream::iter([Ok(result)]))));
            }
            ADD_SOURCE_ACTION => {
                let added = add_source(&self.corpus, &action.body);
                self.status.count_action(ADD_SOURCE_ACTION, added.is_ok());
                added.map_err(control_error)?;
                self.corpus.describe_sources()
            }
            SET_WEIGHT_ACTION => {
                let set = set_weight(&self.corpus, &action.body);
                self.status.count_action(SET_WEIGHT_ACTION, set.is_ok());
                set.map_err(control_error)?;
                self.corpus.describe_sources()
            }
            STREAM_WEIGHTS_ACTION => {
                let updated = stream_weights(&self.corpus, &self.schedules, &action.body);
                self.status
                    .count_action(STREAM_WEIGHTS_ACTION, updated.is_ok());
                if !updated.map_err(control_error)? {
                    // A restarted pipeline, another replica: the trainer opens its stream again
                    // with the change in its request.
                    return Err(Status::unavailable("no stream of this run is open here"));
                }
                serde_json::json!({"status": "ok"})
            }
            other => {
                return Err(Status::invalid_argument(format!(
                    "unknown action `{other}` (known: {HEALTH_ACTION}, {STATS_ACTION}, \
                     {SOURCES_ACTION}, {ADD_SOURCE_ACTION}, {SET_WEIGHT_ACTION}, \
                     {STREAM_WEIGHTS_ACTION}, {TOKENIZER_ACTION})"
                )))
            }
        };
        let result = arrow_flight::Result {
            body: body.to_string().into(),
        };
        Ok(Response::new(Box::pin(stream::iter([Ok(result)]))))
    }

    async fn list_actions(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        let actions = [
            ActionType {
                r#type: HEALTH_ACTION.into(),
                description: "liveness probe; answers JSON with the tokenizer description".into(),
            },
            ActionType {
                r#type: STATS_ACTION.into(),
                description:
                    "JSON counters of every stream and source: blocks, tokens, tokens/s, queue \
                     depth, skipped rows, bad records"
                        .into(),
            },
            ActionType {
                r#type: SOURCES_ACTION.into(),
                description: "the sources served, with their weights and file counts".into(),
            },
            ActionType {
                r#type: TOKENIZER_ACTION.into(),
                description: "the tokenizer.json the blocks were encoded with".into(),
            },
            ActionType {
                r#type: ADD_SOURCE_ACTION.into(),
                description:
                    r#"add a source to running streams: {"name":…,"inputs":[…],"weight":…}"#.into(),
            },
            ActionType {
                r#type: SET_WEIGHT_ACTION.into(),
                description: r#"change a source's mixture weight: {"source":…,"weight":…}"#.into(),
            },
        ];
        Ok(Response::new(Box::pin(stream::iter(actions.map(Ok)))))
    }

    /// Every call carries the token itself (checked before any method runs), so the handshake
    /// only hands it back as a bearer token, which is what Flight clients such as pyarrow's
    /// `authenticate_basic_token` expect.
    async fn handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        let mut response: Response<Self::HandshakeStream> =
            Response::new(Box::pin(stream::iter([Ok(HandshakeResponse::default())])));
        if let Some(token) = &self.access.token {
            let bearer = format!("Bearer {}", token.as_str())
                .parse()
                .map_err(|_| Status::internal("the token is not a valid header value"))?;
            response.metadata_mut().insert(AUTHORIZATION, bearer);
        }
        Ok(response)
    }

    async fn list_flights(
        &self,
        _request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        Ok(Response::new(Box::pin(stream::empty())))
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let descriptor = request.into_inner();
        let stream_request = self.parse_request(&descriptor.cmd)?;
        let schema = stream_schema(&stream_request, &self.corpus.tokenizer_info);
        let description = serde_json::json!({
            "contract_version": CONTRACT_VERSION,
            "fingerprint": self.corpus.fingerprint(stream_request.split, stream_request.seq_len),
            "sources": self.corpus.describe_sources(),
            "tokenizer": self.corpus.tokenizer_info,
            "request": stream_request,
        });
        // One endpoint on this server; its ticket is the validated request itself.
        let endpoint =
            FlightEndpoint::new().with_ticket(Ticket::new(stream_request.to_ticket_bytes()));
        let info = FlightInfo::new()
            .try_with_schema(&schema)
            .map_err(|error| Status::internal(error.to_string()))?
            .with_descriptor(descriptor)
            .with_endpoint(endpoint)
            .with_ordered(true)
            .with_app_metadata(description.to_string().into_bytes());
        Ok(Response::new(info))
    }

    async fn poll_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented(
            "streams start immediately; nothing to poll",
        ))
    }

    async fn do_put(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        Err(Status::unimplemented(
            "the pipeline does not accept uploads",
        ))
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented("the pipeline does not exchange data"))
    }
}
