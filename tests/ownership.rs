//! Files and batches belong to the key that made them: the gateway on 127.0.0.1 in front of an
//! in-process fake worker, a keys file on disk, real HTTP. Another key's file or batch is
//! answered exactly as one that does not exist (lists, retrieve, content, delete, cancel, a
//! batch's input, an image by file id); a batch's lines run as its owner's key as it is when
//! each line starts (a model taken away fails the line, a revoked key runs nothing more); a
//! database from before owners opens and keeps its rows.

mod common;

use caprl_gateway::fake_worker::{Behaviour, FakeWorker};
use caprl_gateway::store::sqlite::Sqlite;
use caprl_gateway::store::{BatchRow, Order, Status, Store};
use common::{png, text_request, wait_for, Gateway};
use reqwest::Method;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

struct Setup {
    gw: Gateway,
    fake: FakeWorker,
    keys: PathBuf,
    _dir: tempfile::TempDir,
    _worker: tokio::task::JoinHandle<()>,
}

/// A fake worker serving `caprl` and `other`; a gateway with `keys` (re-read every 100 ms), a
/// data directory, and `extra` flags.
async fn setup(keys: &str, extra: &[&str]) -> Setup {
    let fake = FakeWorker::new(
        "fake",
        vec!["caprl".into(), "other".into()],
        Behaviour::default(),
    );
    let (addr, worker) = fake.clone().spawn(0).await.expect("bind 127.0.0.1:0");
    let dir = tempfile::tempdir().expect("tempdir");
    let keys_path = dir.path().join("keys.toml");
    std::fs::write(&keys_path, keys).expect("write keys");
    let data = dir.path().join("data");
    let url = format!("http://{addr}");
    let mut args = vec![
        "--worker".to_string(),
        format!("caprl={url}"),
        "--worker".into(),
        format!("other={url}"),
        "--keys-file".into(),
        keys_path.display().to_string(),
        "--keys-reload-secs".into(),
        "0.1".into(),
        "--data-dir".into(),
        data.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let gw = Gateway::start(&args).await;
    gw.wait_ready(WAIT).await;
    Setup {
        gw,
        fake,
        keys: keys_path,
        _dir: dir,
        _worker: worker,
    }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    body: Value,
    text: String,
}

impl Reply {
    fn error(&self) -> (String, Value) {
        let e = &self.body["error"];
        (
            e["message"].as_str().unwrap_or("").to_string(),
            e["param"].clone(),
        )
    }
}

async fn send(s: &Setup, key: &str, method: Method, path: &str, body: Option<&Value>) -> Reply {
    let mut req = reqwest::Client::new()
        .request(method, s.gw.url(path))
        .bearer_auth(key);
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req.send().await.expect("the gateway answers");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    Reply {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    }
}

/// Upload `bytes` as `filename` for `purpose`: a multipart form written by hand.
async fn upload(s: &Setup, key: &str, filename: &str, purpose: &str, bytes: &[u8]) -> String {
    let boundary = "caprl-test-boundary-7f3a";
    let mut form = Vec::new();
    form.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    form.extend_from_slice(bytes);
    form.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let resp = reqwest::Client::new()
        .post(s.gw.url("/v1/files"))
        .bearer_auth(key)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(form)
        .send()
        .await
        .expect("the gateway answers");
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(status, 200, "upload: {body}");
    assert_eq!(body["purpose"], purpose);
    body["id"].as_str().expect("an id").to_string()
}

fn line(custom_id: &str, model: &str) -> String {
    let mut body = text_request(8);
    body["model"] = json!(model);
    json!({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})
        .to_string()
}

fn jsonl(ids: &[&str], model: &str) -> Vec<u8> {
    ids.iter()
        .map(|id| line(id, model) + "\n")
        .collect::<String>()
        .into_bytes()
}

async fn create_batch(s: &Setup, key: &str, file_id: &str) -> Reply {
    let body = json!({
        "input_file_id": file_id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    });
    send(s, key, Method::POST, "/v1/batches", Some(&body)).await
}

/// The batch as the store holds it, whoever owns it.
fn stored_batch(s: &Setup, id: &str) -> BatchRow {
    let batches = s.gw.state.batches.as_ref().expect("batches on");
    batches
        .store()
        .0
        .batch(id)
        .expect("store")
        .expect("the batch exists")
}

/// Wait for the batch to reach a terminal status; the row then.
async fn finished(s: &Setup, id: &str) -> BatchRow {
    let done = wait_for(WAIT, || async { stored_batch(s, id).status.is_terminal() }).await;
    let b = stored_batch(s, id);
    assert!(done.is_some(), "batch {id} did not end: {b:?}");
    b
}

/// A published file's lines, read from the data directory (whoever owns it).
fn file_lines(s: &Setup, id: &str) -> Vec<Value> {
    let files = &s.gw.state.batches.as_ref().expect("batches on").files;
    std::fs::read_to_string(files.path(id))
        .expect("the file's bytes")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn ids(list: &Reply) -> Vec<String> {
    list.body["data"]
        .as_array()
        .unwrap_or_else(|| panic!("a list: {}", list.text))
        .iter()
        .map(|o| o["id"].as_str().expect("id").to_string())
        .collect()
}

/// Page through `path` with `limit=1`, following `last_id`: every id, and each page's
/// `has_more`. Bounded.
async fn pages(s: &Setup, key: &str, path: &str) -> (Vec<String>, Vec<bool>) {
    let (mut all, mut more) = (Vec::new(), Vec::new());
    let mut after: Option<String> = None;
    for _ in 0..20 {
        let url = match &after {
            None => format!("{path}?limit=1"),
            Some(a) => format!("{path}?limit=1&after={a}"),
        };
        let r = send(s, key, Method::GET, &url, None).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let page = ids(&r);
        let has_more = r.body["has_more"].as_bool().expect("has_more");
        all.extend(page.iter().cloned());
        more.push(has_more);
        if !has_more {
            return (all, more);
        }
        after = page.last().cloned();
        assert!(after.is_some(), "has_more with an empty page");
    }
    panic!("more than 20 pages of {path}");
}

const TWO_TEAMS: &str =
    "[[keys]]\nname = \"team-a\"\nsecret = \"sk-a\"\nfiles_and_batches = true\n\
     [[keys]]\nname = \"team-b\"\nsecret = \"sk-b\"\nfiles_and_batches = true\n";

#[tokio::test]
async fn one_keys_files_and_batches_are_not_found_for_another() {
    let s = setup(TWO_TEAMS, &[]).await;
    // Interleaved uploads, so a listing filtered after its LIMIT would come back short.
    let a_input = upload(
        &s,
        "sk-a",
        "in.jsonl",
        "batch",
        &jsonl(&["a1", "a2"], "caprl"),
    )
    .await;
    let b_first = upload(&s, "sk-b", "b.jsonl", "batch", &jsonl(&["b1"], "caprl")).await;
    let a_image = upload(&s, "sk-a", "kite.png", "vision", &png(32, 32, 7)).await;
    let b_second = upload(&s, "sk-b", "notes.txt", "user_data", b"notes").await;

    let created = create_batch(&s, "sk-a", &a_input).await;
    assert_eq!(created.status, 200, "{}", created.text);
    let a_batch = created.body["id"].as_str().expect("id").to_string();
    let b = finished(&s, &a_batch).await;
    assert_eq!(b.status, Status::Completed);
    assert_eq!((b.completed, b.failed), (2, 0));
    assert_eq!(b.owner, "team-a");
    let a_output = b.output_file_id.clone();

    // Lists: each key sees its own rows only, and pages through them whole.
    let (a_files, a_more) = pages(&s, "sk-a", "/v1/files").await;
    assert_eq!(
        a_files,
        [a_output.clone(), a_image.clone(), a_input.clone()]
    );
    assert_eq!(a_more, [true, true, false]);
    let (b_files, _) = pages(&s, "sk-b", "/v1/files").await;
    assert_eq!(b_files, [b_second.clone(), b_first.clone()]);
    let r = send(&s, "sk-b", Method::GET, "/v1/batches", None).await;
    assert_eq!(r.status, 200);
    assert!(ids(&r).is_empty(), "b sees a's batch: {}", r.text);
    let r = send(&s, "sk-a", Method::GET, "/v1/batches", None).await;
    assert_eq!(ids(&r), [a_batch.as_str()]);
    // Another key's id is no cursor either.
    let r = send(
        &s,
        "sk-b",
        Method::GET,
        &format!("/v1/files?after={a_image}"),
        None,
    )
    .await;
    assert!(ids(&r).is_empty(), "{}", r.text);

    // Every operation on another key's id reads exactly as on an id that does not exist.
    let missing_file = "file-00000000000000000000000000000000";
    let missing_batch = "batch_00000000000000000000000000000000";
    let probes: Vec<(Method, String, String)> = [&a_input, &a_image, &a_output]
        .iter()
        .flat_map(|id| {
            [
                (Method::GET, format!("/v1/files/{id}"), id.to_string()),
                (
                    Method::GET,
                    format!("/v1/files/{id}/content"),
                    id.to_string(),
                ),
                (Method::DELETE, format!("/v1/files/{id}"), id.to_string()),
            ]
        })
        .chain([
            (
                Method::GET,
                format!("/v1/batches/{a_batch}"),
                a_batch.clone(),
            ),
            (
                Method::POST,
                format!("/v1/batches/{a_batch}/cancel"),
                a_batch.clone(),
            ),
        ])
        .collect();
    for (method, path, id) in probes {
        let missing = if id.starts_with("batch_") {
            missing_batch
        } else {
            missing_file
        };
        let theirs = send(&s, "sk-b", method.clone(), &path, None).await;
        let none = send(&s, "sk-b", method, &path.replace(&id, missing), None).await;
        assert_eq!(theirs.status, 404, "{path}: {}", theirs.text);
        assert_eq!(none.status, 404, "{path}: {}", none.text);
        assert_eq!(
            theirs.text.replace(&id, "ID"),
            none.text.replace(missing, "ID"),
            "{path}: another key's object must read exactly like a missing one"
        );
    }
    // A cancel of a's finished batch is a 409 for a: b's 404 told nothing of that.
    let own = send(
        &s,
        "sk-a",
        Method::POST,
        &format!("/v1/batches/{a_batch}/cancel"),
        None,
    )
    .await;
    assert_eq!(own.status, 409, "{}", own.text);

    // A batch on another key's input file: the not-found of a missing file.
    let theirs = create_batch(&s, "sk-b", &a_input).await;
    let none = create_batch(&s, "sk-b", missing_file).await;
    assert_eq!(theirs.status, 404, "{}", theirs.text);
    assert_eq!(theirs.error().1, "input_file_id");
    assert_eq!(
        theirs.text.replace(&a_input, "ID"),
        none.text.replace(missing_file, "ID")
    );

    // An image by another key's file id, both ways of naming it: a missing file.
    let image_parts = |id: &str| {
        [
            json!({"type": "file", "file": {"file_id": id}}),
            json!({"type": "image_url", "image_url": {"url": id}}),
        ]
    };
    let before = s.fake.stats()["requests"].as_u64().expect("count");
    for (theirs_part, none_part) in image_parts(&a_image)
        .into_iter()
        .zip(image_parts(missing_file))
    {
        let ask = |part: Value| {
            let mut body = text_request(8);
            body["messages"] = json!([{"role": "user", "content": [
                part, {"type": "text", "text": "What is this?"}
            ]}]);
            body
        };
        let theirs = send(
            &s,
            "sk-b",
            Method::POST,
            "/v1/chat/completions",
            Some(&ask(theirs_part.clone())),
        )
        .await;
        let none = send(
            &s,
            "sk-b",
            Method::POST,
            "/v1/chat/completions",
            Some(&ask(none_part)),
        )
        .await;
        assert_eq!(theirs.status, 400, "{}", theirs.text);
        assert_eq!(
            theirs.text.replace(&a_image, "ID"),
            none.text.replace(missing_file, "ID")
        );
        // The owner's own request with the same part is served.
        let own = send(
            &s,
            "sk-a",
            Method::POST,
            "/v1/chat/completions",
            Some(&ask(theirs_part)),
        )
        .await;
        assert_eq!(own.status, 200, "{}", own.text);
    }
    let after = s.fake.stats()["requests"].as_u64().expect("count");
    assert_eq!(
        after - before,
        2,
        "only a's two image requests reached the worker"
    );

    // Nothing of a's was touched by b's deletes: a still reads all of it, and deletes its own.
    for id in [&a_input, &a_image, &a_output] {
        let r = send(&s, "sk-a", Method::GET, &format!("/v1/files/{id}"), None).await;
        assert_eq!(r.status, 200, "{id}: {}", r.text);
    }
    let out = send(
        &s,
        "sk-a",
        Method::GET,
        &format!("/v1/files/{a_output}/content"),
        None,
    )
    .await;
    assert_eq!(out.status, 200);
    assert_eq!(out.text.lines().count(), 2, "a reads its batch's output");
    let r = send(
        &s,
        "sk-a",
        Method::GET,
        &format!("/v1/batches/{a_batch}"),
        None,
    )
    .await;
    assert_eq!(r.body["status"], "completed");
    let r = send(
        &s,
        "sk-a",
        Method::DELETE,
        &format!("/v1/files/{a_image}"),
        None,
    )
    .await;
    assert_eq!(r.body["deleted"], true, "{}", r.text);
}

#[tokio::test]
async fn a_batch_for_a_model_outside_the_key_fails_as_for_a_model_that_does_not_exist() {
    let s = setup(
        "[[keys]]\nname = \"scoped\"\nsecret = \"sk-scoped\"\nmodels = [\"caprl\"]\n\
         files_and_batches = true\n",
        &[],
    )
    .await;
    let hidden = upload(
        &s,
        "sk-scoped",
        "h.jsonl",
        "batch",
        &jsonl(&["h1"], "other"),
    )
    .await;
    let missing = upload(&s, "sk-scoped", "m.jsonl", "batch", &jsonl(&["m1"], "nope")).await;
    let allowed = upload(
        &s,
        "sk-scoped",
        "a.jsonl",
        "batch",
        &jsonl(&["a1"], "caprl"),
    )
    .await;
    let before = s.fake.stats()["requests"].as_u64().expect("count");
    let mut errors = Vec::new();
    for file in [&hidden, &missing] {
        let r = create_batch(&s, "sk-scoped", file).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let b = finished(&s, r.body["id"].as_str().expect("id")).await;
        assert_eq!(b.status, Status::Failed);
        let e: Value = serde_json::from_str(b.errors.as_deref().expect("errors")).expect("json");
        assert_eq!(e["data"][0]["code"], "model_not_found", "{e}");
        errors.push(
            e["data"][0]["message"]
                .as_str()
                .expect("message")
                .to_string(),
        );
    }
    assert_eq!(
        errors[0].replace("other", "X"),
        errors[1].replace("nope", "X"),
        "a hidden model must read exactly like a missing one"
    );
    let r = create_batch(&s, "sk-scoped", &allowed).await;
    let b = finished(&s, r.body["id"].as_str().expect("id")).await;
    assert_eq!((b.status, b.completed), (Status::Completed, 1));
    assert_eq!(
        s.fake.stats()["requests"].as_u64().expect("count") - before,
        1,
        "only the allowed batch's line ran"
    );
}

#[tokio::test]
async fn lines_run_as_the_owners_key_as_it_is_now() {
    // One line at a time per batch, each held at the worker, so the keys change while the
    // first lines run and before the next ones start.
    let s = setup(
        "[[keys]]\nname = \"narrowed\"\nsecret = \"sk-n\"\nmodels = [\"caprl\", \"other\"]\n\
         files_and_batches = true\n\
         [[keys]]\nname = \"doomed\"\nsecret = \"sk-d\"\nfiles_and_batches = true\n",
        &["--batch-max-in-flight", "1"],
    )
    .await;
    let n_file = upload(
        &s,
        "sk-n",
        "n.jsonl",
        "batch",
        &jsonl(&["n1", "n2", "n3"], "other"),
    )
    .await;
    let d_file = upload(
        &s,
        "sk-d",
        "d.jsonl",
        "batch",
        &jsonl(&["d1", "d2", "d3"], "caprl"),
    )
    .await;
    let before = s.fake.stats()["requests"].as_u64().expect("count");
    s.fake.set(|b| b.latency_ms = 3000);
    let n_batch = create_batch(&s, "sk-n", &n_file).await.body["id"]
        .as_str()
        .expect("id")
        .to_string();
    let d_batch = create_batch(&s, "sk-d", &d_file).await.body["id"]
        .as_str()
        .expect("id")
        .to_string();
    let held = wait_for(WAIT, || async {
        s.fake.stats()["in_flight"].as_u64() == Some(2)
    })
    .await;
    assert!(held.is_some(), "the first lines never reached the worker");

    // `narrowed` loses `other`; `doomed` is revoked.
    let tmp = s.keys.with_extension("tmp");
    std::fs::write(
        &tmp,
        "[[keys]]\nname = \"narrowed\"\nsecret = \"sk-n\"\nmodels = [\"caprl\"]\n\
         files_and_batches = true\n",
    )
    .expect("write");
    std::fs::rename(&tmp, &s.keys).expect("swap");
    // Seen through /v1/models, which never waits for the (slow) worker.
    let reloaded = wait_for(WAIT, || async {
        let models = send(&s, "sk-n", Method::GET, "/v1/models", None).await;
        ids(&models) == ["caprl"]
    })
    .await;
    assert!(reloaded.is_some(), "the new keys never took effect");
    // The held lines were admitted under the old keys: the change must come before they end.
    assert_eq!(
        s.fake.stats()["in_flight"].as_u64(),
        Some(2),
        "the keys reloaded too late for this test"
    );
    s.fake.set(|b| b.latency_ms = 0);

    let n = finished(&s, &n_batch).await;
    assert_eq!(n.status, Status::Completed);
    assert_eq!((n.total, n.completed, n.failed), (3, 1, 2));
    let out = file_lines(&s, &n.output_file_id);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0]["custom_id"], "n1");
    let err = file_lines(&s, &n.error_file_id);
    let got: Vec<(&str, u64, &str)> = err
        .iter()
        .map(|e| {
            (
                e["custom_id"].as_str().expect("custom_id"),
                e["response"]["status_code"].as_u64().expect("status"),
                e["response"]["body"]["error"]["code"]
                    .as_str()
                    .expect("code"),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("n2", 404, "model_not_found"),
            ("n3", 404, "model_not_found")
        ]
    );

    let d = finished(&s, &d_batch).await;
    assert_eq!(
        d.status,
        Status::Completed,
        "a revoked key's batch still ends"
    );
    assert_eq!((d.total, d.completed, d.failed), (3, 1, 2));
    let err = file_lines(&s, &d.error_file_id);
    let got: Vec<&str> = err
        .iter()
        .map(|e| {
            assert_eq!(e["response"], Value::Null, "not executed: {e}");
            assert_eq!(e["error"]["code"], "invalid_api_key");
            let message = e["error"]["message"].as_str().expect("message");
            assert!(message.contains("revoked"), "{message}");
            assert!(!message.contains("sk-"), "the message repeats a key");
            e["custom_id"].as_str().expect("custom_id")
        })
        .collect();
    assert_eq!(got, ["d2", "d3"]);
    assert_eq!(
        s.fake.stats()["requests"].as_u64().expect("count") - before,
        2,
        "only the two first lines ran"
    );
}

/// The tables as the version before owners created them (`git show c75d851:src/store/sqlite.rs`).
const OLD_SCHEMA: &str = "
CREATE TABLE files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    expires_at INTEGER
);
CREATE INDEX files_expiry ON files (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    endpoint TEXT NOT NULL,
    model TEXT,
    input_file_id TEXT NOT NULL,
    completion_window TEXT NOT NULL,
    status TEXT NOT NULL,
    output_file_id TEXT NOT NULL,
    error_file_id TEXT NOT NULL,
    published INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    in_progress_at INTEGER,
    expires_at INTEGER NOT NULL,
    finalizing_at INTEGER,
    completed_at INTEGER,
    failed_at INTEGER,
    expired_at INTEGER,
    cancelling_at INTEGER,
    cancelled_at INTEGER,
    total INTEGER NOT NULL DEFAULT 0,
    completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    metadata TEXT,
    errors TEXT,
    output_bytes INTEGER NOT NULL DEFAULT 0,
    error_bytes INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE lines (
    batch_id TEXT NOT NULL,
    line INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    len INTEGER NOT NULL,
    custom_id TEXT NOT NULL,
    state INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (batch_id, line)
) WITHOUT ROWID;
INSERT INTO files (id, bytes, created_at, filename, purpose, expires_at)
    VALUES ('file-old', 12, 1000, 'old.jsonl', 'batch', NULL);
INSERT INTO batches (id, endpoint, input_file_id, completion_window, status, output_file_id,
    error_file_id, created_at, expires_at)
    VALUES ('batch_old', '/v1/chat/completions', 'file-old', '24h', 'completed', 'file-o',
    'file-e', 1000, 2000);
";

#[test]
fn a_database_from_before_owners_opens_and_keeps_its_rows_as_owner_empty() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.db");
    {
        let old = rusqlite::Connection::open(&path).expect("create the old database");
        old.execute_batch(OLD_SCHEMA).expect("old schema");
    }
    for _ in 0..2 {
        // Opened twice: the second open finds the columns and changes nothing.
        let s = Sqlite::open(&path).expect("the old database opens");
        let f = s.file("file-old").expect("read").expect("the row survived");
        assert_eq!(
            (f.owner.as_str(), f.bytes, f.purpose.as_str()),
            ("", 12, "batch")
        );
        let listed = s.list_files("", None, None, 10, Order::Desc).expect("list");
        assert_eq!(listed.len(), 1);
        assert!(s
            .list_files("team-a", None, None, 10, Order::Desc)
            .expect("list")
            .is_empty());
        let b = s
            .batch("batch_old")
            .expect("read")
            .expect("the batch survived");
        assert_eq!((b.owner.as_str(), b.status), ("", Status::Completed));
        assert_eq!(s.list_batches("", None, 10).expect("list").len(), 1);
    }
    // New rows carry their owner in the migrated tables.
    let s = Sqlite::open(&path).expect("open");
    let mut f = s.file("file-old").expect("read").expect("row");
    f.id = "file-new".into();
    f.owner = "team-a".into();
    s.insert_file(&f).expect("insert");
    let ids: Vec<String> = s
        .list_files("team-a", None, None, 10, Order::Asc)
        .expect("list")
        .into_iter()
        .map(|f| f.id)
        .collect();
    assert_eq!(ids, ["file-new"]);
}
