//! One stack on one host: observe what the host has, compute the steps with the pure
//! reconcile of `stacks`, and run each step as a command, in order, waiting for health where
//! the plan says so.
//!
//! Owns: the order of a run on a host (observe, pull, observe again, apply; or teardown), the
//! health waits (polling `container.inspect`, bounded by the step's timeout), and registry
//! credentials on pulls. Must not: decide what to do (`stacks::reconcile` does), or reach the
//! host except through `Commands::submit` (every step is a command with the stack's origin).

use protocol::ops::{
    ContainerListParams, Filters, FiltersParams, IdParams, ImageListParams, RegistryAuth,
};
use protocol::{ErrorBody, ErrorCode, Operation};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{Deployer, Parking};
use crate::commands::{CommandState, Principal, Submission};
use crate::stacks::plan::LABEL_PROJECT;
use crate::stacks::reconcile::{self, wait_verdict, Observed, Step, WaitVerdict};
use crate::stacks::StackPlan;

/// How often a health wait reads the container's state.
const HEALTH_POLL: Duration = Duration::from_millis(500);
/// How long one wait for a queued command lasts before it is read again.
const QUEUE_WAIT: Duration = Duration::from_secs(60);

/// One run on one host, for one principal, with one origin (`stack:NAME`).
pub(super) struct HostRun<'a> {
    pub d: &'a Deployer,
    pub who: &'a Principal,
    pub host_id: &'a str,
    pub origin: String,
}

fn filters(key: &str, value: &str) -> Filters {
    Filters(BTreeMap::from([(key.to_string(), vec![value.to_string()])]))
}

/// `container.list` of every container of `project`, running or not.
fn containers_of(project: &str) -> Operation {
    Operation::ContainerList(ContainerListParams {
        all: true,
        filters: filters("label", &format!("{LABEL_PROJECT}={project}")),
        ..Default::default()
    })
}

/// The registry an image reference names: its first part when that looks like a host
/// (`registry.example:5000/x`, `localhost/x`), else Docker Hub.
pub fn registry_of(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first,
        _ => "docker.io",
    }
}

