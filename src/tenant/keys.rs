//! The keys file: what it may say, parsed and checked as a whole before any of it takes effect.
//!
//! ```toml
//! [[keys]]
//! name = "captioning"            # logs and metrics use this, never the secret
//! sha256 = "9f86d0…"             # the secret's SHA-256 (hex), or `secret = "sk-…"`
//! models = ["caprl"]             # omitted: every served model
//! files_and_batches = true       # the /v1/files and /v1/batches endpoints (default false)
//! requests_per_minute = 600      # each limit omitted: none
//! tokens_per_minute = 2_000_000
//! max_concurrent = 64
//! ```
//!
//! A `.json` file holds the same as `{"keys": [{…}, …]}`.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashSet};
use std::path::Path;

/// Most keys one file may hold: each name is a metric label, so the label stays bounded.
pub const MAX_KEYS: usize = 1000;

/// One key as the file gives it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    name: String,
    secret: Option<String>,
    sha256: Option<String>,
    models: Option<Vec<String>>,
    #[serde(default)]
    files_and_batches: bool,
    #[serde(flatten)]
    limits: Limits,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    keys: Vec<KeyEntry>,
}

/// A key's limits as configured for the whole fleet (each replica enforces its share).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u64>,
    pub max_concurrent: Option<u32>,
}

impl Limits {
    /// This replica's share of each limit when `replicas` gateways enforce it (at least 1).
    pub fn share(self, replicas: u32) -> Limits {
        let r = replicas.max(1);
        Limits {
            requests_per_minute: self.requests_per_minute.map(|n| (n / r).max(1)),
            tokens_per_minute: self.tokens_per_minute.map(|n| (n / u64::from(r)).max(1)),
            max_concurrent: self.max_concurrent.map(|n| (n / r).max(1)),
        }
    }
}

/// One key, checked: the secret is kept only as its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    pub name: String,
    pub digest: [u8; 32],
    /// `None`: every served model.
    pub models: Option<BTreeSet<String>>,
    pub files_and_batches: bool,
    pub limits: Limits,
}

