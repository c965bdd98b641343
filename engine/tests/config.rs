//! Reading a model directory: `config.json` in its nested and flat layouts,
//! `generation_config.json`, and loading errors that name the file and the tensor.

mod common;

use candle_core::{DType, Device};
use caprl_engine::config::{GenerationConfig, ModelConfig};
use caprl_engine::model::Qwen25VL;
use common::*;
use std::path::Path;

/// Copies a fixture model directory (without its reference) into a temp dir.
fn copy_model(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("tempdir");
    for e in std::fs::read_dir(model_dir(name)).expect("dir") {
        let e = e.expect("entry");
        if e.file_type().expect("type").is_file() {
            std::fs::copy(e.path(), tmp.path().join(e.file_name())).expect("copy");
        }
    }
    tmp
}

fn load_err(dir: &Path) -> String {
    match Qwen25VL::load(dir, &Device::Cpu, DType::F32) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn loading_errors_name_file_and_tensor() {
    // wrong architecture
    let tmp = copy_model("tiny-qwen25vl-a");
    let cfg = tmp.path().join("config.json");
    let text = std::fs::read_to_string(&cfg).expect("config");
    std::fs::write(
        &cfg,
        text.replace("Qwen2_5_VLForConditionalGeneration", "LlamaForCausalLM"),
    )
    .expect("write");
    let e = load_err(tmp.path());
    assert!(
        e.contains("config.json") && e.contains("LlamaForCausalLM"),
        "{e}"
    );

    // a missing shard
    let tmp = copy_model("tiny-qwen25vl-a");
    std::fs::remove_file(tmp.path().join("model-00002-of-00002.safetensors")).expect("rm");
    let e = load_err(tmp.path());
    assert!(
        e.contains("model-00002-of-00002.safetensors") && e.contains("missing"),
        "{e}"
    );

    // a tensor of the wrong shape, and a missing tensor
    let tmp = copy_model("tiny-qwen25vl-b");
    let path = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&path).expect("weights");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let bad = "model.visual.blocks.0.attn.qkv.weight";
    let mut views: Vec<(String, safetensors::tensor::TensorView)> = st.tensors();
    for (name, v) in views.iter_mut() {
        if name == bad {
            let data = v.data();
            *v =
                safetensors::tensor::TensorView::new(v.dtype(), vec![64, 192], data).expect("view");
        }
    }
    let write = |views: &[(String, safetensors::tensor::TensorView)]| {
        let data = safetensors::serialize(views.iter().map(|(n, v)| (n.as_str(), v)), None)
            .expect("serialize");
        std::fs::write(&path, data).expect("write");
    };
    write(&views);
    let e = load_err(tmp.path());
    assert!(
        e.contains("model.safetensors") && e.contains(bad) && e.contains("[64, 192]"),
        "{e}"
    );
    let views: Vec<_> = views.into_iter().filter(|(n, _)| n != bad).collect();
    write(&views);
    let e = load_err(tmp.path());
    assert!(e.contains(bad) && e.contains("not found"), "{e}");
}

#[test]
fn config_json_nested_and_flat_layouts() {
    let flat = r#"{"architectures":["Qwen2_5_VLForConditionalGeneration"],"model_type":"qwen2_5_vl",
        "vocab_size":10,"hidden_size":8,"intermediate_size":16,"num_hidden_layers":1,
        "num_attention_heads":2,"num_key_value_heads":1,"rope_theta":5.0,"eos_token_id":3,
        "rope_scaling":{"type":"mrope","mrope_section":[1,1,0]},"tie_word_embeddings":true,
        "vision_config":{"depth":1,"hidden_size":8,"intermediate_size":8,"num_heads":2,
        "in_chans":3,"out_hidden_size":8,"window_size":112}}"#;
    let c = ModelConfig::from_json_str(flat, "config.json").expect("flat parses");
    assert_eq!(c.text.mrope_section, vec![1, 1, 0]);
    assert_eq!(c.text.rope_theta, 5.0);
    assert_eq!(c.text.eos_token_ids, vec![3]);
    assert_eq!(c.tie_word_embeddings, Some(true));
    let nested = r#"{"model_type":"qwen2_5_vl","text_config":{"vocab_size":10,"hidden_size":8,
        "intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2,
        "rope_parameters":{"rope_type":"default","mrope_section":[1,1,0],"rope_theta":7.0}},
        "vision_config":{"depth":1,"hidden_size":8,"intermediate_size":8,"num_heads":2,
        "out_hidden_size":8,"window_size":112}}"#;
    let c = ModelConfig::from_json_str(nested, "config.json").expect("nested parses");
    assert_eq!(c.text.rope_theta, 7.0);
    assert_eq!(c.text.num_key_value_heads, 2);
    let bad = nested.replace("qwen2_5_vl", "llama");
    let err = ModelConfig::from_json_str(&bad, "config.json").expect_err("wrong model_type");
    assert!(err.to_string().contains("config.json"), "{err}");
}

#[test]
fn generation_config_eos_int_or_list() {
    let g = GenerationConfig::from_json_str(r#"{"eos_token_id":[1,2],"top_k":1}"#, "g")
        .expect("parses");
    assert_eq!(g.eos_token_id, vec![1, 2]);
    let g = GenerationConfig::from_json_str(r#"{"eos_token_id":5}"#, "g").expect("parses");
    assert_eq!(g.eos_token_id, vec![5]);
}
