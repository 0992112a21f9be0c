//! What is wrong with a compose file: every problem found, each with the path of the key in
//! the file (`services.web.build`) and a stable kind, so an API can answer 400 with the list.
//!
//! Owns: the error types of this module. Must not: hold or print values of the stack's `env`
//! (they may be secrets); messages name keys and variables, never their values.

use serde::Serialize;
use std::fmt;

/// The kind of a problem, stable for clients (`unsupported`, `invalid`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The text is not YAML, or is too large or too deep. Fix the file's syntax.
    Yaml,
    /// A key outside the supported subset. Remove it or deploy the stack another way.
    Unsupported,
    /// A supported key with a value of the wrong type or form.
    Invalid,
    /// `${VAR}` interpolation failed: a malformed expression or `${VAR:?message}`.
    Interpolation,
    /// A reference to something that is not defined: a service, network or volume.
    Reference,
    /// A required key is missing (a service without `image`).
    Missing,
    /// `depends_on` forms a cycle.
    Cycle,
    /// The project name, or a name derived from it, is not valid.
    Name,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Yaml => "yaml",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Invalid => "invalid",
            ErrorKind::Interpolation => "interpolation",
            ErrorKind::Reference => "reference",
            ErrorKind::Missing => "missing",
            ErrorKind::Cycle => "cycle",
            ErrorKind::Name => "name",
        }
    }
}

/// One problem in a compose file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ComposeError {
    /// Where in the file: dotted keys, `[i]` for list items (`services.web.ports[1]`); empty
    /// for the file as a whole.
    pub path: String,
    pub kind: ErrorKind,
    pub message: String,
    /// The 1-based line of the file the problem is on, when known (see [`super::locate`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
}

impl ComposeError {
    pub fn new(path: impl Into<String>, kind: ErrorKind, message: impl Into<String>) -> Self {
        ComposeError {
            path: path.into(),
            kind,
            message: message.into(),
            line: None,
        }
    }

    /// The same problem, on line `line` (1-based).
    pub fn at_line(mut self, line: Option<usize>) -> Self {
        self.line = line;
        self
    }
}

impl fmt::Display for ComposeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a compose file, in the order of the file. Never empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ComposeErrors(pub Vec<ComposeError>);

impl ComposeErrors {
    /// The paths of the keys outside the supported subset.
    pub fn unsupported(&self) -> Vec<&str> {
        self.0
            .iter()
            .filter(|e| e.kind == ErrorKind::Unsupported)
            .map(|e| e.path.as_str())
            .collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &ComposeError> {
        self.0.iter()
    }

    /// Each problem that has no line yet gets the line of its path in `text`.
    pub(super) fn with_lines(mut self, text: &str) -> Self {
        for e in self.0.iter_mut().filter(|e| e.line.is_none()) {
            e.line = super::locate::line_of(text, &e.path);
        }
        self
    }
}

impl fmt::Display for ComposeErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "the compose file has {n} problem{}",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            write!(f, "; {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ComposeErrors {}

/// Collects problems while a file is read.
#[derive(Debug, Default)]
pub(super) struct Problems(pub Vec<ComposeError>);

impl Problems {
    pub fn push(&mut self, path: &str, kind: ErrorKind, message: impl Into<String>) {
        self.0.push(ComposeError::new(path, kind, message));
    }

    pub fn unsupported(&mut self, path: &str) {
        self.push(
            path,
            ErrorKind::Unsupported,
            "not supported by docker-ctl stacks",
        );
    }

    pub fn invalid(&mut self, path: &str, message: impl Into<String>) {
        self.push(path, ErrorKind::Invalid, message);
    }

    /// `Err` with everything collected (the first problem of each path: a value that failed
    /// interpolation is not reported again as invalid), or `Ok(value)` when nothing was.
    pub fn finish<T>(self, value: T) -> Result<T, ComposeErrors> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self.into_errors())
        }
    }

    /// Everything collected, the first problem of each path only.
    pub fn into_errors(self) -> ComposeErrors {
        let mut seen = std::collections::BTreeSet::new();
        ComposeErrors(
            self.0
                .into_iter()
                .filter(|e| seen.insert(e.path.clone()))
                .collect(),
        )
    }
}

/// `parent.key`, or `key` at the top.
pub(super) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// `parent[i]`.
pub(super) fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}
