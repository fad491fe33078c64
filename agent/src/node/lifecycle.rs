//! A replica's life on its node, as a pure state machine: [`Lifecycle::on`] takes what
//! happened ([`Input`]) and the time, and returns what to do ([`Effect`]s) — phase and
//! readiness, restart counters, back-off, the restart policy, events. It does no IO and
//! reads no clock: the supervisor task (`replica.rs`) acts on the effects and feeds the
//! outcomes back, so every decision is tested here without root or real time.
//!
//! The supervisor decides, the task acts.

use std::time::Duration;

use orch_api::events::EventKind;
use orch_api::pb;
use tokio::time::Instant;

use super::backoff::{should_restart, Backoff};
use crate::runtime::ContainerExit;

/// What happened, as the supervisor task saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The image is resolved and the address reserved — or why not.
    Prepared(Result<(), String>),
    /// The container runs (or the adopted one was taken over) — or why it could not start.
    Started(Result<(), String>),
    /// The startup probe succeeded.
    ProbeStarted,
    /// The readiness probe's verdict changed (or was confirmed), with the last failure.
    Ready(bool, String),
    /// A liveness or startup probe failed for good.
    Unhealthy(String),
    /// The container's command ended (after a stop the supervisor asked for, too).
    Exited(ContainerExit),
    /// The replica is no longer wanted on this node.
    Stop,
    /// A back-off wait is over.
    Woke,
}

/// The longest a stopping replica waits for the balancers to leave it and for its
/// relayed connections to end.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// How long a stopping replica that was ready waits, once the controller's endpoints
/// leave it out, for the other nodes' balancers to apply them (they receive them at the
/// same time; this covers their apply under load). Kubernetes leaves this race to a
/// `preStop` sleep; orch waits by itself.
pub const ENDPOINT_PROPAGATION: Duration = Duration::from_secs(1);

/// What the task does, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Set the phase, readiness and reason in the status and publish it.
    Phase { phase: pb::ReplicaPhase, ready: bool, reason: String },
    /// Publish the status as it is (a finished replica after an agent restart).
    Publish,
    /// Report an event about this replica.
    Event { kind: EventKind, message: String },
    /// Ready again `took` after `fault` (an exit or a failed liveness probe, then
    /// restarts): report the incident (a `Recovered` event; the controller judges it
    /// against the service's target).
    Recovered { fault: String, took: Duration },
    /// Resolve the image and reserve the address, then report [`Input::Prepared`].
    Prepare,
    /// Start the container (or take over the adopted one), then report [`Input::Started`].
    Start,
    /// The container runs: record its PID and address, start the probes.
    Running { ready: bool, adopted: bool },
    /// Wait (at most `limit`) until no balancer routes new connections to the replica
    /// and the connections this node's balancer relays to it have ended, so the
    /// requests under way finish before the signal (connection draining). It left this
    /// node's table before it was told to stop; when it was `listed` (ready, so in the
    /// controller's endpoints, which every node balances), the wait covers the others:
    /// until the controller's endpoints leave it out, then [`ENDPOINT_PROPAGATION`].
    Drain { limit: Duration, listed: bool },
    /// Stop the container: its stop signal (`spec.stopSignal`, the image's, or its
    /// mode's), then SIGKILL after `grace`; report [`Input::Exited`].
    Kill { grace: Duration },
    /// Keep the crash evidence of the run that ended (exit, OOMKilled, last output).
    RecordExit { exit: ContainerExit, why: Option<String> },
    /// The restart count the status now shows.
    Restarts(u32),
    /// Remove the container (its cgroup, directory and mounts).
    RemoveContainer,
    /// Report [`Input::Woke`] after this long (a stop cuts it short).
    Wait(Duration),
    /// Free the address, remove the generated files, the log and the record.
    CleanUp,
}

/// Where the replica is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Preparing,
    Starting,
    Running {
        ready: bool,
    },
    /// Its container is being stopped for a failed probe; a restart follows.
    Restarting,
    /// Waiting out a back-off before the next start.
    BackingOff,
    /// Ended for good under its restart policy (Succeeded or Failed); waits to be removed.
    Finished,
    /// No longer wanted: its container is being stopped.
    Terminating,
    /// Everything is gone: the task ends.
    Gone,
}

