//! Where things live in the store (see ARCHITECTURE.md, "Store"), and how records are
//! encoded: the `orch.v1` protobuf messages themselves.

use prost::Message;

pub const ROOT: &str = "/orch/";
pub const SERVICES: &str = "/orch/services/";
pub const REPLICAS: &str = "/orch/replicas/";
pub const NODES: &str = "/orch/nodes/";
pub const EVENTS: &str = "/orch/events/";
pub const VIPS: &str = "/orch/ipam/vips/";

pub fn service(name: &str) -> String {
    format!("{SERVICES}{name}")
}

pub fn replicas_of(service: &str) -> String {
    format!("{REPLICAS}{service}/")
}

pub fn vip(address: std::net::Ipv4Addr) -> String {
    format!("{VIPS}{address}")
}

/// A stored record that is not the message it should be.
#[derive(Debug, thiserror::Error)]
#[error("corrupt record at {key}: {source}")]
pub struct DecodeError {
    pub key: String,
    pub source: prost::DecodeError,
}

pub fn decode<T: Message + Default>(key: &str, bytes: &[u8]) -> Result<T, DecodeError> {
    T::decode(bytes).map_err(|source| DecodeError { key: key.to_owned(), source })
}

pub fn encode<T: Message>(message: &T) -> Vec<u8> {
    message.encode_to_vec()
}
