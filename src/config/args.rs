//! The settings themselves: one documented clap struct per section (`[server]`, `[limits]`,
//! `[pool]`, `[engine]`, `[batch]`, `[fetch]`), each readable from flags, `CAPRL_…` variables
//! and the TOML file, with clap's defaults as the one source of truth.

use clap::{Args, Parser, ValueEnum};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything `caprl-gateway serve` takes.
#[derive(Debug, Clone, Default, Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeArgs {
    /// Read settings from this TOML file; flags and environment variables override it.
    #[arg(long, env = "CAPRL_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub server: ServerArgs,

    #[command(flatten)]
    pub limits: LimitArgs,

    #[command(flatten)]
    pub pool: PoolArgs,

    #[command(flatten)]
    pub engine: EngineArgs,

    #[command(flatten)]
    pub batch: BatchArgs,

    #[command(flatten)]
    pub fetch: FetchArgs,

    /// Per-model pool settings that override `[pool]`; only the TOML file can set these.
    #[arg(skip)]
    pub pools: BTreeMap<String, PoolOverrides>,
}

/// Where the gateway listens and what it serves.
#[derive(Clone, Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerArgs {
    /// Address to listen on.
    #[arg(long, env = "CAPRL_HOST", default_value = "0.0.0.0")]
    pub host: IpAddr,

    /// Port to listen on (vLLM's default).
    #[arg(long, env = "CAPRL_PORT", default_value_t = 8000)]
    pub port: u16,

    /// Also serve /metrics on this port (it is always on the main port too).
    #[arg(long, env = "CAPRL_METRICS_PORT")]
    pub metrics_port: Option<u16>,

    /// The model name a `--worker` without `MODEL=` serves.
    #[arg(long, env = "CAPRL_SERVED_MODEL_NAME", default_value = "caprl")]
    pub served_model_name: String,

    /// A worker, as `[MODEL=]URL`; repeat for several. URL is `http(s)://host:port` (an
    /// OpenAI-compatible server such as vLLM), `dns+http://name:port` (every address the name
    /// resolves to, re-resolved: a Kubernetes headless Service), or `candle:/path/to/model`
    /// (the in-process engine). Comma-separated in the environment variable.
    #[arg(long = "worker", env = "CAPRL_WORKERS", value_delimiter = ',')]
    pub workers: Vec<String>,

    /// When set, every /v1 request needs `Authorization: Bearer KEY`. The simple case of
    /// `--keys-file`: one key, every model, no limits (named `default` in logs and metrics).
    #[arg(long, env = "CAPRL_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// API keys, each with a name, its models, its limits and whether it may use the files
    /// and batch endpoints (TOML; docs/KEYS.md). Re-read on SIGHUP and when its content
    /// changes; a file that fails to parse keeps the keys already loaded.
    #[arg(long, env = "CAPRL_KEYS_FILE")]
    pub keys_file: Option<PathBuf>,

    /// How often the keys file is checked for changes (a Kubernetes Secret mounted as a file
    /// is updated in place, with no signal).
    #[arg(long, env = "CAPRL_KEYS_RELOAD_SECS", default_value_t = 5.0)]
    pub keys_reload_secs: f64,

    /// Gateway replicas sharing the keys' limits: each enforces its share (limit / N), so
    /// the fleet holds the limit when clients are spread over the replicas (docs/KEYS.md).
    #[arg(long, env = "CAPRL_RATE_LIMIT_REPLICAS", default_value_t = 1)]
    pub rate_limit_replicas: u32,

    /// Longest a client may take to send a request's headers; also how long an idle
    /// keep-alive connection stays open waiting for its next request (HTTP/1).
    #[arg(long, env = "CAPRL_HEADER_READ_TIMEOUT_SECS", default_value_t = 30.0)]
    pub header_read_timeout_secs: f64,

    /// A request body must arrive within this many seconds, plus one second for every
    /// `--min-body-bytes-per-sec` it carries: a client trickling bytes is cut off (408), a
    /// large upload at a sane rate is not.
    #[arg(long, env = "CAPRL_BODY_READ_TIMEOUT_SECS", default_value_t = 30.0)]
    pub body_read_timeout_secs: f64,

    /// The slowest upload rate (bytes per second) the body deadline allows for.
    #[arg(long, env = "CAPRL_MIN_BODY_BYTES_PER_SEC", default_value = "64KiB", value_parser = parse_bytes)]
    pub min_body_bytes_per_sec: u64,

    /// Largest request head (request line and headers, HTTP/1; the header list, HTTP/2);
    /// larger heads get 431.
    #[arg(long, env = "CAPRL_MAX_HEADER_BYTES", default_value = "64KiB", value_parser = parse_bytes)]
    pub max_header_bytes: u64,

    /// Most client connections open at once; past it new connections wait in the kernel's
    /// accept queue until one closes.
    #[arg(long, env = "CAPRL_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// Bytes of answers the caption cache may hold (0: off). Only deterministic requests are
    /// cached: temperature 0, or a `seed`, or the client's `x-caprl-cache: allow`.
    #[arg(long, env = "CAPRL_CACHE_MAX_BYTES", default_value = "0", value_parser = parse_bytes)]
    pub cache_max_bytes: u64,

    /// How long a cached answer is served.
    #[arg(long, env = "CAPRL_CACHE_TTL_SECS", default_value_t = 3600.0)]
    pub cache_ttl_secs: f64,

    /// Log line format: `text` for people, `json` for clusters.
    #[arg(long, env = "CAPRL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// After SIGTERM, how long in-flight and queued requests may take before the process exits.
    #[arg(long, env = "CAPRL_SHUTDOWN_GRACE_SECS", default_value_t = 30.0)]
    pub shutdown_grace_secs: f64,
}

