//! Prism's answer scorer: did the evaluation model's answer match the benchmark's gold?
//!
//! The answer is the content of the last `\boxed{…}` inside `<answer>…</answer>` after
//! `</think>`, by CapRL's own pattern (greedy inside the box). Without one, the answer is a
//! parse failure and scores 0. It is compared with the gold as math-verify (which CapRL uses)
//! compares them, as far as its behaviour shows on realistic answers:
//! - Numbers: integers exactly; decimals, fractions and expressions (`\frac`, `\sqrt`, `\pi`,
//!   `e`, powers, `a:b`) after rounding both to six decimals, as math-verify does.
//!   - Thousands separators (`1,234`, `1{,}234`) are read.
//!   - Units after the number are dropped (`cm`, `\text{ million}`), and so is `^\circ`. The
//!     sign `°` is not dropped.
//!   - `1e3` is not 1000: math-verify reads it as 1·e·3.
//! - Percentages: an integer percentage equals both its number and its fraction
//!   (`45% = 45 = 0.45`); a decimal one only its fraction.
//! - Equations and groups: `x = 3` equals `3`, but a gold `x = 3` refuses `y = 3`. Sets and
//!   open intervals compare unordered (`(1,2) = \{2,1\}`), closed intervals and inequalities in
//!   order.
//! - Multiple choice: the letter alone (`C`, `(C)`, `\text{C}`, `c`). `C) text` does not match.
//! - Words: plain words compare as math-verify's products of symbols, ignoring case (except
//!   `E`), order and spaces. Other text compares exactly.
//!
//! A gold that math-verify finds nothing in (empty) counts 1, as in CapRL. Chart benchmarks also
//! accept relaxed accuracy (within 5 %, the prediction also tried ×0.01 and ×100). InfoVQA also
//! accepts ANLS ≥ 0.5. The score is the best of the ways.
//!
//! Agreement with the Python `math-verify` package on 1,311 reference cases
//! (`tests/fixtures/prism/`, `tests/prism_scorer.rs`): 99.24 %.

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
    if unparseable(gold) {
        // CapRL: a gold that math-verify cannot parse counts 1.
        return 1.0;
    }
    let Some(answer) = extract_answer(content) else {
        return 0.0;
    };
    let answer = unbox(&answer);
    let pred = Expr::parse(&answer);
    let mut best: f64 = if pred.equals(&Expr::parse(gold)) {
        1.0
    } else {
        0.0
    };
    if kind != Kind::Math && best < 1.0 {
        // These compare the text math-verify extracts: for a capture that spans two boxes
        // (`3} and \boxed{4`, CapRL's greedy pattern), what follows the last `\boxed`.
        let student = match answer.rfind("\\boxed{") {
            Some(at) if matching_brace(&answer, at + 6).is_none() => answer[at + 6..].to_string(),
            _ => answer.clone(),
        };
        for g in golds(gold) {
            best = best.max(relaxed_accuracy(&student, &g));
        }
        if kind == Kind::Info {
            let a = anls(&squeeze(&student), gold);
            if a >= 0.5 {
                best = best.max(a);
            }
        }
    }
    best
}

/// A gold math-verify finds nothing in: empty, or only LaTeX punctuation.
fn unparseable(gold: &str) -> bool {
    let t = gold.trim().trim_matches('$').trim();
    t.is_empty() || t == "\\" || t == "\\boxed{}"
}

/// `\boxed{\boxed{7}}`, `{7}`, ` 7 ` -> `7`.
fn unbox(s: &str) -> String {
    let mut t = s.trim().to_string();
    loop {
        let before = t.clone();
        if let Some(rest) = t.strip_prefix("\\boxed") {
            let rest = rest.trim_start();
            if rest.starts_with('{') && matching_brace(rest, 0) == Some(rest.len() - 1) {
                t = rest[1..rest.len() - 1].trim().to_string();
            }
        }
        if t.starts_with('{') && matching_brace(&t, 0) == Some(t.len() - 1) {
            t = t[1..t.len() - 1].trim().to_string();
        }
        if t.starts_with('$') && t.ends_with('$') && t.len() >= 2 {
            t = t[1..t.len() - 1].trim().to_string();
        }
        if t == before {
            return t;
        }
    }
}

