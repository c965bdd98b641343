//! Prism's answer scorer: did the evaluation model's answer match the benchmark's gold?
//!
//! The answer is the content of the last `\boxed{…}` inside `<answer>…</answer>` after
//! `</think>` (CapRL's pattern, greedy inside the box), else nothing (a parse failure, which
//! scores 0). It is compared with the gold as math-verify compares them most often:
//! - numbers (integers, decimals, thousands separators, percentages, `\frac`, simple
//!   `\sqrt` and `\pi` forms, units and degree signs dropped) equal within a relative 1e-6;
//! - a percentage also equals its fraction (`45%` and `0.45`), as math-verify's does;
//! - multiple-choice letters (`C`, `(C)`, `C) text`, `\text{C}`);
//! - otherwise the normalised text (case, spaces, `\text{}` and `$` dropped).
//!
//! A gold that is neither a number nor anything comparable (empty) counts 1, as in CapRL.
//! Chart benchmarks also accept relaxed accuracy (within 5 %, the prediction also tried ×0.01
//! and ×100), and InfoVQA also ANLS ≥ 0.5; the score is the best of the ways. Its agreement
//! with the Python `math-verify` package is measured on `tests/fixtures/prism/`.

use regex::Regex;
use std::sync::OnceLock;

/// Which ways of matching a benchmark accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Math,
    /// ChartQA-style: relaxed accuracy too.
    Chart,
    /// InfoVQA: relaxed accuracy and ANLS too.
    Info,
}

impl Kind {
    /// CapRL decides by the benchmark file's name: `char` (chart) or `info` in it.
    pub fn for_benchmark(name: &str) -> Kind {
        let lower = name.to_lowercase();
        if lower.contains("info") {
            Kind::Info
        } else if lower.contains("char") {
            Kind::Chart
        } else {
            Kind::Math
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "math" => Some(Kind::Math),
            "chart" => Some(Kind::Chart),
            "info" => Some(Kind::Info),
            _ => None,
        }
    }
}

fn answer_pattern() -> &'static Regex {
    static PATTERN: OnceLock<Regex> = OnceLock::new();
    PATTERN.get_or_init(|| {
        Regex::new(r"(?s)</think>\s*<answer>.*?\\boxed\{(.*)\}.*?</answer>")
            .expect("a valid pattern; this is a bug")
    })
}

/// The answer in an evaluation model's text: the last match of CapRL's pattern.
pub fn extract_answer(content: &str) -> Option<String> {
    answer_pattern()
        .captures_iter(content)
        .last()
        .and_then(|c| c.get(1))
        .map(|m| m.as_str().to_string())
}

/// Score one answer text against the gold: 0.0 to 1.0.
pub fn score(kind: Kind, content: &str, gold: &str) -> f64 {
    let gold = gold.trim();
    let Some(gold_value) = Value::parse(gold) else {
        // CapRL: a gold that math-verify cannot parse counts 1.
        return 1.0;
    };
    let Some(answer) = extract_answer(content) else {
        return 0.0;
    };
    let answer_value = Value::parse(&answer);
    let mut best: f64 = match &answer_value {
        Some(a) if a.equals(&gold_value) => 1.0,
        _ => 0.0,
    };
    if kind != Kind::Math && best < 1.0 {
        let pred = answer_value
            .as_ref()
            .map(Value::text)
            .unwrap_or_else(|| normalise(&answer));
        best = best.max(relaxed_accuracy(&pred, gold));
        if kind == Kind::Info {
            let a = anls(&pred, gold);
            if a >= 0.5 {
                best = best.max(a);
            }
        }
    }
    best
}

/// A parsed answer or gold.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Number { value: f64, percent: bool },
    Letter(char),
    Text(String),
}

impl Value {
    fn parse(s: &str) -> Option<Value> {
        let text = normalise(s);
        if text.is_empty() {
            return None;
        }
        if let Some((value, percent)) = number(&text) {
            return Some(Value::Number { value, percent });
        }
        if let Some(l) = letter(&text) {
            return Some(Value::Letter(l));
        }
        Some(Value::Text(text.to_lowercase()))
    }

