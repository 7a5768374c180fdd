//! Helpers the unit tests of every module share: a map as the state ([`Map`]), the ARN
//! context of the tests ([`ctx`]), [`run`] (applies one command as the state machine does)
//! and builders of the commands many tests start from.

use std::collections::BTreeMap;

use berth_model::{
    validate_register, ApiError, ArnContext, Cluster, RegisterTaskDefinitionRequest, Tag,
};

use crate::apply::apply;
use crate::command::{Command, Response};
use crate::kv::Staged;

pub(crate) type Map = BTreeMap<Vec<u8>, Vec<u8>>;

pub(crate) fn ctx() -> ArnContext {
    ArnContext::new("us-east-1", "123456789012")
}

/// Applies like the state machine does: commit staged writes only on success.
pub(crate) fn run(state: &mut Map, cmd: Command) -> Response {
    let (resp, writes) = {
        let mut st = Staged::new(&*state);
        let resp = apply(&mut st, &cmd).unwrap();
        (resp, st.writes)
    };
    if !matches!(resp, Response::Error { .. }) {
        for (k, v) in writes {
            match v {
                Some(v) => state.insert(k, v),
                None => state.remove(&k),
            };
        }
    }
    resp
}

/// CreateCluster of the ACTIVE cluster `name`, tagged `env=dev`.
pub(crate) fn cluster(name: &str) -> Command {
    Command::CreateCluster {
        cluster: Cluster {
            cluster_arn: Some(ctx().cluster(name)),
            cluster_name: Some(name.into()),
            status: Some("ACTIVE".into()),
            ..Default::default()
        },
        tags: vec![Tag {
            key: "env".into(),
            value: "dev".into(),
        }],
    }
}

/// RegisterTaskDefinition of `family`: one `busybox` container with 64 MiB.
pub(crate) fn register(family: &str) -> Command {
    let req: RegisterTaskDefinitionRequest = serde_json::from_value(serde_json::json!({
        "family": family,
        "containerDefinitions": [{"name": "app", "image": "busybox", "memory": 64}]
    }))
    .unwrap();
    Command::RegisterTaskDefinition {
        ctx: ctx(),
        spec: validate_register(req).unwrap(),
        registered_at: 1700000000.5,
        registered_by: "arn:aws:iam::123456789012:root".into(),
    }
}

pub(crate) fn revision_of(r: &Response) -> u32 {
    match r {
        Response::TaskDefinition {
            task_definition, ..
        } => task_definition.revision,
        other => panic!("expected a task definition, got {other:?}"),
    }
}

pub(crate) fn error_of(r: &Response) -> &ApiError {
    match r {
        Response::Error { error } => error,
        other => panic!("expected an error, got {other:?}"),
    }
}
