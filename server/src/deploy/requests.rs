//! What a user asks of stacks and registries: deploy (create or update), redeploy, remove,
//! and storing registry credentials. Each request is checked whole before anything is
//! stored, stored, audited, and handed to a rollout.
//!
//! Owns: the checks of a request (role, name, compose problems, targets), encrypting what
//! may hold secrets, and the audit entries `stack.create`, `stack.update`, `stack.redeploy`,
//! `stack.delete`, `registry.create`, `registry.delete`. Must not: run anything on a host.

use protocol::{ErrorCode, Secret};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

use super::{Action, Deployer};
use crate::commands::Principal;
use crate::error::{ApiError, ApiResult};
use crate::fleet::Targets;
use crate::rollouts::{Policy, DEFAULT_MAX_PARALLEL, MAX_PARALLEL, MAX_TARGETS};
use crate::stacks::{self, ComposeErrors, Stack};
use crate::store::{NewStackVersion, RegistryRecord, Role, StackRecord, StoreError};

/// `POST /api/v1/stacks` and `PUT /api/v1/stacks/{name}`. `Debug` leaves the file and the
/// env out (they may hold secrets).
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackRequest {
    #[serde(default)]
    pub name: Option<String>,
    pub compose: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub selector: Option<String>,
    #[serde(default)]
    pub host_ids: Option<Vec<String>>,
    #[serde(default)]
    pub max_parallel: Option<u32>,
    #[serde(default)]
    pub max_failures: Option<u32>,
}

impl std::fmt::Debug for StackRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StackRequest")
            .field("name", &self.name)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("selector", &self.selector)
            .field("host_ids", &self.host_ids)
            .finish_non_exhaustive()
    }
}

/// A change accepted: the stack's version and the rollout that carries it out.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Accepted {
    pub name: String,
    pub version: i64,
    /// `GET /api/v1/bulk-operations/{rollout_id}`; null when no host had to be touched.
    pub rollout_id: Option<String>,
}

/// `POST /api/v1/registries`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryRequest {
    /// The registry's address as image references name it (`registry.example:5000`).
    pub server: String,
    pub username: String,
    pub password: Secret,
}

/// A 400 that lists every problem of the file, each with its path.
fn compose_error(errors: &ComposeErrors) -> ApiError {
    let unsupported = errors.unsupported();
    let message = if unsupported.is_empty() {
        format!(
            "the compose file has {} problem(s): {errors}",
            errors.0.len()
        )
    } else {
        format!("unsupported compose keys: {}", unsupported.join(", "))
    };
    let details = json!({ "errors": errors.0, "unsupported": unsupported });
    ApiError::from(
        protocol::ErrorBody::new(ErrorCode::InvalidParams, message).with_details(details),
    )
}

/// The rollout policy: the request's, else the stored one, else the defaults.
fn policy_of(stored: &Value, req: &StackRequest) -> ApiResult<Policy> {
    let stored_u32 = |k: &str| stored.get(k).and_then(Value::as_u64).map(|n| n as u32);
    let p = Policy {
        max_parallel: req
            .max_parallel
            .or(stored_u32("max_parallel"))
            .unwrap_or(DEFAULT_MAX_PARALLEL),
        max_failures: req.max_failures.or(stored_u32("max_failures")).unwrap_or(0),
    };
    if p.max_parallel == 0 || p.max_parallel > MAX_PARALLEL {
        return Err(ApiError::bad_request(format!(
            "max_parallel must be 1 to {MAX_PARALLEL}"
        )));
    }
    Ok(p)
}

/// The policy stored with a stack's targets.
pub(super) fn stored_policy(targets: &Value) -> Policy {
    policy_of(targets, &StackRequest::default()).unwrap_or_default()
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Conflict(m) => ApiError::conflict(m),
        StoreError::NotFound => ApiError::not_found("stack not found"),
        e => e.into(),
    }
}

/// The stack's file and env, decrypted and parsed.
pub(super) struct Loaded {
    pub stack: Stack,
}

impl Deployer {
    /// Deploys `req` as a new stack (`create`), or as a new version of an existing one.
    /// `path_name` is the name in the URL of a PUT; a POST takes the body's.
    ///
    /// Errors: `forbidden`, `invalid_params` (name, file, targets; the file's problems are
    /// listed in the details), `not_found` (a PUT of an unknown stack), `conflict` (the stack
    /// is being removed).
    pub async fn deploy(
        &self,
        who: &Principal,
        req: StackRequest,
        path_name: Option<&str>,
    ) -> ApiResult<Accepted> {
        let target = path_name.or(req.name.as_deref()).unwrap_or_default();
        self.authorize(who, Role::Operator, "stack.deploy", target)
            .await?;
        let name = match (path_name, req.name.as_deref()) {
            (Some(p), Some(b)) if p != b => {
                return Err(ApiError::bad_request(
                    "the body's name differs from the URL's",
                ))
            }
            (Some(p), _) => p.to_string(),
            (None, Some(b)) => b.to_string(),
            (None, None) => return Err(ApiError::bad_request("name is required")),
        };
        let existing = self.store.get_stack(&name).await?;
        if path_name.is_some() && existing.is_none() {
            return Err(ApiError::not_found("stack not found"));
        }
        let action = if existing.is_some() {
            "stack.update"
        } else {
            "stack.create"
        };
        let result = self
            .store_version(who, &name, &req, existing.as_ref())
            .await;
        let result = match result {
            Ok((stack, hosts)) => self.start(who, &stack, hosts, Action::Apply).await,
            Err(e) => Err(e),
        };
        let detail = result
            .as_ref()
            .ok()
            .map(|a| json!({ "version": a.version, "rollout_id": a.rollout_id }));
        self.audit_result(who, action, &name, &result, detail).await;
        result
    }

