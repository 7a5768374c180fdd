//! Task definitions: the apply functions of RegisterTaskDefinition,
//! DeregisterTaskDefinition and DeleteTaskDefinitions. Revisions are chosen here, in
//! apply, from the family's [`FamilyMeta`], and are never reused.

use berth_model::{ApiError, ArnContext, Failure, TaskDefinition, TaskDefinitionSpec};
use serde::{Deserialize, Serialize};

use crate::command::{err, Change, Response};
use crate::keys;
use crate::kv::{KvRead, Staged, StoreError};

/// Family bookkeeping that outlives every revision: revisions are never reused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FamilyMeta {
    pub max_revision: u32,
}

/// Registers the next revision of the spec's family.
pub(crate) fn register_task_definition<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    ctx: &ArnContext,
    spec: &TaskDefinitionSpec,
    registered_at: f64,
    registered_by: &str,
) -> Result<Response, StoreError> {
    let family = spec.task_definition.family.clone();
    let fkey = keys::family(&family);
    let mut meta: FamilyMeta = st.get_json(&fkey)?.unwrap_or_default();
    let Some(revision) = meta.max_revision.checked_add(1) else {
        return Ok(err(ApiError::client(format!(
            "Family '{family}' has no revisions left."
        ))));
    };
    meta.max_revision = revision;
    let td = spec
        .clone()
        .into_registered(ctx, revision, registered_at, registered_by);
    let arn = ctx.task_definition(&family, revision);
    st.put_json(fkey, &meta)?;
    st.put_json(keys::task_def(&family, revision), &td)?;
    if !spec.tags.is_empty() {
        st.put_json(keys::tags(&arn), &spec.tags)?;
        st.changes.push(Change::Tags { arn });
    }
    st.changes.push(Change::TaskDefinition { family, revision });
    Ok(Response::TaskDefinition {
        task_definition: Box::new(td),
        tags: spec.tags.clone(),
    })
}

/// Marks an ACTIVE revision INACTIVE; one already INACTIVE answers unchanged.
pub(crate) fn deregister_task_definition<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    family: &str,
    revision: u32,
    at: f64,
) -> Result<Response, StoreError> {
    let key = keys::task_def(family, revision);
    let Some(mut td) = st.get_json::<TaskDefinition>(&key)? else {
        return Ok(err(ApiError::client(format!(
            "The specified task definition does not exist: {family}:{revision}."
        ))));
    };
    if td.status.as_deref() == Some("ACTIVE") {
        td.status = Some("INACTIVE".to_string());
        td.deregistered_at = Some(at);
        st.put_json(key, &td)?;
        st.changes.push(Change::TaskDefinition {
            family: family.to_string(),
            revision,
        });
    }
    Ok(Response::TaskDefinition {
        task_definition: Box::new(td),
        tags: vec![],
    })
}

/// Marks INACTIVE revisions DELETE_IN_PROGRESS and drops their tags; ACTIVE and unknown
/// ones are failures.
pub(crate) fn delete_task_definitions<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    ctx: &ArnContext,
    items: &[(String, u32)],
    at: f64,
) -> Result<Response, StoreError> {
    let mut done = Vec::new();
    let mut failures = Vec::new();
    for (family, revision) in items {
        let arn = ctx.task_definition(family, *revision);
        let key = keys::task_def(family, *revision);
        match st.get_json::<TaskDefinition>(&key)? {
            None => failures.push(failure(
                &arn,
                "TASK_DEFINITION_NOT_FOUND",
                "The specified task definition does not exist.",
            )),
            Some(td) if td.status.as_deref() == Some("ACTIVE") => failures.push(failure(
                &arn,
                "TASK_DEFINITION_NOT_INACTIVE",
                "The specified task definition is still ACTIVE. Deregister it before deleting it.",
            )),
            Some(mut td) => {
                if td.status.as_deref() != Some("DELETE_IN_PROGRESS") {
                    td.status = Some("DELETE_IN_PROGRESS".to_string());
                    td.delete_requested_at = Some(at);
                    st.put_json(key, &td)?;
                    st.delete(keys::tags(&arn));
                    st.changes.push(Change::TaskDefinition {
                        family: family.clone(),
                        revision: *revision,
                    });
                }
                done.push(td);
            }
        }
    }
    Ok(Response::TaskDefinitions {
        task_definitions: done,
        failures,
    })
}

fn failure(arn: &str, reason: &str, detail: &str) -> Failure {
    Failure {
        arn: Some(arn.to_string()),
        reason: Some(reason.to_string()),
        detail: Some(detail.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;
    use crate::test_util::{ctx, error_of, register, revision_of, run, Map};

    #[test]
    fn revisions_count_up_per_family_and_are_never_reused() {
        let mut s = Map::new();
        assert_eq!(revision_of(&run(&mut s, register("a"))), 1);
        assert_eq!(revision_of(&run(&mut s, register("a"))), 2);
        assert_eq!(revision_of(&run(&mut s, register("b"))), 1);
        run(
            &mut s,
            Command::DeregisterTaskDefinition {
                family: "a".into(),
                revision: 2,
                at: 5.0,
            },
        );
        match run(
            &mut s,
            Command::DeleteTaskDefinitions {
                ctx: ctx(),
                items: vec![("a".into(), 2), ("a".into(), 1), ("a".into(), 9)],
                at: 6.0,
            },
        ) {
            Response::TaskDefinitions {
                task_definitions,
                failures,
            } => {
                assert_eq!(task_definitions.len(), 1);
                assert_eq!(
                    task_definitions[0].status.as_deref(),
                    Some("DELETE_IN_PROGRESS")
                );
                assert_eq!(task_definitions[0].delete_requested_at, Some(6.0));
                let reasons: Vec<_> = failures.iter().filter_map(|f| f.reason.clone()).collect();
                assert_eq!(
                    reasons,
                    vec!["TASK_DEFINITION_NOT_INACTIVE", "TASK_DEFINITION_NOT_FOUND"]
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            revision_of(&run(&mut s, register("a"))),
            3,
            "a deleted revision's number is not reused"
        );
    }

    #[test]
    fn deregister_sets_inactive_once() {
        let mut s = Map::new();
        run(&mut s, register("a"));
        let first = run(
            &mut s,
            Command::DeregisterTaskDefinition {
                family: "a".into(),
                revision: 1,
                at: 7.0,
            },
        );
        let second = run(
            &mut s,
            Command::DeregisterTaskDefinition {
                family: "a".into(),
                revision: 1,
                at: 8.0,
            },
        );
        for r in [&first, &second] {
            match r {
                Response::TaskDefinition {
                    task_definition, ..
                } => {
                    assert_eq!(task_definition.status.as_deref(), Some("INACTIVE"));
                    assert_eq!(task_definition.deregistered_at, Some(7.0));
                }
                other => panic!("{other:?}"),
            }
        }
        let e = run(
            &mut s,
            Command::DeregisterTaskDefinition {
                family: "a".into(),
                revision: 4,
                at: 8.0,
            },
        );
        assert!(error_of(&e).message.contains("a:4"));
    }
}
