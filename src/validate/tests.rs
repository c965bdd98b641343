use super::*;
use base64::Engine;
use std::io::Cursor;

fn limits() -> LimitArgs {
    LimitArgs::default()
}

fn run(body: &str) -> Result<ValidRequest, GatewayError> {
    run_bytes(body.as_bytes().to_vec())
}

/// Validate raw bytes (which need not be UTF-8) with the test limits.
fn run_bytes(body: Vec<u8>) -> Result<ValidRequest, GatewayError> {
    let limits = limits();
    let opts = ValidateOptions {
        limits: &limits,
        is_served: &|m| m == "caprl",
        keep_image_bytes: &|_| false,
        image_rejected: &|_| {},
        read_file: &|id| Err(format!("no such file: {id}")),
        reported_max_model_len: &|_| None,
    };
    validate_chat(Bytes::from(body), &opts)
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
    assert_eq!(
        v.remote,
        vec![RemoteImage {
            message: 1,
            part: 2,
            url: "https://example.com/a.png".into()
        }]
    );
    assert_eq!(v.remote[0].param(), "messages[1].content[2].image_url.url");
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

fn text_body(extra: &str) -> String {
    format!(r#"{{"model":"caprl",{extra}"messages":[{{"role":"user","content":"hi"}}]}}"#)
}

/// `body` is refused with 400 and `param`.
fn refused(body: &str, want_param: &str) -> GatewayError {
    let err = run(body).expect_err(body);
    assert_eq!(err.status(), 400, "{body}: {err}");
    let want = if want_param.is_empty() {
        serde_json::Value::Null
    } else {
        want_param.into()
    };
    assert_eq!(param(&err), want, "{body}: {err}");
    err
}

#[test]
fn max_tokens_within_one_and_the_context() {
    let context = limits().max_model_len;
    assert_eq!(context, 32_768, "the documented default");
    for name in ["max_tokens", "max_completion_tokens"] {
        refused(&text_body(&format!(r#""{name}":0,"#)), name);
        let err = refused(&text_body(&format!(r#""{name}":{},"#, context + 1)), name);
        assert!(err.to_string().contains("32768"), "{err}");
        refused(
            &text_body(&format!(r#""{name}":9223372036854775807,"#)),
            name,
        );
        run(&text_body(&format!(r#""{name}":{context},"#))).expect("exactly the context");
        run(&text_body(&format!(r#""{name}":1,"#))).expect("one token");
        run(&text_body(&format!(r#""{name}":null,"#))).expect("null is absent");
    }
}

#[test]
fn n_is_one_to_128() {
    refused(&text_body(r#""n":0,"#), "n");
    refused(&text_body(r#""n":129,"#), "n");
    refused(&text_body(r#""n":1000000,"#), "n");
    refused(&text_body(r#""n":-1,"#), "n");
    let v = run(&text_body(r#""n":128,"max_tokens":2,"#)).expect("128");
    assert_eq!(v.max_output_tokens, 256);
}

#[test]
fn image_url_is_an_object_with_a_string_url() {
    let part = |image_url: &str| {
        format!(
            r#"{{"model":"caprl","messages":[{{"role":"user","content":[{{"type":"text","text":"x"}},{{"type":"image_url","image_url":{image_url}}}]}}]}}"#
        )
    };
    let url = png_url(8, 8);
    run(&part(&format!(r#"{{"url":"{url}","detail":"high"}}"#))).expect("the OpenAI shape");
    // A bare string was accepted leniently before; vLLM refuses it.
    refused(
        &part(&format!(r#""{url}""#)),
        "messages[0].content[1].image_url",
    );
    refused(
        &part(r#"{"url":{"url":"https://example.com/a.png"}}"#),
        "messages[0].content[1].image_url.url",
    );
    refused(
        &part(r#"{"url":5}"#),
        "messages[0].content[1].image_url.url",
    );
    refused(
        &part(r#"{"detail":"low"}"#),
        "messages[0].content[1].image_url",
    );
    refused(
        &part(r#"["https://example.com/a.png"]"#),
        "messages[0].content[1].image_url",
    );
    // A repeated key is named in the message; `param` is the object holding it.
    let err = refused(
        &part(r#"{"url":"https://a/x.png","url":"https://b/y.png"}"#),
        "messages[0].content[1].image_url",
    );
    assert!(err.to_string().contains("duplicate field `url`"), "{err}");
}

#[test]
fn image_urls_workers_cannot_read_are_refused() {
    let part = |url: &str| {
        format!(
            r#"{{"model":"caprl","messages":[{{"role":"user","content":[{{"type":"image_url","image_url":{{"url":"{url}"}}}}]}}]}}"#
        )
    };
    let b64 = png_url(8, 8);
    let b64 = b64.split_once(',').expect("a data URL").1;
    for prefix in [
        "data:image/png;BASE64,",
        "data:image/png;Base64,",
        "data:image/png;charset=utf-8;base64,",
    ] {
        refused(
            &part(&format!("{prefix}{b64}")),
            "messages[0].content[0].image_url",
        );
    }
    for url in [
        "http://",
        "https:///a.png",
        "http:a.png",
        "https://:443/a.png",
    ] {
        let err = refused(&part(url), "messages[0].content[0].image_url");
        assert!(err.to_string().contains("host"), "{url}: {err}");
    }
    let v = run(&part("https://example.com/a.png")).expect("a remote image");
    assert_eq!(v.remote.len(), 1);
}

#[test]
fn objects_must_not_be_arrays() {
    refused(r#"["caprl",[{"role":"user","content":"hi"}]]"#, "");
    refused(
        r#"{"model":"caprl","messages":[["user","hi"]]}"#,
        "messages[0]",
    );
    refused(
        r#"{"model":"caprl","messages":[{"role":"user","content":[["text","hi"]]}]}"#,
        "messages[0].content[0]",
    );
    refused(
        &text_body(r#""stream":true,"stream_options":[true],"#),
        "stream_options",
    );
    refused(&text_body(r#""messages":{"role":"user"},"#), "messages");
}

#[test]
fn known_fields_may_appear_once() {
    // The gateway would read the first, a Python worker keeps the last.
    let err = refused(
        r#"{"model":"caprl","model":"other","messages":[{"role":"user","content":"hi"}]}"#,
        "",
    );
    assert!(err.to_string().contains("duplicate field `model`"), "{err}");
    let err = refused(
        r#"{"model":"caprl","messages":[{"role":"user","role":"system","content":"hi"}]}"#,
        "messages[0]",
    );
    assert!(err.to_string().contains("duplicate field `role`"), "{err}");
}

#[test]
fn unknown_fields_are_bounded_in_depth() {
    let max = limits().max_json_depth;
    assert_eq!(max, 128, "the documented default");
    let nest = |levels: usize| format!("{}1{}", "[".repeat(levels), "]".repeat(levels));
    // The body is level 1, so a top-level field may nest max - 1 levels.
    run(&text_body(&format!(r#""deep":{},"#, nest(max - 1)))).expect("at the limit");
    let err = refused(&text_body(&format!(r#""deep":{},"#, nest(max))), "deep");
    assert!(err.to_string().contains("128"), "{err}");
    refused(&text_body(&format!(r#""deep":{},"#, nest(10_000))), "deep");
    // Deeper objects have less room: a message is level 3, a part 5, image_url 6.
    let msg = |extra: &str| {
        format!(r#"{{"model":"caprl","messages":[{{"role":"user",{extra}"content":"hi"}}]}}"#)
    };
    run(&msg(&format!(r#""tool_calls":{},"#, nest(max - 3)))).expect("at the limit");
    refused(
        &msg(&format!(r#""tool_calls":{},"#, nest(max - 2))),
        "messages[0].tool_calls",
    );
    let url = png_url(8, 8);
    let img = |extra: &str| {
        format!(
            r#"{{"model":"caprl","messages":[{{"role":"user","content":[{{"type":"image_url","image_url":{{"url":"{url}","detail":{extra}}}}}]}}]}}"#
        )
    };
    run(&img(&nest(max - 6))).expect("at the limit");
    refused(
        &img(&nest(max - 5)),
        "messages[0].content[0].image_url.detail",
    );
    run(&text_body(&format!(
        r#""stream_options":{{"x":{}}},"#,
        nest(max - 2)
    )))
    .expect("at the limit");
    refused(
        &text_body(&format!(r#""stream_options":{{"x":{}}},"#, nest(max - 1))),
        "stream_options.x",
    );
}

#[test]
fn unknown_fields_hold_64_bit_integers() {
    refused(
        &text_body(&format!(r#""seed":{},"#, "9".repeat(100_000))),
        "seed",
    );
    refused(&text_body(r#""seed":18446744073709551616,"#), "seed");
    refused(
        &text_body(r#""logit_bias":{"1":-99999999999999999999},"#),
        "logit_bias",
    );
    refused(
        r#"{"model":"caprl","messages":[{"role":"user","content":[{"type":"text","text":"x","cache":123456789012345678901}]}]}"#,
        "messages[0].content[0].cache",
    );
    run(&text_body(
        r#""seed":18446744073709551615,"x":-9223372036854775808,"t":1e300,"#,
    ))
    .expect("64-bit integers and floats");
    // Typed fields were already bounded by their types.
    refused(
        &text_body(r#""max_tokens":123456789012345678901234,"#),
        "max_tokens",
    );
}

#[test]
fn the_whole_body_is_utf8() {
    let with = |field: &[u8]| {
        let mut b = br#"{"model":"caprl","messages":[{"role":"user","content":"hi""#.to_vec();
        b.extend_from_slice(field);
        b.extend_from_slice(b"}]}");
        b
    };
    let check = |body: Vec<u8>, want: &str| {
        let err = run_bytes(body).expect_err("invalid UTF-8");
        assert_eq!(err.status(), 400, "{err}");
        assert_eq!(param(&err), serde_json::Value::from(want), "{err}");
    };
    // In a field the gateway forwards unread, nested, and in a key.
    check(with(b",\"name\":\"\xff\""), "messages[0].name");
    check(
        with(b",\"meta\":{\"a\":[\"ok\",\"\xc3\x28\"]}"),
        "messages[0].meta",
    );
    check(with(b",\"\xfe\":1"), "messages[0]");
    // In text the gateway reads.
    check(
        br#"{"model":"caprl","messages":[{"role":"user","content":"caf"#
            .iter()
            .copied()
            .chain(*b"\xe9\"}]}")
            .collect(),
        "messages[0].content",
    );
}

#[test]
fn an_image_by_file_id_is_checked_and_inlined_as_a_data_url() {
    let img = image::RgbImage::from_pixel(56, 84, image::Rgb([9, 8, 7]));
    let mut png = Vec::new();
    img.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .expect("encode");
    let limits = limits();
    let stored = png.clone();
    let opts = ValidateOptions {
        limits: &limits,
        is_served: &|m| m == "caprl",
        keep_image_bytes: &|_| false,
        image_rejected: &|_| {},
        reported_max_model_len: &|_| None,
        read_file: &|id| {
            if id == "file-cat" {
                Ok(stored.clone())
            } else {
                Err(format!("no such file: {id}"))
            }
        },
    };
    let body = r#"{"model":"caprl","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"file","file":{"file_id":"file-cat"}}]}]}"#;
    let v = validate_chat(Bytes::from(body), &opts).expect("valid");
    assert_eq!(v.images.len(), 1);
    assert_eq!(v.images[0].tokens, 6, "56x84 is 2x3 tokens");
    assert!(
        v.images[0].data.is_none(),
        "bytes kept only for in-process pools"
    );
    let sent: serde_json::Value = serde_json::from_slice(&v.body).expect("json");
    let part = &sent["messages"][0]["content"][1];
    let url = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&png)
    );
    assert_eq!(
        part,
        &serde_json::json!({"type": "image_url", "image_url": {"url": url}})
    );
    assert_eq!(
        sent["messages"][0]["content"][0]["text"], "a",
        "other parts kept"
    );

    let by_url = r#"{"model":"caprl","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"file-nope"}}]}]}"#;
    let err = validate_chat(Bytes::from(by_url), &opts).expect_err("unknown id");
    assert_eq!(err.status(), 400);
    assert_eq!(param(&err), "messages[0].content[0].image_url.url");
}

/// Bytes no image codec compresses: an LCG's high bytes.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect()
}

fn encoded(img: &image::RgbImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), format)
        .expect("encode");
    out
}

/// `check_data_url` both ways: decoded block by block into the hash (not kept), and whole (kept
/// for an engine). Both must read the same header and give xxh3-128 of the whole bytes.
fn check_both_ways(bytes: &[u8]) -> images::ImageInfo {
    let url = format!(
        "data:image;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    );
    let limits = ImageLimits::from(&limits());
    let streamed = images::check_data_url(&url, &limits, false, "p").expect("valid");
    let kept = images::check_data_url(&url, &limits, true, "p").expect("valid");
    assert_eq!(streamed.hash, xxhash_rust::xxh3::xxh3_128(bytes));
    assert_eq!(kept.hash, streamed.hash);
    assert_eq!(streamed.bytes, bytes.len());
    assert_eq!((streamed.width, streamed.height), (kept.width, kept.height));
    assert!(streamed.data.is_none());
    assert_eq!(kept.data.as_deref(), Some(bytes));
    streamed
}

#[test]
fn a_large_image_is_hashed_block_by_block_as_if_whole() {
    // 500x400 of noise: a PNG of about 600 KB, many decode blocks past the head.
    let img = image::RgbImage::from_raw(500, 400, noise(500 * 400 * 3)).expect("size");
    let png = encoded(&img, image::ImageFormat::Png);
    assert!(png.len() > 400_000, "{}", png.len());
    let info = check_both_ways(&png);
    assert_eq!((info.width, info.height), (500, 400));
    // Lengths on both sides of a block's edge, padded and not.
    for cut in [98_304 - 1, 98_304, 98_304 + 1, 98_304 + 49_152 + 2] {
        let mut truncated_png = png[..cut].to_vec();
        truncated_png[cut - 1] ^= 0x55;
        check_both_ways(&truncated_png);
    }
}

#[test]
fn a_header_past_the_first_bytes_is_read_from_the_whole_image() {
    // A JPEG with 130 KB of APP2 segments (an ICC profile's worth) before its frame header.
    let img = image::RgbImage::from_raw(64, 48, noise(64 * 48 * 3)).expect("size");
    let jpeg = encoded(&img, image::ImageFormat::Jpeg);
    let mut padded = jpeg[..2].to_vec(); // SOI
    for _ in 0..2 {
        padded.extend_from_slice(&[0xFF, 0xE2, 0xFF, 0xFF]);
        padded.extend_from_slice(&noise(0xFFFF - 2));
    }
    padded.extend_from_slice(&jpeg[2..]);
    let info = check_both_ways(&padded);
    assert_eq!((info.width, info.height), (64, 48));
}

#[test]
fn bad_base64_far_into_a_large_image_is_refused() {
    let img = image::RgbImage::from_raw(300, 300, noise(300 * 300 * 3)).expect("size");
    let png = encoded(&img, image::ImageFormat::Png);
    let good = base64::engine::general_purpose::STANDARD.encode(&png);
    let limits = ImageLimits::from(&limits());
    for at in [200_000, good.len() - 5] {
        let mut bad = good.clone().into_bytes();
        bad[at] = b'*';
        let url = format!(
            "data:image;base64,{}",
            String::from_utf8(bad).expect("ascii")
        );
        for keep in [false, true] {
            let err = images::check_data_url(&url, &limits, keep, "p").expect_err("bad base64");
            assert_eq!(err.status().as_u16(), 400);
            assert!(err.to_string().contains("malformed base64"), "{err}");
        }
    }
    // One character past a whole number of quanta is no base64 either.
    let url = format!("data:image;base64,{good}A");
    let err = images::check_data_url(&url, &limits, false, "p").expect_err("dangling char");
    assert!(err.to_string().contains("malformed base64"), "{err}");
}

#[test]
fn image_urls_are_read_raw_and_every_byte_checked() {
    let body = |url: &[u8]| {
        let mut b = br#"{"model":"caprl","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":""#.to_vec();
        b.extend_from_slice(url);
        b.extend_from_slice(br#""}}]}]}"#);
        b
    };
    let good = png_url(40, 30);
    let ok = run_bytes(body(good.as_bytes())).expect("valid");
    // Escaped slashes (as PHP and Java encoders write base64's `/`): the owned, unescaped
    // bytes are checked and hashed, the same image.
    let escaped = run_bytes(body(good.replace('/', "\\/").as_bytes())).expect("escaped");
    assert_eq!(escaped.images[0].hash, ok.images[0].hash);
    // An escaped newline after the data is let go, as before; a raw one is not JSON.
    run_bytes(body(format!("{good}\\n").as_bytes())).expect("escaped trailing newline");
    let refused = |url: Vec<u8>, want_param: &str, want: &str| {
        let err = run_bytes(body(&url)).expect_err("refused");
        assert_eq!(err.status(), 400, "{err}");
        assert_eq!(param(&err), serde_json::Value::from(want_param), "{err}");
        assert!(err.to_string().contains(want), "{err}");
    };
    let image = "messages[0].content[0].image_url";
    let mut raw_newline = good.clone().into_bytes();
    raw_newline.push(b'\n');
    refused(raw_newline, image, "malformed base64");
    let mut inner = good.clone().into_bytes();
    inner.insert(40, b'\t');
    refused(inner, image, "malformed base64");
    let mut not_utf8 = good.clone().into_bytes();
    not_utf8.insert(40, 0xff);
    refused(not_utf8, image, "malformed base64");
    refused(
        good.replacen("data:image", "data:image\\t", 1).into_bytes(),
        image,
        "media type",
    );
    // Any other URL must be text without control characters.
    let url = format!("{image}.url");
    refused(
        b"https://example.com/a\\tb.png".to_vec(),
        &url,
        "control characters",
    );
    refused(b"https://example.com/\xffa.png".to_vec(), &url, "not UTF-8");
    // A lone surrogate escape is no text either.
    refused(
        b"https://example.com/\\ud800.png".to_vec(),
        &url,
        "not UTF-8",
    );
    // Still a string: anything else is the JSON error it was.
    let err = run(r#"{"model":"caprl","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":7}}]}]}"#)
        .expect_err("a number");
    assert_eq!(param(&err), serde_json::Value::from(url.as_str()), "{err}");
}