fn squeeze(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A parsed answer or gold.
#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Number {
        value: f64,
        integer: bool,
        percent: bool,
    },
    Letter(char),
    /// `x = 3`: the variable and the value.
    Equation(String, Box<Expr>),
    /// `{1,2}`, `(1,2)`, `1,2`, `[0,1]`, and intervals written as inequalities.
    Group {
        items: Vec<f64>,
        kind: GroupKind,
    },
    /// Letters and spaces only: compared as math-verify compares products of symbols (order
    /// and spaces do not matter; `E` is a symbol, `e` Euler's number).
    Word(Vec<char>),
    Text(String),
}

/// How a group of numbers was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GroupKind {
    /// `\{1,2\}`: unordered.
    Set,
    /// `(1,2)`, `1 < x < 2`: an open interval (it also equals the set of its ends).
    Open,
    /// `[0,1]`, `0 \le x \le 1`.
    Closed,
    /// `1, 2`, `1 and 2`.
    Bare,
}

/// Units a number may carry, dropped as math-verify drops them.
const UNITS: [&str; 14] = [
    "cm", "mm", "km", "kg", "m", "g", "s", "h", "ml", "l", "in", "ft", "degrees", "degree",
];

impl Expr {
    fn parse(s: &str) -> Expr {
        // `\text{…}` around a whole answer: a letter or a number as such, words as text (not
        // as a product of symbols).
        let trimmed = s.trim();
        if let Some(inner) = trimmed.strip_prefix("\\text{") {
            if matching_brace(trimmed, 5) == Some(trimmed.len() - 1) {
                let inner = &inner[..inner.len() - 1];
                if let Some(l) = letter(inner) {
                    return Expr::Letter(l);
                }
                if let Some(n) = number(&normalise(inner)) {
                    return n;
                }
                // Plain words read as the same symbols; anything else (`São Paulo`, `25-34
                // years`) stays text, which a bare gold never equals.
                if !inner.chars().all(|c| c.is_ascii_alphabetic() || c == ' ') {
                    return Expr::Text(format!("\\text{{{inner}}}"));
                }
            }
        }
        let t = normalise(s);
        if let Some((var, rhs)) = t.split_once('=') {
            let var = var.trim();
            if !var.is_empty() && var.chars().all(|c| c.is_ascii_alphabetic()) {
                return Expr::Equation(var.to_string(), Box::new(Expr::parse(rhs)));
            }
        }
        if let Some(n) = number(&t) {
            return n;
        }
        if let Some(g) = group(&t) {
            return g;
        }
        if let Some(l) = letter(&t) {
            return Expr::Letter(l);
        }
        if !t.is_empty() && t.chars().all(|c| c.is_alphabetic() || c == ' ') {
            let mut chars: Vec<char> = t
                .chars()
                .filter(|c| *c != ' ')
                .map(|c| {
                    if c == 'E' {
                        c
                    } else {
                        c.to_lowercase().next().unwrap_or(c)
                    }
                })
                .collect();
            chars.sort_unstable();
            return Expr::Word(chars);
        }
        Expr::Text(t.chars().filter(|c| !c.is_whitespace()).collect())
    }

