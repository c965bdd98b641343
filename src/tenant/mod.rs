//! Who is calling, and what they may do: the API keys ([`keys`]: the file, parsed and checked)
//! and each key's limits on this replica ([`limits`]).
//!
//! The `/v1` middleware authenticates every request ([`Tenants::authenticate`]) and counts it
//! against the key's requests per minute; the handler, once the request is validated (a model
//! the key may not use is a 404, as if it did not exist), takes a concurrency slot and the
//! estimated tokens ([`limits::Limiter::admit`]), settled from the worker's usage when the
//! request finishes. Without `--api-key` or `--keys-file` every request is anonymous and
//! unlimited.
//!
//! The keys are swapped whole on reload (SIGHUP, or the file's content changed): requests in
//! flight keep the key they were admitted with. A key whose limits did not change keeps its
//! limiter state; a file that fails to parse changes nothing.

pub mod keys;
pub mod limits;

use crate::error::GatewayError;
use crate::metrics::Metrics;
use keys::KeySpec;
use limits::Limiter;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

/// One API key as loaded: its settings and its limiter.
#[derive(Debug)]
pub struct Tenant {
    spec: KeySpec,
    limiter: Arc<Limiter>,
}

impl Tenant {
    /// The key's name (logs, metrics, batch ownership); never the secret.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn may_use(&self, model: &str) -> bool {
        self.spec.models.as_ref().is_none_or(|m| m.contains(model))
    }

    pub fn files_and_batches(&self) -> bool {
        self.spec.files_and_batches
    }

    pub fn limiter(&self) -> &Arc<Limiter> {
        &self.limiter
    }
}

/// The caller of one request, in its extensions: a key, or nobody when no keys are set.
#[derive(Debug, Clone, Default)]
pub struct Caller(pub Option<Arc<Tenant>>);

impl Caller {
    pub fn may_use(&self, model: &str) -> bool {
        self.0.as_ref().is_none_or(|t| t.may_use(model))
    }

    /// Who owns what this caller creates (files, batches): the key's name, or "" without keys.
    pub fn owner(&self) -> &str {
        self.0.as_ref().map_or("", |t| t.name())
    }
}

/// The keys in force, and how to reload them.
pub struct Tenants {
    current: RwLock<Arc<Vec<Arc<Tenant>>>>,
    /// Whether a key is needed at all (`--api-key` or `--keys-file` given).
    required: bool,
    file: Option<PathBuf>,
    /// `--api-key`, the key named `default`, kept through every reload.
    single: Option<KeySpec>,
    /// The digest of the file text last tried, so an unchanged file is not parsed (and a bad
    /// one not logged) every few seconds.
    tried: Mutex<Option<[u8; 32]>>,
    replicas: u32,
    metrics: Metrics,
}

impl std::fmt::Debug for Tenants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenants")
            .field("keys", &self.snapshot().len())
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// The name `--api-key` goes by.
pub const SINGLE_KEY_NAME: &str = "default";

impl Tenants {
    /// Load the keys: `--api-key` and the keys file, which must parse (at start-up there are no
    /// old keys to fall back on).
    pub fn load(
        api_key: Option<&str>,
        file: Option<PathBuf>,
        replicas: u32,
        metrics: Metrics,
    ) -> anyhow::Result<Tenants> {
        let single = api_key.map(|k| KeySpec {
            name: SINGLE_KEY_NAME.to_string(),
            digest: keys::digest(k.as_bytes()),
            models: None,
            files_and_batches: true,
            limits: keys::Limits::default(),
        });
        let tenants = Tenants {
            current: RwLock::new(Arc::new(Vec::new())),
            required: single.is_some() || file.is_some(),
            file,
            single,
            tried: Mutex::new(None),
            replicas,
            metrics,
        };
        match tenants.reload() {
            Ok(_) => Ok(tenants),
            Err(e) => Err(anyhow::anyhow!("keys file: {e}")),
        }
    }

