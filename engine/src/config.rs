//! Configuration files of a Hugging Face Qwen2.5-VL model directory, read with serde.
//!
//! Owns `config.json` ([`ModelConfig`]: text decoder, vision tower, special token ids),
//! `preprocessor_config.json` ([`PreprocessorConfig`]) and `generation_config.json`
//! ([`GenerationConfig`]). `config.json` comes in two layouts: the flat one of the hub
//! checkpoints (text keys at the top level, `rope_scaling.mrope_section`, `rope_theta`) and the
//! nested one transformers 5 writes (`text_config`, `rope_parameters`); both are accepted, the
//! nested value winning when a key is in both. Every error names the file it comes from.

use anyhow::{anyhow, bail, Context, Result};
use caprl_image::Resample;
use serde::Deserialize;
use serde_json::Value;
use std::path::Path;

/// The architecture this crate implements.
pub const ARCHITECTURE: &str = "Qwen2_5_VLForConditionalGeneration";
/// `model_type` of that architecture.
pub const MODEL_TYPE: &str = "qwen2_5_vl";

/// An activation function named by `hidden_act`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// Exact (erf) GELU.
    Gelu,
    /// Tanh approximation of GELU.
    GeluTanh,
    QuickGelu,
}

impl Activation {
    fn parse(name: &str, file: &str) -> Result<Self> {
        Ok(match name {
            "silu" | "swish" => Activation::Silu,
            "gelu" => Activation::Gelu,
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Activation::GeluTanh,
            "quick_gelu" => Activation::QuickGelu,
            other => bail!("{file}: unsupported hidden_act {other:?}"),
        })
    }
}

/// The Qwen2 text decoder.
#[derive(Debug, Clone)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// How the rotary half-dimension is split between the t, h and w position ids.
    pub mrope_section: Vec<usize>,
    pub hidden_act: Activation,
    pub max_position_embeddings: usize,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

/// The vision tower.
#[derive(Debug, Clone)]
pub struct VisionConfig {
    pub depth: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_heads: usize,
    pub patch_size: usize,
    pub spatial_merge_size: usize,
    pub temporal_patch_size: usize,
    pub window_size: usize,
    pub fullatt_block_indexes: Vec<usize>,
    pub out_hidden_size: usize,
    pub in_channels: usize,
    pub hidden_act: Activation,
    pub rope_theta: f64,
}

/// `config.json`.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub text: TextConfig,
    pub vision: VisionConfig,
    pub image_token_id: u32,
    pub video_token_id: u32,
    pub vision_start_token_id: u32,
    pub vision_end_token_id: u32,
    /// `None` when the file does not say; then the weights decide (no `lm_head.weight` = tied).
    pub tie_word_embeddings: Option<bool>,
}

