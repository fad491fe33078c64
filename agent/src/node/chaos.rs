//! `orch chaos` on this node: a replica killed as `kill -9` would, or a node outage the
//! agent carries out and ends by itself — even when whoever asked for it is gone.
//!
//! - **Node down** (as a machine dying, then booting again): every replica is killed
//!   with SIGKILL, none starts again and the link to the controllers is silent (no
//!   heartbeat, no report: the controller finds the node lost as it would a dead one)
//!   until the outage ends; then the agent reconnects and converges as after a reboot.
//!   The agent process and its balancer stay, so that the node can come back by itself.
//! - **Partition**: the link to the controllers is silent; the replicas keep running
//!   and restarting.
//!
//! Outages are a door (a remote kill of a whole node): only an agent started with
//! `--allow-chaos` takes them. Killing one replica is no more than `orch delete` could do
//! and is always taken.

use std::sync::Arc;
use std::time::Duration;

use orch_api::pb;
use tokio::sync::watch;
use tokio::time::Instant;

use super::context::NodeContext;

/// The longest outage an agent takes.
pub const MAX_OUTAGE: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error("node {node}: its agent was not started with --allow-chaos, so it takes no outage")]
    NotAllowed { node: String },
    #[error("node {node}: an outage is already under way ({left_ms} ms left)")]
    AlreadyOut { node: String, left_ms: u128 },
    #[error("an outage of {seconds} s: give 1 to {} s", MAX_OUTAGE.as_secs())]
    Length { seconds: u32 },
    #[error("no outage kind given")]
    NoKind,
    #[error("no fault given")]
    NoFault,
    #[error("replica {replica} is not running on node {node}")]
    NotRunning { replica: String, node: String },
    #[error("kill({pid}, SIGKILL) for replica {replica}: {errno}")]
    Kill { replica: String, pid: i32, errno: nix::errno::Errno },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutageKind {
    NodeDown,
    Partition,
}

