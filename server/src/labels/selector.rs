//! Label selectors in Kubernetes syntax: parse once, match many.
//!
//! ```text
//! site=berlin,role!=gateway          equality (`=` or `==`) and inequality
//! tier in (edge,core)                the value is one of a set
//! tier notin (lab)                   absent, or not one of a set
//! gpu   !legacy                      the key exists / does not exist
//! ```
//!
//! Requirements are joined by commas and all must hold (AND); the empty selector matches
//! every host. `!=` and `notin` match a host without the key, as in Kubernetes. Keys and
//! values follow the label rules of [`super`]. A selector is at most [`MAX_LEN`] bytes; a
//! syntax error names its 1-based character position.
//!
//! Owns: the grammar, matching, and the substrings a stored label set must contain for a
//! selector to match it ([`Selector::must_contain`], a pre-filter the store may apply in
//! SQL). Must not: know where labels come from.

use std::collections::BTreeSet;
use std::fmt;

use super::{check_key, check_value, Labels};

/// The longest selector, in bytes.
pub const MAX_LEN: usize = 4096;

/// A syntax error at a 1-based character position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("selector: at position {position}: {message}")]
pub struct SelectorError {
    pub position: usize,
    pub message: String,
}

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Eq(String, String),
    NotEq(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    NotExists(String),
}

impl Requirement {
    fn key(&self) -> &str {
        match self {
            Requirement::Eq(k, _)
            | Requirement::NotEq(k, _)
            | Requirement::In(k, _)
            | Requirement::NotIn(k, _)
            | Requirement::Exists(k)
            | Requirement::NotExists(k) => k,
        }
    }

    fn matches(&self, labels: &Labels) -> bool {
        let v = labels.get(self.key());
        match self {
            Requirement::Eq(_, want) => v == Some(want),
            Requirement::NotEq(_, want) => v != Some(want),
            Requirement::In(_, set) => v.is_some_and(|v| set.contains(v)),
            Requirement::NotIn(_, set) => !v.is_some_and(|v| set.contains(v)),
            Requirement::Exists(_) => v.is_some(),
            Requirement::NotExists(_) => v.is_none(),
        }
    }
}

/// A parsed selector: every requirement must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    pub requirements: Vec<Requirement>,
}

impl Selector {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        if text.len() > MAX_LEN {
            return Err(SelectorError {
                position: MAX_LEN + 1,
                message: format!("a selector is at most {MAX_LEN} bytes"),
            });
        }
        Parser::new(text)?.selector()
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Whether the selector matches everything.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Substrings one of which the compact JSON of a host's label sets (admin or agent) must
    /// contain for the selector to possibly match: one list per requirement that needs a key
    /// to be present (`=`, `in`, exists), all of which must hold. A pre-filter only: a host
    /// that passes it is still matched with [`Selector::matches`].
    pub fn must_contain(&self) -> Vec<Vec<String>> {
        let pair = |k: &str, v: &str| format!("\"{k}\":\"{v}\"");
        self.requirements
            .iter()
            .filter_map(|r| match r {
                Requirement::Eq(k, v) => Some(vec![pair(k, v)]),
                Requirement::In(k, set) => Some(set.iter().map(|v| pair(k, v)).collect()),
                Requirement::Exists(k) => Some(vec![format!("\"{k}\":")]),
                _ => None,
            })
            .collect()
    }
}

impl fmt::Display for Selector {
    /// The canonical form: `k=v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`, joined
    /// by commas.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(",");
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match r {
                Requirement::Eq(k, v) => write!(f, "{k}={v}")?,
                Requirement::NotEq(k, v) => write!(f, "{k}!={v}")?,
                Requirement::In(k, s) => write!(f, "{k} in ({})", join(s))?,
                Requirement::NotIn(k, s) => write!(f, "{k} notin ({})", join(s))?,
                Requirement::Exists(k) => write!(f, "{k}")?,
                Requirement::NotExists(k) => write!(f, "!{k}")?,
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// A key, a value, or the words `in` / `notin`.
    Word(String),
    Eq,
    NotEq,
    Bang,
    Open,
    Close,
    Comma,
    End,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Word(w) => format!("{w:?}"),
            Tok::Eq => "'='".into(),
            Tok::NotEq => "'!='".into(),
            Tok::Bang => "'!'".into(),
            Tok::Open => "'('".into(),
            Tok::Close => "')'".into(),
            Tok::Comma => "','".into(),
            Tok::End => "the end".into(),
        }
    }
}

fn word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')
}

