//! The gateway's shared state, built once from the configuration: one pool per served model
//! (its members, its admission queue, its probe and discovery tasks), the HTTP client, metrics
//! and the drain switch. Handlers get it as axum `State`.

use crate::config::{ServeArgs, WorkerTarget};
use crate::metrics::Metrics;
use crate::pool::discovery::{self, DnsTarget, Resolver, SystemResolver};
use crate::pool::{probe, HealthPolicy, Members, Worker};
use crate::queue::QueueHandle;
use crate::shutdown::Drain;
use crate::worker::{self, Backend};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// One served model.
#[derive(Debug)]
pub struct Pool {
    pub members: Arc<Members>,
    pub queue: QueueHandle,
    /// Its workers run in this process and need decoded image bytes.
    pub in_process: bool,
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
    /// Every background task (queues, probes, discovery); stopped by `cancel`.
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
        let mut grouped: BTreeMap<String, Vec<WorkerTarget>> = BTreeMap::new();
        for spec in config.worker_specs() {
            grouped.entry(spec.model).or_default().push(spec.target);
        }
        let mut pools = BTreeMap::new();
        for (model, targets) in grouped {
            let settings = config.pool_settings(&model)?;
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
                },
            );
        }
        let created = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Ok(AppState(Arc::new(Inner {
            config,
            pools,
            client,
            metrics,
            drain: Arc::new(Drain::default()),
            created,
            tasks,
            cancel,
        })))
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
