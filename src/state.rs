//! The gateway's shared state, built once from the configuration: one pool per served model
//! (its members, its admission queue, its probe and discovery tasks), the HTTP client, metrics
//! and the drain switch. Handlers get it as axum `State`.

use crate::batch::Batches;
use crate::cache::Cache;
use crate::config::{ResizeImages, ServeArgs, WorkerTarget};
use crate::error::GatewayError;
use crate::fetch::Fetcher;
use crate::files::Files;
use crate::metrics::Metrics;
use crate::pool::discovery::{self, DnsTarget, Resolver, SystemResolver};
use crate::pool::{probe, HealthPolicy, Members, Worker};
use crate::queue::QueueHandle;
use crate::resize::{ResizeChoice, Resizer};
use crate::shutdown::Drain;
use crate::store::{self, sqlite::Sqlite};
use crate::tenant::{Caller, Tenants};
use crate::validate::{
    self, validate_chat, validate_completion, Endpoint, ImageLimits, ValidRequest, ValidateOptions,
};
use crate::worker::{self, Backend};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// One served model: its workers, its admission queue, and what sending to them needs.
#[derive(Debug)]
pub struct Pool {
    pub members: Arc<Members>,
    pub queue: QueueHandle,
    /// Its workers run in this process and need decoded image bytes.
    pub in_process: bool,
    /// Its images above the pixel budget are resized here (`resize = "max-pixels"`).
    pub resize: bool,
    /// The HTTP client every worker shares (a cheap clone of one connection pool).
    client: reqwest::Client,
    metrics: Metrics,
}

impl Pool {
    /// The whole request's time limit, from its arrival.
    pub fn request_timeout(&self) -> Duration {
        self.members.settings.request_timeout()
    }

    /// Longest wait for a worker's response head.
    pub fn first_byte_timeout(&self) -> Duration {
        self.members.settings.first_byte_timeout()
    }