/// A token id or a list of them (`eos_token_id` is either).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<u32> {
        match self {
            OneOrMany::One(x) => vec![x],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct RopeRaw {
    mrope_section: Option<Vec<usize>>,
    rope_theta: Option<f64>,
    #[serde(rename = "type")]
    kind: Option<String>,
    rope_type: Option<String>,
}

/// Text keys, as found at the top level or under `text_config`.
#[derive(Debug, Default, Deserialize)]
struct TextRaw {
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<RopeRaw>,
    rope_parameters: Option<RopeRaw>,
    hidden_act: Option<String>,
    max_position_embeddings: Option<usize>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<OneOrMany>,
    tie_word_embeddings: Option<bool>,
    image_token_id: Option<u32>,
    video_token_id: Option<u32>,
    vision_start_token_id: Option<u32>,
    vision_end_token_id: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct VisionRaw {
    depth: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_heads: usize,
    patch_size: Option<usize>,
    spatial_patch_size: Option<usize>,
    spatial_merge_size: Option<usize>,
    temporal_patch_size: Option<usize>,
    window_size: Option<usize>,
    #[serde(default)]
    fullatt_block_indexes: Vec<usize>,
    out_hidden_size: usize,
    in_channels: Option<usize>,
    in_chans: Option<usize>,
    hidden_act: Option<String>,
    rope_parameters: Option<RopeRaw>,
}

fn read_json(path: &Path) -> Result<Value> {
    let name = file_name(path);
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{name}: cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{name}: not valid JSON"))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

fn parse<T: serde::de::DeserializeOwned>(value: &Value, file: &str, what: &str) -> Result<T> {
    serde_json::from_value(value.clone()).map_err(|e| anyhow!("{file}: {what}: {e}"))
}

impl ModelConfig {
    /// Reads `dir/config.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        Self::from_value(&read_json(&path)?, "config.json")
    }

    /// Parses the contents of a `config.json`; `file` names it in errors.
    pub fn from_json_str(json: &str, file: &str) -> Result<Self> {
        let value: Value =
            serde_json::from_str(json).with_context(|| format!("{file}: not valid JSON"))?;
        Self::from_value(&value, file)
    }

    fn from_value(value: &Value, file: &str) -> Result<Self> {
        let obj = value
            .as_object()
            .ok_or_else(|| anyhow!("{file}: expected a JSON object"))?;
        if let Some(archs) = obj.get("architectures") {
            let archs: Vec<String> = parse(archs, file, "architectures")?;
            if !archs.iter().any(|a| a == ARCHITECTURE) {
                bail!("{file}: unsupported architecture {archs:?}; this engine runs {ARCHITECTURE} (Qwen2.5-VL) only");
            }
        }
        if let Some(mt) = obj.get("model_type") {
            let mt = mt.as_str().unwrap_or_default();
            if mt != MODEL_TYPE {
                bail!("{file}: unsupported model_type {mt:?}; this engine runs {MODEL_TYPE:?} (Qwen2.5-VL) only");
            }
        }
        let top: TextRaw = parse(value, file, "top level")?;
        let nested: TextRaw = match obj.get("text_config") {
            Some(v) => parse(v, file, "text_config")?,
            None => TextRaw::default(),
        };
        let text = merge_text(&nested, &top, file)?;
        let vision_value = obj
            .get("vision_config")
            .ok_or_else(|| anyhow!("{file}: missing vision_config"))?;
        let vision = vision_config(parse(vision_value, file, "vision_config")?, file)?;
        let tok =
            |nested: Option<u32>, top: Option<u32>, default: u32| top.or(nested).unwrap_or(default);
        Ok(ModelConfig {
            image_token_id: tok(nested.image_token_id, top.image_token_id, 151655),
            video_token_id: tok(nested.video_token_id, top.video_token_id, 151656),
            vision_start_token_id: tok(
                nested.vision_start_token_id,
                top.vision_start_token_id,
                151652,
            ),
            vision_end_token_id: tok(nested.vision_end_token_id, top.vision_end_token_id, 151653),
            tie_word_embeddings: top.tie_word_embeddings.or(nested.tie_word_embeddings),
            text,
            vision,
        })
    }
}

fn merge_text(n: &TextRaw, t: &TextRaw, file: &str) -> Result<TextConfig> {
    macro_rules! req {
        ($f:ident) => {
            n.$f.or(t.$f).ok_or_else(|| {
                anyhow!(
                    "{file}: missing `{}` (looked in text_config and at the top level)",
                    stringify!($f)
                )
            })?
        };
    }
    let hidden_size = req!(hidden_size);
    let num_attention_heads = req!(num_attention_heads);
    if num_attention_heads == 0 || !hidden_size.is_multiple_of(num_attention_heads) {
        bail!("{file}: hidden_size {hidden_size} is not a multiple of num_attention_heads {num_attention_heads}");
    }
    let num_key_value_heads = n
        .num_key_value_heads
        .or(t.num_key_value_heads)
        .unwrap_or(num_attention_heads);
    if num_key_value_heads == 0 || !num_attention_heads.is_multiple_of(num_key_value_heads) {
        bail!("{file}: num_attention_heads {num_attention_heads} is not a multiple of num_key_value_heads {num_key_value_heads}");
    }
    // transformers' Qwen2.5-VL ignores a `head_dim` key
    let head_dim = hidden_size / num_attention_heads;
    let ropes = [
        &n.rope_parameters,
        &n.rope_scaling,
        &t.rope_parameters,
        &t.rope_scaling,
    ];
    let mrope_section = ropes
        .iter()
        .find_map(|r| r.as_ref().and_then(|r| r.mrope_section.clone()))
        .ok_or_else(|| {
            anyhow!("{file}: missing mrope_section (in rope_scaling or rope_parameters)")
        })?;
    for r in ropes.iter().filter_map(|r| r.as_ref()) {
        let kind = r
            .rope_type
            .as_deref()
            .or(r.kind.as_deref())
            .unwrap_or("default");
        if !matches!(kind, "default" | "mrope") {
            bail!("{file}: unsupported rope type {kind:?} (only default/mrope)");
        }
    }
    if mrope_section.iter().sum::<usize>() * 2 != head_dim {
        bail!(
            "{file}: mrope_section {mrope_section:?} does not add up to head_dim/2 = {}",
            head_dim / 2
        );
    }
    let rope_theta = n
        .rope_parameters
        .as_ref()
        .and_then(|r| r.rope_theta)
        .or(n.rope_theta)
        .or(t.rope_parameters.as_ref().and_then(|r| r.rope_theta))
        .or(t.rope_theta)
        .unwrap_or(1_000_000.0);
    let act = n
        .hidden_act
        .clone()
        .or(t.hidden_act.clone())
        .unwrap_or_else(|| "silu".into());
    Ok(TextConfig {
        vocab_size: req!(vocab_size),
        hidden_size,
        intermediate_size: req!(intermediate_size),
        num_hidden_layers: req!(num_hidden_layers),
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        rms_norm_eps: n.rms_norm_eps.or(t.rms_norm_eps).unwrap_or(1e-6),
        rope_theta,
        mrope_section,
        hidden_act: Activation::parse(&act, file)?,
        max_position_embeddings: n
            .max_position_embeddings
            .or(t.max_position_embeddings)
            .unwrap_or(128_000),
        bos_token_id: n.bos_token_id.or(t.bos_token_id),
        eos_token_ids: n
            .eos_token_id
            .clone()
            .or(t.eos_token_id.clone())
            .map(OneOrMany::into_vec)
            .unwrap_or_default(),
    })
}

fn vision_config(v: VisionRaw, file: &str) -> Result<VisionConfig> {
    let cfg = VisionConfig {
        depth: v.depth,
        hidden_size: v.hidden_size,
        intermediate_size: v.intermediate_size,
        num_heads: v.num_heads,
        patch_size: v.patch_size.or(v.spatial_patch_size).unwrap_or(14),
        spatial_merge_size: v.spatial_merge_size.unwrap_or(2),
        temporal_patch_size: v.temporal_patch_size.unwrap_or(2),
        window_size: v.window_size.unwrap_or(112),
        fullatt_block_indexes: v.fullatt_block_indexes,
        out_hidden_size: v.out_hidden_size,
        in_channels: v.in_channels.or(v.in_chans).unwrap_or(3),
        hidden_act: Activation::parse(v.hidden_act.as_deref().unwrap_or("silu"), file)?,
        rope_theta: v
            .rope_parameters
            .and_then(|r| r.rope_theta)
            .unwrap_or(10_000.0),
    };
    if cfg.num_heads == 0
        || !cfg.hidden_size.is_multiple_of(cfg.num_heads)
        || !(cfg.hidden_size / cfg.num_heads).is_multiple_of(4)
    {
        bail!(
            "{file}: vision hidden_size {} / num_heads {} must give a head dim divisible by 4",
            cfg.hidden_size,
            cfg.num_heads
        );
    }
    let unit = cfg.spatial_merge_size * cfg.patch_size;
    if unit == 0 || !cfg.window_size.is_multiple_of(unit) || cfg.window_size == 0 {
        bail!("{file}: vision window_size {} is not a positive multiple of patch_size*spatial_merge_size {unit}", cfg.window_size);
    }
    if let Some(&bad) = cfg.fullatt_block_indexes.iter().find(|&&i| i >= cfg.depth) {
        bail!(
            "{file}: fullatt_block_indexes has {bad}, but depth is {}",
            cfg.depth
        );
    }
    Ok(cfg)
}

/// `preprocessor_config.json` (Qwen2VLImageProcessor).
#[derive(Debug, Clone)]
pub struct PreprocessorConfig {
    pub min_pixels: usize,
    pub max_pixels: usize,
    pub patch_size: usize,
    pub merge_size: usize,
    pub temporal_patch_size: usize,
    pub image_mean: [f64; 3],
    pub image_std: [f64; 3],
    pub rescale_factor: f64,
    pub do_resize: bool,
    pub do_rescale: bool,
    pub do_normalize: bool,
    /// Which processor's resize and arithmetic to reproduce; not in the file (transformers
    /// picks the processor class, `use_fast`): the engine's `image_resize` option.
    pub resample: Resample,
}

impl Default for PreprocessorConfig {
    /// Qwen2.5-VL's defaults.
    fn default() -> Self {
        PreprocessorConfig {
            min_pixels: 56 * 56,
            max_pixels: 28 * 28 * 1280,
            patch_size: 14,
            merge_size: 2,
            temporal_patch_size: 2,
            // OpenAI CLIP's, as transformers spells them.
            image_mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
            image_std: [0.268_629_54, 0.261_302_58, 0.275_777_11],
            resample: Resample::default(),
            rescale_factor: 1.0 / 255.0,
            do_resize: true,
            do_rescale: true,
            do_normalize: true,
        }
    }
}

#[derive(Debug, Deserialize)]
struct SizeRaw {
    shortest_edge: Option<usize>,
    longest_edge: Option<usize>,
}

#[derive(Debug, Deserialize)]
struct PreprocessorRaw {
    min_pixels: Option<usize>,
    max_pixels: Option<usize>,
    size: Option<SizeRaw>,
    patch_size: Option<usize>,
    merge_size: Option<usize>,
    temporal_patch_size: Option<usize>,
    image_mean: Option<Vec<f64>>,
    image_std: Option<Vec<f64>>,
    rescale_factor: Option<f64>,
    do_resize: Option<bool>,
    do_rescale: Option<bool>,
    do_normalize: Option<bool>,
}

impl PreprocessorConfig {
    /// Reads a `preprocessor_config.json`.
    pub fn load(path: &Path) -> Result<Self> {
        let file = file_name(path);
        Self::from_value(&read_json(path)?, &file)
    }

    /// Parses the contents of a `preprocessor_config.json`; `file` names it in errors.
    pub fn from_json_str(json: &str, file: &str) -> Result<Self> {
        let value: Value =
            serde_json::from_str(json).with_context(|| format!("{file}: not valid JSON"))?;
        Self::from_value(&value, file)
    }

    fn from_value(value: &Value, file: &str) -> Result<Self> {
        let raw: PreprocessorRaw = parse(value, file, "preprocessor config")?;
        let d = PreprocessorConfig::default();
        let triple = |v: Option<Vec<f64>>, default: [f64; 3], what: &str| -> Result<[f64; 3]> {
            match v {
                None => Ok(default),
                Some(v) if v.len() == 3 => Ok([v[0], v[1], v[2]]),
                Some(v) => bail!("{file}: {what} has {} values, expected 3", v.len()),
            }
        };
        let size = raw.size.as_ref();
        let cfg = PreprocessorConfig {
            min_pixels: raw
                .min_pixels
                .or(size.and_then(|s| s.shortest_edge))
                .unwrap_or(d.min_pixels),
            max_pixels: raw
                .max_pixels
                .or(size.and_then(|s| s.longest_edge))
                .unwrap_or(d.max_pixels),
            patch_size: raw.patch_size.unwrap_or(d.patch_size),
            merge_size: raw.merge_size.unwrap_or(d.merge_size),
            temporal_patch_size: raw.temporal_patch_size.unwrap_or(d.temporal_patch_size),
            image_mean: triple(raw.image_mean, d.image_mean, "image_mean")?,
            image_std: triple(raw.image_std, d.image_std, "image_std")?,
            rescale_factor: raw.rescale_factor.unwrap_or(d.rescale_factor),
            do_resize: raw.do_resize.unwrap_or(true),
            do_rescale: raw.do_rescale.unwrap_or(true),
            do_normalize: raw.do_normalize.unwrap_or(true),
            resample: Resample::default(),
        };
        if cfg.patch_size == 0 || cfg.merge_size == 0 || cfg.temporal_patch_size == 0 {
            bail!("{file}: patch_size, merge_size and temporal_patch_size must be positive");
        }
        if cfg.min_pixels > cfg.max_pixels {
            bail!(
                "{file}: min_pixels {} is above max_pixels {}",
                cfg.min_pixels,
                cfg.max_pixels
            );
        }
        Ok(cfg)
    }
}

/// `generation_config.json`: the model's sampling defaults. Every field is optional.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GenerationConfig {
    pub do_sample: Option<bool>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub max_new_tokens: Option<usize>,
    #[serde(default, deserialize_with = "de_ids")]
    pub eos_token_id: Vec<u32>,
    pub bos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
}

fn de_ids<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<u32>, D::Error> {
    Ok(Option::<OneOrMany>::deserialize(d)?
        .map(OneOrMany::into_vec)
        .unwrap_or_default())
}

impl GenerationConfig {
    /// Reads a `generation_config.json`.
    pub fn load(path: &Path) -> Result<Self> {
        let file = file_name(path);
        parse(&read_json(path)?, &file, "generation config")
    }

    /// Parses the contents of a `generation_config.json`; `file` names it in errors.
    pub fn from_json_str(json: &str, file: &str) -> Result<Self> {
        serde_json::from_str(json).map_err(|e| anyhow!("{file}: {e}"))
    }
}
