//! ECS through the AWS SDK: a new revision of a service's current task definition with one container's image
//! replaced (everything else copied as it is), the service updated to it, and the service's progress afterwards.

use aws_sdk_ecs::types::{DeploymentRolloutState, TaskDefinition, TaskDefinitionField};

use crate::aws::{Failure, RegionSource};
use crate::config::EcsDeploy;

/// An ECS failure.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EcsError {
    /// An API call failed; the message is the service's error code and message, or why it did not answer.
    #[error("ECS {operation} failed: {message}")]
    Api {
        /// The operation.
        operation: &'static str,
        /// What went wrong.
        message: String,
    },
    /// Neither the SDK's settings nor the registry name a region.
    #[error(
        "no AWS region for ECS: set AWS_REGION, or `region` in the AWS profile (with an ECR registry, its region is used)"
    )]
    NoRegion,
    /// The SDK found no credentials.
    #[error("ECS {operation}: {}", crate::aws::NO_CREDENTIALS_HINT)]
    NoCredentials {
        /// The operation that needed them.
        operation: &'static str,
    },
    /// DescribeServices did not find the service.
    #[error("ECS DescribeServices found no such service in the cluster ({reason})")]
    Missing {
        /// ECS's reason (`MISSING`).
        reason: String,
    },
    /// The service is being deleted or is gone.
    #[error("the ECS service is {status}, not ACTIVE")]
    Inactive {
        /// Its status.
        status: String,
    },
    /// The task definition has no container of that name.
    #[error(
        "task definition {task_definition} has no container `{container}` (its containers: {}); set `container` under [services.{service}.deploy.ecs] in buildopt.toml",
        containers.join(", ")
    )]
    NoContainer {
        /// The task definition (`family:revision`).
        task_definition: String,
        /// The container looked for.
        container: String,
        /// The containers it has.
        containers: Vec<String>,
        /// The buildopt service.
        service: String,
    },
    /// The new revision was registered, but the service was not updated to it.
    #[error(
        "registered task definition {registered}, but ECS UpdateService failed: {message}; the service still runs {previous}"
    )]
    Update {
        /// The new revision (`family:revision`).
        registered: String,
        /// What the service runs.
        previous: String,
        /// Why.
        message: String,
    },
    /// ECS gave up on the deployment (circuit breaker).
    #[error("the ECS deployment failed: {reason}")]
    RolloutFailed {
        /// ECS's reason.
        reason: String,
    },
    /// Someone else updated the service meanwhile.
    #[error("another deployment replaced this one: the service now runs {now}")]
    Replaced {
        /// What it runs now (`family:revision`).
        now: String,
    },
    /// Not stable in time.
    #[error(
        "not stable after {waited}s ({state}); ECS goes on deploying {task_definition}: see the service's events"
    )]
    Timeout {
        /// Seconds waited.
        waited: u64,
        /// The last state seen.
        state: String,
        /// What is being deployed (`family:revision`).
        task_definition: String,
    },
}

impl crate::error::Classify for EcsError {
    fn kind(&self) -> crate::error::ErrorKind {
        match self {
            EcsError::NoCredentials { .. } | EcsError::NoContainer { .. } | EcsError::NoRegion => {
                crate::error::ErrorKind::Usage
            }
            _ => crate::error::ErrorKind::Failure,
        }
    }
}

fn api_error<E, R>(operation: &'static str, e: aws_sdk_ecs::error::SdkError<E, R>) -> EcsError
where
    E: aws_sdk_ecs::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    match crate::aws::failure(&e) {
        Failure::NoCredentials => EcsError::NoCredentials { operation },
        Failure::Service(message) | Failure::Other(message) => EcsError::Api { operation, message },
    }
}

/// `family:revision` of a task definition ARN (`arn:aws:ecs:...:task-definition/family:3`); anything else as it is.
pub(crate) fn short_task_definition(arn: &str) -> &str {
    arn.rsplit_once('/').map_or(arn, |(_, name)| name)
}