/// The SHA-256 of a secret: what keys are compared by.
pub fn digest(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Parse and check a keys file's text; `json` picks the format. Every problem is an error
/// naming the key (by its position and name, never its secret): nothing half-loaded.
pub fn parse(text: &str, json: bool) -> Result<Vec<KeySpec>, String> {
    let file: KeysFile = if json {
        serde_json::from_str(text).map_err(|e| e.to_string())?
    } else {
        toml::from_str(text).map_err(|e| e.to_string())?
    };
    if file.keys.len() > MAX_KEYS {
        return Err(format!(
            "{} keys; at most {MAX_KEYS} are allowed",
            file.keys.len()
        ));
    }
    let mut names = HashSet::new();
    let mut digests = HashSet::new();
    let mut out = Vec::with_capacity(file.keys.len());
    for (i, k) in file.keys.into_iter().enumerate() {
        let at = format!("keys[{i}] (`{}`)", k.name);
        if !valid_name(&k.name) {
            return Err(format!("keys[{i}]: name must be 1-64 of A-Z a-z 0-9 - _ ."));
        }
        if !names.insert(k.name.clone()) {
            return Err(format!("{at}: the name is used twice"));
        }
        let digest = match (&k.secret, &k.sha256) {
            (Some(secret), None) if !secret.is_empty() => digest(secret.as_bytes()),
            (None, Some(hex)) => {
                hex32(hex).ok_or_else(|| format!("{at}: sha256 must be 64 hexadecimal digits"))?
            }
            _ => return Err(format!("{at}: give exactly one of `secret` and `sha256`")),
        };
        if !digests.insert(digest) {
            return Err(format!("{at}: the same secret as an earlier key"));
        }
        let l = &k.limits;
        if l.requests_per_minute == Some(0)
            || l.tokens_per_minute == Some(0)
            || l.max_concurrent == Some(0)
        {
            return Err(format!(
                "{at}: a limit must be positive (leave it out for none)"
            ));
        }
        let models = match k.models {
            None => None,
            Some(list) if list.iter().any(|m| m == "*") => None,
            Some(list) => Some(list.into_iter().collect()),
        };
        out.push(KeySpec {
            name: k.name,
            digest,
            models,
            files_and_batches: k.files_and_batches,
            limits: k.limits,
        });
    }
    Ok(out)
}

/// Read and parse the file at `path` (JSON when it ends in `.json`).
pub fn read(path: &Path) -> Result<(Vec<KeySpec>, [u8; 32]), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let json = path.extension().is_some_and(|e| e == "json");
    let keys = parse(&text, json).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((keys, digest(text.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_entry_parses_and_keeps_only_the_digest() {
        let keys = parse(
            r#"
            [[keys]]
            name = "team-a"
            secret = "sk-a"
            models = ["caprl"]
            files_and_batches = true
            requests_per_minute = 60
            tokens_per_minute = 1000
            max_concurrent = 4

            [[keys]]
            name = "team.b"
            sha256 = "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08"
            "#,
            false,
        )
        .expect("parses");
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].digest, digest(b"sk-a"));
        assert_eq!(keys[0].models, Some(BTreeSet::from(["caprl".to_string()])));
        assert!(keys[0].files_and_batches);
        assert_eq!(keys[0].limits.requests_per_minute, Some(60));
        // sha256("test"), given in upper case.
        assert_eq!(keys[1].digest, digest(b"test"));
        assert_eq!(keys[1].models, None);
        assert!(!keys[1].files_and_batches);
        assert_eq!(keys[1].limits, Limits::default());
        assert!(!format!("{keys:?}").contains("sk-a"));
    }

    #[test]
    fn json_says_the_same() {
        let keys = parse(
            r#"{"keys": [{"name": "j", "secret": "s", "models": ["*"], "max_concurrent": 2}]}"#,
            true,
        )
        .expect("parses");
        assert_eq!(keys[0].models, None);
        assert_eq!(keys[0].limits.max_concurrent, Some(2));
    }

    #[test]
    fn every_mistake_is_refused_whole() {
        let cases = [
            ("[[keys]]\nname = \"a\"\n", "exactly one"),
            (
                "[[keys]]\nname = \"a\"\nsecret = \"x\"\nsha256 = \"00\"\n",
                "exactly one",
            ),
            (
                "[[keys]]\nname = \"a\"\nsha256 = \"abc\"\n",
                "64 hexadecimal",
            ),
            ("[[keys]]\nname = \"a b\"\nsecret = \"x\"\n", "name must be"),
            (
                "[[keys]]\nname = \"a\"\nsecret = \"x\"\n[[keys]]\nname = \"a\"\nsecret = \"y\"\n",
                "used twice",
            ),
            (
                "[[keys]]\nname = \"a\"\nsecret = \"x\"\n[[keys]]\nname = \"b\"\nsecret = \"x\"\n",
                "same secret",
            ),
            (
                "[[keys]]\nname = \"a\"\nsecret = \"x\"\nrequests_per_minute = 0\n",
                "positive",
            ),
            (
                "[[keys]]\nname = \"a\"\nsecret = \"x\"\nrpm = 3\n",
                "unknown field",
            ),
            ("keys = 3", "invalid type"),
        ];
        for (text, want) in cases {
            let err = parse(text, false).expect_err(text);
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(!err.contains("\"x\""), "the error repeats a secret: {err}");
        }
    }

    #[test]
    fn a_replicas_share_rounds_down_but_never_to_zero() {
        let l = Limits {
            requests_per_minute: Some(100),
            tokens_per_minute: Some(1000),
            max_concurrent: Some(2),
        };
        assert_eq!(
            l.share(3),
            Limits {
                requests_per_minute: Some(33),
                tokens_per_minute: Some(333),
                max_concurrent: Some(1),
            }
        );
        assert_eq!(l.share(1), l);
    }
}
