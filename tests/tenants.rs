//! API keys and their limits, end to end: the gateway on 127.0.0.1 in front of a fake worker,
//! a keys file on disk, real HTTP. Keys reload when the file changes and revoke at once; a key
//! sees only its models; the files and batch API is per key; requests per minute, tokens per
//! minute and concurrency each refuse with 429, OpenAI's envelope and `retry-after`; the
//! `x-ratelimit-*` headers count down and come back.

mod common;

use caprl_gateway::fake_worker::{Behaviour, FakeWorker};
use common::{metric, text_request, wait_for, Gateway};
use reqwest::header::HeaderMap;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

struct Setup {
    gw: Gateway,
    fake: FakeWorker,
    keys: PathBuf,
    _dir: tempfile::TempDir,
    _worker: tokio::task::JoinHandle<()>,
}

/// A fake worker serving `caprl` and `other`, and a gateway with `keys` as its keys file
/// (checked every 100 ms) plus `extra` flags.
async fn setup(keys: &str, extra: &[&str]) -> Setup {
    let fake = FakeWorker::new(
        "fake",
        vec!["caprl".into(), "other".into()],
        Behaviour::default(),
    );
    let (addr, worker) = fake.clone().spawn(0).await.expect("bind 127.0.0.1:0");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keys.toml");
    std::fs::write(&path, keys).expect("write keys");
    let url = format!("http://{addr}");
    let mut args = vec![
        "--worker".to_string(),
        format!("caprl={url}"),
        "--worker".into(),
        format!("other={url}"),
        "--keys-file".into(),
        path.display().to_string(),
        "--keys-reload-secs".into(),
        "0.1".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let gw = Gateway::start(&args).await;
    gw.wait_ready(WAIT).await;
    Setup {
        gw,
        fake,
        keys: path,
        _dir: dir,
        _worker: worker,
    }
}

struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn header_u64(&self, name: &str) -> u64 {
        self.header(name)
            .unwrap_or_else(|| panic!("no {name}: {:?}", self.headers))
            .parse()
            .unwrap_or_else(|_| panic!("{name} is not a number"))
    }

    fn error(&self) -> (&str, &str, &str) {
        let e = &self.body["error"];
        (
            e["type"].as_str().unwrap_or(""),
            e["code"].as_str().unwrap_or(""),
            e["message"].as_str().unwrap_or(""),
        )
    }
}