impl fmt::Debug for ServerArgs {
    // By hand so the API key never reaches a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerArgs")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("metrics_port", &self.metrics_port)
            .field("served_model_name", &self.served_model_name)
            .field("workers", &self.workers)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("keys_file", &self.keys_file)
            .field("keys_reload_secs", &self.keys_reload_secs)
            .field("rate_limit_replicas", &self.rate_limit_replicas)
            .field("header_read_timeout_secs", &self.header_read_timeout_secs)
            .field("body_read_timeout_secs", &self.body_read_timeout_secs)
            .field("min_body_bytes_per_sec", &self.min_body_bytes_per_sec)
            .field("max_header_bytes", &self.max_header_bytes)
            .field("max_connections", &self.max_connections)
            .field("cache_max_bytes", &self.cache_max_bytes)
            .field("cache_ttl_secs", &self.cache_ttl_secs)
            .field("log_format", &self.log_format)
            .field("shutdown_grace_secs", &self.shutdown_grace_secs)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    Text,
    Json,
}

/// Limits on what one request may carry. Each is checked before the work it guards.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitArgs {
    /// Largest request body accepted (bytes; suffixes KiB/MiB/GiB allowed). 64 MiB holds
    /// the default 16 images of a few MiB each, base64-encoded.
    #[arg(long, env = "CAPRL_MAX_BODY_BYTES", default_value = "64MiB", value_parser = parse_bytes)]
    pub max_body_bytes: u64,

    /// Largest decoded image (bytes), checked on the encoded length before decoding.
    #[arg(long, env = "CAPRL_MAX_IMAGE_BYTES", default_value = "32MiB", value_parser = parse_bytes)]
    pub max_image_bytes: u64,

    /// Most images in one request (vLLM's `--limit-mm-per-prompt` should be at least this).
    #[arg(long, env = "CAPRL_MAX_IMAGES_PER_REQUEST", default_value_t = 16)]
    pub max_images_per_request: usize,

    /// Most pixels per image, read from the header before any decode: a decompression-bomb
    /// guard (a 50-megapixel RGBA bitmap is 200 MB).
    #[arg(long, env = "CAPRL_MAX_IMAGE_PIXELS", default_value_t = 50_000_000)]
    pub max_image_pixels: u64,

    /// Qwen2.5-VL's `min_pixels`: images are resized up to at least this many pixels.
    #[arg(long, env = "CAPRL_MIN_PIXELS", default_value_t = 3136)]
    pub min_pixels: u64,

    /// Qwen2.5-VL's `max_pixels`: images are resized down to at most this many pixels.
    #[arg(long, env = "CAPRL_MAX_PIXELS", default_value_t = 12_845_056)]
    pub max_pixels: u64,

    /// Longest context (prompt plus output, in tokens) a worker accepts: vLLM's
    /// `--max-model-len`, 32768 in deploy/. A `max_tokens` or `max_completion_tokens` above it
    /// is refused with 400 before a worker sees it. Used only for pools whose workers report no
    /// `max_model_len` on `/v1/models` (vLLM does; the smallest reported one wins).
    #[arg(long, env = "CAPRL_MAX_MODEL_LEN", default_value_t = 32_768)]
    pub max_model_len: u64,

    /// Deepest nesting of arrays and objects in a request body. serde_json enforces 128 on
    /// what the gateway reads, but not on the fields it forwards unread; vLLM's Python parser
    /// gives up at about 1,000 and answers without the OpenAI envelope.
    #[arg(long, env = "CAPRL_MAX_JSON_DEPTH", default_value_t = 128)]
    pub max_json_depth: usize,

    /// Most request-body bytes all requests in flight may hold at once, counted from each
    /// body's declared length (a chunked body counts as `max_body_bytes`). A request that
    /// would go over waits up to `body_budget_wait_secs` for room, then gets 503 with
    /// `retry-after`: memory stays bounded under a flood of large images.
    #[arg(long, env = "CAPRL_MAX_INFLIGHT_BODY_BYTES", default_value = "1GiB", value_parser = parse_bytes)]
    pub max_inflight_body_bytes: u64,

    /// How long a request waits for room in `max_inflight_body_bytes` before its 503.
    #[arg(long, env = "CAPRL_BODY_BUDGET_WAIT_SECS", default_value_t = 2.0)]
    pub body_budget_wait_secs: f64,
}

