//! Validation at start-up, which returns the settings resolved: every `--worker` parsed and
//! grouped by served model, every pool's settings with its `[pools.NAME]` laid over `[pool]`.
//! The rest of the gateway reads [`Resolved`]; nothing parses a worker spec or merges a pool
//! table again.

use super::{config_error, ConfigError, PoolArgs, ServeArgs, MIN_JSON_DEPTH};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The settings the gateway runs with, beside [`ServeArgs`].
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The workers of each served model, in the order given.
    pub workers: BTreeMap<String, Vec<WorkerTarget>>,
    /// Each served model's pool settings: `[pool]` with its `[pools.NAME]` over it.
    pub pools: BTreeMap<String, PoolArgs>,
}

impl ServeArgs {
    /// Check every setting once, at start-up, naming the field of the first problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.resolve().map(|_| ())
    }

    /// Check every setting and resolve what the gateway runs with: the workers parsed and
    /// grouped by model, each model's pool settings merged. Called once, at start-up; nothing
    /// parses the workers or merges the pools again.
    pub fn resolve(&self) -> Result<Resolved, ConfigError> {
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
        if !l.body_budget_wait_secs.is_finite()
            || l.body_budget_wait_secs < 0.0
            || l.body_budget_wait_secs > 1e9
        {
            return Err(config_error(
                "limits.body_budget_wait_secs",
                "must be zero or more seconds",
            ));
        }
        if l.max_inflight_body_bytes < l.max_body_bytes {
            return Err(config_error(
                "limits.max_inflight_body_bytes",
                format!("must be at least max_body_bytes ({})", l.max_body_bytes),
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
        let sv = &self.server;
        for (field, secs) in [
            ("server.keys_reload_secs", sv.keys_reload_secs),
            (
                "server.header_read_timeout_secs",
                sv.header_read_timeout_secs,
            ),
            ("server.body_read_timeout_secs", sv.body_read_timeout_secs),
            ("server.cache_ttl_secs", sv.cache_ttl_secs),
        ] {
            // Durations are built from these; NaN, infinite or non-positive ones panic there.
            if !secs.is_finite() || secs <= 0.0 || secs > 1e9 {
                return Err(config_error(field, "must be a positive number of seconds"));
            }
        }
        if sv.rate_limit_replicas == 0 {
            return Err(config_error(
                "server.rate_limit_replicas",
                "must be at least 1",
            ));
        }
        if sv.min_body_bytes_per_sec == 0 {
            return Err(config_error(
                "server.min_body_bytes_per_sec",
                "must be positive",
            ));
        }
        if sv.max_header_bytes < 8192 {
            // hyper's smallest read buffer; a real client's head (auth, user agent) fits.
            return Err(config_error(
                "server.max_header_bytes",
                "must be at least 8KiB",
            ));
        }
        if sv.max_connections == 0 {
            return Err(config_error("server.max_connections", "must be positive"));
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
        let mut workers: BTreeMap<String, Vec<WorkerTarget>> = BTreeMap::new();
        for spec in &self.server.workers {
            let parsed = WorkerSpec::parse(spec, &self.server.served_model_name)
                .map_err(|m| config_error("server.workers", format!("`{spec}`: {m}")))?;
            workers.entry(parsed.model).or_default().push(parsed.target);
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
        let f = &self.fetch;
        for (field, secs) in [
            ("fetch.connect_secs", f.connect_secs),
            ("fetch.timeout_secs", f.timeout_secs),
        ] {
            if !secs.is_finite() || secs <= 0.0 || secs > 1e9 {
                return Err(config_error(field, "must be a positive number of seconds"));
            }
        }
        if f.max_concurrent == 0 {
            return Err(config_error("fetch.max_concurrent", "must be positive"));
        }
        for (field, hosts) in [
            ("fetch.allowed_hosts", &f.allowed_hosts),
            ("fetch.denied_hosts", &f.denied_hosts),
        ] {
            // Empty entries (an empty environment variable) mean no rule.
            for host in hosts.iter().filter(|h| !h.trim().is_empty()) {
                crate::fetch::HostRule::parse(host).map_err(|m| config_error(field, m))?;
            }
        }
        self.pool.validate("pool")?;
        for name in self.pools.keys() {
            let settings = self.pool_settings(name)?;
            settings.validate(&format!("pools.{name}"))?;
        }
        let pools = workers
            .keys()
            .map(|model| Ok((model.clone(), self.pool_settings(model)?)))
            .collect::<Result<BTreeMap<_, _>, ConfigError>>()?;
        Ok(Resolved { workers, pools })
    }

    /// `[pool]` with `[pools.NAME]` laid over it.
    fn pool_settings(&self, model: &str) -> Result<PoolArgs, ConfigError> {
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
