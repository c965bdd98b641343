//! Configuration: one documented clap struct, readable from flags, `CAPRL_…` environment
//! variables and a TOML file (`--config`), validated once at start-up.
//!
//! Precedence, highest first: a flag on the command line, its environment variable, the file,
//! the default. The file has the same names in sections (`[server]`, `[limits]`, `[pool]`,
//! `[engine]`, `[batch]`), plus `[pools.NAME]` tables that override `[pool]` for one model's pool, which
//! only the file can express. `deploy/README.md` and `README.md` carry the full table.

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// caprl-gateway: an OpenAI-compatible gateway for CapRL-3B image captioning.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the OpenAI-compatible API in front of a pool of workers.
    Serve(Box<ServeArgs>),
}

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

    /// When set, every /v1 request needs `Authorization: Bearer KEY`.
    #[arg(long, env = "CAPRL_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

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
defaults_from_clap!(ServerArgs, LimitArgs, PoolArgs, EngineArgs, BatchArgs);

/// A configuration problem, naming the field.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {field}: {message}")]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

fn config_error(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        message: message.into(),
    }
}

/// Parse the command line (and the environment, and the file it names) into settings.
pub fn parse_cli() -> Result<Cli, ConfigError> {
    let matches = Cli::command().get_matches();
    cli_from_matches(&matches)
}

/// Like [`parse_cli`], from an explicit argument list (for tests).
pub fn try_parse_from<I, T>(args: I) -> Result<Cli, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = Cli::command()
        .try_get_matches_from(args)
        .map_err(|e| config_error("command line", e.to_string()))?;
    cli_from_matches(&matches)
}

fn cli_from_matches(matches: &ArgMatches) -> Result<Cli, ConfigError> {
    let mut cli =
        Cli::from_arg_matches(matches).map_err(|e| config_error("command line", e.to_string()))?;
    let Command::Serve(args) = &mut cli.command;
    if let Some(path) = args.config.clone() {
        let serve_matches = matches
            .subcommand_matches("serve")
            .expect("serve is the only subcommand; this is a bug");
        let file = std::fs::read_to_string(&path)
            .map_err(|e| config_error("config", format!("cannot read {}: {e}", path.display())))?;
        let merged = merge_file(args, &file, serve_matches)
            .map_err(|m| config_error(format!("config ({})", path.display()), m))?;
        **args = ServeArgs {
            config: Some(path),
            ..merged
        };
    }
    args.validate()?;
    Ok(cli)
}