/// Splits the text into tokens with their 1-based positions.
fn lex(text: &str) -> Result<Vec<(Tok, usize)>, SelectorError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let pos = i + 1;
        let (tok, len) = match c {
            ' ' | '\t' => {
                i += 1;
                continue;
            }
            '=' if chars.get(i + 1) == Some(&'=') => (Tok::Eq, 2),
            '=' => (Tok::Eq, 1),
            '!' if chars.get(i + 1) == Some(&'=') => (Tok::NotEq, 2),
            '!' => (Tok::Bang, 1),
            '(' => (Tok::Open, 1),
            ')' => (Tok::Close, 1),
            ',' => (Tok::Comma, 1),
            c if word_char(c) => {
                let n = chars[i..].iter().take_while(|c| word_char(**c)).count();
                (Tok::Word(chars[i..i + n].iter().collect()), n)
            }
            c => {
                return Err(SelectorError {
                    position: pos,
                    message: format!("unexpected character {c:?}"),
                })
            }
        };
        out.push((tok, pos));
        i += len;
    }
    out.push((Tok::End, chars.len() + 1));
    Ok(out)
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    at: usize,
}

impl Parser {
    fn new(text: &str) -> Result<Parser, SelectorError> {
        Ok(Parser {
            toks: lex(text)?,
            at: 0,
        })
    }

    fn peek(&self) -> &(Tok, usize) {
        &self.toks[self.at.min(self.toks.len() - 1)]
    }

    fn next(&mut self) -> (Tok, usize) {
        let t = self.peek().clone();
        self.at += 1;
        t
    }

    fn fail<T>(pos: usize, message: impl Into<String>) -> Result<T, SelectorError> {
        Err(SelectorError {
            position: pos,
            message: message.into(),
        })
    }

    fn selector(mut self) -> Result<Selector, SelectorError> {
        let mut requirements = Vec::new();
        if self.peek().0 == Tok::End {
            return Ok(Selector { requirements });
        }
        loop {
            requirements.push(self.requirement()?);
            match self.next() {
                (Tok::Comma, _) => continue,
                (Tok::End, _) => return Ok(Selector { requirements }),
                (t, pos) => {
                    return Self::fail(
                        pos,
                        format!("expected ',' or the end, found {}", t.describe()),
                    )
                }
            }
        }
    }

    fn key(&mut self) -> Result<String, SelectorError> {
        match self.next() {
            (Tok::Word(w), pos) => match check_key(&w) {
                Ok(()) => Ok(w),
                Err(e) => Self::fail(pos, e.0),
            },
            (t, pos) => Self::fail(pos, format!("expected a label key, found {}", t.describe())),
        }
    }

    /// A value: a word, or nothing (the empty value) before `,`, `)` or the end.
    fn value(&mut self, key: &str) -> Result<String, SelectorError> {
        let (tok, pos) = self.peek().clone();
        let v = match tok {
            Tok::Word(w) => {
                self.at += 1;
                w
            }
            Tok::Comma | Tok::Close | Tok::End => String::new(),
            t => return Self::fail(pos, format!("expected a value, found {}", t.describe())),
        };
        match check_value(key, &v) {
            Ok(()) => Ok(v),
            Err(e) => Self::fail(pos, e.0),
        }
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        if self.peek().0 == Tok::Bang {
            self.at += 1;
            return Ok(Requirement::NotExists(self.key()?));
        }
        let key = self.key()?;
        let (tok, pos) = self.peek().clone();
        match tok {
            Tok::Eq => {
                self.at += 1;
                Ok(Requirement::Eq(key.clone(), self.value(&key)?))
            }
            Tok::NotEq => {
                self.at += 1;
                Ok(Requirement::NotEq(key.clone(), self.value(&key)?))
            }
            Tok::Word(w) if w == "in" || w == "notin" => {
                self.at += 1;
                let set = self.set(&key)?;
                Ok(if w == "in" {
                    Requirement::In(key, set)
                } else {
                    Requirement::NotIn(key, set)
                })
            }
            Tok::Comma | Tok::End => Ok(Requirement::Exists(key)),
            t => Self::fail(
                pos,
                format!(
                    "expected '=', '==', '!=', 'in', 'notin', ',' or the end after {key:?}, found {}",
                    t.describe()
                ),
            ),
        }
    }

