//! Prompt rendering and tokenization against the transformers references in
//! `tests/fixtures/models/*/reference/reference.json`: for each case the rendered text and the
//! input ids (image pads expanded with the reference's grids) must match exactly.
#![allow(clippy::unwrap_used)]

use caprl_engine::backend::ProcessedImage;
use caprl_engine::prompt::{Message, Part, PromptBuilder};
use serde_json::Value;
use std::path::PathBuf;

fn model_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/models")
        .join(name)
}

fn reference(name: &str) -> Option<Value> {
    let path = model_dir(name).join("reference/reference.json");
    let bytes = std::fs::read(path).ok()?;
    Some(serde_json::from_slice(&bytes).unwrap())
}

fn grid_image(reference: &Value, name: &str) -> ProcessedImage {
    let g = &reference["images"][name]["image_grid_thw"];
    let grid = [0, 1, 2].map(|i| g[i].as_u64().unwrap() as usize);
    ProcessedImage {
        pixel_values: Vec::new(),
        grid_thw: grid,
    }
}

/// The case's messages as plain messages (the reference writes image parts as
/// `{"type": "image"}`, as transformers' template input).
fn plain(messages: &Value) -> Vec<Message> {
    messages
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let role = m["role"].as_str().unwrap();
            match &m["content"] {
                Value::String(s) => Message::text(role, s),
                Value::Array(parts) => Message::parts(
                    role,
                    parts
                        .iter()
                        .map(|p| match p["type"].as_str().unwrap() {
                            "image" => Part::Image,
                            "text" => Part::Text(p["text"].as_str().unwrap().to_string()),
                            other => panic!("unexpected part type {other}"),
                        })
                        .collect(),
                ),
                other => panic!("unexpected content {other}"),
            }
        })
        .collect()
}

fn check_model(name: &str) {
    let Some(r) = reference(name) else {
        eprintln!("{name}: no reference yet, skipped");
        return;
    };
    let builder = PromptBuilder::from_model_dir(&model_dir(name), 2).unwrap();
    let cases = r["cases"].as_object().unwrap();
    assert!(!cases.is_empty());
    for (case, c) in cases {
        let messages = plain(&c["messages"]);
        let images: Vec<ProcessedImage> = c["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| grid_image(&r, i.as_str().unwrap()))
            .collect();
        let built = builder.build(&messages, images).unwrap();
        assert_eq!(
            built.text,
            c["rendered_text"].as_str().unwrap(),
            "{name}/{case}: text"
        );
        let want: Vec<u32> = c["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(built.input.input_ids, want, "{name}/{case}: input_ids");
    }
}

#[test]
fn model_a_matches_transformers() {
    check_model("tiny-qwen25vl-a");
}

#[test]
fn model_b_matches_transformers() {
    check_model("tiny-qwen25vl-b");
}

#[test]
fn string_content_and_system_default() {
    let builder = PromptBuilder::from_model_dir(&model_dir("tiny-qwen25vl-a"), 2).unwrap();
    let text = builder.render(&[Message::text("user", "hi")]).unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn image_count_must_match() {
    let builder = PromptBuilder::from_model_dir(&model_dir("tiny-qwen25vl-a"), 2).unwrap();
    let m = Message::parts("user", vec![Part::Image, Part::Text("a".into())]);
    assert_eq!(m.image_count(), 1);
    assert!(builder.build(&[m], Vec::new()).is_err());
}