    fn text(&self) -> String {
        match self {
            Value::Number { value, percent } => {
                let v = if *percent { value * 100.0 } else { *value };
                format_number(v)
            }
            Value::Letter(l) => l.to_string(),
            Value::Text(t) => t.clone(),
        }
    }

    fn equals(&self, gold: &Value) -> bool {
        match (self, gold) {
            (
                Value::Number {
                    value: a,
                    percent: pa,
                },
                Value::Number {
                    value: b,
                    percent: pb,
                },
            ) => {
                close(*a, *b)
                    // 45% = 0.45 (values are kept as fractions); and 45% = 45 as written.
                    || (*pa != *pb && close(*a * 100.0, *b))
                    || (*pa != *pb && close(*a, *b * 100.0))
            }
            (Value::Letter(a), Value::Letter(b)) => a == b,
            (Value::Text(a), Value::Text(b)) => a == b,
            (Value::Letter(a), Value::Text(b)) | (Value::Text(b), Value::Letter(a)) => {
                b.len() == 1 && b.starts_with(a.to_ascii_lowercase())
            }
            _ => false,
        }
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * b.abs().max(1.0)
}

fn format_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Strip what carries no value: `$`, `\text{…}` wrappers, `\left`/`\right`, LaTeX spacing,
/// degree signs, a trailing full stop, surrounding spaces.
fn normalise(s: &str) -> String {
    let mut t = s.trim().to_string();
    for (from, to) in [
        ("$", ""),
        ("\\left", ""),
        ("\\right", ""),
        ("\\!", ""),
        ("\\,", ""),
        ("\\;", ""),
        ("\\ ", " "),
        ("^\\circ", ""),
        ("^{\\circ}", ""),
        ("°", ""),
        ("\\%", "%"),
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("\\displaystyle", ""),
    ] {
        t = t.replace(from, to);
    }
    // \text{x}, \mathrm{x}, \textbf{x} -> x
    for cmd in ["\\text", "\\mathrm", "\\textbf", "\\mathbf", "\\textit"] {
        while let Some(at) = t.find(&format!("{cmd}{{")) {
            let open = at + cmd.len();
            let Some(close) = matching_brace(&t, open) else {
                break;
            };
            let inner = t[open + 1..close].to_string();
            t.replace_range(at..=close, &inner);
        }
    }
    let t = t.trim().trim_end_matches('.').trim();
    t.to_string()
}

/// The index of the `}` matching the `{` at `open`.
fn matching_brace(s: &str, open: usize) -> Option<usize> {
    let mut depth = 0;
    for (i, c) in s[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(open + i);
                }
            }
            _ => {}
        }
    }
    None
}

/// A number, as a fraction when it was a percentage: `(value, was a percentage)`.
fn number(t: &str) -> Option<(f64, bool)> {
    let mut s = t.trim();
    // `x = 3`, `x=3`: the right-hand side.
    if let Some((lhs, rhs)) = s.split_once('=') {
        if lhs.trim().chars().all(|c| c.is_ascii_alphabetic()) && !lhs.trim().is_empty() {
            s = rhs.trim();
        }
    }
    let percent = s.ends_with('%');
    let s = s.trim_end_matches('%').trim();
    // A unit after the number: `12 cm`, `3 kg`, `5\text{ m}` (already unwrapped).
    let s = match s.split_once(' ') {
        Some((n, unit))
            if unit
                .chars()
                .all(|c| c.is_alphabetic() || c == '^' || c.is_ascii_digit())
                && parse_plain(n).is_some() =>
        {
            n
        }
        _ => s,
    };
    let v = parse_plain(s).or_else(|| parse_latex(s))?;
    Some(if percent {
        (v / 100.0, true)
    } else {
        (v, false)
    })
}

