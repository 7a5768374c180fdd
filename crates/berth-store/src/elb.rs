//! ELBv2 state: load balancers, listeners, rules, target groups and targets, and the
//! ECS wiring that registers a service's tasks as targets and drains them when they stop.

use berth_model::ApiError;

use crate::command::{err, Command, KvRead, Response, Staged, StoreError};

/// Applies one ELBv2 command.
pub(crate) fn apply<R: KvRead + ?Sized>(
    _st: &mut Staged<'_, R>,
    cmd: &Command,
) -> Result<Response, StoreError> {
    Ok(err(ApiError::server(format!(
        "{} is not implemented yet",
        cmd.name()
    ))))
}
