//! Remote images, fetched by the gateway (`--fetch-remote-images`, off by default): each
//! `http(s)://` image of a request is downloaded here, under the SSRF guard ([`guard`]), and
//! put in the body as a data URL, so validation (`crate::validate`) checks it as it checks any
//! data URL and workers need no way out to the internet.
//!
//! Where it sits: [`crate::state::AppState::validate_as`], the one entry the chat handler and
//! the batch runner share, validates the body; when the request has remote images and fetching
//! is on, it calls [`Fetcher::inline`] and validates the new body again. The first pass refuses
//! a bad request before anything is fetched; the second checks every fetched image and leaves
//! `ValidRequest::remote` empty.
//!
//! Bounds: a fetch's bytes stop at `max_image_bytes` (declared length first, then as they
//! arrive), a request's body with its fetched images stops at `max_body_bytes` (what the
//! client could have sent inline), each fetch ends within `--fetch-timeout-secs`, and at most
//! `--fetch-max-concurrent` run at once over all requests. Each refusal or failure is a 4xx
//! naming the URL's field: 400 `image_url_refused` (the guard), 400 `image_fetch_failed` (the
//! remote side), 413 (a limit), 429 (no fetch slot in time).

pub mod guard;
pub mod ip;

pub use guard::{HostRule, Refusal, UrlPolicy, MAX_REDIRECTS};

use crate::config::{FetchArgs, LimitArgs};
use crate::error::GatewayError;
use crate::metrics::{FetchOutcome, Metrics};
use crate::pool::discovery::Resolver;
use crate::validate::{self, RemoteImage};
use bytes::Bytes;
use guard::{GuardedResolver, LookupFailed};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use url::Url;

