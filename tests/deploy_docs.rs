//! The deployment files agree with the code: every `caprl_gateway_*` series the Grafana
//! dashboards query is registered by `Metrics::new()`, deploy/README.md documents every metric
//! and every flag and environment variable of `serve` (read from `Cli::command()`, and no row
//! names a flag that is gone), and the shipped deploy/base/gateway.toml is accepted by the
//! config parser, every key of it taking effect, and serves with it.
//!
//! scripts/ci/check-deploy.sh keeps what needs the rendered manifests (kustomize, schemas,
//! linters, drain timing).

use axum::body::Body;
use axum::http::{Request, StatusCode};
use caprl_gateway::config::{self, Cli};
use caprl_gateway::metrics::Metrics;
use caprl_gateway::state::AppState;
use clap::CommandFactory;
use prometheus::Registry;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use tower::ServiceExt;

const PREFIX: &str = "caprl_gateway_";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// Whether `registry` holds a metric family named `name`: registering another collector under
/// that name (with a different help text) is refused exactly when one is there. A registry
/// gathers only families that have a series, so a fresh one cannot simply be listed.
fn defined(registry: &Registry, name: &str) -> bool {
    let probe = prometheus::IntCounter::new(name, "probe: is this name registered?")
        .unwrap_or_else(|e| panic!("`{name}` is not a valid metric name: {e}"));
    match registry.register(Box::new(probe.clone())) {
        Ok(()) => {
            registry
                .unregister(Box::new(probe))
                .expect("the probe was just registered; this is a bug");
            false
        }
        Err(_) => true,
    }
}