/// The chat schema itself nests six deep (body, `messages`, a message, `content`, a part,
/// `image_url`): a lower depth limit would refuse every image request.
pub const MIN_JSON_DEPTH: usize = 8;

/// How requests are admitted and routed, and how workers are watched. These are the
/// defaults of every pool; `[pools.NAME]` in the file overrides them per model.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolArgs {
    /// Worker selection policy.
    #[arg(long, env = "CAPRL_POLICY", value_enum, default_value_t = PolicyKind::LeastOutstanding)]
    pub policy: PolicyKind,

    /// Most requests in flight on one worker. vLLM runs up to 256 sequences per step on a GPU
    /// by default (`--max-num-seqs`); sending more only queues them inside vLLM, where the
    /// gateway can no longer route around a slow worker.
    #[arg(long, env = "CAPRL_MAX_IN_FLIGHT", default_value_t = 256)]
    pub max_in_flight: u32,

    /// Most estimated tokens (prompt text, image tokens and max_tokens) in flight on one
    /// worker. CapRL-3B's KV cache on a 24 GiB GPU holds roughly 250k tokens at bf16.
    #[arg(long, env = "CAPRL_MAX_TOKENS_IN_FLIGHT", default_value_t = 262_144)]
    pub max_tokens_in_flight: u64,

    /// Requests that may wait for a worker per model; past it the answer is 429.
    #[arg(long, env = "CAPRL_QUEUE_CAPACITY", default_value_t = 4096)]
    pub queue_capacity: usize,

    /// Longest a request waits in the queue before it is answered 429.
    #[arg(long, env = "CAPRL_QUEUE_TIMEOUT_SECS", default_value_t = 30.0)]
    pub queue_timeout_secs: f64,

    /// Time to open a connection to a worker.
    #[arg(long, env = "CAPRL_CONNECT_TIMEOUT_SECS", default_value_t = 2.0)]
    pub connect_timeout_secs: f64,

    /// Time from sending a request to the worker's response headers (for non-streaming
    /// requests vLLM sends them when the whole answer is ready).
    #[arg(long, env = "CAPRL_FIRST_BYTE_TIMEOUT_SECS", default_value_t = 300.0)]
    pub first_byte_timeout_secs: f64,

    /// Longest a request may take from arrival to its last byte.
    #[arg(long, env = "CAPRL_REQUEST_TIMEOUT_SECS", default_value_t = 900.0)]
    pub request_timeout_secs: f64,

    /// Times a request that failed before any response byte is tried on another worker.
    #[arg(long, env = "CAPRL_MAX_RETRIES", default_value_t = 2)]
    pub max_retries: u32,

    /// Interval between active health probes (`GET /health`) of each worker.
    #[arg(long, env = "CAPRL_HEALTH_INTERVAL_SECS", default_value_t = 2.0)]
    pub health_interval_secs: f64,

    /// Time a health probe may take.
    #[arg(long, env = "CAPRL_HEALTH_TIMEOUT_SECS", default_value_t = 1.0)]
    pub health_timeout_secs: f64,

    /// Consecutive failed probes that mark a worker down.
    #[arg(long, env = "CAPRL_UNHEALTHY_THRESHOLD", default_value_t = 2)]
    pub unhealthy_threshold: u32,

    /// Consecutive passing probes that bring a down worker back.
    #[arg(long, env = "CAPRL_HEALTHY_THRESHOLD", default_value_t = 1)]
    pub healthy_threshold: u32,

    /// Consecutive request failures (connection errors, timeouts, 5xx) that eject a worker.
    /// A client's 4xx never counts.
    #[arg(long, env = "CAPRL_EJECT_AFTER_FAILURES", default_value_t = 3)]
    pub eject_after_failures: u32,

    /// First ejection length; it doubles with each ejection in a row, up to the maximum.
    #[arg(long, env = "CAPRL_EJECT_BASE_SECS", default_value_t = 1.0)]
    pub eject_base_secs: f64,

    /// Longest ejection.
    #[arg(long, env = "CAPRL_EJECT_MAX_SECS", default_value_t = 30.0)]
    pub eject_max_secs: f64,

    /// How often `dns+http://` worker names are re-resolved.
    #[arg(long, env = "CAPRL_DNS_REFRESH_SECS", default_value_t = 5.0)]
    pub dns_refresh_secs: f64,

    /// Share of each worker's `max_in_flight` (and `max_tokens_in_flight`) that batch lines
    /// may hold (0 to 1). Batch lines are admitted only into what interactive requests leave
    /// free, and never past this share, so the rest stays free for interactive requests.
    #[arg(long, env = "CAPRL_BATCH_SHARE", default_value_t = 0.75)]
    pub batch_share: f64,

    /// `max-pixels`: an image with more pixels than its smart_resize target (by `--min-pixels`
    /// and `--max-pixels`, which must then be the workers' own) is resized here to exactly
    /// that target, with the resampling vLLM's processor applies (torchvision-exact), and sent
    /// as PNG when that is smaller: the worker's resize becomes a no-op, the answer is the
    /// same, fewer bytes cross the network. A client opts out with `x-caprl-resize: off`.
    #[arg(
        long = "resize-images",
        env = "CAPRL_RESIZE_IMAGES",
        value_enum,
        default_value_t = ResizeImages::Off
    )]
    pub resize: ResizeImages,
}