/// What a deploy did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Deployed {
    /// A new revision was registered and the service updated to it.
    Updated {
        /// The new revision's ARN.
        task_definition: String,
        /// The revision the service ran before.
        previous: String,
    },
    /// The service's task definition already had the image in that container: nothing was registered or updated.
    Current {
        /// Its task definition's ARN.
        task_definition: String,
    },
}

impl Deployed {
    /// The task definition the service runs now.
    pub(crate) fn task_definition(&self) -> &str {
        match self {
            Deployed::Updated {
                task_definition, ..
            }
            | Deployed::Current { task_definition } => task_definition,
        }
    }
}

/// Where a service's deployment stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rollout {
    /// One deployment, and as many tasks running as desired (what `aws ecs wait services-stable` waits for).
    pub(crate) stable: bool,
    /// `2 deployments, 1/2 tasks running`.
    pub(crate) state: String,
}

/// An ECS client.
#[derive(Debug, Clone)]
pub(crate) struct Ecs {
    client: aws_sdk_ecs::Client,
}

impl Ecs {
    /// A client with the SDK's standard settings (credentials, region, `AWS_ENDPOINT_URL_ECS` / `AWS_ENDPOINT_URL`
    /// / the profile's endpoint); `fallback_region` when those name no region, and an error when there is none.
    pub(crate) async fn new(fallback_region: Option<String>) -> Result<Ecs, EcsError> {
        let config = crate::aws::sdk_config(
            RegionSource::Default {
                fallback: fallback_region,
            },
            None,
        )
        .await;
        if config.region().is_none() {
            return Err(EcsError::NoRegion);
        }
        Ok(Ecs {
            client: aws_sdk_ecs::Client::new(&config),
        })
    }

    /// The service, which must exist and be active.
    async fn service(&self, target: &EcsDeploy) -> Result<aws_sdk_ecs::types::Service, EcsError> {
        let out = self
            .client
            .describe_services()
            .cluster(&target.cluster)
            .services(&target.service)
            .send()
            .await
            .map_err(|e| api_error("DescribeServices", e))?;
        let Some(service) = out.services().first() else {
            let reason = out
                .failures()
                .first()
                .and_then(|f| f.reason())
                .unwrap_or("no service returned");
            return Err(EcsError::Missing {
                reason: reason.to_owned(),
            });
        };
        match service.status() {
            Some("ACTIVE") | None => Ok(service.clone()),
            Some(status) => Err(EcsError::Inactive {
                status: status.to_owned(),
            }),
        }
    }

    /// Points container `target.container` of the service's task definition at `image`: registers a new revision
    /// (a copy of the current one with only that image changed, tags included) and updates the service to it.
    /// Nothing is registered when the container already has `image`.
    pub(crate) async fn deploy(
        &self,
        service_name: &str,
        target: &EcsDeploy,
        image: &str,
    ) -> Result<Deployed, EcsError> {
        let service = self.service(target).await?;
        let current = service
            .task_definition()
            .ok_or_else(|| EcsError::Api {
                operation: "DescribeServices",
                message: "the service has no task definition".to_owned(),
            })?
            .to_owned();
        let described = self
            .client
            .describe_task_definition()
            .task_definition(&current)
            .include(TaskDefinitionField::Tags)
            .send()
            .await
            .map_err(|e| api_error("DescribeTaskDefinition", e))?;
        let Some(definition) = described.task_definition() else {
            return Err(EcsError::Api {
                operation: "DescribeTaskDefinition",
                message: format!("no task definition {current} returned"),
            });
        };
        let mut containers = definition.container_definitions.clone().unwrap_or_default();
        let Some(container) = containers
            .iter_mut()
            .find(|c| c.name.as_deref() == Some(target.container.as_str()))
        else {
            return Err(EcsError::NoContainer {
                task_definition: short_task_definition(&current).to_owned(),
                container: target.container.clone(),
                containers: containers.iter().filter_map(|c| c.name.clone()).collect(),
                service: service_name.to_owned(),
            });
        };
        if container.image.as_deref() == Some(image) {
            return Ok(Deployed::Current {
                task_definition: current,
            });
        }
        container.image = Some(image.to_owned());
        let tags = described.tags().to_vec();
        let registered = self.register(definition, containers, tags).await?;
        let new_arn = registered
            .task_definition()
            .and_then(|t| t.task_definition_arn())
            .ok_or_else(|| EcsError::Api {
                operation: "RegisterTaskDefinition",
                message: "no task definition ARN returned".to_owned(),
            })?
            .to_owned();
        self.client
            .update_service()
            .cluster(&target.cluster)
            .service(&target.service)
            .task_definition(&new_arn)
            .send()
            .await
            .map_err(|e| EcsError::Update {
                registered: short_task_definition(&new_arn).to_owned(),
                previous: short_task_definition(&current).to_owned(),
                message: crate::error::one_line(&api_error("UpdateService", e)),
            })?;
        Ok(Deployed::Updated {
            task_definition: new_arn,
            previous: current,
        })
    }

