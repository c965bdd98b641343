//! The caption cache end to end: the gateway on 127.0.0.1 with `--cache-max-bytes`, in front of
//! a fake worker whose request count shows what reached it. A hit never does; identical
//! requests in flight are one load; a stream is answered from a cached whole answer; the same
//! image bytes under another data URL hit the same entry; only deterministic 200s are kept; the
//! byte bound holds under a flood of distinct keys.

mod common;

use caprl_gateway::fake_worker::{Behaviour, FakeWorker};
use common::{data_url_as, image_bytes, metric, text_request, Gateway};
use serde_json::{json, Value};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

struct Setup {
    gw: Gateway,
    fake: FakeWorker,
    _worker: tokio::task::JoinHandle<()>,
}

async fn setup(extra: &[&str]) -> Setup {
    let fake = FakeWorker::new("fake", vec!["caprl".into()], Behaviour::default());
    let (addr, worker) = fake.clone().spawn(0).await.expect("bind 127.0.0.1:0");
    let mut args = vec!["--worker".to_string(), format!("http://{addr}")];
    args.extend(extra.iter().map(|s| s.to_string()));
    let gw = Gateway::start(&args).await;
    gw.wait_ready(WAIT).await;
    Setup {
        gw,
        fake,
        _worker: worker,
    }
}

impl Setup {
    fn worker_requests(&self) -> u64 {
        self.fake.stats()["requests"].as_u64().expect("count")
    }

    async fn post(&self, body: &Value, headers: &[(&str, &str)]) -> (u16, String, String) {
        let mut req = reqwest::Client::new()
            .post(self.gw.url("/v1/chat/completions"))
            .json(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("answer");
        let status = resp.status().as_u16();
        let cache = resp
            .headers()
            .get("x-cache")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        (status, cache, resp.text().await.expect("body"))
    }
}

fn greedy(prompt: &str) -> Value {
    let mut b = text_request(8);
    b["temperature"] = json!(0);
    b["messages"][0]["content"] = json!(prompt);
    b
}

#[tokio::test]
async fn a_deterministic_answer_is_served_again_without_the_worker() {
    let s = setup(&["--cache-max-bytes", "1MiB"]).await;
    let (status, cache, first) = s.post(&greedy("Describe a kite."), &[]).await;
    assert_eq!((status, cache.as_str()), (200, "miss"));
    assert_eq!(s.worker_requests(), 1);
    let (status, cache, second) = s.post(&greedy("Describe a kite."), &[]).await;
    assert_eq!((status, cache.as_str()), (200, "hit"));
    assert_eq!(second, first, "the cached answer is the answer");
    assert_eq!(s.worker_requests(), 1, "a hit never reaches the worker");

    // Another sampling field is another key.
    let mut longer = greedy("Describe a kite.");
    longer["max_tokens"] = json!(9);
    assert_eq!(s.post(&longer, &[]).await.1, "miss");
    assert_eq!(s.worker_requests(), 2);

    // Not deterministic: not cached, unless the client opts in; an opt-out skips the cache.
    let mut sampled = text_request(8);
    sampled["temperature"] = json!(0.7);
    for _ in 0..2 {
        assert_eq!(s.post(&sampled, &[]).await.1, "bypass");
    }
    assert_eq!(s.worker_requests(), 4);
    assert_eq!(
        s.post(&sampled, &[("x-caprl-cache", "allow")]).await.1,
        "miss"
    );
    assert_eq!(
        s.post(&sampled, &[("x-caprl-cache", "allow")]).await.1,
        "hit"
    );
    assert_eq!(s.worker_requests(), 5);
    let (_, cache, _) = s
        .post(&greedy("Describe a kite."), &[("x-caprl-cache", "bypass")])
        .await;
    assert_eq!(cache, "bypass");
    assert_eq!(s.worker_requests(), 6);
    // A seed makes a sampled request deterministic.
    let mut seeded = sampled.clone();
    seeded["seed"] = json!(7);
    assert_eq!(s.post(&seeded, &[]).await.1, "miss");
    assert_eq!(s.post(&seeded, &[]).await.1, "hit");
    assert_eq!(s.worker_requests(), 7);

    let st = &s.gw.state;
    assert_eq!(
        metric(
            st,
            "caprl_gateway_cache_requests_total",
            &[("outcome", "hit")]
        ),
        3.0
    );
    assert_eq!(
        metric(
            st,
            "caprl_gateway_cache_requests_total",
            &[("outcome", "miss")]
        ),
        4.0
    );
    assert_eq!(
        metric(
            st,
            "caprl_gateway_cache_requests_total",
            &[("outcome", "bypass")]
        ),
        3.0
    );
}

#[tokio::test]
async fn the_same_image_bytes_under_another_data_url_hit_the_same_entry() {
    let s = setup(&["--cache-max-bytes", "1MiB"]).await;
    let png = image_bytes(image::ImageFormat::Png, 84, 56);
    let with = |url: String| {
        json!({"model": "caprl", "max_tokens": 8, "temperature": 0, "messages": [
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": "Please describe the image in detail."}]}]})
    };
    let (_, c1, a) = s.post(&with(data_url_as(&png, "image/png")), &[]).await;
    let (_, c2, b) = s.post(&with(data_url_as(&png, "image")), &[]).await;
    assert_eq!((c1.as_str(), c2.as_str()), ("miss", "hit"));
    assert_eq!(a, b);
    // Other bytes: another entry.
    let other = image_bytes(image::ImageFormat::Png, 84, 57);
    assert_eq!(
        s.post(&with(data_url_as(&other, "image/png")), &[]).await.1,
        "miss"
    );
    assert_eq!(s.worker_requests(), 2);
}

#[tokio::test]
async fn a_stream_is_answered_from_a_cached_whole_answer() {
    let s = setup(&["--cache-max-bytes", "1MiB"]).await;
    let (_, _, whole) = s.post(&greedy("Describe a kite."), &[]).await;
    let whole: Value = serde_json::from_str(&whole).expect("json");
    let mut streamed = greedy("Describe a kite.");
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let resp = reqwest::Client::new()
        .post(s.gw.url("/v1/chat/completions"))
        .json(&streamed)
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.headers()["x-cache"], "hit");
    assert!(resp.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("text/event-stream"));
    let text = resp.text().await.expect("body");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let chunks: Vec<Value> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("a JSON chunk"))
        .collect();
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, whole["choices"][0]["message"]["content"]);
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(
        chunks
            .iter()
            .rev()
            .find_map(|c| c["choices"][0]["finish_reason"].as_str()),
        whole["choices"][0]["finish_reason"].as_str()
    );
    assert_eq!(chunks.last().expect("usage")["usage"], whole["usage"]);
    assert_eq!(s.worker_requests(), 1);
    // A stream that misses goes to the worker (and is not stored).
    let mut fresh = greedy("Describe a boat.");
    fresh["stream"] = json!(true);
    let resp = reqwest::Client::new()
        .post(s.gw.url("/v1/chat/completions"))
        .json(&fresh)
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.headers()["x-cache"], "miss");
    assert!(resp.text().await.expect("body").contains("[DONE]"));
    assert_eq!(s.worker_requests(), 2);
}