/// Values from the file fill every setting that neither a flag nor an environment variable set.
fn merge_file(cli: &ServeArgs, file: &str, matches: &ArgMatches) -> Result<ServeArgs, String> {
    let file: toml::Table = toml::from_str(file).map_err(|e| e.to_string())?;
    let mut merged = toml::Table::try_from(cli).map_err(|e| e.to_string())?;
    let explicit = |id: &str| {
        // Only ask about known ids: clap panics on a name that is not an argument (the file's
        // unknown keys are reported by deserialization below, naming the key).
        matches.ids().any(|known| known.as_str() == id)
            && matches!(
                matches.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
    };
    for (section, value) in file {
        match value {
            toml::Value::Table(table) if section != "pools" => {
                let Some(toml::Value::Table(target)) = merged.get_mut(&section) else {
                    return Err(format!("unknown section [{section}]"));
                };
                for (key, value) in table {
                    if !explicit(&key) {
                        target.insert(key, value);
                    }
                }
            }
            other => {
                merged.insert(section, other);
            }
        }
    }
    toml::Value::Table(merged)
        .try_into()
        .map_err(|e: toml::de::Error| e.to_string())
}

impl ServeArgs {
    /// Check every setting once, at start-up, naming the field of the first problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        if l.max_body_bytes == 0 {
            return Err(config_error("limits.max_body_bytes", "must be positive"));
        }
        if l.max_image_bytes == 0 {
            return Err(config_error("limits.max_image_bytes", "must be positive"));
        }
        if l.max_model_len == 0 {
            return Err(config_error("limits.max_model_len", "must be positive"));
        }
        if l.max_json_depth < MIN_JSON_DEPTH {
            return Err(config_error(
                "limits.max_json_depth",
                format!("must be at least {MIN_JSON_DEPTH}: the chat schema nests six deep"),
            ));
        }
        if l.min_pixels == 0 || l.min_pixels > l.max_pixels {
            return Err(config_error(
                "limits.min_pixels",
                format!("must be positive and at most max_pixels ({})", l.max_pixels),
            ));
        }
        if self.server.served_model_name.is_empty() {
            return Err(config_error(
                "server.served_model_name",
                "must not be empty",
            ));
        }
        if self.server.shutdown_grace_secs.is_nan() || self.server.shutdown_grace_secs < 0.0 {
            return Err(config_error(
                "server.shutdown_grace_secs",
                "must be zero or more",
            ));
        }
        if self.server.api_key.as_deref() == Some("") {
            return Err(config_error("server.api_key", "must not be empty when set"));
        }
        if self.server.workers.is_empty() {
            return Err(config_error(
                "server.workers",
                "at least one --worker [MODEL=]URL is needed",
            ));
        }
        for spec in &self.server.workers {
            WorkerSpec::parse(spec, &self.server.served_model_name)
                .map_err(|m| config_error("server.workers", format!("`{spec}`: {m}")))?;
        }
        let b = &self.batch;
        if !b.batch_window_secs.is_finite() || b.batch_window_secs <= 0.0 {
            return Err(config_error("batch.batch_window_secs", "must be positive"));
        }
        if b.batch_max_in_flight == 0 {
            return Err(config_error(
                "batch.batch_max_in_flight",
                "must be positive",
            ));
        }
        if b.max_file_bytes == 0 {
            return Err(config_error("batch.max_file_bytes", "must be positive"));
        }
        self.pool.validate("pool")?;
        for name in self.pools.keys() {
            let settings = self.pool_settings(name)?;
            settings.validate(&format!("pools.{name}"))?;
        }
        Ok(())
    }

    /// The workers, parsed and grouped by served model name, in the order given.
    pub fn worker_specs(&self) -> Vec<WorkerSpec> {
        self.server
            .workers
            .iter()
            .map(|s| {
                WorkerSpec::parse(s, &self.server.served_model_name)
                    .expect("workers were validated at start-up; this is a bug")
            })
            .collect()
    }

    /// `[pool]` with `[pools.NAME]` laid over it.
    pub fn pool_settings(&self, model: &str) -> Result<PoolArgs, ConfigError> {
        let Some(overrides) = self.pools.get(model) else {
            return Ok(self.pool.clone());
        };
        let mut table = toml::Table::try_from(&self.pool)
            .map_err(|e| config_error(format!("pools.{model}"), e.to_string()))?;
        for (k, v) in overrides {
            table.insert(k.clone(), v.clone());
        }
        toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| config_error(format!("pools.{model}"), e.to_string()))
    }
}