    /// `( value, value, ... )`: at least one value, none empty (`key=` selects the empty
    /// value).
    fn set(&mut self, key: &str) -> Result<BTreeSet<String>, SelectorError> {
        match self.next() {
            (Tok::Open, _) => {}
            (t, pos) => return Self::fail(pos, format!("expected '(', found {}", t.describe())),
        }
        let mut set = BTreeSet::new();
        loop {
            let (tok, pos) = self.peek().clone();
            if !matches!(tok, Tok::Word(_)) {
                return Self::fail(pos, format!("expected a value, found {}", tok.describe()));
            }
            set.insert(self.value(key)?);
            match self.next() {
                (Tok::Comma, _) => continue,
                (Tok::Close, _) => return Ok(set),
                (t, pos) => {
                    return Self::fail(pos, format!("expected ',' or ')', found {}", t.describe()))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sel(s: &str) -> Selector {
        Selector::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn every_form_matches_as_kubernetes_does() {
        let berlin_edge = labels(&[("site", "berlin"), ("tier", "edge"), ("gpu", "")]);
        let paris = labels(&[("site", "paris"), ("legacy", "yes")]);
        let cases: &[(&str, bool, bool)] = &[
            ("", true, true),
            ("site=berlin", true, false),
            ("site==berlin", true, false),
            ("site!=berlin", false, true),
            ("tier!=edge", false, true),
            ("tier in (edge,core)", true, false),
            ("tier notin (edge)", false, true),
            ("site notin (lyon, nice)", true, true),
            ("gpu", true, false),
            ("!legacy", true, false),
            ("legacy", false, true),
            ("gpu=", true, false),
            ("site=berlin,tier=edge", true, false),
            ("site=berlin,!gpu", false, false),
            (" site = berlin , tier in ( edge ) ", true, false),
            ("site in (paris,berlin),!nothing", true, true),
        ];
        for (s, a, b) in cases {
            let p = sel(s);
            assert_eq!(p.matches(&berlin_edge), *a, "{s} on berlin");
            assert_eq!(p.matches(&paris), *b, "{s} on paris");
        }
    }

    #[test]
    fn the_canonical_form_parses_to_the_same_selector() {
        for s in [
            "site=berlin,role!=gateway",
            "tier in (core,edge)",
            "!legacy,gpu",
            "example.com/site notin (a,b)",
            "k=",
        ] {
            let p = sel(s);
            assert_eq!(p.to_string(), s);
            assert_eq!(sel(&p.to_string()), p);
        }
        assert_eq!(sel("a==b,c in (y, x)").to_string(), "a=b,c in (x,y)");
    }

    #[test]
    fn errors_name_the_position() {
        let cases: &[(&str, usize, &str)] = &[
            ("site=berlin,", 13, "label key"),
            (",site", 1, "label key"),
            ("site=ber lin", 10, "expected ','"),
            ("site in edge", 9, "expected '('"),
            ("site in (edge", 14, "expected ',' or ')'"),
            ("site in ()", 10, "expected a value"),
            ("site > 3", 6, "unexpected character '>'"),
            ("site=berlin;x", 12, "unexpected character ';'"),
            ("-site=x", 1, "label key"),
            ("site=-x", 6, "value"),
            ("!", 2, "label key"),
            ("site=é", 6, "unexpected character"),
            ("a=b=c", 4, "expected ','"),
        ];
        for (s, pos, needle) in cases {
            let e = Selector::parse(s).expect_err(s);
            assert_eq!(e.position, *pos, "{s}: {e}");
            assert!(e.to_string().contains(needle), "{s}: {e}");
            assert!(e.to_string().starts_with("selector: at position"), "{e}");
        }
        let long = format!("k={}", "v".repeat(MAX_LEN));
        assert!(Selector::parse(&long)
            .unwrap_err()
            .to_string()
            .contains("at most 4096"));
    }

    #[test]
    fn the_prefilter_never_drops_a_match() {
        let l = labels(&[("site", "berlin"), ("tier", "edge")]);
        let json = super::super::to_json(&l);
        for s in ["site=berlin", "tier in (core,edge)", "site", "site!=x,!gpu"] {
            let p = sel(s);
            assert!(p.matches(&l));
            for any in p.must_contain() {
                assert!(
                    any.iter().any(|n| json.contains(n.as_str())),
                    "{s}: {any:?}"
                );
            }
        }
        assert_eq!(
            sel("site=berlin,tier in (a,b),gpu,!x,y!=z").must_contain(),
            vec![
                vec!["\"site\":\"berlin\"".to_string()],
                vec!["\"tier\":\"a\"".to_string(), "\"tier\":\"b\"".to_string()],
                vec!["\"gpu\":".to_string()],
            ]
        );
    }
}
