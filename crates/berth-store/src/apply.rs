//! [`apply`]: the deterministic state transition of one command, which dispatches it to
//! the module of its resource ([`crate::clusters`], [`crate::task_definitions`],
//! [`crate::tags`], [`crate::tasks`], [`crate::services`], [`crate::elb`]); and
//! [`apply_batch`]: the commands of one Raft entry, in order.

use crate::command::{Command, Response};
use crate::kv::{KvRead, Staged, StoreError};

/// Applies a batch in order: each command sees the writes of the ones before it, and a
/// refused command contributes nothing (the others still apply).
pub fn apply_batch<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    commands: &[Command],
) -> Result<Vec<Response>, StoreError> {
    let mut out = Vec::with_capacity(commands.len());
    for cmd in commands {
        let (resp, writes, changes) = {
            let mut inner = Staged::new(&*st);
            let resp = apply(&mut inner, cmd)?;
            (resp, inner.writes, inner.changes)
        };
        if !matches!(resp, Response::Error { .. } | Response::Conflict) {
            st.writes.extend(writes);
            st.changes.extend(changes);
        }
        out.push(resp);
    }
    Ok(out)
}

/// Applies `cmd` to the staged view. On `Response::Error` the caller must discard the staged
/// writes (apply never stages anything before it has decided to succeed, but the contract
/// makes that explicit).
pub fn apply<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    cmd: &Command,
) -> Result<Response, StoreError> {
    match cmd {
        Command::CreateCluster { cluster, tags } => {
            crate::clusters::create_cluster(st, cluster, tags)
        }
        Command::UpdateCluster {
            name,
            settings,
            configuration,
            service_connect_defaults,
        } => crate::clusters::update_cluster(
            st,
            name,
            settings.as_deref(),
            configuration.as_ref(),
            service_connect_defaults.as_ref(),
        ),
        Command::DeleteCluster { name } => crate::clusters::delete_cluster(st, name),
        Command::RegisterTaskDefinition {
            ctx,
            spec,
            registered_at,
            registered_by,
        } => crate::task_definitions::register_task_definition(
            st,
            ctx,
            spec,
            *registered_at,
            registered_by,
        ),
        Command::DeregisterTaskDefinition {
            family,
            revision,
            at,
        } => crate::task_definitions::deregister_task_definition(st, family, *revision, *at),
        Command::DeleteTaskDefinitions { ctx, items, at } => {
            crate::task_definitions::delete_task_definitions(st, ctx, items, *at)
        }
        Command::TagResource { arn, target, tags } => {
            crate::tags::tag_resource(st, arn, target, tags)
        }
        Command::UntagResource {
            arn,
            target,
            keys: tag_keys,
        } => crate::tags::untag_resource(st, arn, target, tag_keys),
        Command::RegisterContainerInstance {
            ctx,
            hello,
            at,
            token,
        } => crate::tasks::register_container_instance(st, ctx, hello, *at, token.as_deref()),
        Command::CreateJoinToken { token } => crate::tokens::create_join_token(st, token),
        Command::RevokeJoinToken { id, at } => crate::tokens::revoke_join_token(st, id, *at),
        Command::UseJoinToken { id, kind, at } => crate::tokens::use_join_token(st, id, *kind, *at),
        Command::SetAgentConnected {
            cluster,
            instance_id,
            connected,
            at,
        } => crate::tasks::set_agent_connected(st, cluster, instance_id, *connected, *at),
        Command::ReportTasks {
            cluster,
            instance_id,
            reports,
            at,
        } => crate::tasks::report_tasks(st, cluster, instance_id, reports, *at),
        Command::RunTasks {
            ctx,
            cluster,
            tasks,
            client_token,
            at,
        } => crate::tasks::run_tasks(st, ctx, cluster, tasks, client_token.as_deref(), *at),
        Command::StopTask {
            cluster,
            task_id,
            reason,
            stop_code,
            at,
        } => crate::tasks::stop_task(st, cluster, task_id, reason, stop_code, *at),
        Command::DeregisterContainerInstance {
            cluster,
            instance_id,
            force,
            at,
        } => crate::tasks::deregister_container_instance(st, cluster, instance_id, *force, *at),
        Command::UpdateContainerInstancesState {
            cluster,
            instance_ids,
            status,
            at,
        } => crate::tasks::update_container_instances_state(st, cluster, instance_ids, status, *at),
        Command::PutAttributes {
            cluster,
            attributes,
        } => crate::tasks::put_attributes(st, cluster, attributes),
        Command::DeleteAttributes {
            cluster,
            attributes,
        } => crate::tasks::delete_attributes(st, cluster, attributes),
        Command::PurgeStoppedTasks { cluster, before } => {
            crate::tasks::purge_stopped_tasks(st, cluster, *before)
        }
        Command::StopInstanceTasks {
            cluster,
            instance_id,
            reason,
            stop_code,
            at,
        } => crate::tasks::stop_instance_tasks(st, cluster, instance_id, reason, stop_code, *at),
        Command::CreateService {
            cluster, record, ..
        } => crate::services::create_service(st, cluster, record),
        Command::PutService {
            cluster,
            name,
            expected_version,
            record,
            ..
        } => crate::services::put_service_if(st, cluster, name, *expected_version, record),
        Command::ReconcileService {
            ctx,
            cluster,
            name,
            expected_version,
            record,
            new_tasks,
            stops,
            at,
        } => crate::services::reconcile_service(
            st,
            ctx,
            cluster,
            name,
            *expected_version,
            record,
            new_tasks,
            stops,
            *at,
        ),
        Command::CreateLoadBalancer { .. }
        | Command::DeleteLoadBalancer { .. }
        | Command::CreateTargetGroup { .. }
        | Command::ModifyTargetGroup { .. }
        | Command::ModifyTargetGroupAttributes { .. }
        | Command::ModifyLoadBalancerAttributes { .. }
        | Command::DeleteTargetGroup { .. }
        | Command::CreateListener { .. }
        | Command::ModifyListener { .. }
        | Command::DeleteListener { .. }
        | Command::CreateRule { .. }
        | Command::ModifyRule { .. }
        | Command::SetRulePriorities { .. }
        | Command::DeleteRule { .. }
        | Command::RegisterTargets { .. }
        | Command::DeregisterTargets { .. }
        | Command::SetTargetHealth { .. }
        | Command::ElbSweep { .. }
        | Command::ElbDrainReport { .. }
        | Command::AddElbTags { .. }
        | Command::RemoveElbTags { .. } => crate::elb::apply(st, cmd),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{cluster, error_of, register, revision_of, run, Map};

    #[test]
    fn apply_is_deterministic() {
        let cmds = [
            cluster("a"),
            register("x"),
            register("x"),
            Command::DeleteCluster { name: "a".into() },
            register("y"),
        ];
        let mut s1 = Map::new();
        let mut s2 = Map::new();
        let r1: Vec<_> = cmds.iter().map(|c| run(&mut s1, c.clone())).collect();
        let r2: Vec<_> = cmds.iter().map(|c| run(&mut s2, c.clone())).collect();
        assert_eq!(r1, r2);
        assert_eq!(s1, s2);
    }

    #[test]
    fn a_batch_applies_in_order_and_a_refused_command_contributes_nothing() {
        let mut s = Map::new();
        let cmds = vec![
            register("a"),
            Command::DeleteCluster {
                name: "nope".into(),
            },
            register("a"),
            cluster("c"),
        ];
        let (resps, writes) = {
            let mut st = Staged::new(&s);
            let r = apply_batch(&mut st, &cmds).unwrap();
            (r, st.writes)
        };
        for (k, v) in writes {
            if let Some(v) = v {
                s.insert(k, v);
            }
        }
        assert_eq!(revision_of(&resps[0]), 1);
        assert_eq!(
            error_of(&resps[1]).kind,
            berth_model::ErrorKind::ClusterNotFoundException
        );
        assert_eq!(
            revision_of(&resps[2]),
            2,
            "the second registration sees the first"
        );
        assert!(matches!(resps[3], Response::Cluster { .. }));
        // The same commands one by one give the same state.
        let mut one_by_one = Map::new();
        for c in cmds {
            run(&mut one_by_one, c);
        }
        assert_eq!(s, one_by_one);
    }
}