impl OutageKind {
    fn from_pb(kind: i32) -> Result<OutageKind, ChaosError> {
        match pb::OutageKind::try_from(kind) {
            Ok(pb::OutageKind::NodeDown) => Ok(OutageKind::NodeDown),
            Ok(pb::OutageKind::Partition) => Ok(OutageKind::Partition),
            _ => Err(ChaosError::NoKind),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Current {
    kind: OutageKind,
    until: Instant,
}

/// The node's outage, if one is under way: shared by the session (silent while one
/// lasts) and every supervisor (no start while the node is down).
#[derive(Clone)]
pub struct Outage {
    state: Arc<watch::Sender<Option<Current>>>,
}

impl Default for Outage {
    fn default() -> Outage {
        Outage { state: Arc::new(watch::Sender::new(None)) }
    }
}

/// An outage's length, checked: 1 s to [`MAX_OUTAGE`].
pub fn outage_length(seconds: u32) -> Result<Duration, ChaosError> {
    let length = Duration::from_secs(u64::from(seconds));
    if seconds == 0 || length > MAX_OUTAGE {
        return Err(ChaosError::Length { seconds });
    }
    Ok(length)
}

impl Outage {
    /// Starts an outage of `kind` for `length` (one at a time); it ends by itself. Needs
    /// a tokio runtime.
    pub fn begin(&self, node: &str, kind: OutageKind, length: Duration) -> Result<(), ChaosError> {
        let now = Instant::now();
        let until = now + length;
        let mut refused = None;
        self.state.send_if_modified(|state| match state {
            Some(current) if current.until > now => {
                refused = Some(current.until - now);
                false
            }
            _ => {
                *state = Some(Current { kind, until });
                true
            }
        });
        if let Some(left) = refused {
            return Err(ChaosError::AlreadyOut { node: node.to_owned(), left_ms: left.as_millis() });
        }
        let state = Arc::clone(&self.state);
        tokio::spawn(async move {
            tokio::time::sleep_until(until).await;
            // This outage's end only (a later one may have begun since).
            state.send_if_modified(|state| {
                let ours = state.is_some_and(|current| current.until == until);
                if ours {
                    *state = None;
                }
                ours
            });
        });
        Ok(())
    }

    /// The outage under way.
    pub fn current(&self) -> Option<OutageKind> {
        self.state.borrow().filter(|current| current.until > Instant::now()).map(|current| current.kind)
    }

    /// The link to the controllers is to be silent.
    pub fn silent(&self) -> bool {
        self.current().is_some()
    }

    /// Resolves when an outage begins (at once while one is under way).
    pub async fn begun(&self) {
        let mut watching = self.state.subscribe();
        let _ = watching.wait_for(Option::is_some).await;
    }

    /// Resolves when no outage is under way.
    pub async fn over(&self) {
        let mut watching = self.state.subscribe();
        let _ = watching.wait_for(Option::is_none).await;
    }

    /// Resolves when containers may start (at once but while the node is down).
    pub async fn starts_allowed(&self) {
        let mut watching = self.state.subscribe();
        let _ = watching.wait_for(|state| !state.is_some_and(|current| current.kind == OutageKind::NodeDown)).await;
    }
}

/// SIGKILL to the init of `replica`'s container: what `kill -9` of its host PID does.
fn kill_replica(ctx: &NodeContext, replica: &str) -> Result<(), ChaosError> {
    let running = ctx.running.get(replica).ok_or_else(|| ChaosError::NotRunning { replica: replica.to_owned(), node: ctx.node.clone() })?;
    let pid = running.exec.pid;
    if pid <= 1 {
        // 0 and -1 would signal process groups, 1 the host's init: never.
        return Err(ChaosError::Kill { replica: replica.to_owned(), pid, errno: nix::errno::Errno::ESRCH });
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).map_err(|errno| ChaosError::Kill {
        replica: replica.to_owned(),
        pid,
        errno,
    })
}

/// Carries one fault out on this node; says what was done.
pub fn carry_out(ctx: &NodeContext, allows_outages: bool, request: &pb::ChaosRequest) -> Result<String, ChaosError> {
    match &request.fault {
        None => Err(ChaosError::NoFault),
        Some(pb::chaos_request::Fault::KillReplica(replica)) => {
            kill_replica(ctx, replica)?;
            Ok(format!("replica {replica} killed with SIGKILL on node {}", ctx.node))
        }
        Some(pb::chaos_request::Fault::Outage(outage)) => {
            if !allows_outages {
                return Err(ChaosError::NotAllowed { node: ctx.node.clone() });
            }
            let kind = OutageKind::from_pb(outage.kind)?;
            let length = outage_length(outage.seconds)?;
            ctx.outage.begin(&ctx.node, kind, length)?;
            let seconds = length.as_secs();
            Ok(match kind {
                OutageKind::Partition => {
                    format!("node {} partitioned for {seconds} s: its link to the controllers is silent, its replicas run on", ctx.node)
                }
                OutageKind::NodeDown => {
                    // After the outage began: no supervisor starts what dies now.
                    let running = ctx.running.all();
                    let killed = running.keys().filter(|replica| kill_replica(ctx, replica).is_ok()).count();
                    format!(
                        "node {} down for {seconds} s: {killed} of its replicas killed with SIGKILL, none starts and its link to the controllers is silent until it comes back",
                        ctx.node
                    )
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outage_lengths_are_bounded() {
        assert!(matches!(outage_length(0), Err(ChaosError::Length { seconds: 0 })));
        assert_eq!(outage_length(1).ok(), Some(Duration::from_secs(1)));
        assert_eq!(outage_length(300).ok(), Some(MAX_OUTAGE));
        assert!(matches!(outage_length(301), Err(ChaosError::Length { seconds: 301 })));
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_ends_by_itself_and_one_runs_at_a_time() {
        let outage = Outage::default();
        assert_eq!(outage.current(), None);
        outage.begin("n1", OutageKind::NodeDown, Duration::from_secs(5)).expect("begins");
        assert_eq!(outage.current(), Some(OutageKind::NodeDown));
        assert!(outage.silent());
        assert!(matches!(outage.begin("n1", OutageKind::Partition, Duration::from_secs(1)), Err(ChaosError::AlreadyOut { .. })));
        let began = Instant::now();
        tokio::join!(outage.over(), outage.starts_allowed());
        assert_eq!(began.elapsed(), Duration::from_secs(5), "over when its length has passed");
        assert_eq!(outage.current(), None);
        outage.begin("n1", OutageKind::Partition, Duration::from_secs(2)).expect("another after it");
        // A partition holds no start back.
        tokio::time::timeout(Duration::from_millis(1), outage.starts_allowed()).await.expect("starts allowed during a partition");
        tokio::time::timeout(Duration::from_millis(1), outage.begun()).await.expect("begun");
    }
}