#[tokio::test]
async fn identical_requests_in_flight_are_one_request_to_the_worker() {
    let s = setup(&["--cache-max-bytes", "1MiB"]).await;
    s.fake.set(|b| b.latency_ms = 400);
    let url = s.gw.url("/v1/chat/completions");
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let resp = reqwest::Client::new()
                    .post(url)
                    .json(&greedy("Describe a kite."))
                    .send()
                    .await
                    .expect("answer");
                let status = resp.status().as_u16();
                (status, resp.text().await.expect("body"))
            })
        })
        .collect();
    let mut bodies = Vec::new();
    for t in tasks {
        let (status, body) = t.await.expect("task");
        assert_eq!(status, 200);
        bodies.push(body);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(s.worker_requests(), 1, "eight identical requests, one load");
    assert_eq!(
        metric(
            &s.gw.state,
            "caprl_gateway_cache_requests_total",
            &[("outcome", "miss")]
        ),
        1.0
    );
}

#[tokio::test]
async fn only_200s_are_kept() {
    let s = setup(&["--cache-max-bytes", "1MiB"]).await;
    s.fake.set(|b| {
        b.fail_rate = 1.0;
        b.fail_status = 400;
    });
    for _ in 0..2 {
        let (status, cache, body) = s.post(&greedy("Describe a kite."), &[]).await;
        assert_eq!((status, cache.as_str()), (400, "miss"));
        let v: Value = serde_json::from_str(&body).expect("json");
        assert!(v["error"]["message"].is_string(), "{body}");
    }
    assert_eq!(s.worker_requests(), 2, "a 400 is not cached");
    s.fake.set(|b| b.fail_rate = 0.0);
    assert_eq!(s.post(&greedy("Describe a kite."), &[]).await.1, "miss");
    assert_eq!(s.post(&greedy("Describe a kite."), &[]).await.1, "hit");
}

#[tokio::test]
async fn the_byte_bound_holds_under_a_flood_of_distinct_keys() {
    let bound: u64 = 32 << 10;
    let s = setup(&["--cache-max-bytes", "32KiB"]).await;
    for i in 0..300 {
        let (status, cache, _) = s
            .post(&greedy(&format!("Describe kite number {i}.")), &[])
            .await;
        assert_eq!((status, cache.as_str()), (200, "miss"));
    }
    let cache = s.gw.state.cache.as_ref().expect("the cache is on");
    cache.settle().await;
    assert!(
        cache.weighted_size() <= bound,
        "{} bytes held over a {bound}-byte bound",
        cache.weighted_size()
    );
    assert!(cache.entry_count() > 0 && cache.entry_count() < 300);
    assert!(
        metric(
            &s.gw.state,
            "caprl_gateway_cache_evictions_total",
            &[("cause", "size")]
        ) > 0.0
    );
    assert_eq!(s.worker_requests(), 300);
}

#[tokio::test]
async fn one_keys_entries_are_not_another_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("keys.toml");
    std::fs::write(
        &keys,
        "[[keys]]\nname = \"a\"\nsecret = \"sk-a\"\n[[keys]]\nname = \"b\"\nsecret = \"sk-b\"\n",
    )
    .expect("write");
    let path = keys.display().to_string();
    let s = setup(&["--cache-max-bytes", "1MiB", "--keys-file", &path]).await;
    let a = [("authorization", "Bearer sk-a")];
    let b = [("authorization", "Bearer sk-b")];
    assert_eq!(s.post(&greedy("Describe a kite."), &a).await.1, "miss");
    assert_eq!(s.post(&greedy("Describe a kite."), &a).await.1, "hit");
    // A hit would tell b that a sent exactly this.
    assert_eq!(s.post(&greedy("Describe a kite."), &b).await.1, "miss");
    assert_eq!(s.worker_requests(), 2);
}
