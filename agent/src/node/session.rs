//! One session with the controller: registration again (the controller may be new),
//! then a stream each way — heartbeats every `--heartbeat-ms` and a status report
//! whenever the board changes (and every 10 s, in case one was lost) go up; desired sets
//! come down, one at a time, to whoever asks for the next.

use std::time::Duration;

use orch_api::pb;
use tokio::sync::mpsc;
use tokio::time::Interval;

use super::board::StatusBoard;
use super::config::{AgentConfig, LinkError};
use super::registration::register_any;

pub struct Session {
    node: String,
    /// The controller's address.
    controller: String,
    /// Learns from each desired set which controllers run.
    controllers: super::controllers::Controllers,
    upward: mpsc::Sender<pb::AgentMessage>,
    downward: tonic::Streaming<pb::ControllerMessage>,
    /// Sends the heartbeats: a task of its own, so beats go up on time while the agent
    /// works on a desired set (the controller judges a node silent within about a second).
    _beats: Beats,
    refresh: Interval,
    /// Makes the controller's deltas whole sets again.
    shared: orch_api::deltas::KnownShared,
    /// An outage (`orch chaos`) silences the session, then ends it.
    outage: super::chaos::Outage,
}

struct Beats(tokio::task::JoinHandle<()>);

impl Drop for Beats {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the node reports: every replica's status and the events since the last report.
fn report(node: &str, board: &StatusBoard, generation: u64) -> pb::AgentMessage {
    pb::AgentMessage {
        node: node.to_owned(),
        body: Some(pb::agent_message::Body::Status(pb::StatusReport {
            observed_generation: generation,
            replicas: board.snapshot(),
            events: board.take_events(node),
            conditions: board.conditions(),
        })),
        ..Default::default()
    }
}

impl Session {
    /// Registers and opens the session, with a heartbeat and a full report first.
    pub async fn open(config: &AgentConfig, board: &StatusBoard, generation: u64, outage: &super::chaos::Outage) -> Result<Session, LinkError> {
        let (controller, mut client, _) = register_any(config).await?;
        let failed = |error: LinkError| {
            // Registered, but no session: the next attempt tries another first.
            config.controllers.with(|set| set.failed(&controller));
            error
        };
        let (upward, outgoing) = mpsc::channel::<pb::AgentMessage>(16);
        let heartbeat =
            pb::AgentMessage { node: config.name.clone(), body: Some(pb::agent_message::Body::Heartbeat(pb::Heartbeat { unix_ms: 0 })), ..Default::default() };
        // The first message says the agent takes deltas (each set made whole here).
        let hello = pb::AgentMessage { takes_deltas: true, takes_route_deltas: true, takes_endpoint_deltas: true, takes_parts: true, ..heartbeat.clone() };
        upward.send(hello).await.map_err(|_| failed(LinkError::UpwardClosed))?;
        upward.send(report(&config.name, board, generation)).await.map_err(|_| failed(LinkError::UpwardClosed))?;
        let downward = client
            .session(tokio_stream::wrappers::ReceiverStream::new(outgoing))
            .await
            .map_err(|status| failed(LinkError::Call { controller: controller.clone(), call: "session", status }))?
            .into_inner();
        tracing::info!(%controller, "session open");
        let beats = Beats(tokio::spawn({
            let (upward, mut beats, outage) = (upward.clone(), tokio::time::interval(config.heartbeat), outage.clone());
            async move {
                beats.tick().await; // the first went with the session
                loop {
                    beats.tick().await;
                    if outage.silent() {
                        continue;
                    }
                    if upward.send(heartbeat.clone()).await.is_err() {
                        return;
                    }
                }
            }
        }));
        Ok(Session {
            node: config.name.clone(),
            controller,
            controllers: config.controllers.clone(),
            upward,
            downward,
            _beats: beats,
            refresh: tokio::time::interval(Duration::from_secs(10)),
            shared: orch_api::deltas::KnownShared::default(),
            outage: outage.clone(),
        })
    }

    /// The address of the controller this session is with.
    pub fn controller(&self) -> &str {
        &self.controller
    }

    /// Keeps the session going (heartbeats, reports of `board` at `generation`) until
    /// the controller sends the next desired set, returned whole (with every service's
    /// endpoints); an error when the session ends.
    pub async fn next_desired(&mut self, board: &StatusBoard, generation: u64) -> Result<pb::DesiredSet, LinkError> {
        loop {
            tokio::select! {
                // Silent (no report, nothing read) until the outage ends, then a new session.
                () = self.outage.begun() => {
                    self.outage.over().await;
                    return Err(LinkError::Silenced);
                }
                _ = self.refresh.tick() => self.upward.send(report(&self.node, board, generation)).await.map_err(|_| LinkError::UpwardClosed)?,
                () = board.changed() => {
                    // Let a burst of changes settle into one report.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    self.upward.send(report(&self.node, board, generation)).await.map_err(|_| LinkError::UpwardClosed)?;
                }
                message = self.downward.message() => {
                    let message = message.map_err(|status| LinkError::Call { controller: self.controller.clone(), call: "session", status })?.ok_or(LinkError::Ended)?;
                    if let Some(pb::controller_message::Body::Desired(mut set)) = message.body {
                        // A part of a set (`continued`) is taken in and acted on with the last.
                        let part = set.continued;
                        let taken = if part { self.shared.learn(&mut set) } else { self.shared.take(&mut set) };
                        taken.map_err(|error| LinkError::OutOfStep { controller: self.controller.clone(), error })?;
                        if part {
                            continue;
                        }
                        self.controllers.with(|known| known.learn(&set.controllers));
                        return Ok(set);
                    }
                }
            }
        }
    }
}
