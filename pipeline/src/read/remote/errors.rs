//! Which remote failures are worth retrying, and how a failure reads to a user.
//!
//! Transient: no connection, a connection reset or timeout, HTTP 5xx, 408 and 429. Permanent:
//! every other HTTP status (no such bucket or key, 403, 401) and a changed object. The message of
//! a permanent failure names the URL and the HTTP status (and the S3 error code when there is
//! one), never the request's headers, and URLs in messages lose their userinfo and query
//! ([`super::redact`]), so credentials cannot leak into logs, errors or `stats`.

use std::error::Error as StdError;

use object_store::client::{HttpError, HttpErrorKind};

use super::store::RemoteError;

/// Whether `error` may go away if the request is repeated.
pub fn is_transient(error: &object_store::Error) -> bool {
    match error {
        object_store::Error::NotFound { .. }
        | object_store::Error::Precondition { .. }
        | object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. }
        | object_store::Error::NotSupported { .. }
        | object_store::Error::InvalidPath { .. } => false,
        other => {
            if let Some(status) = http_status(other) {
                return status >= 500 || matches!(status, 408 | 429);
            }
            if let Some(http) = find::<HttpError>(other) {
                return !matches!(http.kind(), HttpErrorKind::Unknown);
            }
            // Errors of a body read (a reset connection) surface as I/O errors.
            find::<std::io::Error>(other).is_some()
        }
    }
}

/// What went wrong, in a few words: the HTTP status (and S3 error code), or the innermost cause,
/// with no URL secrets.
pub fn summary(error: &object_store::Error) -> String {
    if let Some(remote) = find::<RemoteError>(error) {
        return remote.message.clone();
    }
    let text = error.to_string();
    let message = match status_text(&text) {
        Some(status) => match s3_error_code(&text) {
            Some(code) => format!("HTTP {status} ({code})"),
            None => format!("HTTP {status}"),
        },
        None => innermost(error),
    };
    super::redact::redact_urls(&message)
}

/// `error` as a one-line message naming `url`; `gave_up` marks a transient failure that outlasted
/// the retries (the store is unavailable, not the object bad).
pub fn explain(url: &str, error: object_store::Error, gave_up: bool) -> object_store::Error {
    if find::<RemoteError>(&error).is_some() {
        return error;
    }
    let message = summary(&error);
    let message = if matches!(error, object_store::Error::Precondition { .. }) {
        format!("the object changed while it was read ({message})")
    } else {
        message
    };
    let message = if gave_up {
        format!(
            "still failing after retrying for {} s (--remote-retry-s): {message}",
            super::retry_for().as_secs()
        )
    } else {
        message
    };
    let source = Box::new(RemoteError {
        url: super::redact::redact_urls(url),
        message,
        unavailable: gave_up,
    });
    match error {
        object_store::Error::NotFound { path, .. } => {
            object_store::Error::NotFound { path, source }
        }
        object_store::Error::PermissionDenied { path, .. } => {
            object_store::Error::PermissionDenied { path, source }
        }
        object_store::Error::Unauthenticated { path, .. } => {
            object_store::Error::Unauthenticated { path, source }
        }
        _ => object_store::Error::Generic {
            store: "remote",
            source,
        },
    }
}

/// object_store keeps its retry error private; its message carries the status:
/// `... Server returned non-2xx status code: 404 Not Found: <body>`.
const STATUS_MARK: &str = "status code: ";

/// The status of a failed HTTP request, e.g. `404 Not Found`.
fn status_text(text: &str) -> Option<&str> {
    let start = text.find(STATUS_MARK)? + STATUS_MARK.len();
    let rest = &text[start..];
    let end = rest.find(':').unwrap_or(rest.len());
    Some(rest[..end].trim())
}

fn http_status(error: &object_store::Error) -> Option<u16> {
    status_text(&error.to_string())?.get(..3)?.parse().ok()
}

/// `<Code>NoSuchBucket</Code>` of an S3 error body.
fn s3_error_code(body: &str) -> Option<String> {
    let start = body.find("<Code>")? + "<Code>".len();
    let end = body[start..].find("</Code>")? + start;
    Some(body[start..end].to_string())
}

/// The first error of type `T` in `error`'s chain.
pub fn find<'a, T: StdError + 'static>(error: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut current: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(error) = current {
        if let Some(found) = error.downcast_ref::<T>() {
            return Some(found);
        }
        current = error.source();
    }
    None
}

fn innermost(error: &(dyn StdError + 'static)) -> String {
    let mut current = error;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_error_codes_are_read_from_the_body() {
        let body =
            "<?xml version=\"1.0\"?><Error><Code>NoSuchBucket</Code><Message>x</Message></Error>";
        assert_eq!(s3_error_code(body).as_deref(), Some("NoSuchBucket"));
        assert_eq!(s3_error_code("not xml"), None);
    }

    #[test]
    fn statuses_are_read_from_the_message() {
        let text = "Error performing GET http://127.0.0.1:9/b/k in 2ms - Server returned non-2xx status code: 503 Service Unavailable: <Error><Code>SlowDown</Code></Error>";
        assert_eq!(status_text(text), Some("503 Service Unavailable"));
        let error = object_store::Error::Generic {
            store: "S3",
            source: text.into(),
        };
        assert!(is_transient(&error));
        let forbidden = object_store::Error::Generic {
            store: "S3",
            source: text
                .replace("503 Service Unavailable", "400 Bad Request")
                .into(),
        };
        assert!(!is_transient(&forbidden));
        let explained = explain("s3://b/k", forbidden, false).to_string();
        assert!(
            explained.ends_with("s3://b/k: HTTP 400 Bad Request (SlowDown)"),
            "{explained}"
        );
    }

    #[test]
    fn missing_objects_are_permanent_and_name_the_url() {
        let error = object_store::Error::NotFound {
            path: "key".into(),
            source: "404".into(),
        };
        assert!(!is_transient(&error));
        let explained = explain("s3://bucket/key", error, false).to_string();
        assert!(explained.contains("s3://bucket/key"), "{explained}");
    }
}
