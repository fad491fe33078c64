//! Restart decisions, pure: whether a replica's exit calls for a restart under its
//! policy, and how long to wait — the first restart immediate, then the initial delay
//! doubling up to the cap, starting over after a run at least `reset_after` long.

use std::time::Duration;

use orch_api::pb;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub reset_after: Duration,
}

impl Backoff {
    /// The service's settings; zeros (an old record) get the manifest defaults.
    pub fn from_spec(spec: Option<&pb::RestartBackoff>) -> Backoff {
        let spec = spec.copied().unwrap_or_default();
        let or = |value: u32, default: i64| if value == 0 { u64::try_from(default).unwrap_or(1) } else { u64::from(value) };
        use orch_api::manifest::{DEFAULT_BACKOFF_INITIAL_MILLIS, DEFAULT_BACKOFF_MAX_SECONDS, DEFAULT_BACKOFF_RESET_SECONDS};
        Backoff {
            initial: Duration::from_millis(or(spec.initial_millis, DEFAULT_BACKOFF_INITIAL_MILLIS)),
            max: Duration::from_secs(or(spec.max_seconds, DEFAULT_BACKOFF_MAX_SECONDS)),
            reset_after: Duration::from_secs(or(spec.reset_after_seconds, DEFAULT_BACKOFF_RESET_SECONDS)),
        }
    }

    /// The wait before a restart, given the restarts in a row before it (0: the first).
    pub fn delay(&self, in_a_row: u32) -> Duration {
        if in_a_row == 0 {
            return Duration::ZERO;
        }
        let doublings = (in_a_row - 1).min(30);
        self.initial.saturating_mul(1u32 << doublings).min(self.max)
    }

    /// The restarts in a row after a run that lasted `ran`: a clean run starts over.
    pub fn after_run(&self, in_a_row: u32, ran: Duration) -> u32 {
        if ran >= self.reset_after {
            0
        } else {
            in_a_row
        }
    }
}

/// Kubernetes' rules: Always restarts whatever the exit, OnFailure only a non-zero
/// exit (or a kill), Never never.
pub fn should_restart(policy: pb::RestartPolicy, exit_code: i32, killed_by_agent: bool) -> bool {
    match policy {
        pb::RestartPolicy::Always => true,
        pb::RestartPolicy::OnFailure => exit_code != 0 || killed_by_agent,
        pb::RestartPolicy::Never => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff() -> Backoff {
        Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(1), reset_after: Duration::from_secs(10) }
    }

    #[test]
    fn delays_start_immediate_then_double_up_to_the_cap() {
        let delays: Vec<u128> = (0..8).map(|n| backoff().delay(n).as_millis()).collect();
        assert_eq!(delays, [0, 100, 200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(backoff().delay(u32::MAX), Duration::from_secs(1), "no overflow");
    }

    #[test]
    fn a_clean_run_starts_over() {
        let b = backoff();
        assert_eq!(b.after_run(5, Duration::from_secs(3)), 5);
        assert_eq!(b.after_run(5, Duration::from_secs(10)), 0);
    }

    #[test]
    fn policies() {
        use pb::RestartPolicy::*;
        let table = [
            (Always, 0, false, true),
            (Always, 1, false, true),
            (OnFailure, 0, false, false),
            (OnFailure, 3, false, true),
            (OnFailure, 0, true, true),
            (Never, 1, false, false),
            (Never, 0, true, false),
        ];
        for (policy, code, killed, expected) in table {
            assert_eq!(should_restart(policy, code, killed), expected, "{policy:?} exit {code} killed {killed}");
        }
    }

    #[test]
    fn defaults_fill_zeros() {
        let b = Backoff::from_spec(None);
        assert_eq!((b.initial, b.max, b.reset_after), (Duration::from_millis(250), Duration::from_secs(30), Duration::from_secs(30)));
    }
}
