//! A resumable JSONL file: what a workflow command has done, one line per item, appended as
//! items finish. Opening it reads what an earlier run wrote, cuts off a torn last line (a kill
//! in the middle of a write), and remembers which items are done, by a 128-bit hash of their
//! key (16 bytes per item, not the key: 2 M done images hold 32 MB, not their paths).
//!
//! Each line is written with one `write` call on an unbuffered file, so what a kill leaves is
//! whole lines and at most one torn one, which the next open removes.

use serde_json::Value;
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    done: HashSet<u128>,
}

/// The hash a key is remembered by.
pub fn key_hash(key: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(key.as_bytes())
}

impl Journal {
    /// Open (or create) `path`. `key_of` reads a line's key, and says whether the line counts
    /// as done (an error that is worth trying again does not); lines it cannot read count as
    /// not done. Returns the journal and how many torn bytes were cut off the end.
    pub fn open(
        path: &Path,
        key_of: impl Fn(&Value) -> Option<(String, bool)>,
    ) -> std::io::Result<(Journal, u64)> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .append(true)
            .open(path)?;
        let mut done = HashSet::new();
        let mut good: u64 = 0;
        {
            let mut reader = BufReader::new(&mut file);
            let mut line = Vec::new();
            loop {
                line.clear();
                let n = reader.read_until(b'\n', &mut line)?;
                if n == 0 {
                    break;
                }
                // A line without its newline was cut by a kill: it and anything after go.
                if line.last() != Some(&b'\n') {
                    break;
                }
                // A line that does not parse (a torn write that a later run followed with a
                // newline) is not done, and kept: the lines after it are good.
                if let Some((key, true)) = serde_json::from_slice::<Value>(&line)
                    .ok()
                    .as_ref()
                    .and_then(&key_of)
                {
                    done.insert(key_hash(&key));
                }
                good += n as u64;
            }
        }
        let len = file.metadata()?.len();
        let torn = len - good;
        if torn > 0 {
            file.set_len(good)?;
        }
        file.seek(SeekFrom::End(0))?;
        Ok((
            Journal {
                path: path.to_path_buf(),
                file,
                done,
            },
            torn,
        ))
    }

    /// Open a journal whose lines name their item in `field`: a line counts as done unless it
    /// says `"retryable": true` (a failure worth trying again). A torn tail is cut and logged.
    pub fn open_keyed(path: &Path, field: &'static str) -> std::io::Result<Journal> {
        let (journal, torn) = Journal::open(path, move |v| {
            let retryable = v.get("retryable").and_then(Value::as_bool).unwrap_or(false);
            Some((v.get(field)?.as_str()?.to_string(), !retryable))
        })?;
        if torn > 0 {
            tracing::warn!(file = %path.display(), bytes = torn, "cut a torn last line left by an interrupted run");
        }
        Ok(journal)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_done(&self, key: &str) -> bool {
        self.done.contains(&key_hash(key))
    }

    /// The hashes of the done keys.
    pub fn done_hashes(&self) -> impl Iterator<Item = u128> + '_ {
        self.done.iter().copied()
    }

    pub fn done_count(&self) -> usize {
        self.done.len()
    }

    /// Append one record (a JSON object) as one line; `counts` marks its key done.
    pub fn append(&mut self, key: &str, record: &Value, counts: bool) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        if counts {
            self.done.insert(key_hash(key));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(v: &Value) -> Option<(String, bool)> {
        Some((v.get("k")?.as_str()?.to_string(), v.get("retry").is_none()))
    }

    #[test]
    fn a_torn_last_line_is_cut_and_its_item_is_not_done() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out.jsonl");
        std::fs::write(
            &path,
            "{\"k\": \"a\"}\n{\"k\": \"b\", \"retry\": true}\n{\"k\": \"c\"",
        )
        .expect("write");
        let (mut j, torn) = Journal::open(&path, key).expect("open");
        assert_eq!(torn, 9, "the torn line is 9 bytes");
        assert!(j.is_done("a"));
        assert!(!j.is_done("b"), "a retryable error is not done");
        assert!(!j.is_done("c"), "the torn line is not done");
        j.append("c", &json!({"k": "c"}), true).expect("append");
        drop(j);
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().count(), 3);
        assert!(text.ends_with("{\"k\":\"c\"}\n"), "{text}");
        let (j, torn) = Journal::open(&path, key).expect("reopen");
        assert_eq!((torn, j.done_count()), (0, 2));
    }
}