impl PoolArgs {
    fn validate(&self, section: &str) -> Result<(), ConfigError> {
        let positive = [
            ("max_in_flight", self.max_in_flight as f64),
            ("max_tokens_in_flight", self.max_tokens_in_flight as f64),
            ("queue_capacity", self.queue_capacity as f64),
            ("connect_timeout_secs", self.connect_timeout_secs),
            ("first_byte_timeout_secs", self.first_byte_timeout_secs),
            ("request_timeout_secs", self.request_timeout_secs),
            ("health_interval_secs", self.health_interval_secs),
            ("health_timeout_secs", self.health_timeout_secs),
            ("unhealthy_threshold", self.unhealthy_threshold as f64),
            ("healthy_threshold", self.healthy_threshold as f64),
            ("eject_after_failures", self.eject_after_failures as f64),
            ("eject_base_secs", self.eject_base_secs),
            ("dns_refresh_secs", self.dns_refresh_secs),
        ];
        for (name, value) in positive {
            // NaN fails `is_finite`.
            if !value.is_finite() || value <= 0.0 {
                return Err(config_error(
                    format!("{section}.{name}"),
                    "must be positive",
                ));
            }
        }
        if !self.queue_timeout_secs.is_finite() || self.queue_timeout_secs < 0.0 {
            return Err(config_error(
                format!("{section}.queue_timeout_secs"),
                "must be zero or more",
            ));
        }
        if !(0.0..=1.0).contains(&self.batch_share) {
            return Err(config_error(
                format!("{section}.batch_share"),
                "must be between 0 and 1",
            ));
        }
        if self.eject_max_secs < self.eject_base_secs {
            return Err(config_error(
                format!("{section}.eject_max_secs"),
                "must be at least eject_base_secs",
            ));
        }
        Ok(())
    }

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

/// One `--worker [MODEL=]URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSpec {
    /// The served model name this worker belongs to.
    pub model: String,
    pub target: WorkerTarget,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerTarget {
    /// One OpenAI-compatible server, e.g. `http://127.0.0.1:8001` (no trailing slash).
    Http(String),
    /// Every address `host` resolves to, re-resolved: `scheme://ADDR:port` for each.
    Dns {
        scheme: String,
        host: String,
        port: u16,
    },
    /// The in-process engine on a model directory.
    Candle(PathBuf),
}

impl WorkerSpec {
    pub fn parse(spec: &str, default_model: &str) -> Result<WorkerSpec, String> {
        let spec = spec.trim();
        // `MODEL=URL`; a URL itself never contains `=` before its scheme's `:`.
        let (model, url) = match spec.split_once('=') {
            Some((m, u)) if !m.contains(':') && !m.contains('/') => (m.trim(), u.trim()),
            _ => (default_model, spec),
        };
        if model.is_empty() {
            return Err("the model name before `=` is empty".into());
        }
        let target = if let Some(path) = url.strip_prefix("candle:") {
            if path.is_empty() {
                return Err("candle: needs a model directory".into());
            }
            WorkerTarget::Candle(PathBuf::from(path))
        } else if let Some(rest) = url.strip_prefix("dns+") {
            let (scheme, hostport) = rest
                .split_once("://")
                .ok_or("expected dns+http://NAME:PORT")?;
            if scheme != "http" && scheme != "https" {
                return Err(format!("unsupported scheme `{scheme}`"));
            }
            let hostport = hostport.trim_end_matches('/');
            let (host, port) = hostport
                .rsplit_once(':')
                .ok_or("a dns+ worker needs an explicit port")?;
            let port: u16 = port.parse().map_err(|_| format!("bad port `{port}`"))?;
            if host.is_empty() {
                return Err("empty host name".into());
            }
            WorkerTarget::Dns {
                scheme: scheme.into(),
                host: host.into(),
                port,
            }
        } else if url.starts_with("http://") || url.starts_with("https://") {
            let parsed: http::Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
            if parsed.host().is_none() {
                return Err("the URL has no host".into());
            }
            // `/v1` is where the gateway adds its paths; accept a base given with it.
            let base = url.trim_end_matches('/');
            let base = base.strip_suffix("/v1").unwrap_or(base);
            WorkerTarget::Http(base.to_string())
        } else {
            return Err("expected http(s)://…, dns+http://…, or candle:/path".into());
        };
        Ok(WorkerSpec {
            model: model.to_string(),
            target,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(args: &[&str]) -> Result<ServeArgs, ConfigError> {
        let mut argv = vec!["caprl-gateway", "serve"];
        argv.extend_from_slice(args);
        try_parse_from(argv).map(|cli| {
            let Command::Serve(a) = cli.command;
            *a
        })
    }

    #[test]
    fn defaults_are_documented_values() {
        let a = serve(&["--worker", "http://127.0.0.1:9"]).expect("parses");
        assert_eq!(a.server.port, 8000);
        assert_eq!(a.server.host.to_string(), "0.0.0.0");
        assert_eq!(a.limits.max_body_bytes, 64 << 20);
        assert_eq!(a.limits.max_image_bytes, 32 << 20);
        assert_eq!(a.limits.max_images_per_request, 16);
        assert_eq!(a.limits.max_image_pixels, 50_000_000);
        assert_eq!(a.pool.policy, PolicyKind::LeastOutstanding);
        assert_eq!(a.server.served_model_name, "caprl");
    }

    #[test]
    fn worker_specs_parse() {
        let s = WorkerSpec::parse("http://127.0.0.1:8001/v1/", "caprl").expect("parses");
        assert_eq!(s.model, "caprl");
        assert_eq!(s.target, WorkerTarget::Http("http://127.0.0.1:8001".into()));
        let s = WorkerSpec::parse("eval=http://h:1", "caprl").expect("parses");
        assert_eq!(s.model, "eval");
        let s = WorkerSpec::parse("caprl=dns+http://vllm.caprl.svc:8000", "x").expect("parses");
        assert_eq!(
            s.target,
            WorkerTarget::Dns {
                scheme: "http".into(),
                host: "vllm.caprl.svc".into(),
                port: 8000
            }
        );
        let s = WorkerSpec::parse("candle:/models/CapRL-3B", "caprl").expect("parses");
        assert_eq!(s.target, WorkerTarget::Candle("/models/CapRL-3B".into()));
        assert!(WorkerSpec::parse("ftp://x", "caprl").is_err());
        assert!(WorkerSpec::parse("=http://x:1", "caprl").is_err());
    }

    #[test]
    fn errors_name_the_field() {
        let err = serve(&[]).expect_err("no workers");
        assert_eq!(err.field, "server.workers");
        let err = serve(&["--worker", "http://h:1", "--min-pixels", "0"]).expect_err("bad");
        assert_eq!(err.field, "limits.min_pixels");
        let err = serve(&["--worker", "gopher://h"]).expect_err("bad");
        assert!(err.to_string().contains("gopher://h"), "{err}");
    }

    #[test]
    fn file_fills_what_flags_leave_unset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gw.toml");
        std::fs::write(
            &path,
            r#"
[server]
port = 9100
workers = ["http://127.0.0.1:9001", "eval=http://127.0.0.1:9002"]
[limits]
max_images_per_request = 4
[pool]
max_in_flight = 8
[pools.eval]
policy = "affinity"
max_in_flight = 2
"#,
        )
        .expect("write");
        let p = path.to_str().expect("utf-8 path");
        let a = serve(&["--config", p, "--max-images-per-request", "6"]).expect("parses");
        assert_eq!(a.server.port, 9100);
        assert_eq!(a.server.workers.len(), 2);
        assert_eq!(
            a.limits.max_images_per_request, 6,
            "the flag wins over the file"
        );
        assert_eq!(a.pool.max_in_flight, 8);
        let eval = a.pool_settings("eval").expect("merges");
        assert_eq!(eval.policy, PolicyKind::Affinity);
        assert_eq!(eval.max_in_flight, 2);
        assert_eq!(a.pool_settings("caprl").expect("merges").max_in_flight, 8);
    }

    #[test]
    fn file_errors_name_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gw.toml");
        std::fs::write(&path, "[limits]\nmax_imagez = 3\n").expect("write");
        let p = path.to_str().expect("utf-8 path");
        let err = serve(&["--config", p, "--worker", "http://h:1"]).expect_err("unknown key");
        assert!(err.to_string().contains("max_imagez"), "{err}");
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("1k"), Ok(1000));
        assert_eq!(parse_bytes("123"), Ok(123));
        assert!(parse_bytes("12 parsecs").is_err());
    }

    #[test]
    fn debug_redacts_the_api_key() {
        let a = serve(&["--worker", "http://h:1", "--api-key", "sekrit"]).expect("parses");
        assert!(!format!("{a:?}").contains("sekrit"));
    }
}