async fn send(
    s: &Setup,
    key: Option<&str>,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> Reply {
    let mut req = reqwest::Client::new().request(method, s.gw.url(path));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req.send().await.expect("the gateway answers");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    Reply {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
    }
}

async fn chat(s: &Setup, key: &str, body: &Value) -> Reply {
    send(
        s,
        Some(key),
        reqwest::Method::POST,
        "/v1/chat/completions",
        Some(body),
    )
    .await
}

/// A request that may write `max_tokens` but stops at the fake worker's first full stop
/// (about 20 tokens): an estimate far above the use.
fn stopping(max_tokens: u32) -> Value {
    let mut b = text_request(max_tokens);
    b["stop"] = json!(["."]);
    b
}

fn with_model(model: &str) -> Value {
    let mut b = text_request(8);
    b["model"] = json!(model);
    b
}

#[tokio::test]
async fn unknown_and_revoked_keys_get_401_and_a_new_key_works_without_a_restart() {
    let s = setup(
        "[[keys]]\nname = \"team-a\"\nsecret = \"sk-a\"\n\
         [[keys]]\nname = \"team-b\"\nsecret = \"sk-b\"\n",
        &[],
    )
    .await;
    assert_eq!(chat(&s, "sk-a", &text_request(8)).await.status, 200);
    assert_eq!(chat(&s, "sk-b", &text_request(8)).await.status, 200);
    for bad in [Some("sk-c"), None] {
        let r = send(
            &s,
            bad,
            reqwest::Method::POST,
            "/v1/chat/completions",
            Some(&text_request(8)),
        )
        .await;
        assert_eq!(r.status, 401);
        assert_eq!(r.error().0, "authentication_error");
        assert_eq!(r.error().1, "invalid_api_key");
        assert!(!r.error().2.contains("sk-"), "the message repeats a key");
    }
    let before = s.fake.stats()["requests"].as_u64().expect("count");

    // Revoke team-b, add team-c: the file is replaced as a Kubernetes Secret update does.
    let tmp = s.keys.with_extension("tmp");
    std::fs::write(
        &tmp,
        "[[keys]]\nname = \"team-a\"\nsecret = \"sk-a\"\n\
         [[keys]]\nname = \"team-c\"\nsecret = \"sk-c\"\n",
    )
    .expect("write");
    std::fs::rename(&tmp, &s.keys).expect("swap");
    let swapped = wait_for(WAIT, || async {
        chat(&s, "sk-c", &text_request(8)).await.status == 200
    })
    .await;
    assert!(swapped.is_some(), "the new key never took effect");
    assert_eq!(chat(&s, "sk-b", &text_request(8)).await.status, 401);
    assert_eq!(chat(&s, "sk-a", &text_request(8)).await.status, 200);
    assert_eq!(
        metric(
            &s.gw.state,
            "caprl_gateway_keys_reloads_total",
            &[("outcome", "ok")]
        ),
        1.0
    );

    // A broken file: the keys in force stay, the error is counted.
    std::fs::write(&tmp, "[[keys]]\nname = \"team-a\"\n").expect("write");
    std::fs::rename(&tmp, &s.keys).expect("swap");
    let refused = wait_for(WAIT, || async {
        metric(
            &s.gw.state,
            "caprl_gateway_keys_reloads_total",
            &[("outcome", "error")],
        ) >= 1.0
    })
    .await;
    assert!(refused.is_some(), "the broken file was not noticed");
    assert_eq!(chat(&s, "sk-c", &text_request(8)).await.status, 200);
    // Only authenticated requests reached the worker: 2 before the 401s, then c's first
    // success (possibly after 401s of its own, which never reach the worker), b's 401, a, c.
    let after = s.fake.stats()["requests"].as_u64().expect("count");
    assert_eq!(after - before, 3);
    assert_eq!(
        metric(
            &s.gw.state,
            "caprl_gateway_key_requests_total",
            &[("key", "team-a")]
        ),
        2.0
    );
    assert_eq!(
        metric(
            &s.gw.state,
            "caprl_gateway_key_requests_total",
            &[("key", "team-b")]
        ),
        0.0,
        "a revoked key's series are dropped"
    );
}

#[tokio::test]
async fn a_key_sees_only_its_models_and_the_bulk_api_only_when_allowed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().display().to_string();
    let s = setup(
        "[[keys]]\nname = \"scoped\"\nsecret = \"sk-scoped\"\nmodels = [\"caprl\"]\n\
         [[keys]]\nname = \"bulk\"\nsecret = \"sk-bulk\"\nfiles_and_batches = true\n",
        &["--data-dir", &data],
    )
    .await;
    // A model the key may not use is answered as if it did not exist.
    let hidden = chat(&s, "sk-scoped", &with_model("other")).await;
    let missing = chat(&s, "sk-scoped", &with_model("nonexistent")).await;
    assert_eq!(hidden.status, 404);
    assert_eq!(hidden.error().1, "model_not_found");
    assert_eq!(hidden.body["error"]["param"], "model");
    assert_eq!(
        hidden.error().2.replace("other", "X"),
        missing.error().2.replace("nonexistent", "X"),
        "a hidden model must read exactly like a missing one"
    );
    assert_eq!(
        chat(&s, "sk-scoped", &with_model("caprl")).await.status,
        200
    );
    assert_eq!(chat(&s, "sk-bulk", &with_model("other")).await.status, 200);

    let models = |r: Reply| -> Vec<String> {
        r.body["data"]
            .as_array()
            .expect("a list")
            .iter()
            .map(|m| m["id"].as_str().expect("id").to_string())
            .collect()
    };
    let scoped = send(
        &s,
        Some("sk-scoped"),
        reqwest::Method::GET,
        "/v1/models",
        None,
    )
    .await;
    assert_eq!(models(scoped), ["caprl"]);
    let all = send(
        &s,
        Some("sk-bulk"),
        reqwest::Method::GET,
        "/v1/models",
        None,
    )
    .await;
    assert_eq!(models(all), ["caprl", "other"]);

    for path in ["/v1/files", "/v1/batches"] {
        let r = send(&s, Some("sk-scoped"), reqwest::Method::GET, path, None).await;
        assert_eq!(r.status, 403, "{path}");
        assert_eq!(r.error().1, "permission_denied");
        let r = send(&s, Some("sk-bulk"), reqwest::Method::GET, path, None).await;
        assert_eq!(r.status, 200, "{path}: {:?}", r.body);
    }
}