    /// The caller a request's `Authorization` header names; 401 when keys are required and it
    /// names none of them. The secret is hashed once and compared with every key's digest in
    /// constant time, with no early exit, so timing tells nothing of how much matched.
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Caller, GatewayError> {
        if !self.required {
            return Ok(Caller(None));
        }
        let secret = authorization
            .and_then(|v| v.strip_prefix(b"Bearer "))
            .map(<[u8]>::trim_ascii)
            .filter(|s| !s.is_empty())
            .ok_or(GatewayError::Unauthorized)?;
        let given = keys::digest(secret);
        let keys = self.snapshot();
        let mut found = None;
        for tenant in keys.iter() {
            if bool::from(tenant.spec.digest.ct_eq(&given)) {
                found = Some(tenant.clone());
            }
        }
        let tenant = found.ok_or(GatewayError::Unauthorized)?;
        self.metrics.key_request(tenant.name());
        Ok(Caller(Some(tenant)))
    }

    /// The key named `name` now, if it still exists (a batch's owner, for instance).
    pub fn by_name(&self, name: &str) -> Option<Arc<Tenant>> {
        self.snapshot().iter().find(|t| t.name() == name).cloned()
    }

    /// Whether keys are required (and so a batch's owner must still be a key).
    pub fn required(&self) -> bool {
        self.required
    }

    fn snapshot(&self) -> Arc<Vec<Arc<Tenant>>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-read the keys file. `Ok(true)`: new keys are in force; `Ok(false)`: nothing changed
    /// (no file, or the same text as last time); `Err`: the file is unreadable or wrong, and
    /// the keys in force stay.
    pub fn reload(&self) -> Result<bool, String> {
        let mut specs: Vec<KeySpec> = self.single.iter().cloned().collect();
        let first = self.snapshot().is_empty();
        if let Some(path) = &self.file {
            let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let fingerprint = keys::digest(&text);
            {
                let mut tried = self.tried.lock().unwrap_or_else(|p| p.into_inner());
                if *tried == Some(fingerprint) {
                    return Ok(false);
                }
                *tried = Some(fingerprint);
            }
            let text = String::from_utf8(text)
                .map_err(|_| format!("{}: not UTF-8 text", path.display()))?;
            let json = path.extension().is_some_and(|e| e == "json");
            let file_keys =
                keys::parse(&text, json).map_err(|e| format!("{}: {e}", path.display()))?;
            for k in &file_keys {
                if let Some(single) = &self.single {
                    if k.name == single.name || k.digest == single.digest {
                        return Err(format!(
                            "{}: key `{}` has the name or the secret of --api-key",
                            path.display(),
                            k.name
                        ));
                    }
                }
            }
            specs.extend(file_keys);
        } else if !first {
            return Ok(false);
        }
        self.install(specs);
        Ok(true)
    }

    fn install(&self, specs: Vec<KeySpec>) {
        let old = self.snapshot();
        let tenants: Vec<Arc<Tenant>> = specs
            .into_iter()
            .map(|spec| {
                let before = old.iter().find(|t| t.spec.name == spec.name);
                let limiter = match before {
                    Some(t) if t.spec.limits == spec.limits => t.limiter.clone(),
                    _ => Arc::new(Limiter::new(
                        &spec.name,
                        spec.limits.share(self.replicas),
                        before.map(|t| t.limiter.concurrent()),
                        &self.metrics,
                    )),
                };
                Arc::new(Tenant { spec, limiter })
            })
            .collect();
        for gone in old
            .iter()
            .filter(|o| !tenants.iter().any(|t| t.spec.name == o.spec.name))
        {
            self.metrics.forget_key(gone.name());
        }
        self.metrics.keys_loaded(tenants.len());
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(tenants);
    }