impl HostRun<'_> {
    /// Runs `op` now; its data, or its error (a refused submission's too).
    pub async fn call(&self, op: &Operation) -> Result<Value, ErrorBody> {
        let reply = self.submit(op, false).await?;
        reply.outcome.unwrap_or_else(|| {
            Err(ErrorBody::new(
                ErrorCode::OutcomeUnknown,
                format!("no answer to {} (command {})", op.name(), reply.command_id),
            ))
        })
    }

    async fn submit(
        &self,
        op: &Operation,
        queue: bool,
    ) -> Result<crate::commands::Reply, ErrorBody> {
        let sub = Submission {
            host_id: self.host_id.to_string(),
            operation: op.name().to_string(),
            params: op.params(),
            queue,
            origin: Some(self.origin.clone()),
            ..Default::default()
        };
        self.d
            .commands
            .submit(self.who, sub)
            .await
            .map_err(|e| e.body)
    }

    /// Runs `op` queued: when the host cannot take it now, the run parks until the command
    /// is delivered (the host's agent came back) and finished.
    async fn call_queued(
        &self,
        op: &Operation,
        parking: &mut dyn Parking,
    ) -> Result<Value, ErrorBody> {
        let mut reply = self.submit(op, true).await?;
        if reply.outcome.is_none() && reply.state == CommandState::Queued {
            parking.park().await;
            while !reply.state.is_final() {
                reply = self
                    .d
                    .commands
                    .wait(&reply.command_id, QUEUE_WAIT)
                    .await
                    .map_err(|e| e.body)?;
            }
            parking.unpark().await;
        }
        match reply.outcome {
            Some(o) => o,
            None => {
                // Sent but unanswered: read it until it ends.
                let r = self
                    .d
                    .commands
                    .wait(&reply.command_id, QUEUE_WAIT)
                    .await
                    .map_err(|e| e.body)?;
                r.outcome.unwrap_or_else(|| {
                    Err(ErrorBody::new(
                        ErrorCode::Timeout,
                        "the host did not answer in time",
                    ))
                })
            }
        }
    }

    /// What the host has for `project`: its containers, and all networks, volumes and images.
    /// With `parking`, the first read waits in the queue for an offline host.
    pub async fn observe(
        &self,
        project: &str,
        parking: Option<&mut dyn Parking>,
    ) -> Result<Observed, ErrorBody> {
        let list = containers_of(project);
        let containers = match parking {
            Some(p) => self.call_queued(&list, p).await?,
            None => self.call(&list).await?,
        };
        let networks = self
            .call(&Operation::NetworkList(FiltersParams::default()))
            .await?;
        let volumes = self
            .call(&Operation::VolumeList(FiltersParams::default()))
            .await?;
        let images = self
            .call(&Operation::ImageList(ImageListParams::default()))
            .await?;
        Ok(Observed::from_docker(
            &containers,
            &networks,
            &volumes,
            &images,
        ))
    }

    /// Only the project's containers (all the drift report reads).
    pub async fn observe_containers(&self, project: &str) -> Result<Observed, ErrorBody> {
        let containers = self.call(&containers_of(project)).await?;
        let none = Value::Array(Vec::new());
        Ok(Observed::from_docker(&containers, &none, &none, &none))
    }

    /// Brings the host to `plan`: pulls (then observes again), then the reconcile's steps.
    pub async fn apply(
        &self,
        plan: &StackPlan,
        parking: &mut dyn Parking,
    ) -> Result<(), ErrorBody> {
        let mut observed = self.observe(&plan.project, Some(parking)).await?;
        let pulls = reconcile::pulls(plan, &observed);
        if !pulls.is_empty() {
            self.run_steps(&pulls).await?;
            observed = self.observe(&plan.project, None).await?;
        }
        let steps = reconcile::reconcile(plan, &observed);
        self.run_steps(&steps).await
    }

    /// Removes the stack from the host: containers, networks, and volumes when asked.
    pub async fn teardown(
        &self,
        plan: &StackPlan,
        volumes: bool,
        parking: &mut dyn Parking,
    ) -> Result<(), ErrorBody> {
        let observed = self.observe(&plan.project, Some(parking)).await?;
        let steps = reconcile::teardown(plan, &observed, volumes);
        self.run_steps(&steps).await
    }

    /// Runs the steps in order; the first failure ends the run, named by its step.
    async fn run_steps(&self, steps: &[Step]) -> Result<(), ErrorBody> {
        for step in steps {
            let r = match step {
                Step::WaitHealthy {
                    container, timeout, ..
                } => self.wait_healthy(container, *timeout).await,
                Step::PullImage { image, params } => {
                    let mut params = params.clone();
                    params.auth = self.registry_auth(image).await?;
                    self.call(&Operation::ImagePull(params)).await.map(drop)
                }
                other => match other.operation() {
                    Some(op) => self.call(&op).await.map(drop),
                    None => Ok(()),
                },
            };
            if let Err(e) = r {
                tracing::info!(host = %self.host_id, origin = %self.origin, step = %step.describe(), code = %e.code.as_str(), "stack step failed");
                let message = format!("{}: {}", step.describe(), e.message);
                return Err(ErrorBody { message, ..e });
            }
        }
        Ok(())
    }

    /// The stored credentials of the image's registry, if any.
    async fn registry_auth(&self, image: &str) -> Result<Option<RegistryAuth>, ErrorBody> {
        let server = registry_of(image);
        let found = self
            .d
            .store
            .registry_for(server)
            .await
            .map_err(|e| ErrorBody::internal(format!("reading registry credentials: {e}")))?;
        let Some(r) = found else { return Ok(None) };
        let password = self
            .d
            .keys
            .decrypt(&r.password_enc)
            .map_err(|_| ErrorBody::internal("the registry's password cannot be decrypted"))?;
        Ok(Some(RegistryAuth {
            username: r.username,
            password,
            serveraddress: r.server,
        }))
    }

    /// Polls `container.inspect` until the container is healthy, or fails: unhealthy, not
    /// running, no healthcheck, or `timeout` passed.
    async fn wait_healthy(&self, container: &str, timeout: Duration) -> Result<(), ErrorBody> {
        let deadline = Instant::now() + timeout;
        let inspect = Operation::ContainerInspect(IdParams {
            id: container.to_string(),
        });
        loop {
            let verdict = wait_verdict(&self.call(&inspect).await?);
            let why = match verdict {
                WaitVerdict::Healthy => return Ok(()),
                WaitVerdict::Starting if Instant::now() < deadline => {
                    tokio::time::sleep(HEALTH_POLL).await;
                    continue;
                }
                WaitVerdict::Starting => format!("not healthy after {}s", timeout.as_secs()),
                WaitVerdict::Unhealthy => "unhealthy".to_string(),
                WaitVerdict::NoHealthcheck => "has no healthcheck".to_string(),
                WaitVerdict::NotRunning => "is not running".to_string(),
            };
            return Err(ErrorBody::new(
                ErrorCode::Timeout,
                format!("container {container} {why}"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::registry_of;

    #[test]
    fn the_registry_of_an_image() {
        assert_eq!(registry_of("busybox"), "docker.io");
        assert_eq!(registry_of("library/busybox:1"), "docker.io");
        assert_eq!(
            registry_of("registry.example:5000/x/y:1"),
            "registry.example:5000"
        );
        assert_eq!(registry_of("localhost/x"), "localhost");
        assert_eq!(registry_of("ghcr.io/o/i@sha256:ab"), "ghcr.io");
    }
}