#[tokio::test]
async fn requests_per_minute_count_down_refuse_with_429_and_come_back() {
    // 120 a minute: one comes back every 500 ms.
    let s = setup(
        "[[keys]]\nname = \"rpm\"\nsecret = \"sk-rpm\"\nrequests_per_minute = 120\n\
         [[keys]]\nname = \"free\"\nsecret = \"sk-free\"\n",
        &[],
    )
    .await;
    let mut remaining = Vec::new();
    let mut refused = None;
    // Bounded: 120 allowed, so the 121st at the latest is refused (a few may come back while
    // the loop runs).
    for _ in 0..200 {
        let r = send(&s, Some("sk-rpm"), reqwest::Method::GET, "/v1/models", None).await;
        assert_eq!(r.header_u64("x-ratelimit-limit-requests"), 120);
        if r.status == 429 {
            refused = Some(r);
            break;
        }
        assert_eq!(r.status, 200);
        remaining.push(r.header_u64("x-ratelimit-remaining-requests"));
        assert!(r.header("x-ratelimit-reset-requests").is_some());
    }
    let refused = refused.expect("the limit never refused");
    assert_eq!(remaining[0], 119);
    assert!(
        remaining.windows(2).all(|w| w[1] <= w[0] + 1),
        "remaining must count down: {remaining:?}"
    );
    assert_eq!(
        refused.error(),
        ("requests", "rate_limit_exceeded", refused.error().2)
    );
    assert!(refused.error().2.contains("requests per minute"));
    assert_eq!(refused.header_u64("x-ratelimit-remaining-requests"), 0);
    let wait_ms = refused.header_u64("retry-after-ms");
    assert!((1..=500).contains(&wait_ms), "retry-after-ms {wait_ms}");
    assert_eq!(refused.header_u64("retry-after"), 1);
    // Another key is not affected, and has no limit headers.
    let free = send(
        &s,
        Some("sk-free"),
        reqwest::Method::GET,
        "/v1/models",
        None,
    )
    .await;
    assert_eq!(free.status, 200);
    assert!(free.header("x-ratelimit-limit-requests").is_none());
    // After the wait the key is let in again.
    tokio::time::sleep(Duration::from_millis(wait_ms + 20)).await;
    let back = send(&s, Some("sk-rpm"), reqwest::Method::GET, "/v1/models", None).await;
    assert_eq!(back.status, 200);
    assert_eq!(
        metric(
            &s.gw.state,
            "caprl_gateway_key_rate_limited_total",
            &[("key", "rpm"), ("limit", "requests")]
        ),
        1.0
    );
}

#[tokio::test]
async fn tokens_are_charged_from_the_estimate_and_settled_from_the_usage() {
    let s = setup(
        "[[keys]]\nname = \"tpm\"\nsecret = \"sk-tpm\"\ntokens_per_minute = 10000\n",
        &[],
    )
    .await;
    // Charged max_tokens (4000) plus the prompt at admission; the fake worker uses a few
    // tokens, and the rest comes back before the answer's headers are written.
    let r = chat(&s, "sk-tpm", &stopping(4000)).await;
    assert_eq!(r.status, 200);
    let used = r.body["usage"]["total_tokens"].as_u64().expect("usage");
    assert!(used < 100, "{used}");
    assert_eq!(r.header_u64("x-ratelimit-limit-tokens"), 10000);
    let left = r.header_u64("x-ratelimit-remaining-tokens");
    assert!(
        (10000 - used - 5..=10000 - used + 5).contains(&left),
        "remaining {left} after using {used} (a little refills meanwhile)"
    );
    assert!(r.header("x-ratelimit-reset-tokens").is_some());

    // Two requests held at the worker at once: the second's estimate does not fit while the
    // first holds its 6000.
    s.fake.set(|b| b.latency_ms = 1500);
    let first = {
        let body = stopping(6000);
        let url = s.gw.url("/v1/chat/completions");
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(url)
                .bearer_auth("sk-tpm")
                .json(&body)
                .send()
                .await
                .expect("answer")
                .status()
                .as_u16()
        })
    };
    let held = wait_for(WAIT, || async {
        metric(
            &s.gw.state,
            "caprl_gateway_key_in_flight",
            &[("key", "tpm")],
        ) == 1.0
    })
    .await;
    assert!(held.is_some(), "the first request never got in");
    let second = chat(&s, "sk-tpm", &stopping(6000)).await;
    assert_eq!(second.status, 429);
    assert_eq!(second.error().0, "tokens");
    assert_eq!(second.error().1, "rate_limit_exceeded");
    assert!(second.header_u64("retry-after-ms") > 0);
    assert_eq!(first.await.expect("task"), 200);
    s.fake.set(|b| b.latency_ms = 0);
    // Settled: the same request fits again.
    assert_eq!(chat(&s, "sk-tpm", &stopping(6000)).await.status, 200);

    // More than the whole limit can never fit: 429 without a retry hint, and not retryable.
    let huge = chat(&s, "sk-tpm", &text_request(20000)).await;
    assert_eq!(huge.status, 429);
    assert!(
        huge.error().2.contains("Request too large"),
        "{}",
        huge.error().2
    );
    assert!(huge.header("retry-after").is_none());
    assert_eq!(huge.header("x-should-retry"), Some("false"));
    assert_eq!(
        metric(
            &s.gw.state,
            "caprl_gateway_key_rate_limited_total",
            &[("key", "tpm"), ("limit", "tokens")]
        ),
        2.0
    );
    assert!(
        metric(
            &s.gw.state,
            "caprl_gateway_key_tokens_total",
            &[("key", "tpm")]
        ) > 0.0,
        "the usage is counted per key"
    );
}

