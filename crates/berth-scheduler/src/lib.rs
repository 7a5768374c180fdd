//! The pure scheduler of berth: where tasks go ([`placement`]) and what a service
//! needs next ([`service`]: desired count, replacement, rolling deployments, circuit
//! breaker, draining, daemons).
//!
//! No I/O, no clocks, no randomness: time and seeds come in as arguments, so every
//! decision is a plain function of its inputs. The controller in `berth-server` runs on
//! the Raft leader, feeds these functions a snapshot of the store, and proposes what
//! they answer as commands.
#![forbid(unsafe_code)]

pub mod placement;
pub mod service;
