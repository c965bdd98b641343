//! Validating a batch's input file, once, before any line runs: every line must be a request
//! the batch can send (`custom_id`, `method`, `url`, `body` with `model` and `messages`), all
//! for one served model, with unique `custom_id`s. Every bad line is reported, with its
//! 1-based number and OpenAI's code. What the synchronous endpoint would refuse about a body
//! (a bad image, too many images) is not checked here: such a line runs, fails, and goes to
//! the error file with that endpoint's status and envelope.

use crate::store::LineRow;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;

/// Most bytes read at once from the input file.
const READ_BUFFER: usize = 1 << 20;

/// One bad line, as the batch's `errors.data` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineError {
    pub code: &'static str,
    pub line: u64,
    pub message: String,
    pub param: Option<&'static str>,
}

/// What validation found: the lines to run and their model, or the errors.
#[derive(Debug, Default)]
pub struct Scan {
    pub model: Option<String>,
    pub lines: Vec<LineRow>,
    pub errors: Vec<LineError>,
}

#[derive(Deserialize)]
struct LineView<'a> {
    #[serde(borrow)]
    custom_id: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Option<&'a RawValue>,
    #[serde(borrow)]
    url: Option<&'a RawValue>,
    #[serde(borrow)]
    body: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct BodyView<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    messages: Option<serde::de::IgnoredAny>,
    prompt: Option<serde::de::IgnoredAny>,
    #[serde(borrow)]
    stream: Option<&'a RawValue>,
}

/// Read `path` line by line and check every line. `max_line` bounds one line (the gateway's
/// body limit, plus room for the envelope); a longer line is an error and is skipped without
/// being held.
pub fn scan(
    path: &Path,
    endpoint: &str,
    is_served: &dyn Fn(&str) -> bool,
    max_line: u64,
) -> std::io::Result<Scan> {
    let file = std::fs::File::open(path)?;
    let mut reader = BufReader::with_capacity(READ_BUFFER, file);
    let mut scan = Scan::default();
    let mut seen: HashSet<String> = HashSet::new();
    let mut offset: u64 = 0;
    let mut line_no: u64 = 0;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        buf.clear();
        let (read, too_long) = read_line(&mut reader, &mut buf, max_line)?;
        if read == 0 {
            break;
        }
        line_no += 1;
        let start = offset;
        offset += read;
        if too_long {
            scan.errors.push(LineError {
                code: "invalid_request",
                line: line_no,
                message: format!("the line is longer than {max_line} bytes"),
                param: None,
            });
            continue;
        }
        let text = trim(&buf);
        if text.is_empty() {
            continue;
        }
        match check(text, endpoint, is_served, &mut scan.model, &mut seen) {
            Ok(custom_id) => scan.lines.push(LineRow {
                line: line_no,
                offset: start,
                len: read,
                custom_id,
            }),
            Err((code, param, message)) => scan.errors.push(LineError {
                code,
                line: line_no,
                message,
                param,
            }),
        }
    }
    if scan.errors.is_empty() && scan.lines.is_empty() {
        scan.errors.push(LineError {
            code: "invalid_request",
            line: 0,
            message: "the input file has no requests".into(),
            param: None,
        });
    }
    Ok(scan)
}

/// Read up to and including the next `\n` into `buf`, keeping at most `max` bytes; returns the
/// bytes consumed and whether the line was longer than `max` (then `buf` is incomplete).
fn read_line(
    reader: &mut BufReader<std::fs::File>,
    buf: &mut Vec<u8>,
    max: u64,
) -> std::io::Result<(u64, bool)> {
    let mut read: u64 = 0;
    let mut too_long = false;
    loop {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            return Ok((read, too_long));
        }
        let (piece, done) = match memchr::memchr(b'\n', available) {
            Some(i) => (&available[..=i], true),
            None => (available, false),
        };
        let n = piece.len();
        if !too_long {
            if read + n as u64 > max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(piece);
            }
        }
        read += n as u64;
        reader.consume(n);
        if done {
            return Ok((read, too_long));
        }
    }
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &b[start..end]
}

type Refusal = (&'static str, Option<&'static str>, String);

fn missing(param: &'static str) -> Refusal {
    (
        "missing_required_parameter",
        Some(param),
        format!("Missing required parameter: '{param}'."),
    )
}

/// A JSON string's value, or None when `raw` is not a string.
fn string(raw: &RawValue) -> Option<String> {
    serde_json::from_str::<String>(raw.get()).ok()
}