/// The decisions about one replica.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    state: State,
    policy: pb::RestartPolicy,
    backoff: Backoff,
    has_readiness: bool,
    has_startup: bool,
    /// A container from the previous agent waits to be taken over.
    adopted: bool,
    /// The readiness the status had when the agent restarted (kept until a probe says otherwise).
    adopted_ready: bool,
    restarts: u32,
    /// Exits in a row (the crash back-off) and failed starts in a row (image pulls,
    /// start errors), counted apart: a replica that finally starts after its image
    /// arrived gets its first restart at once, like any other.
    exits_in_a_row: u32,
    failed_starts: u32,
    run_started: Option<Instant>,
    /// The probe-failure reason of a restart under way.
    restart_reason: Option<String>,
    /// The readiness probe failed in this run: its passing again is an event.
    readiness_failed: bool,
    /// The fault that began the outage under way (the first of a crash loop) and when:
    /// the incident reported once the replica is ready again.
    outage: Option<(Instant, String)>,
    grace: Duration,
}

impl Lifecycle {
    /// A supervisor for `record` (its template and status); `adopted` when its container
    /// from the previous agent still runs. Returns the first effects.
    pub fn new(record: &pb::Replica, adopted: bool) -> (Lifecycle, Vec<Effect>) {
        let spec = record.spec.clone().unwrap_or_default();
        let status = record.status.clone().unwrap_or_default();
        let probes = spec.probes.clone().unwrap_or_default();
        let mut lifecycle = Lifecycle {
            state: State::Preparing,
            policy: spec.restart_policy(),
            backoff: Backoff::from_spec(spec.restart_backoff.as_ref()),
            has_readiness: probes.readiness.is_some(),
            has_startup: probes.startup.is_some(),
            adopted,
            adopted_ready: status.ready,
            restarts: status.restarts,
            exits_in_a_row: 0,
            failed_starts: 0,
            run_started: None,
            restart_reason: None,
            readiness_failed: false,
            outage: None,
            grace: Duration::from_secs(u64::from(spec.termination_grace_seconds)),
        };
        let finished = matches!(status.phase(), pb::ReplicaPhase::Succeeded | pb::ReplicaPhase::Failed);
        let effects = if finished && !adopted {
            // It ended for good before an agent restart: its policy said no restart.
            lifecycle.state = State::Finished;
            vec![Effect::Publish]
        } else if adopted {
            vec![Effect::Prepare]
        } else {
            vec![phase(pb::ReplicaPhase::Starting, false, ""), Effect::Prepare]
        };
        (lifecycle, effects)
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// What to do about `input`, at `now`.
    pub fn on(&mut self, input: Input, now: Instant) -> Vec<Effect> {
        match (self.state, input) {
            (State::Gone, _) => Vec::new(),
            (_, Input::Stop) => self.stop(),
            (State::Preparing, Input::Prepared(Ok(()))) => {
                self.state = State::Starting;
                vec![Effect::Start]
            }
            (State::Preparing, Input::Prepared(Err(reason))) | (State::Starting, Input::Started(Err(reason))) => self.start_failed(reason),
            (State::Starting, Input::Started(Ok(()))) => {
                self.failed_starts = 0;
                self.run_started = Some(now);
                self.readiness_failed = false;
                let adopted = std::mem::take(&mut self.adopted);
                // Ready at once when nothing has to say so first; an adopted container
                // keeps the readiness it had until a probe says otherwise.
                let ready = if adopted { self.adopted_ready } else { !self.has_readiness && !self.has_startup };
                self.state = State::Running { ready };
                let mut effects = vec![Effect::Running { ready, adopted }];
                effects.extend(self.recovered(ready, now));
                effects
            }
            (State::Running { .. }, Input::ProbeStarted) => {
                let ready = !self.has_readiness;
                self.state = State::Running { ready };
                let mut effects = vec![phase(pb::ReplicaPhase::Running, ready, "")];
                effects.extend(self.recovered(ready, now));
                effects
            }
            (State::Running { ready }, Input::Ready(now_ready, why)) => {
                if now_ready == ready {
                    return Vec::new();
                }
                self.state = State::Running { ready: now_ready };
                let mut effects = Vec::new();
                if !now_ready {
                    self.readiness_failed = true;
                    effects.push(Effect::Event { kind: EventKind::Unhealthy, message: format!("readiness probe failed: {why}") });
                } else if std::mem::take(&mut self.readiness_failed) {
                    effects.push(Effect::Event { kind: EventKind::Ready, message: "readiness probe passing again".into() });
                }
                effects.push(phase(pb::ReplicaPhase::Running, now_ready, if now_ready { "" } else { "readiness probe failing" }));
                effects.extend(self.recovered(now_ready, now));
                effects
            }
            (State::Running { .. }, Input::Unhealthy(why)) => {
                self.state = State::Restarting;
                self.restart_reason = Some(why.clone());
                self.outage.get_or_insert_with(|| (now, why.clone()));
                vec![
                    Effect::Event { kind: EventKind::Unhealthy, message: format!("{why}; restarting the container") },
                    phase(pb::ReplicaPhase::Running, false, &why),
                    Effect::Kill { grace: self.grace },
                ]
            }
            (State::Running { .. } | State::Restarting, Input::Exited(exit)) => {
                let why = self.restart_reason.take();
                self.exited(exit, why, now)
            }
            (State::Terminating, Input::Exited(_)) => {
                self.state = State::Gone;
                vec![Effect::RemoveContainer, Effect::CleanUp]
            }
            (State::BackingOff, Input::Woke) => {
                self.state = State::Preparing;
                vec![Effect::Prepare]
            }
            // Anything else is stale (a probe verdict racing an exit, say): nothing to do.
            _ => Vec::new(),
        }
    }

    fn start_failed(&mut self, reason: String) -> Vec<Effect> {
        let delay = self.backoff.delay(self.failed_starts.max(1));
        self.failed_starts = self.failed_starts.saturating_add(1);
        self.state = State::BackingOff;
        vec![
            Effect::Event { kind: EventKind::Failed, message: format!("{reason}; retrying in {} ms", delay.as_millis()) },
            phase(pb::ReplicaPhase::Starting, false, &reason),
            Effect::Wait(delay),
        ]
    }

    fn exited(&mut self, exit: ContainerExit, why: Option<String>, now: Instant) -> Vec<Effect> {
        let mut effects = vec![Effect::RecordExit { exit, why: why.clone() }, Effect::RemoveContainer];
        if !should_restart(self.policy, exit.code, why.is_some()) {
            self.state = State::Finished;
            let finished = if exit.code == 0 { pb::ReplicaPhase::Succeeded } else { pb::ReplicaPhase::Failed };
            effects.push(phase(finished, false, &format!("exited with code {} (restart policy {})", exit.code, self.policy.as_str_name())));
            return effects;
        }
        let ran = self.run_started.map_or(Duration::ZERO, |started| now.saturating_duration_since(started));
        self.exits_in_a_row = self.backoff.after_run(self.exits_in_a_row, ran);
        let delay = self.backoff.delay(self.exits_in_a_row);
        self.exits_in_a_row = self.exits_in_a_row.saturating_add(1);
        self.restarts = self.restarts.saturating_add(1);
        let cause = why.unwrap_or_else(|| describe_exit(&exit));
        self.outage.get_or_insert_with(|| (now, cause.clone()));
        let reason = if delay.is_zero() { String::new() } else { format!("CrashLoopBackOff: restarting in {} ms", delay.as_millis()) };
        self.state = State::BackingOff;
        effects.extend([
            Effect::Restarts(self.restarts),
            Effect::Event { kind: EventKind::Restarted, message: format!("{cause}; restart {} after a back-off of {} ms", self.restarts, delay.as_millis()) },
            phase(pb::ReplicaPhase::Starting, false, &reason),
            Effect::Wait(delay),
        ]);
        effects
    }

    /// The incident of the outage under way, now that the replica is `ready` again.
    fn recovered(&mut self, ready: bool, now: Instant) -> Option<Effect> {
        if !ready {
            return None;
        }
        let (since, fault) = self.outage.take()?;
        Some(Effect::Recovered { fault, took: now.saturating_duration_since(since) })
    }

    fn stop(&mut self) -> Vec<Effect> {
        self.outage = None;
        match self.state {
            State::Running { .. } | State::Restarting => {
                let listed = matches!(self.state, State::Running { ready: true });
                self.state = State::Terminating;
                vec![
                    phase(pb::ReplicaPhase::Terminating, false, ""),
                    Effect::Drain { limit: self.grace.min(DRAIN_LIMIT), listed },
                    Effect::Kill { grace: self.grace },
                ]
            }
            State::Terminating | State::Gone => Vec::new(),
            // Not running (or an adopted container not yet taken over, which the task
            // removes with the rest).
            State::Preparing | State::Starting | State::BackingOff | State::Finished => {
                self.state = State::Gone;
                vec![Effect::CleanUp]
            }
        }
    }
}

fn phase(phase: pb::ReplicaPhase, ready: bool, reason: &str) -> Effect {
    Effect::Phase { phase, ready, reason: reason.to_owned() }
}

/// An exit in words: `exited with code 3`, `killed by SIGKILL (exit code 137)`,
/// `OOMKilled (exit code 137)`.
pub fn describe_exit(exit: &ContainerExit) -> String {
    match (exit.signal, exit.oom_killed) {
        (_, true) => format!("OOMKilled (exit code {})", exit.code),
        (Some(signal), _) => {
            format!("killed by {} (exit code {})", orch_api::signal::name(signal), exit.code)
        }
        (None, _) => format!("exited with code {}", exit.code),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(policy: pb::RestartPolicy, probes: Option<pb::Probes>) -> pb::Replica {
        pb::Replica {
            id: "web-1".into(),
            spec: Some(pb::ServiceSpec {
                restart_policy: policy.into(),
                probes,
                restart_backoff: Some(pb::RestartBackoff { initial_millis: 100, max_seconds: 1, reset_after_seconds: 10 }),
                termination_grace_seconds: 5,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn exit(code: i32) -> ContainerExit {
        ContainerExit { code, signal: None, oom_killed: false, finished_unix_ms: 0 }
    }

    fn phases(effects: &[Effect]) -> Vec<(pb::ReplicaPhase, bool)> {
        effects.iter().filter_map(|e| if let Effect::Phase { phase, ready, .. } = e { Some((*phase, *ready)) } else { None }).collect()
    }

    fn waits(effects: &[Effect]) -> Vec<u128> {
        effects.iter().filter_map(|e| if let Effect::Wait(d) = e { Some(d.as_millis()) } else { None }).collect()
    }

    /// Starts a fresh replica up to Running.
    fn running(record: &pb::Replica, now: Instant) -> Lifecycle {
        let (mut lifecycle, first) = Lifecycle::new(record, false);
        assert_eq!(first, [phase(pb::ReplicaPhase::Starting, false, ""), Effect::Prepare]);
        assert_eq!(lifecycle.on(Input::Prepared(Ok(())), now), [Effect::Start]);
        lifecycle.on(Input::Started(Ok(())), now);
        lifecycle
    }

    #[test]
    fn a_crash_loop_backs_off_doubling_and_a_long_run_starts_over() {
        let record = record(pb::RestartPolicy::Always, None);
        let start = Instant::now();
        let mut lifecycle = running(&record, start);
        let mut now = start;
        let mut delays = Vec::new();
        for _ in 0..6 {
            now += Duration::from_millis(10);
            let effects = lifecycle.on(Input::Exited(exit(1)), now);
            assert!(effects.iter().any(|e| matches!(e, Effect::Restarts(_))) && effects.contains(&Effect::RemoveContainer), "{effects:?}");
            delays.extend(waits(&effects));
            assert_eq!(lifecycle.on(Input::Woke, now), [Effect::Prepare]);
            lifecycle.on(Input::Prepared(Ok(())), now);
            lifecycle.on(Input::Started(Ok(())), now);
        }
        assert_eq!(delays, [0, 100, 200, 400, 800, 1000], "the first restart at once, then doubling to the cap");
        assert_eq!(lifecycle.restarts(), 6);
        // A run longer than resetAfter starts the back-off over.
        now += Duration::from_secs(11);
        assert_eq!(waits(&lifecycle.on(Input::Exited(exit(1)), now)), [0]);
        let effects = {
            lifecycle.on(Input::Woke, now);
            lifecycle.on(Input::Prepared(Ok(())), now);
            lifecycle.on(Input::Started(Ok(())), now);
            lifecycle.on(Input::Exited(exit(1)), now + Duration::from_millis(5))
        };
        assert_eq!(waits(&effects), [100]);
        let reason = effects.iter().find_map(|e| if let Effect::Phase { reason, .. } = e { Some(reason.clone()) } else { None });
        assert_eq!(reason.as_deref(), Some("CrashLoopBackOff: restarting in 100 ms"));
    }

    #[test]
    fn the_restart_policy_decides_after_an_exit() {
        let now = Instant::now();
        let cases = [
            (pb::RestartPolicy::Always, 0, Some(State::BackingOff)),
            (pb::RestartPolicy::OnFailure, 0, Some(State::Finished)),
            (pb::RestartPolicy::OnFailure, 2, Some(State::BackingOff)),
            (pb::RestartPolicy::Never, 2, Some(State::Finished)),
        ];
        for (policy, code, state) in cases {
            let mut lifecycle = running(&record(policy, None), now);
            let effects = lifecycle.on(Input::Exited(exit(code)), now);
            assert_eq!(Some(lifecycle.state()), state, "{policy:?} exit {code}");
            if lifecycle.state() == State::Finished {
                let finished = if code == 0 { pb::ReplicaPhase::Succeeded } else { pb::ReplicaPhase::Failed };
                assert_eq!(phases(&effects), [(finished, false)]);
                assert_eq!(lifecycle.on(Input::Stop, now), [Effect::CleanUp], "a finished replica is removed when unwanted");
                assert_eq!(lifecycle.state(), State::Gone);
            }
        }
    }

    #[test]
    fn readiness_flips_with_the_probe_and_says_why() {
        let probes = pb::Probes { readiness: Some(pb::Probe::default()), ..Default::default() };
        let now = Instant::now();
        let (mut lifecycle, _) = Lifecycle::new(&record(pb::RestartPolicy::Always, Some(probes)), false);
        lifecycle.on(Input::Prepared(Ok(())), now);
        assert_eq!(lifecycle.on(Input::Started(Ok(())), now), [Effect::Running { ready: false, adopted: false }], "not ready until the probe says so");
        assert_eq!(phases(&lifecycle.on(Input::Ready(true, String::new()), now)), [(pb::ReplicaPhase::Running, true)]);
        assert_eq!(lifecycle.on(Input::Ready(true, String::new()), now), [], "no change, nothing published");
        let down = lifecycle.on(Input::Ready(false, "connection refused".into()), now);
        assert_eq!(down[0], Effect::Event { kind: EventKind::Unhealthy, message: "readiness probe failed: connection refused".into() });
        assert_eq!(down[1], phase(pb::ReplicaPhase::Running, false, "readiness probe failing"));
        assert_eq!(lifecycle.state(), State::Running { ready: false });
    }

    #[test]
    fn a_failed_liveness_probe_restarts_the_container_and_says_why() {
        let now = Instant::now();
        let mut lifecycle = running(&record(pb::RestartPolicy::Never, None), now);
        let effects = lifecycle.on(Input::Unhealthy("liveness probe failed: HTTP 500".into()), now);
        assert_eq!(effects.last(), Some(&Effect::Kill { grace: Duration::from_secs(5) }));
        let effects = lifecycle.on(Input::Exited(exit(143)), now);
        assert_eq!(effects[0], Effect::RecordExit { exit: exit(143), why: Some("liveness probe failed: HTTP 500".into()) });
        assert_eq!(lifecycle.state(), State::Finished, "Never never restarts");
        let mut lifecycle = running(&record(pb::RestartPolicy::OnFailure, None), now);
        lifecycle.on(Input::Unhealthy("startup probe failed: timeout".into()), now);
        let effects = lifecycle.on(Input::Exited(exit(0)), now);
        assert_eq!(lifecycle.state(), State::BackingOff, "a probe kill counts as a failure under OnFailure");
        assert!(effects
            .iter()
            .any(|e| matches!(e, Effect::Event { kind: EventKind::Restarted, message } if message.starts_with("startup probe failed: timeout; restart 1"))));
    }

    fn recovered(effects: &[Effect]) -> Vec<(String, u128)> {
        effects.iter().filter_map(|e| if let Effect::Recovered { fault, took } = e { Some((fault.clone(), took.as_millis())) } else { None }).collect()
    }

    #[test]
    fn an_outage_is_reported_once_ready_again_from_its_first_fault() {
        let t0 = Instant::now();
        let at = |millis: u64| t0 + Duration::from_millis(millis);
        let readiness = pb::Probes { readiness: Some(pb::Probe::default()), ..Default::default() };
        let mut lifecycle = running(&record(pb::RestartPolicy::Always, Some(readiness)), t0);
        assert!(recovered(&lifecycle.on(Input::Ready(true, String::new()), at(5))).is_empty(), "a first start is no recovery");
        // A crash loop: two exits, a failed start, then up and ready.
        let killed = ContainerExit { code: 137, signal: Some(9), oom_killed: false, finished_unix_ms: 0 };
        lifecycle.on(Input::Exited(killed), at(100));
        lifecycle.on(Input::Woke, at(100));
        lifecycle.on(Input::Prepared(Ok(())), at(100));
        lifecycle.on(Input::Started(Ok(())), at(110));
        lifecycle.on(Input::Exited(exit(1)), at(120));
        lifecycle.on(Input::Woke, at(220));
        lifecycle.on(Input::Prepared(Err("no such image".into())), at(220));
        lifecycle.on(Input::Woke, at(320));
        lifecycle.on(Input::Prepared(Ok(())), at(320));
        assert!(recovered(&lifecycle.on(Input::Started(Ok(())), at(330))).is_empty(), "running but not ready yet");
        assert_eq!(recovered(&lifecycle.on(Input::Ready(true, String::new()), at(400))), [("killed by SIGKILL (exit code 137)".to_owned(), 300)]);
        // A readiness flip alone is no restart (but an event each way); a failed
        // liveness probe is.
        lifecycle.on(Input::Ready(false, "refused".into()), at(500));
        let back = lifecycle.on(Input::Ready(true, String::new()), at(600));
        assert!(recovered(&back).is_empty());
        assert!(back.contains(&Effect::Event { kind: EventKind::Ready, message: "readiness probe passing again".into() }), "{back:?}");
        lifecycle.on(Input::Unhealthy("liveness probe failed: HTTP 500".into()), at(700));
        lifecycle.on(Input::Exited(exit(143)), at(750));
        lifecycle.on(Input::Woke, at(750));
        lifecycle.on(Input::Prepared(Ok(())), at(750));
        lifecycle.on(Input::Started(Ok(())), at(760));
        assert_eq!(recovered(&lifecycle.on(Input::Ready(true, String::new()), at(790))), [("liveness probe failed: HTTP 500".to_owned(), 90)]);
        // Without a readiness probe, ready (and recovered) as soon as it runs.
        let mut plain = running(&record(pb::RestartPolicy::Always, None), t0);
        plain.on(Input::Exited(exit(2)), at(10));
        plain.on(Input::Woke, at(10));
        plain.on(Input::Prepared(Ok(())), at(10));
        assert_eq!(recovered(&plain.on(Input::Started(Ok(())), at(25))), [("exited with code 2".to_owned(), 15)]);
        // A stop ends an outage unreported; a finished replica has none.
        plain.on(Input::Exited(exit(2)), at(30));
        plain.on(Input::Stop, at(31));
        assert!(plain.outage.is_none());
        let mut never = running(&record(pb::RestartPolicy::Never, None), t0);
        never.on(Input::Exited(exit(1)), at(5));
        assert!(never.outage.is_none());
    }

    #[test]
    fn failed_starts_retry_with_their_own_back_off() {
        let now = Instant::now();
        let (mut lifecycle, _) = Lifecycle::new(&record(pb::RestartPolicy::Always, None), false);
        let mut delays = Vec::new();
        for _ in 0..3 {
            let effects = lifecycle.on(Input::Prepared(Err("ImagePullBackOff: no such image".into())), now);
            assert!(
                matches!(&effects[0], Effect::Event { kind: EventKind::Failed, message } if message.starts_with("ImagePullBackOff: no such image; retrying in"))
            );
            delays.extend(waits(&effects));
            lifecycle.on(Input::Woke, now);
        }
        assert_eq!(delays, [100, 100, 200], "the initial delay twice (the first retry counts as the first restart), then doubling");
        lifecycle.on(Input::Prepared(Ok(())), now);
        lifecycle.on(Input::Started(Ok(())), now);
        assert_eq!(waits(&lifecycle.on(Input::Exited(exit(1)), now)), [0], "the first restart after a successful start is immediate");
        assert_eq!(lifecycle.restarts(), 1, "failed starts are not restarts");
    }

    #[test]
    fn an_adopted_container_keeps_its_readiness_and_counts() {
        let now = Instant::now();
        let mut adopted = record(pb::RestartPolicy::Always, Some(pb::Probes { readiness: Some(pb::Probe::default()), ..Default::default() }));
        adopted.status = Some(pb::ReplicaStatus { phase: pb::ReplicaPhase::Running.into(), ready: true, restarts: 4, ..Default::default() });
        let (mut lifecycle, first) = Lifecycle::new(&adopted, true);
        assert_eq!(first, [Effect::Prepare], "no Starting phase for a container that runs");
        lifecycle.on(Input::Prepared(Ok(())), now);
        assert_eq!(lifecycle.on(Input::Started(Ok(())), now), [Effect::Running { ready: true, adopted: true }]);
        lifecycle.on(Input::Exited(exit(1)), now);
        assert_eq!(lifecycle.restarts(), 5, "the count goes on from the record");
        lifecycle.on(Input::Woke, now);
        lifecycle.on(Input::Prepared(Ok(())), now);
        assert_eq!(lifecycle.on(Input::Started(Ok(())), now), [Effect::Running { ready: false, adopted: false }], "the next run is a fresh start");

        // A replica that had finished stays finished; no container is started.
        let mut finished = record(pb::RestartPolicy::Never, None);
        finished.status = Some(pb::ReplicaStatus { phase: pb::ReplicaPhase::Succeeded.into(), ..Default::default() });
        let (lifecycle, first) = Lifecycle::new(&finished, false);
        assert_eq!((lifecycle.state(), first), (State::Finished, vec![Effect::Publish]));
    }

    #[test]
    fn a_stop_ends_the_replica_wherever_it_is() {
        let now = Instant::now();
        let mut lifecycle = running(&record(pb::RestartPolicy::Always, None), now);
        let effects = lifecycle.on(Input::Stop, now);
        assert_eq!(
            effects,
            [
                phase(pb::ReplicaPhase::Terminating, false, ""),
                Effect::Drain { limit: Duration::from_secs(5), listed: true },
                Effect::Kill { grace: Duration::from_secs(5) }
            ]
        );
        assert_eq!(lifecycle.on(Input::Ready(true, String::new()), now), [], "a late probe verdict changes nothing");
        let not_ready = pb::Probes { readiness: Some(pb::Probe::default()), ..Default::default() };
        let stopped_unready = running(&record(pb::RestartPolicy::Always, Some(not_ready)), now).on(Input::Stop, now);
        assert_eq!(stopped_unready[1], Effect::Drain { limit: Duration::from_secs(5), listed: false }, "never ready, so in no balancer: no wait for them");
        assert_eq!(lifecycle.on(Input::Exited(exit(143)), now), [Effect::RemoveContainer, Effect::CleanUp], "no restart, no evidence");
        assert_eq!(lifecycle.state(), State::Gone);
        for state_before in ["preparing", "backing off"] {
            let (mut lifecycle, _) = Lifecycle::new(&record(pb::RestartPolicy::Always, None), false);
            if state_before == "backing off" {
                lifecycle.on(Input::Prepared(Err("no image".into())), now);
            }
            assert_eq!(lifecycle.on(Input::Stop, now), [Effect::CleanUp], "{state_before}");
        }
    }

    #[test]
    fn exits_in_words() {
        assert_eq!(describe_exit(&exit(3)), "exited with code 3");
        assert_eq!(describe_exit(&ContainerExit { code: 137, signal: Some(9), oom_killed: false, finished_unix_ms: 0 }), "killed by SIGKILL (exit code 137)");
        assert_eq!(describe_exit(&ContainerExit { code: 137, signal: Some(9), oom_killed: true, finished_unix_ms: 0 }), "OOMKilled (exit code 137)");
    }
}