    /// Other workers a request may be tried on after a failure before any byte.
    pub fn max_retries(&self) -> u32 {
        self.members.settings.max_retries
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

#[derive(Debug)]
pub struct Inner {
    pub config: ServeArgs,
    /// By served model name. Fixed after start-up; membership inside each pool changes.
    pub pools: BTreeMap<String, Pool>,
    pub client: reqwest::Client,
    pub metrics: Metrics,
    pub drain: Arc<Drain>,
    /// Unix time of start-up, for `/v1/models`' `created`.
    pub created: u64,
    /// The files and batch APIs; None without `--data-dir`.
    pub batches: Option<Batches>,
    /// The API keys and their limits.
    pub tenants: Arc<Tenants>,
    /// The caption cache; None unless `--cache-max-bytes` is set.
    pub cache: Option<Cache>,
    /// The remote image fetcher; None unless `--fetch-remote-images` is set.
    pub fetcher: Option<Fetcher>,
    /// Shrinks images to the pixel budget for pools that ask for it.
    pub resizer: Resizer,
    /// Every background task (queues, probes, discovery, batch runners); stopped by `cancel`.
    pub tasks: TaskTracker,
    pub cancel: CancellationToken,
}

/// Cheap to clone; handed to every handler.
#[derive(Debug, Clone)]
pub struct AppState(pub Arc<Inner>);

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// Build pools and start their tasks. Needs a Tokio runtime.
    pub fn build(config: ServeArgs) -> anyhow::Result<AppState> {
        Self::build_with_resolver(config, Arc::new(SystemResolver))
    }

    pub fn build_with_resolver(
        config: ServeArgs,
        resolver: Arc<dyn Resolver>,
    ) -> anyhow::Result<AppState> {
        let metrics = Metrics::new();
        let tasks = TaskTracker::new();
        let cancel = CancellationToken::new();
        let client = worker::http::client(config.pool.connect_timeout());
        let resolved = config.resolve()?;
        let mut pools = BTreeMap::new();
        for (model, targets) in resolved.workers {
            let settings = resolved.pools[&model].clone();
            let resize = settings.resize == ResizeImages::MaxPixels;
            let policy = HealthPolicy::from(&settings);
            let members = Arc::new(Members::new(model.clone(), settings));
            let mut fixed = Vec::new();
            let mut in_process = false;
            for target in targets {
                match target {
                    WorkerTarget::Http(base) => fixed.push(Arc::new(Worker::new(
                        base.clone(),
                        model.clone(),
                        Backend::http(base),
                        policy,
                        metrics.clone(),
                    ))),
                    WorkerTarget::Dns { scheme, host, port } => {
                        tasks.spawn(discovery::run_dns(
                            DnsTarget { scheme, host, port },
                            members.clone(),
                            resolver.clone(),
                            metrics.clone(),
                            cancel.clone(),
                        ));
                    }
                    WorkerTarget::Candle(dir) => {
                        in_process = true;
                        fixed.push(Arc::new(candle_worker(
                            &dir, &model, &config, policy, &metrics,
                        )?));
                    }
                }
            }
            members.set(fixed);
            tasks.spawn(probe::run(members.clone(), client.clone(), cancel.clone()));
            let queue =
                QueueHandle::spawn(members.clone(), metrics.clone(), &tasks, cancel.clone());
            pools.insert(
                model,
                Pool {
                    members,
                    queue,
                    in_process,
                    resize,
                    client: client.clone(),
                    metrics: metrics.clone(),
                },
            );
        }
        let batches = match &config.batch.data_dir {
            None => None,
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| {
                    anyhow::anyhow!("cannot create the data directory {}: {e}", dir.display())
                })?;
                let db = Sqlite::open(&dir.join("state.db"))?;
                let shared = store::Shared(Arc::new(db));
                let files = Files::open(
                    dir,
                    shared,
                    config.batch.max_file_bytes,
                    config.batch.files_quota_bytes,
                    metrics.clone(),
                )?;
                Some(Batches::new(
                    files,
                    config.batch.window(),
                    config.batch.batch_max_in_flight,
                    metrics.clone(),
                ))
            }
        };
        let tenants = Arc::new(Tenants::load(
            config.server.api_key.as_deref(),
            config.server.keys_file.clone(),
            config.server.rate_limit_replicas,
            metrics.clone(),
        )?);
        tasks.spawn(
            tenants
                .clone()
                .watch(config.server.keys_reload(), cancel.clone()),
        );
        let cache = Cache::new(
            config.server.cache_max_bytes,
            config.server.cache_ttl(),
            metrics.clone(),
        );
        // The same resolver as discovery: a test that fixes what names resolve to fixes it for
        // image hosts too.
        let fetcher = match config.fetch.remote_images {
            false => None,
            true => Some(Fetcher::new(
                &config.fetch,
                &config.limits,
                resolver.clone(),
                metrics.clone(),
            )?),
        };
        let resizer = Resizer::new(ImageLimits::from(&config.limits), metrics.clone());
        let created = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let state = AppState(Arc::new(Inner {
            config,
            pools,
            client,
            metrics,
            drain: Arc::new(Drain::default()),
            created,
            batches,
            tenants,
            cache,
            fetcher,
            resizer,
            tasks,
            cancel,
        }));
        if let Some(batches) = &state.batches {
            batches.resume(&state)?;
        }
        Ok(state)
    }

    /// Check a request body as its endpoint does, for `caller` (the batch runner checks each
    /// line as the batch's owner): a [`ValidRequest`] or the error to answer. A model the
    /// caller's key may not use is not served, as far as the caller can tell, and an image
    /// named by file id must be one of the caller's own files.
    ///
    /// With `--fetch-remote-images`, a request that passed and has `http(s)` images gets them
    /// fetched ([`Fetcher::inline`]) and is checked again with each one as a data URL: the
    /// request that goes on is the one the client would have sent with the images inline.
    ///
    /// For a pool with `resize = "max-pixels"` (unless `resize` is [`ResizeChoice::Off`]),
    /// images above the pixel budget are then resized ([`Resizer::shrink`]) and the body is
    /// checked once more with them; each image keeps the hash of what the client sent.
    pub async fn validate_as(
        &self,
        endpoint: Endpoint,
        body: bytes::Bytes,
        caller: &Caller,
        resize: ResizeChoice,
    ) -> Result<ValidRequest, GatewayError> {
        let resizes = |model: &str| {
            resize == ResizeChoice::AsPool && self.pools.get(model).is_some_and(|p| p.resize)
        };
        let mut req = self.check_as(endpoint, body.clone(), caller, &resizes)?;
        if let Some(fetcher) = self.fetcher.as_ref().filter(|_| !req.remote.is_empty()) {
            let body = fetcher.inline(&body, &req.remote).await?;
            req = self.check_as(endpoint, body, caller, &resizes)?;
        }
        if !resizes(&req.model) {
            return Ok(req);
        }
        let urls = self.resizer.shrink(&req).await;
        let in_process = self.pools.get(&req.model).is_some_and(|p| p.in_process);
        if urls.is_empty() {
            if !in_process {
                // Kept for the resize only.
                req.images.iter_mut().for_each(|i| i.data = None);
            }
            return Ok(req);
        }
        let body = validate::replace_image_urls(&req.body, &urls)?;
        let mut resized = self.check_as(endpoint, body, caller, &|_| false)?;
        for (new, sent) in resized.images.iter_mut().zip(&req.images) {
            new.hash = sent.hash;
        }
        Ok(resized)
    }

    /// [`AppState::validate_as`] without fetching or resizing: one synchronous pass. Image
    /// bytes are kept for in-process pools and where `keep_for_resize` says so.
    fn check_as(
        &self,
        endpoint: Endpoint,
        body: bytes::Bytes,
        caller: &Caller,
        keep_for_resize: &dyn Fn(&str) -> bool,
    ) -> Result<ValidRequest, GatewayError> {
        let opts = ValidateOptions {
            limits: &self.config.limits,
            is_served: &|m| self.pools.contains_key(m) && caller.may_use(m),
            keep_image_bytes: &|m| {
                self.pools.get(m).is_some_and(|p| p.in_process) || keep_for_resize(m)
            },
            image_rejected: &|format| self.metrics.image_rejected(format),
            read_file: &|id| self.read_image_file(id, caller.owner()),
            reported_max_model_len: &|m| self.pools.get(m).and_then(|p| p.members.max_model_len()),
        };
        match endpoint {
            Endpoint::Chat => validate_chat(body, &opts),
            Endpoint::Completions => validate_completion(body, &opts),
        }
    }

    /// The bytes of an image uploaded with purpose `vision` by `owner`, for a request that
    /// names it by id: another owner's file is answered as one that does not exist. Blocking,
    /// like the rest of validation: a stored image is at most `max_image_bytes` and usually in
    /// the page cache.
    fn read_image_file(&self, id: &str, owner: &str) -> Result<Vec<u8>, String> {
        let Some(batches) = &self.batches else {
            return Err(format!(
                "file {id}: images by file id need the files API (start the gateway with \
                 --data-dir)"
            ));
        };
        let files = &batches.files;
        let row = files
            .store
            .0
            .file(id)
            .map_err(|e| {
                tracing::error!(error = %e, "store failed");
                format!("file {id} cannot be read now")
            })?
            .filter(|f| f.owner == owner)
            .ok_or_else(|| format!("no such file: {id}"))?;
        if row.purpose != "vision" {
            return Err(format!(
                "file {id} has purpose `{}`: an image must be uploaded with purpose `vision`",
                row.purpose
            ));
        }
        if row.bytes > self.config.limits.max_image_bytes {
            return Err(format!(
                "file {id} is {} bytes; the image limit is {} bytes",
                row.bytes, self.config.limits.max_image_bytes
            ));
        }
        std::fs::read(files.path(id)).map_err(|_| format!("no such file: {id}"))
    }

    /// Ready: not draining, and every served model has a worker that can take requests.
    pub fn is_ready(&self) -> bool {
        !self.drain.is_draining() && self.pools.values().all(|p| p.members.any_reachable())
    }
}

#[cfg(feature = "candle")]
fn candle_worker(
    dir: &std::path::Path,
    model: &str,
    config: &ServeArgs,
    policy: HealthPolicy,
    metrics: &Metrics,
) -> anyhow::Result<Worker> {
    let handle = worker::candle::CandleWorker::load(dir, &config.engine, model, &metrics.registry)?;
    Ok(Worker::new(
        format!("candle:{}", dir.display()),
        model.to_string(),
        Backend::Candle(handle),
        policy,
        metrics.clone(),
    ))
}

#[cfg(not(feature = "candle"))]
fn candle_worker(
    dir: &std::path::Path,
    _model: &str,
    _config: &ServeArgs,
    _policy: HealthPolicy,
    _metrics: &Metrics,
) -> anyhow::Result<Worker> {
    anyhow::bail!(
        "candle:{}: this binary was built without the `candle` feature",
        dir.display()
    )
}