fn check(
    text: &[u8],
    endpoint: &str,
    is_served: &dyn Fn(&str) -> bool,
    model: &mut Option<String>,
    seen: &mut HashSet<String>,
) -> Result<String, Refusal> {
    let invalid_json = |e: serde_json::Error| {
        (
            "invalid_json_line",
            None,
            format!("This line is not parseable as valid JSON: {e}"),
        )
    };
    let view: LineView<'_> = serde_json::from_slice(text).map_err(invalid_json)?;
    let custom_id = view
        .custom_id
        .and_then(string)
        .ok_or_else(|| missing("custom_id"))?;
    let method = view.method.ok_or_else(|| missing("method"))?;
    if string(method).as_deref() != Some("POST") {
        return Err((
            "invalid_request",
            Some("method"),
            "The only supported method is POST.".into(),
        ));
    }
    let url = view.url.ok_or_else(|| missing("url"))?;
    if string(url).as_deref() != Some(endpoint) {
        return Err((
            "invalid_url",
            Some("url"),
            format!(
                "The URL provided for this request does not match the batch endpoint {endpoint}."
            ),
        ));
    }
    let body = view.body.ok_or_else(|| missing("body"))?;
    let body: BodyView<'_> = serde_json::from_str(body.get()).map_err(|_| {
        (
            "invalid_request",
            Some("body"),
            "The request body must be a JSON object.".to_string(),
        )
    })?;
    if body.stream.is_some_and(|s| s.get() == "true") {
        return Err((
            "streaming_unsupported",
            Some("body.stream"),
            "Streaming is not supported in a batch.".into(),
        ));
    }
    let Some(name) = body.model.and_then(string) else {
        return Err((
            "invalid_request",
            Some("body.model"),
            "The request body must name a model.".into(),
        ));
    };
    let chat = endpoint == "/v1/chat/completions";
    if chat && body.messages.is_none() {
        return Err((
            "invalid_request",
            Some("body.messages"),
            "The request body must have messages.".into(),
        ));
    }
    if !chat && body.prompt.is_none() {
        return Err((
            "invalid_request",
            Some("body.prompt"),
            "The request body must have a prompt.".into(),
        ));
    }
    if !is_served(&name) {
        return Err((
            "model_not_found",
            Some("body.model"),
            format!("The model `{name}` does not exist."),
        ));
    }
    match model {
        Some(first) if *first != name => {
            return Err((
                "mismatched_model",
                Some("body.model"),
                format!(
                    "All requests of a batch must use one model: this line names `{name}`, \
                     earlier lines `{first}`."
                ),
            ))
        }
        Some(_) => {}
        None => *model = Some(name),
    }
    if !seen.insert(custom_id.clone()) {
        return Err((
            "duplicate_custom_id",
            Some("custom_id"),
            format!("The custom_id `{custom_id}` is used by an earlier line."),
        ));
    }
    Ok(custom_id)
}

/// Read one line's bytes back for running it.
pub fn read_at(file: &std::fs::File, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> Scan {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, text).expect("write");
        scan(
            &path,
            "/v1/chat/completions",
            &|m| m == "caprl" || m == "other",
            4096,
        )
        .expect("scan")
    }

    fn ok(id: &str) -> String {
        format!(
            r#"{{"custom_id": "{id}", "method": "POST", "url": "/v1/chat/completions", "body": {{"model": "caprl", "messages": [{{"role": "user", "content": "hi"}}]}}}}"#
        )
    }

    #[test]
    fn good_lines_are_indexed_by_offset() {
        let text = format!("{}\n\n{}\n", ok("a"), ok("b"));
        let s = run(&text);
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        assert_eq!(s.model.as_deref(), Some("caprl"));
        assert_eq!(s.lines.len(), 2);
        assert_eq!(
            (s.lines[0].line, s.lines[1].line),
            (1, 3),
            "the blank line counts"
        );
        let second = &text.as_bytes()[s.lines[1].offset as usize..][..s.lines[1].len as usize];
        assert_eq!(std::str::from_utf8(second).expect("utf8").trim(), ok("b"));
    }

    #[test]
    fn every_bad_line_is_reported_with_its_code() {
        let lines = [
            ok("a"),
            "{not json".to_string(),
            r#"{"method": "POST", "url": "/v1/chat/completions", "body": {}}"#.to_string(),
            r#"{"custom_id": "m", "url": "/v1/chat/completions", "body": {}}"#.to_string(),
            r#"{"custom_id": "u", "method": "POST", "url": "/v1/embeddings", "body": {}}"#
                .to_string(),
            r#"{"custom_id": "s", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "caprl", "messages": [], "stream": true}}"#.to_string(),
            r#"{"custom_id": "n", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "nope", "messages": []}}"#.to_string(),
            r#"{"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "other", "messages": []}}"#.to_string(),
            r#"{"custom_id": "q", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "caprl"}}"#.to_string(),
            ok("a"),
            r#"{"custom_id": "b", "method": "POST", "url": "/v1/chat/completions"}"#.to_string(),
        ];
        let s = run(&(lines.join("\n") + "\n"));
        let got: Vec<(u64, &str, Option<&str>)> =
            s.errors.iter().map(|e| (e.line, e.code, e.param)).collect();
        assert_eq!(
            got,
            vec![
                (2, "invalid_json_line", None),
                (3, "missing_required_parameter", Some("custom_id")),
                (4, "missing_required_parameter", Some("method")),
                (5, "invalid_url", Some("url")),
                (6, "streaming_unsupported", Some("body.stream")),
                (7, "model_not_found", Some("body.model")),
                (8, "mismatched_model", Some("body.model")),
                (9, "invalid_request", Some("body.messages")),
                (10, "duplicate_custom_id", Some("custom_id")),
                (11, "missing_required_parameter", Some("body")),
            ]
        );
    }

    #[test]
    fn a_line_over_the_limit_is_an_error_and_the_next_line_still_counts() {
        let long = format!(
            r#"{{"custom_id": "big", "method": "POST", "url": "/v1/chat/completions", "body": {{"model": "caprl", "messages": [{{"role": "user", "content": "{}"}}]}}}}"#,
            "x".repeat(8000)
        );
        let s = run(&format!("{long}\n{}\n", ok("a")));
        assert_eq!(s.errors.len(), 1);
        assert_eq!(s.errors[0].line, 1);
        assert_eq!(s.lines.len(), 1);
        assert_eq!(s.lines[0].line, 2);
    }

    #[test]
    fn an_empty_file_is_an_error() {
        assert_eq!(run("\n\n").errors.len(), 1);
    }
}
