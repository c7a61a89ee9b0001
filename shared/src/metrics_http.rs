//! A small HTTP/1.1 listener for what both processes show on `--metrics-listen`: Prometheus'
//! `/metrics` and, on the pipeline, a status page. Flight's server speaks HTTP/2 only, while
//! Prometheus, curl and browsers scrape over HTTP/1.1, so this is a listener of its own.
//!
//! One short-lived thread per connection, a bounded number at once; one request per connection
//! (`Connection: close`), GET and HEAD only, a bounded request head read under a timeout, so a
//! slow or hostile client cannot hold the listener.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Connections served at once; more are answered 503.
const MAX_CONNECTIONS: usize = 32;
/// Largest request head read.
const MAX_HEAD_BYTES: usize = 16 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The `Content-Type` of Prometheus' text format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A request as handlers see it.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: String,
    /// The path without its query.
    pub path: String,
    pub query: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// What a handler answers.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn ok(content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status: 200,
            content_type,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    pub fn text(status: u16, body: &str) -> Self {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            body: format!("{body}\n").into_bytes(),
        }
    }

    pub fn not_found() -> Self {
        Self::text(404, "not found")
    }

    /// 401, asking a browser for the token as the password of HTTP Basic authentication.
    pub fn unauthorized(realm: &str) -> Self {
        let mut response = Self::text(
            401,
            "send `authorization: Bearer <token>` (or the token as a Basic password)",
        );
        response
            .headers
            .push(("WWW-Authenticate", format!("Basic realm=\"{realm}\"")));
        response
    }
}

/// Answers the requests of a listener.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, request: &Request) -> Response;
}

/// Binds `address` (port 0 picks one) and serves `handler` on a thread of its own; returns the
/// address bound.
pub fn serve(address: SocketAddr, handler: Arc<dyn Handler>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(address)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || accept_loop(listener, handler))?;
    Ok(bound)
}

/// `--metrics-listen`: `HOST:PORT`, or a bare port on 127.0.0.1.
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse()
        .map_err(|_| format!("`{text}` is not HOST:PORT (e.g. 127.0.0.1:9100) or a port"))
}

fn accept_loop(listener: TcpListener, handler: Arc<dyn Handler>) {
    let open = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        if open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::SeqCst);
            let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
            let _ = write_response(&mut stream, &Response::text(503, "busy"), false);
            continue;
        }
        let (handler, finished) = (handler.clone(), open.clone());
        let spawned = std::thread::Builder::new()
            .name("metrics-http-conn".into())
            .spawn(move || {
                serve_connection(stream, handler.as_ref());
                finished.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            open.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn serve_connection(stream: TcpStream, handler: &dyn Handler) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_nodelay(true);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let response = match read_request(stream) {
        Ok(request) if request.method == "GET" || request.method == "HEAD" => {
            let head_only = request.method == "HEAD";
            let response = handler.handle(&request);
            let _ = write_response(&mut writer, &response, head_only);
            return;
        }
        Ok(_) => Response::text(405, "only GET and HEAD"),
        Err(message) => Response::text(400, &message),
    };
    let _ = write_response(&mut writer, &response, false);
}

fn read_request(stream: TcpStream) -> Result<Request, String> {
    let mut reader = BufReader::new(stream.take(MAX_HEAD_BYTES as u64));
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|error| format!("cannot read the request: {error}"))?;
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed request line".into());
    };
    if !version.starts_with("HTTP/1.") {
        return Err(format!("unsupported protocol {version}"));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut request = Request {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers: Vec::new(),
    };
    loop {
        let mut header = String::new();
        let read = reader
            .read_line(&mut header)
            .map_err(|error| format!("cannot read the request: {error}"))?;
        if read == 0 || !header.ends_with('\n') {
            return Err("the request head is cut short or too long".into());
        }
        let header = header.trim_end();
        if header.is_empty() {
            return Ok(request);
        }
        if let Some((name, value)) = header.split_once(':') {
            request
                .headers
                .push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
}

fn write_response(
    stream: &mut TcpStream,
    response: &Response,
    head_only: bool,
) -> std::io::Result<()> {
    let reason = match response.status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let mut head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n",
        response.status,
        response.content_type,
        response.body.len()
    );
    for (name, value) in &response.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if !head_only {
        stream.write_all(&response.body)?;
    }
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;

    impl Handler for Echo {
        fn handle(&self, request: &Request) -> Response {
            match request.path.as_str() {
                "/metrics" => Response::ok(PROMETHEUS_TEXT, format!("q={}", request.query)),
                _ => Response::not_found(),
            }
        }
    }

    fn get(address: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(address).expect("connects");
        stream.write_all(request.as_bytes()).expect("writes");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("reads");
        answer
    }

    #[test]
    fn answers_get_over_http_1_1_and_refuses_the_rest() {
        let address = serve("127.0.0.1:0".parse().unwrap(), Arc::new(Echo)).expect("binds");
        let answer = get(address, "GET /metrics?a=1 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.contains("Content-Length: 5\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nq=a=1"), "{answer}");
        assert!(get(address, "GET /x HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(get(address, "POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        assert!(get(address, "nonsense\r\n\r\n").starts_with("HTTP/1.1 400"));
        let head = get(address, "HEAD /metrics HTTP/1.1\r\n\r\n");
        assert!(head.ends_with("\r\n\r\n"), "no body after HEAD: {head}");
    }

    #[test]
    fn listen_addresses_default_to_loopback() {
        assert_eq!(parse_listen("9100").unwrap().to_string(), "127.0.0.1:9100");
        assert_eq!(parse_listen("0.0.0.0:9").unwrap().to_string(), "0.0.0.0:9");
        assert!(parse_listen("nowhere").is_err());
    }
}