/// Whether a pool's images are resized to the pixel budget in the gateway (`crate::resize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResizeImages {
    /// Forwarded as the client sent them; the worker resizes.
    Off,
    /// Shrunk to the smart_resize target when it has fewer pixels.
    MaxPixels,
}

/// The files and batch APIs (`/v1/files`, `/v1/batches`): where their state lives and its
/// bounds. Off unless `--data-dir` is set.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchArgs {
    /// Directory for uploaded files, batch output and the batch database (SQLite). Without
    /// it the files and batch endpoints answer 404.
    #[arg(long, env = "CAPRL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Largest file one upload may be (OpenAI's limit is 200 MB; a CapRL batch with inline
    /// images is larger).
    #[arg(long, env = "CAPRL_MAX_FILE_BYTES", default_value = "8GiB", value_parser = parse_bytes)]
    pub max_file_bytes: u64,

    /// Most bytes all stored files (uploads and batch output) may take on disk; an upload
    /// past it is refused with 413.
    #[arg(long, env = "CAPRL_FILES_QUOTA_BYTES", default_value = "100GiB", value_parser = parse_bytes)]
    pub files_quota_bytes: u64,

    /// What a batch's `completion_window` ("24h", the only value) lasts, in seconds: past it
    /// the batch expires with what it finished.
    #[arg(long, env = "CAPRL_BATCH_WINDOW_SECS", default_value_t = 86_400.0)]
    pub batch_window_secs: f64,

    /// Lines of one batch that may be waiting for a worker or running at once. How many
    /// actually run is the pool's to say (`--batch-share`); this bounds what one batch holds
    /// in memory.
    #[arg(long, env = "CAPRL_BATCH_MAX_IN_FLIGHT", default_value_t = 256)]
    pub batch_max_in_flight: usize,
}