    /// Checks the request and stores its version; the stack and its target hosts.
    async fn store_version(
        &self,
        who: &Principal,
        name: &str,
        req: &StackRequest,
        existing: Option<&StackRecord>,
    ) -> ApiResult<(StackRecord, Vec<(String, String)>)> {
        stacks::parse(name, &req.compose, &req.env).map_err(|e| compose_error(&e))?;
        let (targets, hosts) = self.targets(req, existing).await?;
        let host_ids: Vec<String> = hosts.iter().map(|(id, _)| id.clone()).collect();
        let env_text = serde_json::to_string(&req.env).map_err(ApiError::internal)?;
        let compose_enc = self
            .keys
            .encrypt(&req.compose)
            .map_err(ApiError::internal)?;
        let env_enc = self.keys.encrypt(&env_text).map_err(ApiError::internal)?;
        let v = NewStackVersion {
            name,
            targets: &targets,
            compose_enc: &compose_enc,
            env_enc: &env_enc,
            by: &who.user,
            host_ids: &host_ids,
        };
        let stack = self
            .store
            .save_stack_version(&v)
            .await
            .map_err(store_error)?;
        Ok((stack, hosts))
    }

    /// The request's targets and policy (or, when it names no targets, the existing
    /// stack's), stored as `{"selector"|"host_ids", "max_parallel", "max_failures"}`, and the
    /// hosts they name now (id and name).
    async fn targets(
        &self,
        req: &StackRequest,
        existing: Option<&StackRecord>,
    ) -> ApiResult<(Value, Vec<(String, String)>)> {
        let mut targets = match (&req.selector, &req.host_ids) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request("give selector or host_ids, not both"))
            }
            (Some(s), None) => json!({ "selector": s }),
            (None, Some(h)) => json!({ "host_ids": h }),
            (None, None) => match existing {
                Some(s) => s.targets.clone(),
                None => return Err(ApiError::bad_request("selector or host_ids is required")),
            },
        };
        let policy = policy_of(&targets, req)?;
        targets["max_parallel"] = json!(policy.max_parallel);
        targets["max_failures"] = json!(policy.max_failures);
        let which = match (targets.get("selector"), targets.get("host_ids")) {
            (Some(s), _) => Targets::Selector(s.as_str().unwrap_or_default().to_string()),
            (None, Some(h)) => {
                Targets::HostIds(serde_json::from_value(h.clone()).unwrap_or_default())
            }
            (None, None) => return Err(ApiError::bad_request("selector or host_ids is required")),
        };
        let resolved = self.fleet.resolve(&which, MAX_TARGETS).await?;
        let hosts = resolved.hosts.into_iter().map(|h| (h.id, h.name)).collect();
        Ok((targets, hosts))
    }

    /// Re-applies the stack's current version on its hosts. Errors: `forbidden`,
    /// `not_found`, `conflict` (being removed).
    pub async fn redeploy(&self, who: &Principal, name: &str) -> ApiResult<Accepted> {
        self.authorize(who, Role::Operator, "stack.redeploy", name)
            .await?;
        let result = async {
            let stack = self.live_stack(name).await?;
            let hosts = self.hosts_of(name).await?;
            for (h, _) in &hosts {
                self.store
                    .set_stack_host(name, h, "pending", None, None)
                    .await?;
            }
            self.start(who, &stack, hosts, Action::Apply).await
        }
        .await;
        let detail = result
            .as_ref()
            .ok()
            .map(|a| json!({ "version": a.version, "rollout_id": a.rollout_id }));
        self.audit_result(who, "stack.redeploy", name, &result, detail)
            .await;
        result
    }

    /// Removes the stack from its hosts (volumes too when asked); the stack goes once every
    /// host is clean. Errors: `forbidden`, `not_found`, `conflict` (already being removed).
    pub async fn remove(&self, who: &Principal, name: &str, volumes: bool) -> ApiResult<Accepted> {
        self.authorize(who, Role::Operator, "stack.delete", name)
            .await?;
        let result = async {
            self.live_stack(name).await?;
            let stack = self
                .store
                .mark_stack_removing(name, volumes)
                .await
                .map_err(store_error)?;
            let hosts = self.hosts_of(name).await?;
            if hosts.is_empty() {
                self.store.delete_stack_if_done(name).await?;
            }
            self.start(who, &stack, hosts, Action::Remove { volumes })
                .await
        }
        .await;
        let detail = result.as_ref().ok().map(
            |a| json!({ "version": a.version, "rollout_id": a.rollout_id, "volumes": volumes }),
        );
        self.audit_result(who, "stack.delete", name, &result, detail)
            .await;
        result
    }

    /// The stack's hosts (id and name; a host deleted since is left out, and forgotten).
    async fn hosts_of(&self, name: &str) -> ApiResult<Vec<(String, String)>> {
        let mut out = Vec::new();
        for h in self.store.stack_hosts(name).await? {
            match self.store.get_host(&h.host_id).await? {
                Some(host) => out.push((host.id, host.name)),
                None => self.store.remove_stack_host(name, &h.host_id).await?,
            }
        }
        Ok(out)
    }

    /// The stack, unless it is missing (`not_found`) or being removed (`conflict`).
    async fn live_stack(&self, name: &str) -> ApiResult<StackRecord> {
        let stack = self
            .store
            .get_stack(name)
            .await?
            .ok_or_else(|| ApiError::not_found("stack not found"))?;
        if stack.removing.is_some() {
            return Err(ApiError::conflict(format!("stack {name} is being removed")));
        }
        Ok(stack)
    }

    /// Version `version` of stack `name`, decrypted and parsed.
    pub(super) async fn load(&self, name: &str, version: i64) -> Result<Loaded, String> {
        let v = self
            .store
            .get_stack_version(name, version)
            .await
            .map_err(|e| format!("reading the stack: {e}"))?
            .ok_or_else(|| format!("stack {name} has no version {version}"))?;
        let compose = self
            .keys
            .decrypt(&v.compose_enc)
            .map_err(|_| "the stored compose file cannot be decrypted".to_string())?;
        let env = self
            .keys
            .decrypt(&v.env_enc)
            .map_err(|_| "the stored env cannot be decrypted".to_string())?;
        let env: BTreeMap<String, String> = serde_json::from_str(env.expose())
            .map_err(|_| "the stored env is unreadable".to_string())?;
        let stack = stacks::parse(name, compose.expose(), &env).map_err(|e| e.to_string())?;
        Ok(Loaded { stack })
    }

    /// Refuses with `forbidden` unless `who` has `role`; a refusal is audited as denied.
    async fn authorize(
        &self,
        who: &Principal,
        role: Role,
        action: &str,
        target: &str,
    ) -> ApiResult<()> {
        let r = who.require(role);
        if r.is_err() {
            self.audit_result(who, action, target, &r, None).await;
        }
        r
    }

    async fn audit_result<T>(
        &self,
        who: &Principal,
        action: &str,
        target: &str,
        result: &ApiResult<T>,
        detail: Option<Value>,
    ) {
        let code = result.as_ref().err().map(|e| e.body.code.as_str());
        let outcome = match result {
            Ok(_) => "success",
            Err(e) if e.body.code == ErrorCode::Forbidden => "denied",
            Err(_) => "error",
        };
        self.audit
            .user(who, action, None, Some(target), outcome, code, detail)
            .await;
    }

    /// Stores registry credentials (the password encrypted). Errors: `forbidden` (admin
    /// only), `invalid_params`, `conflict` (the server has credentials already).
    pub async fn add_registry(
        &self,
        who: &Principal,
        req: RegistryRequest,
    ) -> ApiResult<RegistryRecord> {
        self.authorize(who, Role::Admin, "registry.create", req.server.trim())
            .await?;
        let result = async {
            let server = req.server.trim();
            let bad = |c: char| c.is_whitespace() || c.is_control() || c == '/';
            if server.is_empty() || server.len() > 255 || server.contains(bad) {
                return Err(ApiError::bad_request(
                    "server must be a registry address such as registry.example:5000",
                ));
            }
            if req.username.is_empty() || req.password.expose().is_empty() {
                return Err(ApiError::bad_request("username and password are required"));
            }
            let enc = self
                .keys
                .encrypt(req.password.expose())
                .map_err(ApiError::internal)?;
            self.store
                .create_registry(server, &req.username, &enc, &who.user)
                .await
                .map_err(store_error)
        }
        .await;
        let detail = result.as_ref().ok().map(|r| json!({ "id": r.id }));
        self.audit_result(who, "registry.create", req.server.trim(), &result, detail)
            .await;
        result
    }

    pub async fn registries(&self, who: &Principal) -> ApiResult<Vec<RegistryRecord>> {
        who.require(Role::Viewer)?;
        Ok(self.store.list_registries().await?)
    }

    /// Errors: `forbidden` (admin only), `not_found`.
    pub async fn delete_registry(&self, who: &Principal, id: &str) -> ApiResult<()> {
        self.authorize(who, Role::Admin, "registry.delete", id)
            .await?;
        let result = self.store.delete_registry(id).await.map_err(|e| match e {
            StoreError::NotFound => ApiError::not_found("registry not found"),
            e => e.into(),
        });
        self.audit_result(who, "registry.delete", id, &result, None)
            .await;
        result
    }
}
