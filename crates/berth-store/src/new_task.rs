//! A new task as RunTask, StartTask and the service reconciler propose it: fresh ids,
//! its containers' ARNs, names, images and sizes. Made before the command (ids are
//! random), never while applying one.

use berth_model::{ArnContext, Container, Reservation, Tag, TaskDefinition, TaskOverride};

use crate::NewTask;

fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Containers of a new task: ARN, name, image and their cpu/memory as strings.
fn containers_of(
    arn: &ArnContext,
    cluster: &str,
    task_id: &str,
    td: &TaskDefinition,
    ov: &TaskOverride,
) -> Vec<Container> {
    td.container_definitions
        .iter()
        .map(|c| {
            let o = ov
                .container_overrides
                .iter()
                .flatten()
                .find(|o| o.name.is_some() && o.name == c.name);
            let cpu = o.and_then(|o| o.cpu).or(c.cpu).unwrap_or(0);
            Container {
                container_arn: Some(arn.container(
                    cluster,
                    task_id,
                    &uuid::Uuid::new_v4().to_string(),
                )),
                name: c.name.clone(),
                image: c.image.clone(),
                cpu: Some(cpu.to_string()),
                memory: o.and_then(|o| o.memory).or(c.memory).map(|m| m.to_string()),
                memory_reservation: o
                    .and_then(|o| o.memory_reservation)
                    .or(c.memory_reservation)
                    .map(|m| m.to_string()),
                network_interfaces: Some(vec![]),
                network_bindings: Some(vec![]),
                ..Default::default()
            }
        })
        .collect()
}

/// A new task of `td` (with `overrides`) on `instance_id`, with fresh ids: what RunTask,
/// StartTask and the service reconciler propose. `reservation` is what the task holds
/// on its instance (`berth_scheduler::placement::reservation`).
#[allow(clippy::too_many_arguments)]
pub fn build(
    arn: &ArnContext,
    cluster: &str,
    td: &TaskDefinition,
    overrides: &TaskOverride,
    group: &str,
    started_by: Option<String>,
    tags: Vec<Tag>,
    launch_type: &str,
    instance_id: &str,
    enable_execute_command: bool,
    reservation: Reservation,
) -> NewTask {
    let task_id = new_id();
    NewTask {
        containers: containers_of(arn, cluster, &task_id, td, overrides),
        task_id,
        task_definition_arn: td.task_definition_arn.clone().unwrap_or_default(),
        family: td.family.clone(),
        revision: td.revision,
        instance_id: instance_id.to_string(),
        group: group.to_string(),
        started_by,
        overrides: TaskOverride {
            container_overrides: Some(overrides.container_overrides.clone().unwrap_or_default()),
            ..overrides.clone()
        },
        tags,
        cpu: overrides.cpu.clone().or_else(|| td.cpu.clone()),
        memory: overrides.memory.clone().or_else(|| td.memory.clone()),
        reservation,
        network_mode: td.network_mode.clone(),
        launch_type: launch_type.to_string(),
        enable_execute_command,
    }
}
