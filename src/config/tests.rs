use super::*;

fn serve(args: &[&str]) -> Result<ServeArgs, ConfigError> {
    let mut argv = vec!["caprl-gateway", "serve"];
    argv.extend_from_slice(args);
    try_parse_from(argv).map(|cli| {
        let a = cli.command.into_serve().expect("serve");
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
    let resolved = a.resolve().expect("valid");
    let eval = &resolved.pools["eval"];
    assert_eq!(eval.policy, PolicyKind::Affinity);
    assert_eq!(eval.max_in_flight, 2);
    assert_eq!(resolved.pools["caprl"].max_in_flight, 8);
    assert_eq!(
        resolved.workers.keys().collect::<Vec<_>>(),
        ["caprl", "eval"],
        "workers grouped by model"
    );
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

#[test]
fn remote_image_fetch_is_off_by_default_and_its_settings_are_checked() {
    let a = serve(&["--worker", "http://127.0.0.1:9"]).expect("parses");
    let f = &a.fetch;
    assert!(!f.remote_images, "off unless asked");
    assert!(f.allow_http);
    assert!(!f.allow_loopback);
    assert!(f.allowed_hosts.is_empty() && f.denied_hosts.is_empty());
    assert_eq!(
        (f.connect_secs, f.timeout_secs, f.max_concurrent),
        (5.0, 20.0, 64)
    );
    let on = serve(&[
        "--worker",
        "http://127.0.0.1:9",
        "--fetch-remote-images",
        "--fetch-allow-http=false",
        "--fetch-allowed-hosts",
        "*.example.com,cdn.test",
        "--fetch-denied-hosts",
        "",
    ])
    .expect("parses");
    assert!(on.fetch.remote_images && !on.fetch.allow_http);
    assert_eq!(on.fetch.allowed_hosts, vec!["*.example.com", "cdn.test"]);
    for (flags, field) in [
        (
            &["--fetch-allowed-hosts", "http://x/"][..],
            "fetch.allowed_hosts",
        ),
        (
            &["--fetch-denied-hosts", "h:8080"][..],
            "fetch.denied_hosts",
        ),
        (&["--fetch-timeout-secs", "0"][..], "fetch.timeout_secs"),
        (
            &["--fetch-connect-timeout-secs", "nan"][..],
            "fetch.connect_secs",
        ),
        (&["--fetch-max-concurrent", "0"][..], "fetch.max_concurrent"),
    ] {
        let mut args = vec!["--worker", "http://127.0.0.1:9"];
        args.extend_from_slice(flags);
        let err = serve(&args).expect_err(field);
        assert_eq!(err.field, field, "{flags:?}: {err}");
    }
}
