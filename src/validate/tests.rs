use super::*;
use base64::Engine;
use std::io::Cursor;

fn limits() -> LimitArgs {
    LimitArgs::default()
}

fn run(body: &str) -> Result<ValidRequest, GatewayError> {
    let limits = limits();
    let opts = ValidateOptions {
        limits: &limits,
        is_served: &|m| m == "caprl",
        keep_image_bytes: &|_| false,
        image_rejected: &|_| {},
    };
    validate_chat(Bytes::from(body.to_string()), &opts)
}

fn png_url(w: u32, h: u32) -> String {
    let img = image::RgbImage::from_pixel(w, h, image::Rgb([1, 2, 3]));
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .expect("encode");
    format!(
        "data:image;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(out)
    )
}

fn param(err: &GatewayError) -> serde_json::Value {
    serde_json::to_value(err.envelope()).expect("json")["error"]["param"].clone()
}

#[test]
fn text_request_passes_through_unchanged() {
    let body = r#"{"model":"caprl","messages":[{"role":"user","content":"hello"}],"repetition_penalty":1.0}"#;
    let v = run(body).expect("valid");
    assert_eq!(&v.body[..], body.as_bytes(), "not re-serialized");
    assert_eq!(v.model, "caprl");
    assert!(!v.stream);
    assert_eq!(v.max_output_tokens, DEFAULT_MAX_TOKENS_ESTIMATE);
}

#[test]
fn images_are_measured() {
    let body = format!(
        r#"{{"model":"caprl","max_tokens":10,"n":2,"messages":[{{"role":"system","content":"s"}},{{"role":"user","content":[{{"type":"image_url","image_url":{{"url":"{}"}}}},{{"type":"text","text":"describe"}},{{"type":"image_url","image_url":{{"url":"https://example.com/a.png"}}}}]}}]}}"#,
        png_url(56, 84)
    );
    let v = run(&body).expect("valid");
    assert_eq!(v.images.len(), 1);
    assert_eq!(v.remote_images, 1);
    assert_eq!(v.images[0].tokens, 6, "56x84 is 2x3 tokens");
    assert_eq!(v.image_tokens, 6 + REMOTE_IMAGE_TOKENS);
    assert_eq!(v.max_output_tokens, 20);
    assert_eq!(&v.body[..], body.as_bytes());
}

#[test]
fn errors_name_the_field() {
    let cases: &[(&str, u16, serde_json::Value)] = &[
        ("{not json", 400, serde_json::Value::Null),
        (
            r#"{"messages":[{"role":"user","content":"x"}]}"#,
            400,
            "model".into(),
        ),
        (r#"{"model":"caprl"}"#, 400, "messages".into()),
        (r#"{"model":"caprl","messages":[]}"#, 400, "messages".into()),
        (
            r#"{"model":"nope","messages":[{"role":"user","content":"x"}]}"#,
            404,
            "model".into(),
        ),
        (
            r#"{"model":"caprl","messages":[{"role":"wizard","content":"x"}]}"#,
            400,
            "messages[0].role".into(),
        ),
        (
            r#"{"model":"caprl","max_tokens":"ten","messages":[{"role":"user","content":"x"}]}"#,
            400,
            "max_tokens".into(),
        ),
        (
            r#"{"model":"caprl","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"file:///etc/passwd"}}]}]}"#,
            400,
            "messages[0].content[0].image_url".into(),
        ),
        (
            r#"{"model":"caprl","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,!!!!"}}]}]}"#,
            400,
            "messages[0].content[0].image_url".into(),
        ),
        (
            r#"{"model":"caprl","messages":[{"role":"user","content":[{"type":"audio"}]}]}"#,
            400,
            "messages[0].content[0].type".into(),
        ),
    ];
    for (body, status, want) in cases {
        let err = run(body).expect_err(body);
        assert_eq!(err.status().as_u16(), *status, "{body}: {err}");
        assert_eq!(&param(&err), want, "{body}");
    }
}

#[test]
fn too_many_images_is_413() {
    let url = png_url(8, 8);
    let parts: Vec<String> = (0..17)
        .map(|_| format!(r#"{{"type":"image_url","image_url":{{"url":"{url}"}}}}"#))
        .collect();
    let body = format!(
        r#"{{"model":"caprl","messages":[{{"role":"user","content":[{}]}}]}}"#,
        parts.join(",")
    );
    let err = run(&body).expect_err("17 images");
    assert_eq!(err.status(), 413);
    assert_eq!(param(&err), "messages[0].content[16].image_url");
}

#[test]
fn stream_without_usage_asks_the_worker_for_it() {
    let body = r#"{"model":"caprl","stream":true,"priority":5,"messages":[{"role":"user","content":"x"}]}"#;
    let v = run(body).expect("valid");
    assert!(v.stream && !v.client_wants_usage);
    assert_eq!(v.priority, 5);
    let sent: serde_json::Value = serde_json::from_slice(&v.body).expect("json");
    assert_eq!(sent["stream_options"]["include_usage"], true);
    assert!(sent.get("priority").is_none());
}
