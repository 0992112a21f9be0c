//! Reading a compose file into a [`Stack`]: load the YAML (bounded), interpolate `${VAR}` from
//! the stack's env, check the supported subset and rewrite short syntaxes, read the result into
//! the typed compose model (`docker-compose-types`), check the rules across keys, and translate.
//!
//! Owns: the order of those steps and the [`Stack`] they produce. Must not: do I/O.

use super::error::{ComposeError, ComposeErrors, ErrorKind, Problems};
use super::interpolate::interpolate_tree;
use super::load::load;
use super::plan::{check_project_name, StackPlan};
use super::schema::{normalize, Walk};
use super::{structure, translate};
use serde_yaml_ng::Value;
use std::collections::{BTreeMap, BTreeSet};

/// A compose file that is valid and inside the supported subset, translated for its project.
#[derive(Debug, Clone, PartialEq)]
pub struct Stack {
    project: String,
    plan: StackPlan,
    warnings: Vec<String>,
}

impl Stack {
    /// The compose project name.
    pub fn project(&self) -> &str {
        &self.project
    }

    /// What to create on a host, in dependency order.
    pub fn plan(&self) -> StackPlan {
        self.plan.clone()
    }

    /// Things worth telling the author that do not stop a deploy: variables used while unset
    /// (they became empty strings), and obsolete keys that were ignored.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

/// Parses, checks and translates the compose file `yaml` for the project `project`, with
/// `${VAR}` taken from `env`.
///
/// Errors: every problem found, each with its path in the file (unsupported keys, invalid
/// values, missing images, unknown references, `depends_on` cycles, an invalid project name)
/// and, when it is in the file, its line.
pub fn parse(
    project: &str,
    yaml: &str,
    env: &BTreeMap<String, String>,
) -> Result<Stack, ComposeErrors> {
    if let Err(m) = check_project_name(project) {
        return Err(ComposeErrors(vec![ComposeError::new(
            "name",
            ErrorKind::Name,
            m,
        )]));
    }
    check_file(project, yaml, env).map_err(|e| e.with_lines(yaml))
}

/// [`parse`] once the project name is known to be valid.
fn check_file(
    project: &str,
    yaml: &str,
    env: &BTreeMap<String, String>,
) -> Result<Stack, ComposeErrors> {
    let mut root = load(yaml).map_err(|e| ComposeErrors(vec![e]))?;
    let mut problems = Problems::default();
    let mut unset = BTreeSet::new();
    interpolate_tree(&mut root, env, &mut problems, &mut unset);
    let mut warnings = Vec::new();
    let normalized = normalize(
        &mut Walk {
            problems: &mut problems,
            env,
            warnings: &mut warnings,
        },
        root,
    );
    let compose: docker_compose_types::Compose =
        match serde_yaml_ng::from_value(Value::Mapping(normalized.clone())) {
            Ok(c) => c,
            Err(e) => {
                let path = locate_model_error(&normalized);
                problems.invalid(&path, format!("does not fit the compose model: {e}"));
                return Err(problems.into_errors());
            }
        };
    structure::check(project, &compose, &mut problems);
    let plan = translate::translate(project, &compose, &mut problems);
    warnings.extend(
        unset
            .into_iter()
            .map(|v| format!("variable {v} is not set: it was replaced by an empty string")),
    );
    problems.finish(Stack {
        project: project.to_string(),
        plan,
        warnings,
    })
}

/// The path of the entry the typed model refuses: a service, network or volume (or the file).
fn locate_model_error(normalized: &serde_yaml_ng::Mapping) -> String {
    use docker_compose_types::{ComposeVolume, NetworkSettings, Service};
    let fails = |section: &str, v: &Value| -> bool {
        let v = v.clone();
        match section {
            "services" => serde_yaml_ng::from_value::<Service>(v).is_err(),
            "networks" => serde_yaml_ng::from_value::<NetworkSettings>(v).is_err(),
            _ => serde_yaml_ng::from_value::<ComposeVolume>(v).is_err(),
        }
    };
    for section in ["services", "networks", "volumes"] {
        let Some(Value::Mapping(entries)) = normalized.get(section) else {
            continue;
        };
        for (k, v) in entries {
            if fails(section, v) {
                return format!("{section}.{}", k.as_str().unwrap_or_default());
            }
        }
    }
    String::new()
}
