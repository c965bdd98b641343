//! `GET /v1/models`: the OpenAI list of served model names.

use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelCard>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ModelCard {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
}

impl ModelList {
    pub fn new(names: impl IntoIterator<Item = String>, created: u64) -> Self {
        ModelList {
            object: "list".into(),
            data: names
                .into_iter()
                .map(|id| ModelCard {
                    id,
                    object: "model".into(),
                    created,
                    owned_by: "caprl-gateway".into(),
                })
                .collect(),
        }
    }
}
