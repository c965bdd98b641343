//! The fuzz corpus, replayed: every seed and every input in tests/fuzz/corpus/TARGET/ (kept
//! from `cargo run --example fuzz -- TARGET SECONDS --save`, and every finding once fixed) runs
//! through its target, whose properties must hold. Seconds; the fuzzing itself is
//! examples/fuzz.rs and scripts/fuzz.sh.

#[path = "fuzz/targets.rs"]
mod targets;

use std::path::Path;

#[test]
fn every_seed_and_corpus_input_keeps_the_targets_properties() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus");
    let mut replayed = 0;
    for target in targets::TARGETS {
        let seeds = targets::seeds(target);
        let mut inputs = seeds.clone();
        if let Ok(dir) = std::fs::read_dir(root.join(target)) {
            for entry in dir.flatten() {
                inputs.push(std::fs::read(entry.path()).expect("read a corpus file"));
            }
        }
        let mut accepted = 0;
        for input in &inputs {
            let sig = targets::run(target, input);
            accepted += usize::from(sig.contains("ok"));
            replayed += 1;
        }
        // The seeds are inputs the gateway takes: a target that refuses all of them is not
        // testing what it says.
        if target != "sse" {
            assert!(accepted > 0, "{target}: no input was accepted");
        }
    }
    assert!(replayed >= 20, "only {replayed} inputs replayed");
}

#[test]
fn each_target_refuses_what_it_must() {
    // Too many images (the targets allow 4): 413.
    let seed: serde_json::Value =
        serde_json::from_slice(&targets::seeds("chat")[5]).expect("a JSON seed");
    let part = seed["messages"][1]["content"][0].clone();
    assert_eq!(part["type"], "image_url");
    let mut many = seed.clone();
    many["messages"][1]["content"] = serde_json::Value::Array(vec![part; 5]);
    let sig = targets::run("chat", many.to_string().as_bytes());
    assert!(sig.starts_with("chat:413"), "{sig}");
    assert!(targets::run("chat", seed.to_string().as_bytes()).starts_with("chat:ok images=1"));
    // Not an image: 400 on the field.
    let sig = targets::run("image", b"data:image/png;base64,aGVsbG8=");
    assert!(sig.starts_with("400") && sig.contains("image_url"), "{sig}");
    // A model the gateway does not serve is renamed to the one asked for.
    let sig = targets::run(
        "sse",
        b"\x05data: {\"model\":\"other\",\"choices\":[{}]}\n\n",
    );
    assert_eq!(sig, "chunks=1 done=0");
}