#[tokio::test]
async fn concurrent_requests_past_the_keys_bound_get_429_and_slots_come_back() {
    let s = setup(
        "[[keys]]\nname = \"one\"\nsecret = \"sk-one\"\nmax_concurrent = 1\n",
        &[],
    )
    .await;
    // A stream held open by a slow worker holds the key's one slot until it ends.
    s.fake.set(|b| b.tokens_per_sec = 20.0);
    let mut body = text_request(20);
    body["stream"] = json!(true);
    let url = s.gw.url("/v1/chat/completions");
    let stream = tokio::spawn(async move {
        let resp = reqwest::Client::new()
            .post(url)
            .bearer_auth("sk-one")
            .json(&body)
            .send()
            .await
            .expect("answer");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("the stream ends");
        (status, text)
    });
    let held = wait_for(WAIT, || async {
        metric(
            &s.gw.state,
            "caprl_gateway_key_in_flight",
            &[("key", "one")],
        ) == 1.0
    })
    .await;
    assert!(held.is_some(), "the stream never got in");
    let second = chat(&s, "sk-one", &text_request(8)).await;
    assert_eq!(second.status, 429);
    assert_eq!(second.error().1, "rate_limit_exceeded");
    assert!(
        second.error().2.contains("concurrent"),
        "{}",
        second.error().2
    );
    assert_eq!(second.header_u64("retry-after"), 1);
    let (status, text) = stream.await.expect("task");
    assert_eq!(status, 200);
    assert!(text.contains("data: [DONE]"));
    let freed = wait_for(WAIT, || async {
        metric(
            &s.gw.state,
            "caprl_gateway_key_in_flight",
            &[("key", "one")],
        ) == 0.0
    })
    .await;
    assert!(freed.is_some(), "the slot was not given back");
    assert_eq!(chat(&s, "sk-one", &text_request(8)).await.status, 200);
    assert_eq!(
        metric(
            &s.gw.state,
            "caprl_gateway_key_rate_limited_total",
            &[("key", "one"), ("limit", "concurrency")]
        ),
        1.0
    );
}

#[tokio::test]
async fn limits_are_shared_out_over_the_replicas() {
    // 300 a minute over 3 replicas: this one allows 100.
    let s = setup(
        "[[keys]]\nname = \"fleet\"\nsecret = \"sk-fleet\"\nrequests_per_minute = 300\n",
        &["--rate-limit-replicas", "3"],
    )
    .await;
    let r = send(
        &s,
        Some("sk-fleet"),
        reqwest::Method::GET,
        "/v1/models",
        None,
    )
    .await;
    assert_eq!(r.header_u64("x-ratelimit-limit-requests"), 100);
    assert_eq!(r.header_u64("x-ratelimit-remaining-requests"), 99);
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_stream_gives_back_its_keys_slot_and_the_worker() {
    let s = setup(
        "[[keys]]\nname = \"leaver\"\nsecret = \"sk-leaver\"\nmax_concurrent = 1\ntokens_per_minute = 100000\n",
        &[],
    )
    .await;
    s.fake.set(|b| b.tokens_per_sec = 5.0);
    let mut body = stopping(200);
    body["stream"] = json!(true);
    let resp = reqwest::Client::new()
        .post(s.gw.url("/v1/chat/completions"))
        .bearer_auth("sk-leaver")
        .json(&body)
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    use futures::StreamExt;
    let first = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("a first event");
    assert!(first.is_some());
    assert_eq!(
        metric(
            &s.gw.state,
            "caprl_gateway_key_in_flight",
            &[("key", "leaver")]
        ),
        1.0
    );
    drop(stream);
    let released = wait_for(WAIT, || async {
        metric(
            &s.gw.state,
            "caprl_gateway_key_in_flight",
            &[("key", "leaver")],
        ) == 0.0
            && metric(&s.gw.state, "caprl_gateway_worker_in_flight", &[]) == 0.0
    })
    .await;
    assert!(
        released.is_some(),
        "the hang-up did not release the key's slot and the worker"
    );
    s.fake.set(|b| b.tokens_per_sec = 0.0);
    // The slot is free again: a new request of the same key is admitted.
    assert_eq!(chat(&s, "sk-leaver", &text_request(4)).await.status, 200);
}
