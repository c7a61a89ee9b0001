//! Watching a running pipeline: `--metrics-listen` serves Prometheus' `/metrics`, a live status
//! page at `/` and the JSON it polls at `/status.json`, all on an HTTP/1.1 listener of their own
//! and, when the pipeline has a token, only to callers that send it.
//!
//! [`status`] holds what every view reads, [`prometheus`] encodes it for Prometheus, and
//! `status_page.html` (inline CSS, JS and SVG, nothing fetched from elsewhere) draws it. The page
//! never shows a secret: not the token, and not the sources' inputs (a signed URL is a secret).

pub mod prometheus;
pub mod status;

use std::net::SocketAddr;
use std::sync::Arc;

use flightlm_shared::metrics_http::{self, Handler, Request, Response, PROMETHEUS_TEXT};
use prometheus_client::registry::Registry;

use crate::access::AuthToken;
use status::PipelineStatus;

const PAGE: &str = include_str!("status_page.html");
const REALM: &str = "flightlm pipeline";

/// Serves the metrics, the page and its JSON on `address`, and starts sampling the token
/// counts; returns the address bound.
pub fn serve_observer(
    address: SocketAddr,
    status: Arc<PipelineStatus>,
    token: Option<AuthToken>,
) -> std::io::Result<SocketAddr> {
    status.start_sampling();
    let registry = prometheus::registry(status.clone());
    let observer = Observer {
        status,
        registry,
        token,
    };
    metrics_http::serve(address, Arc::new(observer))
}

struct Observer {
    status: Arc<PipelineStatus>,
    registry: Registry,
    token: Option<AuthToken>,
}

impl Handler for Observer {
    fn handle(&self, request: &Request) -> Response {
        if let Some(token) = &self.token {
            let admitted = request
                .header("authorization")
                .is_some_and(|value| token.admits_header(value));
            if !admitted {
                return Response::unauthorized(REALM);
            }
        }
        match request.path.as_str() {
            "/metrics" => Response::ok(PROMETHEUS_TEXT, prometheus::encode(&self.registry)),
            "/status.json" => match serde_json::to_vec(&self.status.summary()) {
                Ok(body) => Response::ok("application/json", body),
                Err(error) => Response::text(500, &error.to_string()),
            },
            "/" | "/index.html" => {
                let mut response = Response::ok("text/html; charset=utf-8", PAGE);
                // Everything the page needs is inline; it may fetch only from this listener.
                response.headers.push((
                    "Content-Security-Policy",
                    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                     connect-src 'self'; img-src 'self' data:"
                        .into(),
                ));
                response
            }
            _ => Response::not_found(),
        }
    }
}
