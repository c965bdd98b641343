//! Checks on the request head, before routing and before any byte of the body is read: the
//! `Host` header (RFC 9112 §3.2) and a declared `Content-Length` over `max_body_bytes`. Both
//! are answered here with the OpenAI envelope; everything else goes on to the router, with its
//! body under a deadline (`deadline`), where `extract::RawBody` reads the body (and refuses a
//! chunked one once it passes the limit).
//!
//! Why here and not in the body extractor: hyper sends `100 Continue` when the body is first
//! polled, and axum's limit is checked while reading, so a request with `Expect: 100-continue`
//! and a 100 GB length was invited to send and read for 64 MiB before its 413, and a 64 MiB + 1
//! length with no body hung. This layer answers from the head alone.

use super::budget::{self, BodyBudget};
use super::deadline::Deadline;
use crate::error::GatewayError;
use crate::metrics::RejectReason;
use crate::state::AppState;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Version};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::Body as _;
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::Duration;

/// After answering 413 to an HTTP/1 client that is already sending its body, the gateway reads
/// and discards the body for at most this long before closing. A client that writes its whole
/// request before reading (Python's httpx, so the openai client) would otherwise get a TCP
/// reset, not the 413, when the gateway closes with unread bytes (nginx's "lingering close").
const LINGER: Duration = Duration::from_secs(5);
/// ... and only when the declared length is at most this many times the limit: a body of up
/// to twice the limit is most likely an honest client that misjudged the limit; past that the
/// gateway does not spend its bandwidth on it, and the client sees the connection close.
const LINGER_MAX_FACTOR: u64 = 2;

/// Room for the multipart form around an uploaded file (boundaries, headers, `purpose`): the
/// file itself is held to `max_file_bytes` while it is written.
pub const UPLOAD_FORM_BYTES: u64 = 64 << 10;

/// The most bytes an upload to `/v1/files` may declare.
pub fn upload_limit(max_file_bytes: u64) -> u64 {
    max_file_bytes.saturating_add(UPLOAD_FORM_BYTES)
}

/// What the edge layer needs: the app's state and the in-flight body budget.
#[derive(Clone)]
pub struct Edge {
    pub state: AppState,
    pub budget: Arc<BodyBudget>,
}