/// A histogram's series name (`_bucket`, `_sum`, `_count`) or a family name: the family.
fn family(registry: &Registry, series: &str) -> Option<String> {
    if defined(registry, series) {
        return Some(series.to_string());
    }
    ["_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|s| series.strip_suffix(s))
        .find(|base| defined(registry, base))
        .map(str::to_string)
}

/// How many collectors the registry holds, from its `Debug` form (`RegistryCore (N
/// collectors)`): the prometheus crate offers no other count of families without series.
fn collector_count(registry: &Registry) -> usize {
    let debug = format!("{registry:?}");
    debug
        .split_once("RegistryCore (")
        .and_then(|(_, rest)| rest.split_once(" collectors)"))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the collector count from {debug:?}"))
}

/// Every `caprl_gateway_[a-z_]+` token in `text`.
fn gateway_series(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(PREFIX) {
        let starts_word = at == 0
            || !rest[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[at..];
        let len = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        if starts_word && len > PREFIX.len() {
            out.push(tail[..len].to_string());
        }
        rest = &tail[len.max(1)..];
    }
    out
}

/// The query strings (`expr`, `definition`) anywhere in a Grafana dashboard.
fn queries<'a>(node: &'a Value, out: &mut Vec<&'a str>) {
    match node {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "definition", Value::String(s)) => out.push(s),
                    _ => queries(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

#[test]
fn every_dashboard_series_is_a_registered_metric() {
    let metrics = Metrics::new();
    let registry = &metrics.registry;
    assert!(
        !defined(registry, "caprl_gateway_no_such_metric_total"),
        "the probe must tell an unknown name"
    );
    let dir = repo("deploy/grafana");
    let mut dashboards = 0;
    for entry in std::fs::read_dir(&dir).expect("deploy/grafana") {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        dashboards += 1;
        let name = path.display().to_string();
        let text = std::fs::read_to_string(&path).expect("a dashboard file");
        let dashboard: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"));
        let panels = dashboard["panels"].as_array().map_or(0, Vec::len);
        let mut found = Vec::new();
        queries(&dashboard, &mut found);
        let used: BTreeSet<String> = found.iter().flat_map(|q| gateway_series(q)).collect();
        assert!(
            used.len() >= 10 && panels > 0,
            "{name}: only {panels} panels and {} gateway series: is it the dashboard?",
            used.len()
        );
        let unknown: Vec<&String> = used
            .iter()
            .filter(|s| family(registry, s).is_none())
            .collect();
        assert!(
            unknown.is_empty(),
            "{name} queries series that Metrics::new() does not register: {unknown:?}"
        );
        eprintln!(
            "{name}: {panels} panels, {} gateway series, all registered",
            used.len()
        );
    }
    assert!(dashboards > 0, "no dashboard in {}", dir.display());
}

#[test]
fn the_deploy_readme_documents_every_metric_and_only_those() {
    let metrics = Metrics::new();
    let registry = &metrics.registry;
    let readme = read("deploy/README.md");
    // The metrics table: rows that start with a gateway metric name.
    let rows: Vec<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`').map(|(name, _)| name))
        .filter(|name| name.starts_with(PREFIX))
        .map(str::to_string)
        .collect();
    let documented: BTreeSet<&String> = rows.iter().collect();
    assert_eq!(documented.len(), rows.len(), "a metric documented twice");
    let stale: Vec<&&String> = documented
        .iter()
        .filter(|n| !defined(registry, n))
        .collect();
    assert!(
        stale.is_empty(),
        "deploy/README.md documents metrics that Metrics::new() does not register: {stale:?}"
    );
    // Every documented name is registered and distinct: as many as registered means all.
    let registered = collector_count(registry);
    assert_eq!(
        documented.len(),
        registered,
        "Metrics::new() registers {registered} metrics, deploy/README.md's table has {}",
        documented.len()
    );
}

#[test]
fn the_deploy_readme_documents_every_flag_and_variable_of_serve() {
    let readme = read("deploy/README.md");
    let mut cli = Cli::command();
    cli.build();
    let serve = cli.find_subcommand("serve").expect("a `serve` subcommand");
    let mut flags = BTreeSet::new();
    let mut missing = Vec::new();
    for arg in serve.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "help" | "version") {
            continue;
        }
        let flag = format!("--{long}");
        if !readme.contains(&format!("`{flag}`")) {
            missing.push(flag.clone());
        }
        match arg.get_env().and_then(|e| e.to_str()) {
            Some(var) if !readme.contains(&format!("`{var}`")) => missing.push(var.to_string()),
            Some(_) => {}
            None => missing.push(format!("{flag} has no environment variable")),
        }
        flags.insert(flag);
    }
    assert!(
        flags.len() >= 20,
        "only {} flags: wrong command?",
        flags.len()
    );
    assert!(
        missing.is_empty(),
        "deploy/README.md's configuration table is out of date: {missing:?}"
    );
    // And no row of the table names a flag that is gone.
    let gone: Vec<&str> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `--"))
        .filter_map(|l| l.split_once('`').map(|(name, _)| name))
        .filter(|name| !flags.contains(&format!("--{name}")))
        .collect();
    assert!(
        gone.is_empty(),
        "deploy/README.md documents flags `serve` does not take: {gone:?}"
    );
}

#[tokio::test]
async fn the_shipped_gateway_toml_is_accepted_and_every_key_takes_effect() {
    let path = repo("deploy/base/gateway.toml");
    // The workers come from CAPRL_WORKERS in the overlays; any worker will do here.
    let cli = config::try_parse_from([
        "caprl-gateway",
        "serve",
        "--config",
        path.to_str().expect("a UTF-8 path"),
        "--worker",
        "http://127.0.0.1:9",
    ])
    .unwrap_or_else(|e| panic!("deploy/base/gateway.toml is refused: {e}"));
    let args = cli.command.into_serve().expect("serve");

    // Every key of the file is the value the settings hold.
    let file: toml::Table = toml::from_str(&read("deploy/base/gateway.toml")).expect("TOML");
    let settings = toml::Table::try_from(&*args).expect("the settings serialize");
    let mut keys = 0;
    for (section, table) in &file {
        let table = table
            .as_table()
            .unwrap_or_else(|| panic!("[{section}] is a table"));
        for (key, value) in table {
            let got = settings.get(section).and_then(|s| s.get(key));
            assert_eq!(got, Some(value), "[{section}] {key}");
            keys += 1;
        }
    }
    assert!(keys >= 20, "only {keys} keys in the file");

    // It serves with these settings: live, and not ready (no worker is reachable).
    let app = caprl_gateway::http::app(AppState::build(*args).expect("the state builds"));
    let get = |path: &str| {
        Request::get(path)
            // HTTP/1.1 needs a Host header (RFC 9112 §3.2; the gateway enforces it).
            .header("host", "gateway.test")
            .body(Body::empty())
            .expect("a valid request")
    };
    let health = app
        .clone()
        .oneshot(get("/health"))
        .await
        .expect("infallible");
    assert_eq!(health.status(), StatusCode::OK);
    let ready = app.oneshot(get("/ready")).await.expect("infallible");
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[test]
fn gateway_series_are_found_as_whole_words() {
    assert_eq!(
        gateway_series("rate(caprl_gateway_requests_total{a=\"b\"}[5m]) / xcaprl_gateway_no"),
        ["caprl_gateway_requests_total"]
    );
    assert!(gateway_series("caprl_gateway_").is_empty());
}
