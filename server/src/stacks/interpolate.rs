//! `${VAR}` interpolation from the stack's `env`, on the values of the YAML tree (never on
//! keys), before anything else reads the file.
//!
//! The forms are compose's: `$VAR`, `${VAR}`, `${VAR:-default}` (unset or empty),
//! `${VAR-default}` (unset), `${VAR:?message}` / `${VAR?message}` (an error naming the
//! variable), `${VAR:+alt}` / `${VAR+alt}`, and `$$` for a literal `$`. Defaults may hold
//! further expressions. An unset variable without a default becomes an empty string and is
//! reported as a warning. Must not: put a variable's value into an error or a warning.

use super::error::{index, join, ErrorKind, Problems};
use serde_yaml_ng::{Mapping, Value};
use std::collections::{BTreeMap, BTreeSet};

/// How deeply defaults may nest expressions (`${A:-${B:-${C}}}`).
const MAX_NESTING: usize = 8;
/// The most text interpolation may produce over the whole file.
const MAX_OUTPUT_BYTES: usize = 8 << 20;

/// Interpolates every string value of `root` in place. Problems are pushed with their paths;
/// the names of variables used while unset are added to `unset`.
pub(super) fn interpolate_tree(
    root: &mut Mapping,
    env: &BTreeMap<String, String>,
    problems: &mut Problems,
    unset: &mut BTreeSet<String>,
) {
    let mut ctx = Ctx {
        env,
        unset,
        budget: MAX_OUTPUT_BYTES,
    };
    for (k, v) in root.iter_mut() {
        let path = key_path("", k);
        walk(&mut ctx, &path, v, problems);
    }
}

struct Ctx<'a> {
    env: &'a BTreeMap<String, String>,
    unset: &'a mut BTreeSet<String>,
    budget: usize,
}

fn key_path(parent: &str, k: &Value) -> String {
    match k {
        Value::String(s) => join(parent, s),
        Value::Number(n) => join(parent, &n.to_string()),
        _ => join(parent, "?"),
    }
}

fn walk(ctx: &mut Ctx, path: &str, v: &mut Value, problems: &mut Problems) {
    match v {
        Value::String(s) if s.contains('$') => match expand(ctx, s, 0) {
            Ok(out) => {
                if ctx.budget < out.len() {
                    ctx.budget = 0;
                    problems.push(
                        path,
                        ErrorKind::Interpolation,
                        "interpolation makes the file too large",
                    );
                } else {
                    ctx.budget -= out.len();
                    *s = out;
                }
            }
            Err(m) => problems.push(path, ErrorKind::Interpolation, m),
        },
        Value::Sequence(list) => {
            for (i, x) in list.iter_mut().enumerate() {
                walk(ctx, &index(path, i), x, problems);
            }
        }
        Value::Mapping(m) => {
            for (k, x) in m.iter_mut() {
                walk(ctx, &key_path(path, k), x, problems);
            }
        }
        _ => {}
    }
}

/// Expands one string.
fn expand(ctx: &mut Ctx, s: &str, depth: usize) -> Result<String, String> {
    if depth > MAX_NESTING {
        return Err("interpolation is nested too deeply".into());
    }
    let bytes = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while let Some(off) = s[i..].find('$') {
        out.push_str(&s[i..i + off]);
        i += off;
        match bytes.get(i + 1) {
            Some(b'$') => {
                out.push('$');
                i += 2;
            }
            Some(b'{') => {
                let end = closing_brace(s, i + 2).ok_or_else(|| {
                    format!("unterminated \"${{\" at byte {i}; write $$ for a literal $")
                })?;
                out.push_str(&braced(ctx, &s[i + 2..end], depth)?);
                i = end + 1;
            }
            Some(c) if c.is_ascii_alphabetic() || *c == b'_' => {
                let len = name_len(&s[i + 1..]);
                let name = &s[i + 1..i + 1 + len];
                out.push_str(&lookup(ctx, name).unwrap_or_default());
                i += 1 + len;
            }
            _ => {
                return Err(format!(
                    "invalid interpolation: a lone \"$\" at byte {i}; write $$ for a literal $"
                ))
            }
        }
    }
    out.push_str(&s[i..]);
    Ok(out)
}