/// How long a client told "too many fetches in flight" should wait before trying again.
const BUSY_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The gateway's image fetcher: one HTTP client whose every connection passes the guard.
pub struct Fetcher {
    /// No proxy (the environment must not route around the guard), the guarded resolver, the
    /// checked redirect policy, no referer, no decompression (none is compiled in).
    client: reqwest::Client,
    policy: Arc<UrlPolicy>,
    /// Fetches in flight over all requests (`--fetch-max-concurrent`). A fetch holds a permit
    /// from before it connects to its last byte; it waits for one inside its own timeout and
    /// gets 429 when none came free. Dropped with the fetch (a client that hangs up frees it).
    slots: Arc<Semaphore>,
    timeout: Duration,
    max_image_bytes: u64,
    max_body_bytes: u64,
    metrics: Metrics,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("policy", &self.policy)
            .field("slots_free", &self.slots.available_permits())
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Why one fetch did not produce bytes.
#[derive(Debug)]
enum Failure {
    Refused(Refusal),
    /// The server's answer was not 2xx.
    Status(reqwest::StatusCode),
    /// No usable answer: the name, the connection, TLS, or the body broke.
    Unreachable(String),
    Timeout,
    /// The image is over `max_image_bytes` (its declared length when it had one).
    ImageTooLarge(Option<u64>),
    /// The request with its fetched images would be over `max_body_bytes`.
    RequestTooLarge,
    Busy,
}

impl Failure {
    fn outcome(&self) -> FetchOutcome {
        match self {
            Failure::Refused(_) => FetchOutcome::Refused,
            Failure::Status(_) => FetchOutcome::Status,
            Failure::Unreachable(_) => FetchOutcome::Error,
            Failure::Timeout => FetchOutcome::Timeout,
            Failure::ImageTooLarge(_) | Failure::RequestTooLarge => FetchOutcome::TooLarge,
            Failure::Busy => FetchOutcome::Busy,
        }
    }
}

/// The bytes one request's fetched images may add to its body, shared by its fetches.
struct BodyRoom {
    /// Body bytes so far: the client's body, plus each fetched byte as base64 (4 per 3).
    used: AtomicU64,
    max: u64,
}

impl BodyRoom {
    /// Count `n` more fetched bytes; false once the body would be over its limit.
    fn take(&self, n: usize) -> bool {
        let encoded = (n as u64).div_ceil(3) * 4;
        self.used.fetch_add(encoded, Ordering::Relaxed) + encoded <= self.max
    }
}

impl Fetcher {
    /// Build the client. `lookup` resolves names (the system's resolver in production, fixed
    /// answers in tests); every answer then passes the guard.
    pub fn new(
        args: &FetchArgs,
        limits: &LimitArgs,
        lookup: Arc<dyn Resolver>,
        metrics: Metrics,
    ) -> anyhow::Result<Fetcher> {
        let rules = |hosts: &[String]| {
            hosts
                .iter()
                .filter(|h| !h.trim().is_empty())
                .map(|h| HostRule::parse(h).map_err(anyhow::Error::msg))
                .collect::<anyhow::Result<Vec<_>>>()
        };
        let policy = Arc::new(UrlPolicy {
            allow_http: args.allow_http,
            allowed: rules(&args.allowed_hosts)?,
            denied: rules(&args.denied_hosts)?,
            allow_loopback: args.allow_loopback,
        });
        if args.allow_loopback {
            tracing::warn!(
                "--fetch-allow-loopback is on: clients can make the gateway fetch from this \
                 host's loopback services; it is meant for tests only"
            );
        }
        let client = reqwest::Client::builder()
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver {
                lookup,
                policy: policy.clone(),
            }))
            .redirect(guard::redirect_policy(policy.clone()))
            .referer(false)
            .connect_timeout(args.connect_timeout())
            .timeout(args.timeout())
            .user_agent(concat!("caprl-gateway/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Fetcher {
            client,
            policy,
            slots: Arc::new(Semaphore::new(args.max_concurrent)),
            timeout: args.timeout(),
            max_image_bytes: limits.max_image_bytes,
            max_body_bytes: limits.max_body_bytes,
            metrics,
        })
    }

    /// Fetch every image of `remote` at once and return `body` with each URL replaced by its
    /// image as a data URL. The first failure ends the others (their downloads are dropped)
    /// and is the answer, naming that image's field.
    pub async fn inline(
        &self,
        body: &Bytes,
        remote: &[RemoteImage],
    ) -> Result<Bytes, GatewayError> {
        let room = BodyRoom {
            used: AtomicU64::new(body.len() as u64),
            max: self.max_body_bytes,
        };
        // Each URL fetched once, however often the request names it (QA prompts repeat an
        // image); the body still grows by its data URL at every place.
        let mut first: Vec<&RemoteImage> = Vec::new();
        let which: Vec<usize> = remote
            .iter()
            .map(|r| match first.iter().position(|f| f.url == r.url) {
                Some(i) => i,
                None => {
                    first.push(r);
                    first.len() - 1
                }
            })
            .collect();
        let fetched =
            futures::future::try_join_all(first.iter().map(|r| self.fetch(r, &room))).await?;
        let urls: Vec<String> = fetched.iter().map(|data| as_data_url(data)).collect();
        let mut seen = vec![false; first.len()];
        for (r, &i) in remote.iter().zip(&which) {
            if std::mem::replace(&mut seen[i], true) && !room.take(fetched[i].len()) {
                return Err(self.error(Failure::RequestTooLarge, r));
            }
        }
        let parts: Vec<(usize, usize, String)> = remote
            .iter()
            .zip(&which)
            .map(|(r, &i)| (r.message, r.part, urls[i].clone()))
            .collect();
        validate::replace_image_urls(body, &parts)
    }

    /// One image: its bytes, or the error to answer, counted either way.
    async fn fetch(&self, image: &RemoteImage, room: &BodyRoom) -> Result<Vec<u8>, GatewayError> {
        let started = Instant::now();
        let result = self.download(&image.url, room).await;
        let (outcome, bytes) = match &result {
            Ok(data) => (FetchOutcome::Ok, data.len() as u64),
            Err(f) => (f.outcome(), 0),
        };
        self.metrics
            .image_fetched(outcome, started.elapsed(), bytes);
        result.map_err(|f| self.error(f, image))
    }

    async fn download(&self, url: &str, room: &BodyRoom) -> Result<Vec<u8>, Failure> {
        let url =
            Url::parse(url).map_err(|e| Failure::Refused(Refusal::Malformed(e.to_string())))?;
        self.policy.check(&url).map_err(Failure::Refused)?;
        let host = url.host_str().unwrap_or_default().to_string();
        let deadline = Instant::now() + self.timeout;
        let _slot = match tokio::time::timeout_at(deadline, self.slots.acquire()).await {
            Ok(Ok(permit)) => permit,
            // Closed never happens: the semaphore lives as long as the fetcher.
            Ok(Err(_)) | Err(_) => return Err(Failure::Busy),
        };
        let read = async {
            let mut resp = self
                .client
                .get(url)
                .send()
                .await
                .map_err(|e| classify(&e, &host))?;
            if !resp.status().is_success() {
                return Err(Failure::Status(resp.status()));
            }
            let declared = resp.content_length();
            if declared.is_some_and(|n| n > self.max_image_bytes) {
                return Err(Failure::ImageTooLarge(declared));
            }
            let cap = declared.unwrap_or(0).min(self.max_image_bytes) as usize;
            let mut data = Vec::with_capacity(cap);
            while let Some(chunk) = resp.chunk().await.map_err(|e| classify(&e, &host))? {
                if (data.len() + chunk.len()) as u64 > self.max_image_bytes {
                    return Err(Failure::ImageTooLarge(None));
                }
                if !room.take(chunk.len()) {
                    return Err(Failure::RequestTooLarge);
                }
                data.extend_from_slice(&chunk);
            }
            Ok(data)
        };
        tokio::time::timeout_at(deadline, read)
            .await
            .unwrap_or(Err(Failure::Timeout))
    }

    /// The client's answer for a failed fetch of `image`.
    fn error(&self, failure: Failure, image: &RemoteImage) -> GatewayError {
        let param = image.param();
        let host = Url::parse(&image.url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string))
            .unwrap_or_default();
        match failure {
            Failure::Refused(why) => GatewayError::image_url_refused(why, param),
            Failure::Status(status) => {
                GatewayError::image_fetch_failed(format!("`{host}` answered {status}"), param)
            }
            Failure::Unreachable(why) => GatewayError::image_fetch_failed(why, param),
            Failure::Timeout => GatewayError::image_fetch_failed(
                format!(
                    "`{host}` did not send the whole image within {} s (--fetch-timeout-secs)",
                    self.timeout.as_secs_f64()
                ),
                param,
            ),
            Failure::ImageTooLarge(declared) => GatewayError::too_large(
                match declared {
                    Some(n) => format!(
                        "the image at `{host}` is {n} bytes; the limit is {} bytes",
                        self.max_image_bytes
                    ),
                    None => format!(
                        "the image at `{host}` is over the limit of {} bytes",
                        self.max_image_bytes
                    ),
                },
                Some(param),
            ),
            Failure::RequestTooLarge => GatewayError::too_large(
                format!(
                    "the request with its fetched images would be over the body limit of {} \
                     bytes",
                    self.max_body_bytes
                ),
                Some(param),
            ),
            Failure::Busy => GatewayError::Overloaded {
                message: "too many image fetches in flight (--fetch-max-concurrent); retry \
                          shortly"
                    .into(),
                retry_after: BUSY_RETRY_AFTER,
            },
        }
    }
}