/// The layer: refuse a bad `Host` or an over-limit `Content-Length` at once; hold the body's
/// share of the in-flight budget; put the body under its deadline.
pub async fn check_head(State(edge): State<Edge>, req: Request, next: Next) -> Response {
    let state = &edge.state;
    if let Err(message) = check_host(&req) {
        reject(state, RejectReason::BadRequest);
        return GatewayError::invalid(message, None).into_response();
    }
    // An upload to `/v1/files` is streamed to disk, not held: it has the file limit.
    let (limit, name) = if req.uri().path() == "/v1/files" {
        (
            upload_limit(state.config.batch.max_file_bytes),
            "max_file_bytes",
        )
    } else {
        (state.config.limits.max_body_bytes, "max_body_bytes")
    };
    // hyper's size hint is the declared Content-Length (0 for a chunked body).
    let declared = req.body().size_hint().lower();
    if declared <= limit {
        if req.body().is_end_stream() {
            return next.run(req).await;
        }
        // An upload is streamed to disk, not held; any other body is held whole, a chunked
        // one (no declared length) up to the limit.
        let hold = if req.uri().path() == "/v1/files" {
            None
        } else {
            let bytes = if declared > 0 { declared } else { limit };
            match edge.budget.hold(bytes).await {
                Ok(h) => Some(h),
                Err(err) => {
                    reject(state, RejectReason::BodyBudget);
                    let mut resp = err.into_response();
                    // The body was not read: the connection cannot carry another request.
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    return resp;
                }
            }
        };
        let server = &state.config.server;
        let (base, rate) = (server.body_read_timeout(), server.min_body_bytes_per_sec);
        let req = req.map(|body| Body::new(Deadline::new(body, base, rate)));
        let resp = next.run(req).await;
        return match hold {
            Some(hold) => budget::attach(resp, hold),
            None => resp,
        };
    }
    reject(state, RejectReason::TooLarge);
    let http1 = req.version() <= Version::HTTP_11;
    // A client that asked `Expect: 100-continue` has sent no body and will not now: reading
    // would make hyper invite it with `100 Continue`, so the body is dropped unread.
    let expects_continue = req
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if http1 && !expects_continue && declared <= limit.saturating_mul(LINGER_MAX_FACTOR) {
        linger(state, req.into_body());
    }
    let mut resp = GatewayError::too_large(
        format!(
            "request body of {declared} bytes (Content-Length) exceeds the gateway's \
             {name} ({limit})"
        ),
        None,
    )
    .into_response();
    if http1 {
        // Whatever of the body is unread makes this connection unusable for another request.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Read and discard `body` in the background, within [`LINGER`], so that the 413 already on
/// its way reaches a client that is still writing. Owned by the state's task tracker and
/// stopped at shutdown.
fn linger(state: &AppState, mut body: Body) {
    let cancel = state.cancel.clone();
    state.tasks.spawn(async move {
        let drain = async { while let Some(Ok(_frame)) = body.frame().await {} };
        tokio::select! {
            () = drain => {}
            () = tokio::time::sleep(LINGER) => {}
            () = cancel.cancelled() => {}
        }
    });
}

fn reject(state: &AppState, reason: RejectReason) {
    state.metrics.rejected("", reason);
}

/// RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request without `Host`, and to any
/// request with more than one or with an invalid value. HTTP/2 carries `:authority` instead
/// and is exempt; HTTP/1.0 may omit it.
fn check_host(req: &Request) -> Result<(), &'static str> {
    if req.version() >= Version::HTTP_2 {
        return Ok(());
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if req.version() == Version::HTTP_11 => {
            Err("an HTTP/1.1 request needs a Host header")
        }
        (Some(_), Some(_)) => Err("the request has more than one Host header"),
        (Some(host), None) if !valid_host(host.as_bytes()) => {
            Err("the Host header is not a valid host[:port]")
        }
        _ => Ok(()),
    }
}

/// `Host = uri-host [ ":" port ]` (RFC 9110 §7.2, RFC 3986 §3.2.2): a bracketed IP literal or a
/// reg-name (unreserved, percent-encoded or sub-delims), then an optional all-digit port. Empty
/// is valid (a target URI without authority).
fn valid_host(v: &[u8]) -> bool {
    let (host_ok, rest) = if v.first() == Some(&b'[') {
        let Some(end) = v.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &v[1..end];
        let ok = !literal.is_empty()
            && literal
                .iter()
                .all(|&b| is_unreserved(b) || is_sub_delim(b) || b == b':');
        (ok, &v[end + 1..])
    } else {
        let end = v.iter().position(|&b| b == b':').unwrap_or(v.len());
        (is_reg_name(&v[..end]), &v[end..])
    };
    host_ok
        && match rest.split_first() {
            None => true,
            Some((b':', port)) => port.iter().all(u8::is_ascii_digit),
            Some(_) => false,
        }
}

fn is_reg_name(v: &[u8]) -> bool {
    let mut i = 0;
    while i < v.len() {
        match v[i] {
            b'%' => {
                let hex = v.get(i + 1..i + 3);
                if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                    return false;
                }
                i += 3;
            }
            b if is_unreserved(b) || is_sub_delim(b) => i += 1,
            _ => return false,
        }
    }
    true
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn is_sub_delim(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
    )
}

#[cfg(test)]
mod tests {
    use super::valid_host;

    #[test]
    fn host_values() {
        for ok in [
            "",
            "localhost",
            "127.0.0.1:8000",
            "[::1]:8000",
            "[v1.fe80::a+en1]",
            "gw.caprl.svc.cluster.local",
            "a%20b",
            "h:",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok:?}");
        }
        for bad in [
            "a b", "a/b", "h:80x", "h:80:90", "[::1", "[]:80", "[::1]x", "a%2", "a%zz", "user@h",
            "h\t",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?}");
        }
    }
}