    fn equals(&self, gold: &Expr) -> bool {
        use Expr::*;
        match (self, gold) {
            (
                Number {
                    value: a,
                    integer: ia,
                    percent: pa,
                },
                Number {
                    value: b,
                    integer: ib,
                    percent: pb,
                },
            ) => {
                let same = |x: f64, y: f64| {
                    if *ia && *ib && !pa && !pb {
                        x == y
                    } else {
                        round6(x) == round6(y)
                    }
                };
                // A percentage is kept as its fraction; an integer one also stands for itself.
                same(*a, *b)
                    || (*pa && *ia && same(*a * 100.0, *b))
                    || (*pb && *ib && same(*a, *b * 100.0))
            }
            (Equation(v, a), Equation(w, b)) => v == w && a.equals(b),
            (Equation(_, a), b) => a.equals(b),
            (a, Equation(_, b)) => a.equals(b),
            (Letter(a), Letter(b)) => a.eq_ignore_ascii_case(b),
            (Letter(a), Word(w)) | (Word(w), Letter(a)) => {
                w.len() == 1 && w[0].eq_ignore_ascii_case(a)
            }
            (Group { items: a, kind: ka }, Group { items: b, kind: kb }) => {
                use GroupKind::*;
                let ordered =
                    || a.len() == b.len() && a.iter().zip(b).all(|(x, y)| round6(*x) == round6(*y));
                let unordered = || {
                    let mut a = a.iter().map(|x| round6(*x)).collect::<Vec<_>>();
                    let mut b = b.iter().map(|x| round6(*x)).collect::<Vec<_>>();
                    a.sort_by(f64::total_cmp);
                    b.sort_by(f64::total_cmp);
                    a == b
                };
                match (ka, kb) {
                    (Closed, Closed) | (Open, Open) => ordered(),
                    (Closed, _) | (_, Closed) => false,
                    _ => unordered(),
                }
            }
            (Word(a), Word(b)) => a == b,
            (Text(a), Text(b)) => a == b,
            _ => false,
        }
    }
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// Strip what carries no value: `$`, `\left`/`\right`, LaTeX spacing, `^\circ`, units after a
/// number (`\text{ cm}`, `cm`), `\text{…}` around a whole answer; and spell `−`, `{,}`, `\%`
/// and `percent` the plain way.
fn normalise(s: &str) -> String {
    let mut t = s.trim().to_string();
    for (from, to) in [
        ("\\$", ""),
        ("$", ""),
        ("\u{2212}", "-"),
        ("{,}", ","),
        ("\\left", ""),
        ("\\right", ""),
        ("\\!", ""),
        ("\\,", " "),
        ("\\;", " "),
        ("\\ ", " "),
        ("^\\circ", ""),
        ("^{\\circ}", ""),
        ("\\%", "%"),
        (" percent", "%"),
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("\\displaystyle", ""),
        ("\\cdot", "*"),
        ("\\times", "*"),
        ("\\le", "<="),
        ("\\ge", ">="),
        ("\\in", " in "),
    ] {
        t = t.replace(from, to);
    }
    // `\text{…}`: the whole answer -> its text; after a number -> a unit, dropped (with its
    // exponent); elsewhere -> its text.
    for cmd in ["\\text", "\\mathrm", "\\textbf", "\\mathbf", "\\textit"] {
        while let Some(at) = t.find(&format!("{cmd}{{")) {
            let open = at + cmd.len();
            let Some(close) = matching_brace(&t, open) else {
                break;
            };
            let inner = t[open + 1..close].to_string();
            let before = t[..at].trim_end();
            let word = inner.trim();
            let is_unit = before
                .chars()
                .last()
                .is_some_and(|c| c.is_ascii_digit() || c == '}' || c == 'i')
                && word.chars().all(|c| c.is_alphabetic() || c == ' ')
                && !word.is_empty()
                && word != "and"
                && word != "or";
            let mut end = close + 1;
            if is_unit {
                let rest = &t[end..];
                if let Some(exp) = rest.strip_prefix('^') {
                    end += 1 + exp.chars().take_while(|c| c.is_ascii_digit()).count();
                }
                t.replace_range(at..end, "");
            } else {
                t.replace_range(at..end, &inner);
            }
        }
    }
    t.trim().to_string()
}

/// The index of the `}` (or `)`, `]`) matching the bracket at `open`.
fn matching_brace(s: &str, open: usize) -> Option<usize> {
    let b = s.as_bytes();
    let (o, c) = match b.get(open)? {
        b'{' => (b'{', b'}'),
        b'(' => (b'(', b')'),
        b'[' => (b'[', b']'),
        _ => return None,
    };
    let mut depth = 0;
    for (i, &ch) in b.iter().enumerate().skip(open) {
        if ch == o {
            depth += 1;
        } else if ch == c {
            depth -= 1;
            if depth == 0 {
                return Some(i);
            }
        }
    }
    None
}

/// A number: a plain one (`-1,234.5`, `45%`), a unit after it dropped, or an arithmetic
/// expression (`\frac{1}{2}`, `2\pi`, `2^{1/2}`, `10:30`).
fn number(t: &str) -> Option<Expr> {
    let mut s = t.trim();
    let percent = s.ends_with('%');
    if percent {
        s = s.trim_end_matches('%').trim();
    }
    // A unit straight after the number: `178cm`, `12 kg` (not `cm^2`: that is a product).
    let digits_end = s
        .char_indices()
        .find(|(_, c)| c.is_alphabetic())
        .map(|(i, _)| i)
        .unwrap_or(s.len());
    let unit = s[digits_end..].trim();
    if digits_end > 0 && UNITS.contains(&unit) {
        s = s[..digits_end].trim();
    }
    let s = s
        .strip_prefix('(')
        .and_then(|x| x.strip_suffix(')'))
        .filter(|x| !x.contains(','))
        .unwrap_or(s);
    let (value, integer) = match plain(s) {
        Some(v) => (v, !s.contains('.')),
        None => (eval(s)?, false),
    };
    Some(Expr::Number {
        value: if percent { value / 100.0 } else { value },
        integer,
        percent,
    })
}

/// `-1,234.5`, `+3`, `.5` (no exponent: math-verify reads `1e3` as 1·e·3).
fn plain(s: &str) -> Option<f64> {
    let s = s.trim();
    let body = s.trim_start_matches(['-', '+']);
    if body.is_empty() || !body.chars().next()?.is_ascii_digit() && !body.starts_with('.') {
        return None;
    }
    let cleaned = if body.contains(',') {
        let (int, frac) = body.split_once('.').unwrap_or((body, ""));
        let groups: Vec<&str> = int.split(',').collect();
        let ok = groups.len() > 1
            && !groups[0].is_empty()
            && groups[0].len() <= 3
            && groups[1..].iter().all(|g| g.len() == 3);
        if !ok {
            return None;
        }
        if frac.is_empty() {
            groups.concat()
        } else {
            format!("{}.{frac}", groups.concat())
        }
    } else {
        body.to_string()
    };
    if !cleaned.chars().all(|c| c.is_ascii_digit() || c == '.') || cleaned.matches('.').count() > 1
    {
        return None;
    }
    let v: f64 = cleaned.parse().ok()?;
    Some(if s.starts_with('-') { -v } else { v })
}

/// `{1,2}`, `(1, 2)`, `1,2`, `[0,1]`, `2 < x < 3`, `0 <= x <= 1`, `x in (2,3)`, `2 and 3`.
fn group(t: &str) -> Option<Expr> {
    let t = t.trim();
    let t = t
        .strip_prefix("x in ")
        .or_else(|| t.strip_prefix("x  in "))
        .unwrap_or(t)
        .trim();
    let between = |op: &str| -> Option<(f64, f64)> {
        let parts: Vec<&str> = t.split(op).map(str::trim).collect();
        if parts.len() == 3 && parts[1].chars().all(|c| c.is_ascii_alphabetic()) {
            Some((eval(parts[0])?, eval(parts[2])?))
        } else {
            None
        }
    };
    if let Some((a, b)) = between("<=") {
        return Some(Expr::Group {
            items: vec![a, b],
            kind: GroupKind::Closed,
        });
    }
    if let Some((a, b)) = between("<") {
        return Some(Expr::Group {
            items: vec![a, b],
            kind: GroupKind::Open,
        });
    }
    let (inner, kind) = if let Some(x) = t.strip_prefix("\\{").and_then(|x| x.strip_suffix("\\}")) {
        (x, GroupKind::Set)
    } else if t.starts_with('(') && matching_brace(t, 0) == Some(t.len() - 1) {
        (&t[1..t.len() - 1], GroupKind::Open)
    } else if t.starts_with('[') && matching_brace(t, 0) == Some(t.len() - 1) {
        (&t[1..t.len() - 1], GroupKind::Closed)
    } else {
        (t, GroupKind::Bare)
    };
    let inner = inner.replace(" and ", ",");
    if !inner.contains(',') {
        return None;
    }
    let items = inner
        .split(',')
        .map(|x| eval(x.trim()))
        .collect::<Option<Vec<f64>>>()?;
    (items.len() >= 2).then_some(Expr::Group { items, kind })
}

/// A multiple-choice letter as math-verify reads one: `C`, `(C)`, `c`.
fn letter(t: &str) -> Option<char> {
    let s = t.trim();
    let s = s
        .strip_prefix('(')
        .and_then(|x| x.strip_suffix(')'))
        .unwrap_or(s);
    let mut chars = s.chars();
    let c = chars.next()?;
    (c.is_ascii_alphabetic() && chars.next().is_none()).then(|| c.to_ascii_uppercase())
}

/// Evaluate an arithmetic expression: numbers, `+ - * / ^ :`, `\frac{a}{b}` (and `\frac12`),
/// `\sqrt{x}`, `\sqrt[n]{x}`, `\pi`, `e`, `\exp(x)`, brackets, implicit products (`2\pi`).
fn eval(s: &str) -> Option<f64> {
    let tokens = tokenize(s)?;
    let mut p = Parser { t: &tokens, i: 0 };
    let v = p.sum()?;
    (p.i == tokens.len() && v.is_finite()).then_some(v)
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Op(char),
    Open,
    Close,
    Frac,
    Sqrt,
    Exp,
}

fn tokenize(s: &str) -> Option<Vec<Tok>> {
    let b: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() || c == '.' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == '.') {
                i += 1;
            }
            let text: String = b[start..i].iter().collect();
            out.push(Tok::Num(text.parse().ok()?));
        } else if "+-*/^:".contains(c) {
            out.push(Tok::Op(c));
            i += 1;
        } else if c == '(' || c == '{' || c == '[' {
            out.push(Tok::Open);
            i += 1;
        } else if c == ')' || c == '}' || c == ']' {
            out.push(Tok::Close);
            i += 1;
        } else if c == '\\' {
            let start = i + 1;
            i += 1;
            while i < b.len() && b[i].is_ascii_alphabetic() {
                i += 1;
            }
            let name: String = b[start..i].iter().collect();
            match name.as_str() {
                "frac" => {
                    out.push(Tok::Frac);
                    // `\frac12`: two single digits.
                    if i + 1 < b.len() && b[i].is_ascii_digit() && b[i + 1].is_ascii_digit() {
                        out.push(Tok::Num(f64::from(b[i].to_digit(10)?)));
                        out.push(Tok::Num(f64::from(b[i + 1].to_digit(10)?)));
                        i += 2;
                    }
                }
                "sqrt" => out.push(Tok::Sqrt),
                "pi" => out.push(Tok::Num(std::f64::consts::PI)),
                "exp" => out.push(Tok::Exp),
                _ => return None,
            }
        } else if c == 'e'
            && (i + 1 == b.len() || !b[i + 1].is_alphabetic())
            && (i == 0 || !b[i - 1].is_alphabetic())
        {
            out.push(Tok::Num(std::f64::consts::E));
            i += 1;
        } else {
            return None;
        }
    }
    Some(out)
}

