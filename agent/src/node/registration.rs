//! Registration with the controller: the node's pod subnet and the service range, saved
//! as `<state>/node.json` so that a restarted agent can set its network up and adopt its
//! replicas while the controller is away.

use std::path::PathBuf;
use std::time::Duration;

use orch_api::cidr::from_wire;
use orch_api::pb;
use orch_api::pb::nodes_client::NodesClient;
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;

use super::config::{AgentConfig, LinkError};
use crate::StateDir;

/// A saved registration that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct RegistrationFileError {
    pub path: PathBuf,
    pub reason: String,
}

/// What registration said, kept so that a restarted agent can set its network up and
/// adopt its replicas while the controller is away.
/// Saved as `<state>/node.json`; `orch-agent teardown` reads it too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub pod_cidr: String,
    pub service_cidr: String,
    /// The cluster's pod network; absent from controllers (and node.json files) of
    /// earlier builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_cidr: Option<String>,
}

impl Registration {
    fn path(state_dir: &std::path::Path) -> PathBuf {
        StateDir::new(state_dir).registration()
    }

    /// The saved registration; `None` when there is none, an error naming the file when
    /// it cannot be read (never taken as "none" silently).
    pub fn load(state_dir: &std::path::Path) -> Result<Option<Registration>, RegistrationFileError> {
        let path = Registration::path(state_dir);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(RegistrationFileError { path, reason: error.to_string() }),
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|error| RegistrationFileError { path, reason: error.to_string() })
    }

    fn save(&self, state_dir: &std::path::Path) {
        if let Ok(bytes) = serde_json::to_vec(self) {
            let _ = std::fs::create_dir_all(state_dir);
            let path = Registration::path(state_dir);
            if let Err(error) = crate::state_dir::write_atomically(&path, &bytes) {
                tracing::warn!(path = %path.display(), %error, "saving the registration");
            }
        }
    }

    pub fn forget(state_dir: &std::path::Path) {
        let _ = std::fs::remove_file(Registration::path(state_dir));
    }
}

/// Registers with the first controller that answers, in the order the agent's
/// [`super::controllers::ControllerSet`] gives (what worked last first, what just failed
/// last): that controller's address, a client to it, and what it said.
pub async fn register_any(config: &AgentConfig) -> Result<(String, NodesClient<Channel>, Registration), LinkError> {
    let mut tried = Vec::new();
    for address in config.controllers.with(|set| set.candidates()) {
        let attempt = async {
            let mut client = NodesClient::new(config.controller_channel(&address).await?);
            let registration = register(config, &address, &mut client).await?;
            Ok::<_, LinkError>((client, registration))
        }
        .await;
        match attempt {
            Ok((client, registration)) => {
                config.controllers.with(|set| set.worked(&address));
                return Ok((address, client, registration));
            }
            Err(error) => {
                config.controllers.with(|set| set.failed(&address));
                tried.push(error.to_string());
            }
        }
    }
    Err(LinkError::NoController { tried })
}

/// Registers through `client` (the controller at `address`), saves what the controller
/// said and learns the running controllers from it.
async fn register(config: &AgentConfig, address: &str, client: &mut NodesClient<Channel>) -> Result<Registration, LinkError> {
    let controller = || address.to_owned();
    let response = client
        .register(pb::RegisterRequest { node: Some(config.node_info()) })
        .await
        .map_err(|status| LinkError::Call { controller: controller(), call: "register", status })?
        .into_inner();
    config.controllers.with(|set| set.learn(&response.controllers));
    let pod_subnet = from_wire(response.pod_subnet.as_ref(), &response.pod_cidr).map_err(|source| LinkError::Registration {
        controller: controller(),
        what: "pod subnet",
        source,
    })?;
    let service_range = from_wire(response.service_range.as_ref(), &response.service_cidr).map_err(|source| LinkError::Registration {
        controller: controller(),
        what: "service range",
        source,
    })?;
    let cluster_network = response.cluster_network.as_ref().map(orch_api::cidr::Ipv4Cidr::try_from).transpose().map_err(|source| LinkError::Registration {
        controller: controller(),
        what: "cluster network",
        source,
    })?;
    let registration =
        Registration { pod_cidr: pod_subnet.to_string(), service_cidr: service_range.to_string(), cluster_cidr: cluster_network.map(|cidr| cidr.to_string()) };
    registration.save(&config.state_dir);
    Ok(registration)
}

/// The first registration: from the controller, else (restarting while it is away) from
/// the last one saved. Retries until one of them is there.
pub async fn first_registration(config: &AgentConfig) -> Registration {
    let saved = Registration::load(&config.state_dir).unwrap_or_else(|error| {
        // Rewritten by the next registration; until the controller answers, the node
        // network waits (its subnet is not guessed).
        tracing::error!(%error, "the saved registration cannot be read: waiting for the controller");
        None
    });
    let mut delay = Duration::from_millis(200);
    loop {
        match register_any(config).await {
            Ok((_, _, registration)) => return registration,
            Err(error) => {
                if let Some(saved) = &saved {
                    tracing::warn!(%error, "controller unreachable: using the last registration");
                    return saved.clone();
                }
                tracing::warn!(%error, "cannot register yet; retrying");
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
