//! `orch-api`: the one source of truth for orch's resource model.
//!
//! - [`pb`]: the `orch.v1` gRPC services and messages, generated from `proto/orch/v1/*.proto`.
//! - [`manifest`]: the YAML manifest model, parsing and validation (shared by the CLI and
//!   the controller).
//! - [`cidr`]: `Ipv4Cidr`, the one CIDR type of every binary.
//! - [`events`]: the kinds of event the controller and the agents report.
//! - [`image_ref`]: the image references the agent accepts.
//! - [`tls`]: the cluster's certificates (`orch-controller init`) and the mutual-TLS
//!   configurations the controller, agents and CLI build from them.

pub mod cidr;
pub mod events;
pub mod image_ref;
pub mod manifest;
pub mod tls;

/// Generated `orch.v1` code (tonic + prost).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("orch.v1");
}