struct Parser<'a> {
    t: &'a [Tok],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.t.get(self.i)
    }

    fn sum(&mut self) -> Option<f64> {
        let mut v = self.product()?;
        while let Some(Tok::Op(op @ ('+' | '-'))) = self.peek().cloned() {
            self.i += 1;
            let r = self.product()?;
            v = if op == '+' { v + r } else { v - r };
        }
        Some(v)
    }

    fn product(&mut self) -> Option<f64> {
        let mut v = self.power()?;
        loop {
            match self.peek().cloned() {
                Some(Tok::Op(op @ ('*' | '/' | ':'))) => {
                    self.i += 1;
                    let r = self.power()?;
                    v = if op == '*' { v * r } else { v / r };
                }
                // Implicit product: `2\pi`, `3(4)`.
                Some(Tok::Num(_) | Tok::Open | Tok::Frac | Tok::Sqrt | Tok::Exp) => {
                    v *= self.power()?
                }
                _ => return Some(v),
            }
        }
    }

    fn power(&mut self) -> Option<f64> {
        let base = self.unary()?;
        if let Some(Tok::Op('^')) = self.peek() {
            self.i += 1;
            let e = self.unary()?;
            return Some(base.powf(e));
        }
        Some(base)
    }

    fn unary(&mut self) -> Option<f64> {
        match self.peek().cloned()? {
            Tok::Op('-') => {
                self.i += 1;
                Some(-self.unary()?)
            }
            Tok::Op('+') => {
                self.i += 1;
                self.unary()
            }
            _ => self.atom(),
        }
    }

    fn atom(&mut self) -> Option<f64> {
        let tok = self.peek().cloned()?;
        self.i += 1;
        match tok {
            Tok::Num(v) => Some(v),
            Tok::Open => {
                let v = self.sum()?;
                (self.peek() == Some(&Tok::Close)).then(|| self.i += 1)?;
                Some(v)
            }
            Tok::Frac => {
                let n = self.atom()?;
                let d = self.atom()?;
                Some(n / d)
            }
            Tok::Sqrt => Some(self.atom()?.sqrt()),
            Tok::Exp => Some(self.atom()?.exp()),
            _ => None,
        }
    }
}

