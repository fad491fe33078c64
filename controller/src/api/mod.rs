//! `orch.v1.Api`, the CLI's API: a thin gRPC layer ([`rpc`]) over plain functions on the
//! store ([`services`]), which hold the logic and are tested without gRPC.

mod configs;
mod node_ports;
mod proxy;
pub mod rpc;
pub mod services;
mod vip;

pub use services::{ApiError, Applied, ServiceApi};
pub use vip::next_free_vip;
