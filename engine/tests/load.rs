//! The front door: [`Engine::load`] on a fixture model directory gives an engine whose greedy
//! output is transformers' (the CapRL prompt with its image, from the image's PNG bytes), whose
//! sampling defaults come from `generation_config.json`, and whose series land in the registry.
#![allow(clippy::unwrap_used)]

mod common;

use caprl_engine::{
    Dtype, Engine, EngineOptions, Event, FinishReason, GenerateRequest, Message, Part,
    RequestSampling, Resample,
};
use common::*;
use serde_json::Value;

const MODEL: &str = "tiny-qwen25vl-a";

fn options(use_generation_config: bool) -> EngineOptions {
    EngineOptions {
        device: "cpu".into(),
        dtype: Dtype::F32,
        max_sequences: 4,
        step_token_budget: 4096,
        kv_cache_tokens: 8192,
        use_generation_config,
        // The references were made with transformers' slow (Pillow) processor.
        image_resize: Resample::Pil,
    }
}

/// The reference's `caprl` case: its messages as plain messages, its image's PNG bytes.
fn caprl_case() -> (Value, GenerateRequest) {
    let idx = json(&model_dir(MODEL).join("reference/reference.json"));
    let case = idx["cases"]["caprl"].clone();
    let mut images = Vec::new();
    let messages = case["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            let role = m["role"].as_str().expect("role");
            match &m["content"] {
                Value::String(s) => Message::text(role, s),
                Value::Array(parts) => Message::parts(
                    role,
                    parts
                        .iter()
                        .map(|p| match p["type"].as_str().expect("type") {
                            "image" => {
                                let name = p["image"].as_str().expect("image name");
                                let path = fixtures().join(format!("images/{name}.png"));
                                images.push(std::fs::read(path).expect("image file").into());
                                Part::Image
                            }
                            _ => Part::Text(p["text"].as_str().expect("text").to_string()),
                        })
                        .collect(),
                ),
                other => panic!("unexpected content {other}"),
            }
        })
        .collect();
    let req = GenerateRequest {
        messages,
        images,
        sampling: RequestSampling::default(),
    };
    (case, req)
}

/// The registry in Prometheus' text format.
fn exposition(registry: &prometheus::Registry) -> String {
    prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .expect("encodes")
}

fn run(engine: &Engine, req: GenerateRequest) -> (Vec<u32>, FinishReason, usize) {
    let mut g = engine.generate(req).expect("accepted");
    let mut ids = Vec::new();
    loop {
        match g.events.blocking_recv().expect("the stream ended early") {
            Event::Token { token_id, .. } => ids.push(token_id),
            Event::Finished { reason, usage, .. } => {
                assert_eq!(usage.completion_tokens, ids.len());
                return (ids, reason, usage.prompt_tokens);
            }
            Event::Error(e) => panic!("engine error: {e}"),
        }
    }
}

#[test]
fn loaded_engine_gives_the_reference_greedy_tokens() {
    let registry = prometheus::Registry::new();
    let engine = Engine::load(&model_dir(MODEL), &options(false), &registry, "caprl").unwrap();
    let (case, mut req) = caprl_case();
    let want: Vec<u32> = case["gen_ids"]
        .as_array()
        .expect("gen_ids")
        .iter()
        .map(|v| v.as_u64().expect("id") as u32)
        .collect();
    // The reference is 32 greedy tokens with eos masked (min_new_tokens = 32).
    req.sampling = RequestSampling {
        temperature: Some(0.0),
        max_tokens: Some(want.len()),
        min_tokens: Some(want.len()),
        ..RequestSampling::default()
    };
    let (ids, reason, prompt_tokens) = run(&engine, req);
    assert_eq!(ids, want);
    assert_eq!(reason, FinishReason::Length);
    assert_eq!(prompt_tokens as u64, case["prompt_len"].as_u64().unwrap());

    let text = exposition(&registry);
    assert!(
        text.lines()
            .any(|l| l.starts_with("vllm:request_success_total{")
                && l.contains(r#"finished_reason="length""#)
                && l.contains(r#"model_name="caprl""#)
                && l.ends_with(" 1")),
        "{text}"
    );
}

#[test]
fn generation_config_sets_the_defaults_only_when_asked() {
    // The fixture's generation_config.json says top_k 1 and repetition_penalty 1.05: with it,
    // an unseeded request at temperature 1 is as deterministic as greedy with that penalty;
    // without it (OpenAI's defaults) two seeds give different samples.
    let registry = prometheus::Registry::new();
    let with = Engine::load(&model_dir(MODEL), &options(true), &registry, "a").unwrap();
    let without = Engine::load(&model_dir(MODEL), &options(false), &registry, "b").unwrap();
    let text = |max: usize, seed: Option<u64>, temperature: Option<f32>, rp: Option<f32>| {
        GenerateRequest {
            messages: vec![Message::text("user", "Describe a kite.")],
            images: Vec::new(),
            sampling: RequestSampling {
                temperature,
                repetition_penalty: rp,
                seed,
                max_tokens: Some(max),
                min_tokens: Some(max),
                ..RequestSampling::default()
            },
        }
    };
    let greedy_penalised = run(&with, text(16, None, Some(0.0), Some(1.05))).0;
    assert_eq!(
        run(&with, text(16, Some(1), None, None)).0,
        greedy_penalised
    );
    assert_eq!(
        run(&with, text(16, Some(2), None, None)).0,
        greedy_penalised
    );
    let a = run(&without, text(16, Some(1), None, None)).0;
    let b = run(&without, text(16, Some(2), None, None)).0;
    assert_ne!(a, b, "OpenAI's defaults sample");
}

#[test]
fn a_second_engine_under_one_name_still_loads() {
    let registry = prometheus::Registry::new();
    let first = Engine::load(&model_dir(MODEL), &options(false), &registry, "same").unwrap();
    let second = Engine::load(&model_dir(MODEL), &options(false), &registry, "same").unwrap();
    let req = || GenerateRequest {
        messages: vec![Message::text("user", "hi")],
        images: Vec::new(),
        sampling: RequestSampling {
            temperature: Some(0.0),
            max_tokens: Some(2),
            min_tokens: Some(2),
            ..RequestSampling::default()
        },
    };
    assert_eq!(run(&first, req()).0, run(&second, req()).0);
    let text = exposition(&registry);
    let running: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("vllm:num_requests_running{"))
        .collect();
    assert_eq!(running.len(), 1, "{text}");
    assert!(running[0].contains(r#"model_name="same""#), "{text}");
}

#[test]
fn a_bad_device_is_refused() {
    let mut opts = options(false);
    opts.device = "tpu:0".into();
    let err =
        Engine::load(&model_dir(MODEL), &opts, &prometheus::Registry::new(), "x").unwrap_err();
    assert!(err.to_string().contains("tpu:0"), "{err}");
}
