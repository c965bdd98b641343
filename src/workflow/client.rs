//! The OpenAI-API client of the workflow commands: one POST with retries. Any OpenAI-compatible
//! server will do (the gateway, or vLLM directly).
//!
//! Retried, with exponential backoff and jitter, honouring `retry-after-ms` / `retry-after`:
//! 429, 5xx, connection errors and timeouts (the server may come back, or another replica may
//! answer). Not retried: any other 4xx (the request itself is wrong; it would fail again).

use serde_json::Value;
use std::time::Duration;

const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base_url: String,
    api_key: Option<String>,
    max_retries: u32,
}

/// A request that got no answer it could use.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// The server's status, when it answered.
    pub status: Option<u16>,
    /// The server's error message, or what went wrong on the way.
    pub message: String,
    /// Worth trying again later (the last try was a 429, a 5xx or a connection error).
    pub retryable: bool,
}

impl Client {
    /// `base_url` as the openai client takes it (`http://host:port/v1`).
    pub fn new(
        base_url: &str,
        api_key: Option<String>,
        timeout: Duration,
        max_retries: u32,
    ) -> Client {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .expect("a reqwest client with timeouts builds; this is a bug");
        Client {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key,
            max_retries,
        }
    }

    /// POST `body` to `{base_url}{path}`; the answer's JSON, after up to `max_retries` retries.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, Failure> {
        let url = format!("{}{path}", self.base_url);
        let mut backoff = BACKOFF_FIRST;
        let mut attempt = 0;
        loop {
            let failure = match self.once(&url, body).await {
                Ok(v) => return Ok(v),
                Err((failure, _)) if !failure.retryable => return Err(failure),
                Err(f) => f,
            };
            attempt += 1;
            if attempt > self.max_retries {
                return Err(failure.0);
            }
            // The server's hint wins over our backoff; jitter spreads a crowd of clients.
            let wait = failure.1.unwrap_or(backoff);
            let jitter = Duration::from_millis(fastrand::u64(0..=wait.as_millis() as u64 / 4));
            tracing::debug!(url, attempt, status = ?failure.0.status, error = %failure.0.message, wait_ms = (wait + jitter).as_millis() as u64, "retrying");
            tokio::time::sleep(wait + jitter).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn once(&self, url: &str, body: &Value) -> Result<Value, (Failure, Option<Duration>)> {
        let mut req = self.http.post(url).json(body);
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        let resp = req.send().await.map_err(|e| {
            (
                Failure {
                    status: None,
                    message: format!("cannot reach {url}: {e}"),
                    retryable: true,
                },
                None,
            )
        })?;
        let status = resp.status();
        let hint = retry_after(resp.headers());
        let bytes = resp.bytes().await.map_err(|e| {
            (
                Failure {
                    status: Some(status.as_u16()),
                    message: format!("the answer broke off: {e}"),
                    retryable: true,
                },
                None,
            )
        })?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| {
                (
                    Failure {
                        status: Some(status.as_u16()),
                        message: format!("the answer is not JSON: {e}"),
                        retryable: true,
                    },
                    None,
                )
            });
        }
        let message = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| {
                v.pointer("/error/message")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .unwrap_or_else(|| {
                String::from_utf8_lossy(&bytes[..bytes.len().min(500)]).into_owned()
            });
        let retryable = status.as_u16() == 429 || status.is_server_error();
        Err((
            Failure {
                status: Some(status.as_u16()),
                message,
                retryable,
            },
            hint,
        ))
    }
}

/// `retry-after-ms` (the openai client's preference), else `retry-after` in seconds.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let get = |name: &str| headers.get(name)?.to_str().ok()?.trim().parse::<f64>().ok();
    let wait = get("retry-after-ms")
        .map(|ms| ms / 1000.0)
        .or_else(|| get("retry-after"))?;
    (wait.is_finite() && wait >= 0.0).then(|| Duration::from_secs_f64(wait.min(60.0)))
}