/// `-1,234.5`, `+3`, `.5`, `1e3`.
fn parse_plain(s: &str) -> Option<f64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    // Thousands separators only where they are ones: `1,234` and `12,345,678`.
    let cleaned = if s.contains(',') {
        let (int, frac) = s.split_once('.').unwrap_or((s, ""));
        let digits = int.trim_start_matches(['-', '+']);
        let groups: Vec<&str> = digits.split(',').collect();
        let ok = groups.len() > 1
            && !groups[0].is_empty()
            && groups[0].len() <= 3
            && groups[1..].iter().all(|g| g.len() == 3);
        if !ok {
            return None;
        }
        let sign = &int[..int.len() - digits.len()];
        if frac.is_empty() {
            format!("{sign}{}", groups.concat())
        } else {
            format!("{sign}{}.{frac}", groups.concat())
        }
    } else {
        s.to_string()
    };
    let ok = cleaned
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E'))
        && cleaned.chars().any(|c| c.is_ascii_digit());
    if !ok {
        return None;
    }
    cleaned.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// `\frac{a}{b}`, `a/b`, `\sqrt{x}`, `k\sqrt{x}`, `\pi`, `k\pi`, `\frac{k\pi}{n}`, and a
/// leading minus on any of them.
fn parse_latex(s: &str) -> Option<f64> {
    let s = s.trim();
    if let Some(rest) = s.strip_prefix('-') {
        return parse_latex(rest).map(|v| -v);
    }
    if let Some(rest) = s.strip_prefix("\\frac") {
        let rest = rest.trim_start();
        if !rest.starts_with('{') {
            return None;
        }
        let close = matching_brace(rest, 0)?;
        let num = &rest[1..close];
        let after = rest[close + 1..].trim_start();
        if !after.starts_with('{') {
            return None;
        }
        let close2 = matching_brace(after, 0)?;
        if !after[close2 + 1..].trim().is_empty() {
            return None;
        }
        let den = &after[1..close2];
        let (n, d) = (atom(num)?, atom(den)?);
        return (d != 0.0).then_some(n / d);
    }
    if let Some((n, d)) = s.split_once('/') {
        let (n, d) = (atom(n)?, atom(d)?);
        return (d != 0.0).then_some(n / d);
    }
    atom(s)
}

/// A number, `\pi`, `\sqrt{x}`, or a number times one of them.
fn atom(s: &str) -> Option<f64> {
    let s = s.trim();
    if let Some(v) = parse_plain(s) {
        return Some(v);
    }
    for (name, value) in [("\\pi", std::f64::consts::PI)] {
        if let Some(k) = s.strip_suffix(name) {
            let k = k.trim();
            return if k.is_empty() {
                Some(value)
            } else {
                parse_plain(k).map(|k| k * value)
            };
        }
    }
    if let Some(at) = s.find("\\sqrt") {
        let k = s[..at].trim();
        let rest = s[at + 5..].trim_start();
        let inner = if rest.starts_with('{') {
            let close = matching_brace(rest, 0)?;
            if !rest[close + 1..].trim().is_empty() {
                return None;
            }
            &rest[1..close]
        } else {
            rest
        };
        let root = parse_plain(inner)?.sqrt();
        return if k.is_empty() {
            Some(root)
        } else {
            parse_plain(k).map(|k| k * root)
        };
    }
    None
}

/// A multiple-choice letter: `C`, `(C)`, `C)`, `C) text`, `C. text`, `Option C`.
fn letter(t: &str) -> Option<char> {
    let s = t.trim();
    let s = s
        .strip_prefix("Option ")
        .or_else(|| s.strip_prefix("option "))
        .unwrap_or(s);
    let s = s.strip_prefix('(').unwrap_or(s);
    let mut chars = s.chars();
    let c = chars.next()?;
    if !c.is_ascii_uppercase() {
        return None;
    }
    match chars.next() {
        None => Some(c),
        Some(')' | '.' | ':') => Some(c),
        _ => None,
    }
}

/// ChartQA's relaxed accuracy: numbers within 5 % (the prediction also ×0.01 and ×100), else
/// an exact match ignoring case.
pub fn relaxed_accuracy(pred: &str, gold: &str) -> f64 {
    let target = normalise(gold);
    let pred = normalise(pred);
    let as_float = |s: &str| parse_plain(s.trim_end_matches('%').trim());
    if let (Some(p), Some(t)) = (as_float(&pred), as_float(&target)) {
        for scale in [1.0, 0.01, 100.0] {
            let p = p * scale;
            let ok = if t == 0.0 {
                p == 0.0
            } else {
                ((p - t) / t).abs() <= 0.05
            };
            if ok {
                return 1.0;
            }
        }
        return 0.0;
    }
    f64::from(u8::from(pred.to_lowercase() == target.to_lowercase()))
}

