//! The images a command works on, read as a stream: a directory tree (walked in sorted path
//! order), a JSON array of paths, or a JSONL manifest (one object per line). Never read whole:
//! a thread produces items into a bounded channel as the command consumes them, and only the
//! positions of the chosen shard are kept.

use futures::stream::BoxStream;
use futures::StreamExt;
use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;

/// Items read ahead of the command.
const READ_AHEAD: usize = 1024;
/// The file names a directory walk takes.
const IMAGE_EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "webp", "gif", "bmp"];

/// One image: its key (how the output names it) and where its bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub key: String,
    pub path: PathBuf,
}

/// An input entry that names no image (a manifest line without the field): reported under
/// `key` (`FILE:LINE`), and the run goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemError {
    pub key: String,
    pub message: String,
}

/// Which positions of the input this run takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl Shard {
    /// `I/N`; `N` alone takes I from `JOB_COMPLETION_INDEX` (a Kubernetes Indexed Job); none
    /// takes everything.
    pub fn parse(spec: Option<&str>) -> anyhow::Result<Shard> {
        let Some(spec) = spec else {
            return Ok(Shard { index: 0, count: 1 });
        };
        let (index, count) = match spec.split_once('/') {
            Some((i, n)) => (i.trim().parse::<u64>()?, n.trim().parse::<u64>()?),
            None => {
                let n = spec.trim().parse::<u64>()?;
                let i = std::env::var("JOB_COMPLETION_INDEX")
                    .map_err(|_| {
                        anyhow::anyhow!("--shard {spec} needs JOB_COMPLETION_INDEX (or give I/N)")
                    })?
                    .trim()
                    .parse::<u64>()?;
                (i, n)
            }
        };
        anyhow::ensure!(
            count > 0 && index < count,
            "--shard {spec}: the index must be below the count"
        );
        Ok(Shard { index, count })
    }

    fn takes(&self, position: u64) -> bool {
        position % self.count == self.index
    }
}

pub type Items = BoxStream<'static, Result<Item, ItemError>>;

/// Start reading `input`; the stream of its items in this shard.
pub fn open(
    input: &Path,
    image_root: Option<&Path>,
    image_field: &str,
    shard: Shard,
) -> anyhow::Result<Items> {
    let meta = std::fs::metadata(input)
        .map_err(|e| anyhow::anyhow!("cannot read the input {}: {e}", input.display()))?;
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    let input = input.to_path_buf();
    let root = image_root.map(Path::to_path_buf).unwrap_or_else(|| {
        input
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    });
    let field = image_field.to_string();
    let kind = if meta.is_dir() {
        Kind::Dir
    } else if input.extension().is_some_and(|e| e == "jsonl") {
        Kind::Jsonl
    } else if input.extension().is_some_and(|e| e == "json") {
        Kind::Json
    } else {
        anyhow::bail!(
            "the input {} is neither a directory, a .json list nor a .jsonl manifest",
            input.display()
        );
    };
    std::thread::Builder::new()
        .name("input".into())
        .spawn(move || {
            let mut out = Out {
                tx,
                shard,
                position: 0,
            };
            let result = match kind {
                Kind::Dir => walk(&input, &mut out),
                Kind::Jsonl => jsonl(&input, &root, &field, &mut out),
                Kind::Json => json_list(&input, &root, &mut out),
            };
            if let Err(e) = result {
                let _ = out.tx.blocking_send(Err(ItemError {
                    key: input.display().to_string(),
                    message: format!("reading the input stopped: {e}"),
                }));
            }
        })?;
    Ok(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
    .boxed())
}

enum Kind {
    Dir,
    Json,
    Jsonl,
}

struct Out {
    tx: mpsc::Sender<Result<Item, ItemError>>,
    shard: Shard,
    position: u64,
}

impl Out {
    /// Pass on the next entry if it is in the shard; false once the consumer is gone.
    fn push(&mut self, item: Result<Item, ItemError>) -> bool {
        let position = self.position;
        self.position += 1;
        if !self.shard.takes(position) {
            return true;
        }
        self.tx.blocking_send(item).is_ok()
    }
}

fn resolve(root: &Path, given: &str) -> PathBuf {
    let p = Path::new(given);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        root.join(p)
    }
}

fn walk(dir: &Path, out: &mut Out) -> anyhow::Result<()> {
    for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let entry = entry?;
        if !entry.file_type().is_file() {
            continue;
        }
        let is_image = entry
            .path()
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
        if !is_image {
            continue;
        }
        let rel = entry.path().strip_prefix(dir).unwrap_or(entry.path());
        let key = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        if !out.push(Ok(Item {
            key,
            path: entry.path().to_path_buf(),
        })) {
            return Ok(());
        }
    }
    Ok(())
}

fn jsonl(input: &Path, root: &Path, field: &str, out: &mut Out) -> anyhow::Result<()> {
    let reader = std::io::BufReader::new(std::fs::File::open(input)?);
    for (i, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let item = match serde_json::from_str::<serde_json::Value>(&line) {
            Ok(v) => match v.get(field).and_then(|f| f.as_str()) {
                Some(p) => Ok(Item {
                    key: p.to_string(),
                    path: resolve(root, p),
                }),
                None => Err(format!("no string field `{field}`")),
            },
            Err(e) => Err(format!("not JSON: {e}")),
        };
        let item = item.map_err(|message| ItemError {
            key: format!("{}:{}", input.display(), i + 1),
            message,
        });
        if !out.push(item) {
            return Ok(());
        }
    }
    Ok(())
}

/// A JSON array of path strings, element by element.
fn json_list(input: &Path, root: &Path, out: &mut Out) -> anyhow::Result<()> {
    struct Each<'a> {
        root: &'a Path,
        out: &'a mut Out,
    }
    impl<'de> DeserializeSeed<'de> for Each<'_> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_seq(self)
        }
    }
    impl<'de> Visitor<'de> for Each<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON array of image paths")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while let Some(p) = seq.next_element::<String>()? {
                let item = Ok(Item {
                    path: resolve(self.root, &p),
                    key: p,
                });
                if !self.out.push(item) {
                    break;
                }
            }
            Ok(())
        }
    }
    let reader = std::io::BufReader::new(std::fs::File::open(input)?);
    let mut de = serde_json::Deserializer::from_reader(reader);
    Each { root, out }.deserialize(&mut de)?;
    Ok(())
}