/// The index of the `}` closing a `${` whose body starts at `from`.
fn closing_brace(s: &str, from: usize) -> Option<usize> {
    let b = s.as_bytes();
    let mut depth = 0usize;
    let mut i = from;
    while i < b.len() {
        match b[i] {
            b'$' if b.get(i + 1) == Some(&b'$') => i += 1,
            b'$' if b.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

fn name_len(s: &str) -> usize {
    s.bytes()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == b'_')
        .count()
}

/// The value of a set variable; records unset ones.
fn lookup(ctx: &mut Ctx, name: &str) -> Option<String> {
    match ctx.env.get(name) {
        Some(v) => Some(v.clone()),
        None => {
            ctx.unset.insert(name.to_string());
            None
        }
    }
}

/// Expands the body of `${...}`.
fn braced(ctx: &mut Ctx, body: &str, depth: usize) -> Result<String, String> {
    let starts_ok = body
        .bytes()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_');
    let len = if starts_ok { name_len(body) } else { 0 };
    if len == 0 {
        return Err(format!(
            "invalid interpolation \"${{{}}}\": expected a variable name",
            shorten(body)
        ));
    }
    let name = &body[..len];
    let rest = &body[len..];
    let value = ctx.env.get(name).cloned();
    let empty = value.as_deref().is_none_or(str::is_empty);
    let (op, word) = split_operator(rest).ok_or_else(|| {
        format!(
            "invalid interpolation \"${{{}}}\": after the name, expected }}, :-, -, :?, ?, :+ or +",
            shorten(body)
        )
    })?;
    match op {
        "" => Ok(value.or_else(|| lookup(ctx, name)).unwrap_or_default()),
        ":-" if empty => expand(ctx, word, depth + 1),
        "-" if value.is_none() => expand(ctx, word, depth + 1),
        ":-" | "-" => Ok(value.unwrap_or_default()),
        ":?" if empty => Err(required(name, ctx, word, depth)),
        "?" if value.is_none() => Err(required(name, ctx, word, depth)),
        ":?" | "?" => Ok(value.unwrap_or_default()),
        ":+" if !empty => expand(ctx, word, depth + 1),
        "+" if value.is_some() => expand(ctx, word, depth + 1),
        _ => Ok(String::new()),
    }
}

fn split_operator(rest: &str) -> Option<(&str, &str)> {
    if rest.is_empty() {
        return Some(("", ""));
    }
    for op in [":-", ":?", ":+", "-", "?", "+"] {
        if let Some(word) = rest.strip_prefix(op) {
            return Some((op, word));
        }
    }
    None
}

/// The error of `${VAR:?message}`: the variable's name and the file's message, never a value.
fn required(name: &str, ctx: &mut Ctx, word: &str, depth: usize) -> String {
    let message = expand(ctx, word, depth + 1).unwrap_or_else(|_| word.to_string());
    if message.is_empty() {
        format!("required variable {name} is missing a value")
    } else {
        format!("required variable {name} is missing a value: {message}")
    }
}

fn shorten(s: &str) -> String {
    if s.chars().count() <= 40 {
        s.to_string()
    } else {
        format!("{}...", s.chars().take(40).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> BTreeMap<String, String> {
        [("A", "alpha"), ("EMPTY", ""), ("N", "5"), ("B_2", "beta")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn run(s: &str) -> Result<String, String> {
        let env = env();
        let mut unset = BTreeSet::new();
        let mut ctx = Ctx {
            env: &env,
            unset: &mut unset,
            budget: MAX_OUTPUT_BYTES,
        };
        expand(&mut ctx, s, 0)
    }

    #[test]
    fn every_form() {
        let cases = [
            ("plain", "plain"),
            ("$A", "alpha"),
            ("${A}", "alpha"),
            ("x${A}y", "xalphay"),
            ("$A-$B_2.", "alpha-beta."),
            ("$$A", "$A"),
            ("$${A}", "${A}"),
            ("cost $$5", "cost $5"),
            ("${MISSING}", ""),
            ("$MISSING/x", "/x"),
            ("${MISSING:-dflt}", "dflt"),
            ("${EMPTY:-dflt}", "dflt"),
            ("${EMPTY-dflt}", ""),
            ("${MISSING-dflt}", "dflt"),
            ("${A:-dflt}", "alpha"),
            ("${A-dflt}", "alpha"),
            ("${MISSING:-}", ""),
            ("${MISSING:-${A}}", "alpha"),
            ("${MISSING:-${NOPE:-deep}}", "deep"),
            ("${MISSING:-a:b}", "a:b"),
            ("${A:+alt}", "alt"),
            ("${EMPTY:+alt}", ""),
            ("${EMPTY+alt}", "alt"),
            ("${MISSING+alt}", ""),
            ("${A:?need A}", "alpha"),
            ("${EMPTY?need}", ""),
            ("${N}0", "50"),
            ("é${A}ü", "éalphaü"),
        ];
        for (input, want) in cases {
            assert_eq!(run(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn required_variables_fail_with_their_name_and_message() {
        let e = run("${MISSING:?set MISSING to the admin password}").unwrap_err();
        assert_eq!(
            e,
            "required variable MISSING is missing a value: set MISSING to the admin password"
        );
        assert!(run("${EMPTY:?}")
            .unwrap_err()
            .contains("EMPTY is missing a value"));
        assert!(run("${MISSING?}").is_err());
        // The default of an unused branch is not evaluated.
        assert_eq!(run("${A:-${MISSING:?boom}}").unwrap(), "alpha");
    }

    #[test]
    fn malformed_expressions_are_errors() {
        for bad in [
            "${",
            "${A",
            "${}",
            "${1A}",
            "${A B}",
            "${A!x}",
            "$",
            "a $ b",
            "$5",
            "${A:-${B}",
        ] {
            assert!(run(bad).is_err(), "{bad}");
        }
        let deep = format!("{}x{}", "${M:-".repeat(20), "}".repeat(20));
        assert!(run(&deep).unwrap_err().contains("nested too deeply"));
    }

    #[test]
    fn values_only_with_paths_and_unset_warnings() {
        let mut root: Mapping = serde_yaml_ng::from_str(
            "services:\n  web:\n    image: ${A}\n    environment:\n      ${A}: ${MISSING}\n    command: [\"${A}\", \"${BAD\"]\n",
        )
        .unwrap();
        let env = env();
        let mut problems = Problems::default();
        let mut unset = BTreeSet::new();
        interpolate_tree(&mut root, &env, &mut problems, &mut unset);
        let web = &root["services"]["web"];
        assert_eq!(web["image"], Value::from("alpha"));
        // Keys are not interpolated.
        assert_eq!(web["environment"]["${A}"], Value::from(""));
        assert_eq!(unset.into_iter().collect::<Vec<_>>(), vec!["MISSING"]);
        assert_eq!(problems.0.len(), 1);
        assert_eq!(problems.0[0].path, "services.web.command[1]");
        assert_eq!(problems.0[0].kind, ErrorKind::Interpolation);
    }

    #[test]
    fn errors_never_carry_values() {
        let e = run("${A:?}x${A B}").unwrap_err();
        assert!(!e.contains("alpha"), "{e}");
    }
}