/// A data URL of fetched bytes, typed by what they look like (`data:image;base64,` when they
/// look like no image: validation then refuses them, naming the field).
fn as_data_url(data: &[u8]) -> String {
    match validate::images::sniff(data) {
        Some(format) => validate::images::data_url(format, data),
        None => format!(
            "data:image;base64,{}",
            base64_simd::STANDARD.encode_to_string(data)
        ),
    }
}

/// What a reqwest error means here: a refusal of the guard (the resolver's or the redirect
/// policy's, found by type in the source chain), a failed lookup, a timeout, or another
/// failure to get an answer, told with its innermost cause (`Connection refused`, a
/// certificate error).
fn classify(e: &reqwest::Error, host: &str) -> Failure {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut innermost = e.to_string();
    while let Some(s) = source {
        if let Some(refusal) = s.downcast_ref::<Refusal>() {
            return Failure::Refused(refusal.clone());
        }
        if let Some(lookup) = s.downcast_ref::<LookupFailed>() {
            return Failure::Unreachable(lookup.to_string());
        }
        innermost = s.to_string();
        source = s.source();
    }
    if e.is_timeout() {
        return Failure::Timeout;
    }
    if e.is_redirect() {
        return Failure::Unreachable(format!("a redirect from `{host}` failed: {innermost}"));
    }
    if e.is_connect() {
        return Failure::Unreachable(format!("cannot connect to `{host}`: {innermost}"));
    }
    Failure::Unreachable(format!("`{host}` did not answer: {innermost}"))
}
