//! Small value parsers of compose's syntax: Go durations (`1m30s`), byte sizes (`512m`),
//! CPU counts (`0.5`) and shell words (`command: echo "a b"`).
//!
//! Owns: turning those strings into numbers or lists, with a message on failure. Must not:
//! know where in the file a value came from (callers add the path).

/// A Go-style duration (`300ms`, `1.5s`, `1m30s`, `2h`) in nanoseconds. `0` needs no unit.
pub(super) fn duration_ns(s: &str) -> Result<u64, String> {
    let bad = || {
        format!("invalid duration {s:?}: use a number with a unit (ns, us, ms, s, m, h), such as 10s or 1m30s")
    };
    let t = s.trim();
    if t == "0" {
        return Ok(0);
    }
    if t.is_empty() || t.starts_with('-') {
        return Err(bad());
    }
    let mut total: f64 = 0.0;
    let mut rest = t.strip_prefix('+').unwrap_or(t);
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let number: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    if !total.is_finite() || total > (i64::MAX as f64) {
        return Err(format!("duration {s:?} is too long"));
    }
    Ok(total as u64)
}

/// A byte size (`1024`, `512k`, `256m`, `1.5g`, with an optional trailing `b`), 1024-based as
/// Docker reads it.
pub(super) fn bytes(s: &str) -> Result<i64, String> {
    let bad =
        || format!("invalid size {s:?}: use a number of bytes or a number with b, k, m, g or t");
    let t = s.trim().to_ascii_lowercase();
    let num_len = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    if num_len == 0 {
        return Err(bad());
    }
    let number: f64 = t[..num_len].parse().map_err(|_| bad())?;
    let scale: f64 = match t[num_len..].trim() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    let v = number * scale;
    if !v.is_finite() || v > (i64::MAX as f64) {
        return Err(format!("size {s:?} is too large"));
    }
    Ok(v as i64)
}

/// A CPU count (`0.5`, `2`) as Docker's `NanoCpus`.
pub(super) fn nano_cpus(s: &str) -> Result<i64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("invalid CPU count {s:?}: use a number such as 0.5 or 2"))?;
    if !v.is_finite() || v <= 0.0 || v > 4096.0 {
        return Err(format!(
            "invalid CPU count {s:?}: must be above 0 and at most 4096"
        ));
    }
    Ok((v * 1e9).round() as i64)
}

/// Splits a command line into words as a POSIX shell would, without expanding anything:
/// single quotes, double quotes (with `\"`, `\\`, `\$` and `` \` `` escapes) and backslashes.
pub(super) fn shell_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(x) => word.push(x),
                        None => return Err(format!("unterminated single quote in {s:?}")),
                    }
                }
            }
            '"' => {
                in_word = true;
                double_quoted(&mut chars, &mut word)
                    .ok_or_else(|| format!("unterminated double quote in {s:?}"))?;
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('\n') | None => {}
                    Some(x) => word.push(x),
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// Reads a double-quoted section up to its closing quote; `None` when it never closes.
fn double_quoted(chars: &mut std::str::Chars, word: &mut String) -> Option<()> {
    loop {
        match chars.next()? {
            '"' => return Some(()),
            '\\' => match chars.next()? {
                x @ ('"' | '\\' | '$' | '`') => word.push(x),
                '\n' => {}
                x => {
                    word.push('\\');
                    word.push(x);
                }
            },
            x => word.push(x),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let s = 1_000_000_000u64;
        for (text, want) in [
            ("0", 0),
            ("10s", 10 * s),
            ("1m30s", 90 * s),
            ("1.5s", 1_500_000_000),
            ("300ms", 300_000_000),
            ("2h", 7200 * s),
            ("1h2m3s4ms", 3723 * s + 4_000_000),
            ("500us", 500_000),
            ("7ns", 7),
        ] {
            assert_eq!(duration_ns(text), Ok(want), "{text}");
        }
        for bad in [
            "",
            "10",
            "s",
            "-1s",
            "1x",
            "1.2.3s",
            "abc",
            "1e9999h",
            "9999999999h",
        ] {
            assert!(duration_ns(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        for (text, want) in [
            ("1024", 1024),
            ("100b", 100),
            ("1k", 1024),
            ("512m", 512 << 20),
            ("512MB", 512 << 20),
            ("1.5g", 3 << 29),
            ("2G", 2 << 30),
        ] {
            assert_eq!(bytes(text), Ok(want), "{text}");
        }
        for bad in ["", "m", "12q", "-1", "1e999", "99999999999t"] {
            assert!(bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cpus() {
        assert_eq!(nano_cpus("0.5"), Ok(500_000_000));
        assert_eq!(nano_cpus("2"), Ok(2_000_000_000));
        for bad in ["0", "-1", "x", "NaN", "inf", "5000"] {
            assert!(nano_cpus(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn words() {
        let w = |s: &str| shell_words(s).unwrap();
        assert_eq!(w("echo hello"), ["echo", "hello"]);
        assert_eq!(w("  sh -c 'echo a  b'  "), ["sh", "-c", "echo a  b"]);
        assert_eq!(
            w(r#"echo "a \"b\" \$HOME \n""#),
            ["echo", r#"a "b" $HOME \n"#]
        );
        assert_eq!(w(r"a\ b c"), ["a b", "c"]);
        assert_eq!(w("''"), [""]);
        assert_eq!(w("x'y'\"z\""), ["xyz"]);
        assert!(w("").is_empty());
        assert!(shell_words("echo 'open").is_err());
        assert!(shell_words("echo \"open").is_err());
    }
}