impl BatchArgs {
    pub fn window(&self) -> Duration {
        Duration::from_secs_f64(self.batch_window_secs)
    }
}

/// Remote images (`[fetch]`): off by default, when `http(s)://` image URLs go to the workers
/// as they are (vLLM fetches them). On, the gateway downloads each one itself, checks it as it
/// checks a data URL and sends the worker a data URL, so workers need no way out to the
/// internet; every fetch goes through the SSRF guard (src/fetch/guard.rs): public addresses
/// only, the address checked is the one connected to, every redirect checked again.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FetchArgs {
    /// Download `http(s)://` images in the gateway and forward them as data URLs, checked like
    /// any data URL (format, bytes, pixels, hash, visual tokens). Off: remote URLs are
    /// forwarded unchecked for the worker to fetch.
    #[arg(
        long = "fetch-remote-images",
        env = "CAPRL_FETCH_REMOTE_IMAGES",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub remote_images: bool,

    /// Fetch plain `http://` URLs too (vLLM does). `--fetch-allow-http=false` refuses them
    /// (and redirects to them) with 400: only https.
    #[arg(
        long = "fetch-allow-http",
        env = "CAPRL_FETCH_ALLOW_HTTP",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub allow_http: bool,

    /// Only these hosts may be fetched from (empty: any public host): `example.com` exactly or
    /// `*.example.com` for the hosts under it; repeat or separate with commas. The address
    /// checks still apply.
    #[arg(
        long = "fetch-allowed-hosts",
        env = "CAPRL_FETCH_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    pub allowed_hosts: Vec<String>,

    /// Hosts never fetched from, in the same patterns; a denied host is refused even when it
    /// is also allowed.
    #[arg(
        long = "fetch-denied-hosts",
        env = "CAPRL_FETCH_DENIED_HOSTS",
        value_delimiter = ','
    )]
    pub denied_hosts: Vec<String>,

    /// Time to open a connection (TCP and TLS) to an image host.
    #[arg(
        long = "fetch-connect-timeout-secs",
        env = "CAPRL_FETCH_CONNECT_TIMEOUT_SECS",
        default_value_t = 5.0
    )]
    pub connect_secs: f64,

    /// Longest one image fetch may take, redirects and the whole body included, counted from
    /// when it starts waiting for a `--fetch-max-concurrent` slot. Past it the request gets 400.
    #[arg(
        long = "fetch-timeout-secs",
        env = "CAPRL_FETCH_TIMEOUT_SECS",
        default_value_t = 20.0
    )]
    pub timeout_secs: f64,

    /// Image fetches in flight at once, over all requests: each holds up to `max_image_bytes`
    /// in memory while it downloads. Past it a fetch waits for a slot (inside its timeout), then
    /// the request gets 429 with `retry-after`.
    #[arg(
        long = "fetch-max-concurrent",
        env = "CAPRL_FETCH_MAX_CONCURRENT",
        default_value_t = 64
    )]
    pub max_concurrent: usize,

    /// UNSAFE, for tests: also fetch from loopback addresses (127.0.0.0/8, ::1). Every other
    /// private, link-local or reserved address stays refused. Never set it in production: any
    /// client could then reach the gateway's own host.
    #[arg(
        long = "fetch-allow-loopback",
        env = "CAPRL_FETCH_ALLOW_LOOPBACK",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub allow_loopback: bool,
}

impl FetchArgs {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.connect_secs)
    }
    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout_secs)
    }
}

/// `[pools.NAME]`: any subset of `[pool]`'s keys.
pub type PoolOverrides = toml::Table;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyKind {
    /// The worker with the fewest requests in flight (ties: fewest tokens in flight).
    LeastOutstanding,
    /// Two workers at random; the less loaded of the two.
    PowerOfTwo,
    /// Each worker in turn.
    RoundRobin,
    /// The same first image goes to the same worker (rendezvous hashing on its content hash),
    /// while that worker is healthy and has room; otherwise least outstanding.
    Affinity,
}