/// ChartQA's relaxed accuracy: numbers (as Python's `float` reads them) within 5 % of the
/// target (the prediction also ×0.01 and ×100), else an exact match ignoring case.
pub fn relaxed_accuracy(pred: &str, gold: &str) -> f64 {
    let pred = pred.trim();
    let target = gold.trim();
    let t = python_float(target.strip_suffix('%').unwrap_or(target));
    if let (Some(p), Some(t)) = (python_float(pred), t) {
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

/// What Python's `float()` accepts of a number: digits, one `.`, a sign, an exponent.
fn python_float(s: &str) -> Option<f64> {
    let s = s.trim();
    let ok = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E'))
        && s.chars().any(|c| c.is_ascii_digit());
    if !ok {
        return None;
    }
    s.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// Average normalised Levenshtein similarity (InfoVQA's ANLS for one answer), against the
/// best of the gold answers (a list literal `['a', 'b']` or one string).
pub fn anls(pred: &str, gold: &str) -> f64 {
    let pred = squeeze(pred).to_lowercase();
    golds(gold)
        .iter()
        .map(|g| {
            let g = squeeze(g).to_lowercase();
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
            ("C) a red kite", "C", 0.0),
            ("\\text{C}", "C", 1.0),
            ("1e3", "1000", 0.0),
            ("12.5\\%", "12.5", 0.0),
            ("(2,1)", "\\{1,2\\}", 1.0),
            ("0 \\le x \\le 1", "[0,1]", 1.0),
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