/// Average normalised Levenshtein similarity (InfoVQA's ANLS for one answer), against the
/// best of the gold answers (a list literal `['a', 'b']` or one string).
pub fn anls(pred: &str, gold: &str) -> f64 {
    let pred = pred.trim().to_lowercase();
    golds(gold)
        .iter()
        .map(|g| {
            let g = g.trim().to_lowercase();
            let longest = pred.chars().count().max(g.chars().count());
            if longest == 0 {
                return 1.0;
            }
            1.0 - levenshtein(&pred, &g) as f64 / longest as f64
        })
        .fold(0.0, f64::max)
}

/// The gold answers of a list literal (`['a', "b"]`), or the string itself.
fn golds(gold: &str) -> Vec<String> {
    let g = gold.trim();
    if g.starts_with('[') && g.ends_with(']') {
        let items: Vec<String> = g[1..g.len() - 1]
            .split(',')
            .map(|s| s.trim().trim_matches(['\'', '"']).to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if !items.is_empty() {
            return items;
        }
    }
    vec![g.to_string()]
}

fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrap(answer: &str) -> String {
        format!("<think>let me see</think> <answer>The answer is \\boxed{{{answer}}}.</answer>")
    }

    #[test]
    fn the_answer_is_the_last_box_of_caprl_s_pattern() {
        assert_eq!(
            extract_answer(&wrap("\\frac{3}{4}")).as_deref(),
            Some("\\frac{3}{4}")
        );
        assert_eq!(
            extract_answer("<answer>\\boxed{3}</answer>"),
            None,
            "no </think>"
        );
        assert_eq!(extract_answer("</think><answer>3</answer>"), None, "no box");
    }

    #[test]
    fn numbers_letters_and_text_compare_as_math_verify_does_most_often() {
        let cases = [
            ("42", "42", 1.0),
            ("42.0", "42", 1.0),
            ("1,234", "1234", 1.0),
            ("45\\%", "45%", 1.0),
            ("0.45", "45%", 1.0),
            ("\\frac{1}{2}", "0.5", 1.0),
            ("\\dfrac{3}{4}", "0.75", 1.0),
            ("2\\pi", "6.283185307", 1.0),
            ("x = 3", "3", 1.0),
            ("12 \\text{cm}", "12", 1.0),
            ("30^\\circ", "30", 1.0),
            ("(B)", "B", 1.0),
            ("C) a red kite", "C", 1.0),
            ("Yes", "yes", 1.0),
            ("41", "42", 0.0),
            ("A", "B", 0.0),
        ];
        for (answer, gold, want) in cases {
            assert_eq!(
                score(Kind::Math, &wrap(answer), gold),
                want,
                "{answer} vs {gold}"
            );
        }
        assert_eq!(score(Kind::Math, "no answer here", "42"), 0.0);
        assert_eq!(
            score(Kind::Math, "no answer here", ""),
            1.0,
            "an empty gold counts 1"
        );
    }

    #[test]
    fn charts_relax_and_infovqa_reads_text_leniently() {
        assert_eq!(score(Kind::Math, &wrap("103"), "100"), 0.0);
        assert_eq!(score(Kind::Chart, &wrap("103"), "100"), 1.0, "within 5 %");
        assert_eq!(score(Kind::Chart, &wrap("0.52"), "52"), 1.0, "×100");
        assert_eq!(score(Kind::Chart, &wrap("110"), "100"), 0.0);
        let s = score(
            Kind::Info,
            &wrap("Internatonal Airport"),
            "['International Airport']",
        );
        assert!(s > 0.9 && s < 1.0, "{s}");
        assert_eq!(
            score(Kind::Info, &wrap("cat"), "['dog']"),
            0.0,
            "ANLS below 0.5"
        );
    }
}