    /// RegisterTaskDefinition with every field of `from` that the call takes, `containers` instead of its
    /// containers, and `tags`.
    async fn register(
        &self,
        from: &TaskDefinition,
        containers: Vec<aws_sdk_ecs::types::ContainerDefinition>,
        tags: Vec<aws_sdk_ecs::types::Tag>,
    ) -> Result<
        aws_sdk_ecs::operation::register_task_definition::RegisterTaskDefinitionOutput,
        EcsError,
    > {
        let d = from.clone();
        self.client
            .register_task_definition()
            .set_family(d.family)
            .set_task_role_arn(d.task_role_arn)
            .set_execution_role_arn(d.execution_role_arn)
            .set_network_mode(d.network_mode)
            .set_container_definitions(Some(containers))
            .set_volumes(d.volumes)
            .set_placement_constraints(d.placement_constraints)
            .set_requires_compatibilities(d.requires_compatibilities)
            .set_cpu(d.cpu)
            .set_memory(d.memory)
            .set_tags((!tags.is_empty()).then_some(tags))
            .set_pid_mode(d.pid_mode)
            .set_ipc_mode(d.ipc_mode)
            .set_proxy_configuration(d.proxy_configuration)
            .set_inference_accelerators(d.inference_accelerators)
            .set_ephemeral_storage(d.ephemeral_storage)
            .set_runtime_platform(d.runtime_platform)
            .set_enable_fault_injection(d.enable_fault_injection)
            .send()
            .await
            .map_err(|e| api_error("RegisterTaskDefinition", e))
    }

    /// Where the service's rollout to `task_definition` stands. Fails when ECS gave up on it or another
    /// deployment replaced it.
    pub(crate) async fn rollout(
        &self,
        target: &EcsDeploy,
        task_definition: &str,
    ) -> Result<Rollout, EcsError> {
        let service = self.service(target).await?;
        let now = service.task_definition().unwrap_or_default();
        if now != task_definition {
            return Err(EcsError::Replaced {
                now: short_task_definition(now).to_owned(),
            });
        }
        let deployments = service.deployments();
        if let Some(primary) = deployments.iter().find(|d| d.status() == Some("PRIMARY"))
            && primary.rollout_state() == Some(&DeploymentRolloutState::Failed)
        {
            return Err(EcsError::RolloutFailed {
                reason: primary
                    .rollout_state_reason()
                    .unwrap_or("no reason given")
                    .to_owned(),
            });
        }
        let (running, desired) = (service.running_count(), service.desired_count());
        let n = deployments.len();
        Ok(Rollout {
            stable: n <= 1 && running == desired,
            state: format!(
                "{n} deployment{}, {running}/{desired} tasks running",
                if n == 1 { "" } else { "s" }
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_definition_names() {
        assert_eq!(
            short_task_definition(
                "arn:aws:ecs:us-west-2:123456789012:task-definition/shop-backend:7"
            ),
            "shop-backend:7"
        );
        assert_eq!(short_task_definition("shop-backend:7"), "shop-backend:7");
    }
}
