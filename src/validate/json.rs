//! Checks on the fields the gateway does not read ([`Extra`]), which serde_json captures but
//! does not bound: nesting depth (serde_json skips an unknown value without its recursion
//! limit) and integer size (it skips a number's digits without reading them). A worker parses
//! every field, so a 10,000-deep array or a 100,000-digit integer there would cost it a
//! round trip and come back as a 4xx without the OpenAI envelope (or a 5xx): refuse them
//! here, naming the field. UTF-8 needs no check of its own: serde_json validates every string
//! it parses and every raw value it captures from a byte slice, except image URLs, which are
//! read raw and checked byte by byte in validation (`api::chat::RawUrl`).
//!
//! The scan reads only the raw text of unknown fields, which are small in practice (sampling
//! parameters, `detail`, `chat_template_kwargs`); the message text and the image data URLs,
//! the bulk of a body, are typed and never scanned here.

use crate::api::chat::Extra;
use crate::error::GatewayError;

/// What a raw value broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawProblem {
    /// Arrays and objects nested past the limit.
    TooDeep,
    /// An integer literal outside both `i64` and `u64`.
    BigInteger,
}

/// Check one raw JSON value, already parsed by serde_json (so well-formed), which sits inside
/// `depth` enclosing arrays and objects; `max_depth` is the limit on the whole body's nesting.
pub fn check_raw(text: &str, depth: usize, max_depth: usize) -> Result<(), RawProblem> {
    let b = text.as_bytes();
    let mut level = depth;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                // Skip the string: to the next quote or backslash at memchr speed; an escape
                // is two bytes (the four hex digits of `\u` are neither quote nor backslash).
                i += 1;
                loop {
                    match memchr::memchr2(b'"', b'\\', &b[i..]) {
                        Some(at) if b[i + at] == b'\\' => i += at + 2,
                        Some(at) => {
                            i += at + 1;
                            break;
                        }
                        // serde_json parsed it, so the string is closed; this is defensive.
                        None => return Ok(()),
                    }
                }
            }
            b'[' | b'{' => {
                level += 1;
                if level > max_depth {
                    return Err(RawProblem::TooDeep);
                }
                i += 1;
            }
            b']' | b'}' => {
                level = level.saturating_sub(1);
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                let mut integer = true;
                while i < b.len() && matches!(b[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                {
                    integer &= !matches!(b[i], b'.' | b'e' | b'E');
                    i += 1;
                }
                // An integer must fit 64 bits, signed or not. Parsing stops at the first
                // digit past 20, so a 100,000-digit literal costs no more than a short one.
                let literal = &text[start..i];
                if integer && literal.parse::<u64>().is_err() && literal.parse::<i64>().is_err() {
                    return Err(RawProblem::BigInteger);
                }
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// Check every unknown field of one object that sits `depth` levels deep (the body itself is
/// 1), naming the field as `prefix` + its key in an error.
pub fn check_extras(
    extras: &[Extra<'_>],
    depth: usize,
    max_depth: usize,
    prefix: &dyn Fn() -> String,
) -> Result<(), GatewayError> {
    for (key, raw) in extras {
        if let Err(problem) = check_raw(raw.get(), depth, max_depth) {
            let param = format!("{}{key}", prefix());
            let message = match problem {
                RawProblem::TooDeep => format!(
                    "`{param}` nests arrays and objects deeper than the gateway's limit of \
                     {max_depth} levels"
                ),
                RawProblem::BigInteger => {
                    format!("`{param}` holds an integer that does not fit in 64 bits")
                }
            };
            return Err(GatewayError::invalid(message, Some(param)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_from_the_enclosing_object() {
        assert_eq!(check_raw("[[1]]", 1, 3), Ok(()));
        assert_eq!(check_raw("[[1]]", 1, 2), Err(RawProblem::TooDeep));
        assert_eq!(check_raw("{\"a\":{}}", 5, 7), Ok(()));
        assert_eq!(check_raw("{\"a\":{}}", 6, 7), Err(RawProblem::TooDeep));
        // Brackets inside strings, escaped quotes included, are text.
        assert_eq!(check_raw(r#""[[[\"[[[""#, 1, 1), Ok(()));
        assert_eq!(check_raw(r#"["\\", [2]]"#, 1, 3), Ok(()));
        assert_eq!(check_raw(r#"["\\", [2]]"#, 1, 2), Err(RawProblem::TooDeep));
    }

    #[test]
    fn integers_must_fit_64_bits() {
        for ok in [
            "0",
            "-1",
            "18446744073709551615",
            "-9223372036854775808",
            "1.5",
            "1e400",
            "-0.0",
            "[1,2,{\"a\":3}]",
            "\"123456789012345678901234567890\"",
        ] {
            assert_eq!(check_raw(ok, 1, 128), Ok(()), "{ok}");
        }
        for bad in [
            "18446744073709551616",
            "-9223372036854775809",
            "[1, 123456789012345678901234567890]",
        ] {
            assert_eq!(check_raw(bad, 1, 128), Err(RawProblem::BigInteger), "{bad}");
        }
        let huge = "9".repeat(100_000);
        assert_eq!(check_raw(&huge, 1, 128), Err(RawProblem::BigInteger));
    }
}