    /// Reload on SIGHUP and whenever the file's content changes (checked every `every`),
    /// until `cancel`. The SIGHUP handler is installed before this returns, so a signal sent
    /// once the gateway is listening never meets the default action (exit).
    pub fn watch(
        self: Arc<Self>,
        every: Duration,
        cancel: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangup = match self.file {
            None => None,
            Some(_) => match signal(SignalKind::hangup()) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "no SIGHUP handler; the keys file is still polled");
                    None
                }
            },
        };
        async move {
            if self.file.is_none() {
                return;
            }
            self.watch_loop(every, &mut hangup, cancel).await;
        }
    }

    async fn watch_loop(
        &self,
        every: Duration,
        hangup: &mut Option<tokio::signal::unix::Signal>,
        cancel: CancellationToken,
    ) {
        loop {
            let signalled = tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(every) => false,
                _ = async {
                    match hangup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => true,
            };
            if signalled {
                // A signal asks for a reload even when the text is the same (a retry after a
                // fix elsewhere, or to see the log line).
                *self.tried.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
            match self.reload() {
                Ok(true) => {
                    self.metrics.keys_reloaded(true);
                    tracing::info!(keys = self.snapshot().len(), signalled, "keys reloaded");
                }
                Ok(false) => {}
                Err(e) => {
                    self.metrics.keys_reloaded(false);
                    tracing::error!(error = %e, "keys file not reloaded; the keys in force stay");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenants(file_text: &str) -> (Tenants, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys.toml");
        std::fs::write(&path, file_text).expect("write");
        let t = Tenants::load(Some("sk-single"), Some(path), 1, Metrics::new()).expect("load");
        (t, dir)
    }

    fn name(t: &Tenants, header: &str) -> Result<String, String> {
        t.authenticate(Some(header.as_bytes()))
            .map(|c| c.owner().to_string())
            .map_err(|e| e.code().to_string())
    }

    #[test]
    fn every_key_and_only_those_authenticate() {
        let (t, _dir) = tenants(
            "[[keys]]\nname = \"a\"\nsecret = \"sk-a\"\n[[keys]]\nname = \"b\"\nsecret = \"sk-b\"\n",
        );
        assert_eq!(name(&t, "Bearer sk-a"), Ok("a".into()));
        assert_eq!(name(&t, "Bearer sk-b "), Ok("b".into()));
        assert_eq!(name(&t, "Bearer sk-single"), Ok(SINGLE_KEY_NAME.into()));
        for bad in [
            "Bearer sk-c",
            "Bearer ",
            "sk-a",
            "Basic sk-a",
            "Bearer sk-a2",
        ] {
            assert_eq!(name(&t, bad), Err("invalid_api_key".into()), "{bad}");
        }
        assert!(t.authenticate(None).is_err());
    }

    #[test]
    fn a_reload_swaps_keys_and_keeps_the_state_of_those_unchanged() {
        let (t, dir) = tenants(
            "[[keys]]\nname = \"a\"\nsecret = \"sk-a\"\nrequests_per_minute = 5\n\
             [[keys]]\nname = \"b\"\nsecret = \"sk-b\"\n",
        );
        let a = t.by_name("a").expect("a");
        a.limiter().request().1.expect("counted");
        let path = dir.path().join("keys.toml");
        // b revoked, c added, a unchanged.
        std::fs::write(
            &path,
            "[[keys]]\nname = \"a\"\nsecret = \"sk-a\"\nrequests_per_minute = 5\n\
             [[keys]]\nname = \"c\"\nsecret = \"sk-c\"\n",
        )
        .expect("write");
        assert_eq!(t.reload(), Ok(true));
        assert_eq!(name(&t, "Bearer sk-b"), Err("invalid_api_key".into()));
        assert_eq!(name(&t, "Bearer sk-c"), Ok("c".into()));
        let (left, allowed) = t.by_name("a").expect("a").limiter().request();
        allowed.expect("allowed");
        let left = left.expect("limited");
        assert_eq!(left.remaining, 3, "a's count survived the reload");
        // The same text again: nothing to do.
        assert_eq!(t.reload(), Ok(false));
        // A broken file keeps the keys in force.
        std::fs::write(&path, "[[keys]]\nname = \"a\"\n").expect("write");
        assert!(t.reload().is_err());
        assert_eq!(name(&t, "Bearer sk-c"), Ok("c".into()));
        // A key may not take --api-key's name or secret.
        std::fs::write(&path, "[[keys]]\nname = \"x\"\nsecret = \"sk-single\"\n").expect("write");
        assert!(t.reload().expect_err("clash").contains("--api-key"));
    }

    #[test]
    fn without_keys_everyone_is_anonymous() {
        let t = Tenants::load(None, None, 1, Metrics::new()).expect("load");
        let c = t.authenticate(None).expect("open");
        assert!(c.0.is_none());
        assert!(c.may_use("anything"));
        assert_eq!(c.owner(), "");
    }

    #[test]
    fn model_scope_is_the_keys_list() {
        let (t, _dir) =
            tenants("[[keys]]\nname = \"a\"\nsecret = \"sk-a\"\nmodels = [\"caprl\"]\n");
        let a = t.authenticate(Some(b"Bearer sk-a")).expect("a");
        assert!(a.may_use("caprl"));
        assert!(!a.may_use("other"));
        let single = t.authenticate(Some(b"Bearer sk-single")).expect("single");
        assert!(single.may_use("other"));
    }
}