/// The in-process Candle engine (`--worker candle:/path`).
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineArgs {
    /// Device for the engine: `cpu` or `cuda:N`.
    #[arg(
        long = "engine-device",
        env = "CAPRL_ENGINE_DEVICE",
        default_value = "cpu"
    )]
    pub device: String,

    /// Weights and activations type: f32 (the CPU default: candle has no bf16 matmul on
    /// CPU), bf16 or f16.
    #[arg(long = "engine-dtype", env = "CAPRL_ENGINE_DTYPE", value_enum, default_value_t = EngineDtype::F32)]
    pub dtype: EngineDtype,

    /// Most sequences decoded together in one step.
    #[arg(
        long = "engine-max-sequences",
        env = "CAPRL_ENGINE_MAX_SEQUENCES",
        default_value_t = 16
    )]
    pub max_sequences: usize,

    /// Most tokens (prefill and decode) processed in one step.
    #[arg(
        long = "engine-step-token-budget",
        env = "CAPRL_ENGINE_STEP_TOKEN_BUDGET",
        default_value_t = 4096
    )]
    pub step_token_budget: usize,

    /// KV cache size in tokens, over all running sequences.
    #[arg(
        long = "engine-kv-cache-tokens",
        env = "CAPRL_ENGINE_KV_CACHE_TOKENS",
        default_value_t = 32_768
    )]
    pub kv_cache_tokens: usize,

    /// Take sampling defaults from the model's generation_config.json, as vLLM does.
    /// `--engine-generation-config=false` uses plain OpenAI defaults instead.
    #[arg(long = "engine-generation-config", env = "CAPRL_ENGINE_GENERATION_CONFIG", default_value_t = true, action = clap::ArgAction::Set)]
    pub use_generation_config: bool,

    /// Whose image resize the engine reproduces bit for bit: torchvision's antialiased bicubic
    /// (transformers' default processor, which vLLM uses: the engine then sees the pixels a
    /// vLLM worker sees) or Pillow's (transformers' slow `use_fast=False` processor).
    #[arg(
        long = "engine-image-resize",
        env = "CAPRL_ENGINE_IMAGE_RESIZE",
        value_enum,
        default_value_t = ImageResize::Torchvision
    )]
    pub image_resize: ImageResize,
}

/// An image resize reference (`caprl_image::Resample`), as configuration spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageResize {
    Torchvision,
    Pil,
}

impl From<ImageResize> for caprl_image::Resample {
    fn from(r: ImageResize) -> Self {
        match r {
            ImageResize::Torchvision => caprl_image::Resample::Torchvision,
            ImageResize::Pil => caprl_image::Resample::Pil,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EngineDtype {
    F32,
    Bf16,
    F16,
}

macro_rules! defaults_from_clap {
    ($($ty:ty),*) => {$(
        impl Default for $ty {
            fn default() -> Self {
                // Parse an empty command line: clap's defaults are the one source of truth.
                #[derive(Parser)]
                struct Wrapper {
                    #[command(flatten)]
                    inner: $ty,
                }
                Wrapper::try_parse_from(["caprl-gateway"])
                    .map(|w| w.inner)
                    .expect("defaults parse; this is a bug")
            }
        }
    )*};
}
defaults_from_clap!(ServerArgs, LimitArgs, PoolArgs, EngineArgs, BatchArgs, FetchArgs);

impl ServerArgs {
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.header_read_timeout_secs)
    }
    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.body_read_timeout_secs)
    }
    pub fn keys_reload(&self) -> Duration {
        Duration::from_secs_f64(self.keys_reload_secs)
    }
    pub fn cache_ttl(&self) -> Duration {
        Duration::from_secs_f64(self.cache_ttl_secs)
    }
}

impl PoolArgs {
    pub fn queue_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.queue_timeout_secs)
    }
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.connect_timeout_secs)
    }
    pub fn first_byte_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.first_byte_timeout_secs)
    }
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.request_timeout_secs)
    }
    pub fn health_interval(&self) -> Duration {
        Duration::from_secs_f64(self.health_interval_secs)
    }
    pub fn health_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.health_timeout_secs)
    }
    pub fn dns_refresh(&self) -> Duration {
        Duration::from_secs_f64(self.dns_refresh_secs)
    }
}

/// `64MiB`, `32MB`, `1k`, `1024`: a byte count.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '_')
        .unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .replace('_', "")
        .parse()
        .map_err(|_| format!("`{s}` is not a byte count"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => return Err(format!("unknown unit `{other}` in `{s}`")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}
