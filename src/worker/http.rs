//! Forwarding to an OpenAI-compatible worker over HTTP/1.1 with reqwest. The body sent is the
//! `ValidRequest`'s bytes (the client's own, in most cases); `x-request-id` goes along so the
//! worker's logs carry the same id. Connections are pooled and have TCP_NODELAY set.

use super::{SendError, Upstream};
use crate::error::GatewayError;
use crate::validate::ValidRequest;
use axum::http::StatusCode;
use futures::StreamExt;
use std::time::Duration;
use tokio::time::Instant;

/// The HTTP client all workers share.
pub fn client(connect_timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        // Nagle's algorithm would hold small SSE chunks back by up to ~40 ms.
        .tcp_nodelay(true)
        // vLLM serves HTTP/1.1; keep enough idle connections for a busy worker.
        .http1_only()
        .pool_max_idle_per_host(1024)
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .expect("the HTTP client builds with static settings; this is a bug")
}

/// Send one request and wait for the response head (at most `first_byte`, and never past
/// `deadline`).
pub async fn send(
    client: &reqwest::Client,
    base: &str,
    req: &ValidRequest,
    request_id: &str,
    first_byte: Duration,
    deadline: Instant,
) -> Result<Upstream, SendError> {
    let fut = client
        .post(format!("{base}/v1/chat/completions"))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("x-request-id", request_id)
        .body(req.body.clone())
        .send();
    let limit = (Instant::now() + first_byte).min(deadline);
    let resp = match tokio::time::timeout_at(limit, fut).await {
        Err(_) => {
            return Err(SendError {
                error: GatewayError::Timeout(format!(
                    "no response from {base} within {:.1} s",
                    first_byte.as_secs_f64()
                )),
                retryable: true,
                worker_fault: true,
            })
        }
        Ok(Err(e)) => {
            return Err(SendError {
                error: GatewayError::BadGateway(format!("{base}: {}", describe(&e))),
                retryable: true,
                worker_fault: true,
            })
        }
        Ok(Ok(resp)) => resp,
    };
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    if status.is_server_error() {
        // Read a little of the body for the message; the worker's 5xx body is not passed on.
        let text = tokio::time::timeout(Duration::from_secs(2), resp.text())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let message = worker_message(&text);
        return Err(SendError {
            error: GatewayError::WorkerStatus { status, message },
            retryable: status == StatusCode::BAD_GATEWAY
                || status == StatusCode::SERVICE_UNAVAILABLE,
            worker_fault: true,
        });
    }
    let body = resp
        .bytes_stream()
        .map(|r| r.map_err(|e| describe(&e)))
        .boxed();
    Ok(Upstream { status, body })
}

/// The message of an OpenAI error body, or the first 200 characters of whatever it is.
fn worker_message(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.pointer("/message"))
                .and_then(|m| m.as_str().map(str::to_string))
        })
        .unwrap_or_else(|| text.chars().take(200).collect())
}

/// reqwest's Display hides the cause ("error sending request"); include the chain.
fn describe(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// `GET {base}/health` answered 200 within `timeout`.
pub async fn probe_health(client: &reqwest::Client, base: &str, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, client.get(format!("{base}/health")).send()).await,
        Ok(Ok(r)) if r.status().is_success()
    )
}

/// The model names `GET {base}/v1/models` lists, if it answers.
pub async fn served_models(
    client: &reqwest::Client,
    base: &str,
    timeout: Duration,
) -> Option<Vec<String>> {
    let resp = tokio::time::timeout(timeout, client.get(format!("{base}/v1/models")).send())
        .await
        .ok()?
        .ok()?;
    let v: serde_json::Value = tokio::time::timeout(timeout, resp.json())
        .await
        .ok()?
        .ok()?;
    Some(
        v.get("data")?
            .as_array()?
            .iter()
            .filter_map(|m| m.get("id")?.as_str().map(str::to_string))
            .collect(),
    )
}
