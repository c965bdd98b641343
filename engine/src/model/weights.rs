//! Reading a checkpoint's safetensors into Candle tensors.
//!
//! Owns finding the weight files (one `model.safetensors`, or the shards a
//! `model.safetensors.index.json` lists), converting every tensor to the requested dtype and
//! device, the two tensor naming schemes (`model.language_model.*` / `model.visual.*` of
//! transformers >= 4.52, `model.*` / `visual.*` of the hub checkpoints), and errors that name
//! the file and the tensor: a missing shard, a missing tensor, a shape mismatch.

use anyhow::{anyhow, bail, Context, Result};
use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// All tensors of a checkpoint, by name, with the file each came from.
pub(crate) struct Weights {
    tensors: HashMap<String, (Tensor, usize)>,
    files: Vec<String>,
    text_prefix: &'static str,
    vision_prefix: &'static str,
}

const INDEX: &str = "model.safetensors.index.json";
const SINGLE: &str = "model.safetensors";

impl Weights {
    /// Loads every tensor of the checkpoint in `dir`.
    pub(crate) fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let files = weight_files(dir)?;
        let mut tensors = HashMap::new();
        for (i, file) in files.iter().enumerate() {
            let path = dir.join(file);
            let bytes = std::fs::read(&path)
                .with_context(|| format!("{file}: cannot read {}", path.display()))?;
            let st = safetensors::SafeTensors::deserialize(&bytes)
                .map_err(|e| anyhow!("{file}: not a valid safetensors file: {e}"))?;
            for (name, view) in st.tensors() {
                let t = view
                    .load(&Device::Cpu)
                    .and_then(|t| t.to_dtype(dtype))
                    .and_then(|t| t.to_device(device))
                    .with_context(|| {
                        format!("{file}: cannot load tensor {name} ({:?})", view.dtype())
                    })?;
                tensors.insert(name, (t, i));
            }
        }
        let (text_prefix, vision_prefix) = if tensors
            .keys()
            .any(|k| k.starts_with("model.language_model."))
        {
            ("model.language_model.", "model.visual.")
        } else {
            ("model.", "visual.")
        };
        Ok(Weights {
            tensors,
            files,
            text_prefix,
            vision_prefix,
        })
    }

    /// The files the tensors came from, for messages.
    fn file_list(&self) -> String {
        self.files.join(", ")
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The tensor `name`, checked to have `shape`.
    pub(crate) fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let (t, file) = self
            .tensors
            .get(name)
            .ok_or_else(|| anyhow!("tensor {name} not found in {}", self.file_list()))?;
        if t.dims() != shape {
            bail!(
                "{}: tensor {name} has shape {:?}, expected {:?}",
                self.files[*file],
                t.dims(),
                shape
            );
        }
        Ok(t.clone())
    }

    /// A text-decoder tensor, by its name under the decoder (`layers.0.mlp.up_proj.weight`).
    pub(crate) fn text(&self, suffix: &str, shape: &[usize]) -> Result<Tensor> {
        self.get(&format!("{}{suffix}", self.text_prefix), shape)
    }

    /// A vision-tower tensor, by its name under the tower (`blocks.0.attn.qkv.weight`).
    pub(crate) fn vision(&self, suffix: &str, shape: &[usize]) -> Result<Tensor> {
        self.get(&format!("{}{suffix}", self.vision_prefix), shape)
    }
}

/// The weight files of `dir`, checked to exist.
fn weight_files(dir: &Path) -> Result<Vec<String>> {
    let index = dir.join(INDEX);
    if index.exists() {
        let text =
            std::fs::read_to_string(&index).with_context(|| format!("{INDEX}: cannot read"))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{INDEX}: not valid JSON"))?;
        let map = value
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| anyhow!("{INDEX}: no weight_map object"))?;
        let mut files = BTreeSet::new();
        for (name, file) in map {
            let file = file
                .as_str()
                .ok_or_else(|| anyhow!("{INDEX}: weight_map[{name}] is not a file name"))?;
            files.insert(file.to_string());
        }
        if files.is_empty() {
            bail!("{INDEX}: weight_map is empty");
        }
        for f in &files {
            if !dir.join(f).is_file() {
                bail!("{INDEX} lists {f}, which is missing from {}", dir.display());
            }
        }
        Ok(files.into_iter().collect())
    } else if dir.join(SINGLE).is_file() {
        Ok(vec![SINGLE.to_string()])
    } else {
        bail!("no {SINGLE} or {INDEX} in {}", dir.display())
    }
}
