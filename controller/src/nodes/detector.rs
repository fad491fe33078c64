//! Is a node's agent silent, or just slow? A φ-accrual failure detector (Hayashibara et
//! al.; Akka's and Cassandra's) over the heartbeats of one session: it learns the
//! mean and spread of the intervals between beats and says how unlikely the silence
//! so far is — a loaded machine whose beats come late and irregular widens the spread,
//! and so its own tolerance, while a machine that stops dead is judged within about a
//! second on the default 250 ms beat. Pure: time is passed in.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How the detector judges.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectorConfig {
    /// φ above which the node is silent (8: the odds that a live node's next beat is
    /// this late are below 1 in 10⁸ under the learned distribution).
    pub threshold: f64,
    /// The spread is taken as at least this (beats on an idle machine are too regular to
    /// learn it from).
    pub min_std_deviation: Duration,
    /// Silence accepted on top of the learned distribution (a GC-like pause, a burst of
    /// work on a busy machine).
    pub acceptable_pause: Duration,
    /// Intervals remembered.
    pub window: usize,
    /// Intervals needed before any verdict (until then the node lease is the only
    /// judge).
    pub min_samples: usize,
}

impl Default for DetectorConfig {
    /// On 250 ms beats: a node that stops is judged after about 1 s.
    fn default() -> DetectorConfig {
        DetectorConfig {
            threshold: 8.0,
            min_std_deviation: Duration::from_millis(100),
            acceptable_pause: Duration::from_millis(200),
            window: 100,
            min_samples: 3,
        }
    }
}

/// One node's heartbeat history.
#[derive(Debug, Clone)]
pub struct Detector {
    config: DetectorConfig,
    intervals: VecDeque<f64>,
    last: Option<Instant>,
}

impl Detector {
    pub fn new(config: DetectorConfig) -> Detector {
        Detector { config, intervals: VecDeque::new(), last: None }
    }

    /// A heartbeat arrived at `now`.
    pub fn beat(&mut self, now: Instant) {
        if let Some(last) = self.last {
            if self.intervals.len() == self.config.window {
                self.intervals.pop_front();
            }
            self.intervals.push_back(now.saturating_duration_since(last).as_secs_f64());
        }
        self.last = Some(now);
    }

    /// The judge itself was not running for a while (its machine paused it): the
    /// silence it would see is its own, so the node's clock starts again at `now`.
    pub fn judge_resumed(&mut self, now: Instant) {
        if self.last.is_some() {
            self.last = Some(now);
        }
    }

    /// How long since the last beat.
    pub fn silence(&self, now: Instant) -> Duration {
        self.last.map_or(Duration::ZERO, |last| now.saturating_duration_since(last))
    }

    /// φ at `now`; none until enough intervals are known.
    pub fn phi(&self, now: Instant) -> Option<f64> {
        let last = self.last?;
        if self.intervals.len() < self.config.min_samples {
            return None;
        }
        let n = self.intervals.len() as f64;
        let mean = self.intervals.iter().sum::<f64>() / n;
        let variance = self.intervals.iter().map(|i| (i - mean).powi(2)).sum::<f64>() / n;
        let std = variance.sqrt().max(self.config.min_std_deviation.as_secs_f64());
        let elapsed = now.saturating_duration_since(last).as_secs_f64();
        Some(phi(elapsed, mean + self.config.acceptable_pause.as_secs_f64(), std))
    }

    /// Whether the node is silent at `now`: φ over the threshold.
    pub fn silent(&self, now: Instant) -> bool {
        self.phi(now).is_some_and(|phi| phi > self.config.threshold)
    }
}

/// φ of a silence of `elapsed` seconds when intervals are normal(`mean`, `std`): −log10 of
/// the probability that a beat comes even later, with the logistic approximation of the
/// normal tail Akka uses (no erf needed, monotonic, no infinity before the far tail).
fn phi(elapsed: f64, mean: f64, std: f64) -> f64 {
    let y = (elapsed - mean) / std;
    let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
    let later = if elapsed > mean { e / (1.0 + e) } else { 1.0 - 1.0 / (1.0 + e) };
    -later.max(f64::MIN_POSITIVE).log10()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A detector fed beats at `intervals` (ms) from `start`; returns it and the last beat.
    fn fed(intervals: &[u64], start: Instant) -> (Detector, Instant) {
        let mut detector = Detector::new(DetectorConfig::default());
        let mut at = start;
        detector.beat(at);
        for interval in intervals {
            at += ms(*interval);
            detector.beat(at);
        }
        (detector, at)
    }

    #[test]
    fn no_verdict_before_enough_beats() {
        let start = Instant::now();
        let (detector, last) = fed(&[250], start);
        assert_eq!(detector.phi(last + ms(60_000)), None);
        assert!(!detector.silent(last + ms(60_000)));
        assert!(!Detector::new(DetectorConfig::default()).silent(start));
    }

    #[test]
    fn a_node_that_stops_on_regular_beats_is_silent_after_about_a_second() {
        let start = Instant::now();
        let (detector, last) = fed(&[250; 40], start);
        // (silence ms, silent?)
        let table = [(0, false), (250, false), (500, false), (800, false), (900, false), (1000, true), (1500, true), (5000, true)];
        for (silence, silent) in table {
            assert_eq!(detector.silent(last + ms(silence)), silent, "after {silence} ms: phi {:?}", detector.phi(last + ms(silence)));
        }
    }

    #[test]
    fn a_busy_node_with_late_irregular_beats_gets_more_tolerance() {
        let start = Instant::now();
        // Beats every 250 ms, some 600 ms or 900 ms late: what a saturated machine does.
        let busy: Vec<u64> = (0..60)
            .map(|i| match i % 6 {
                0 => 850,
                3 => 1150,
                _ => 250,
            })
            .collect();
        let (detector, last) = fed(&busy, start);
        assert!(!detector.silent(last + ms(1150)), "a gap it has seen before is no verdict: phi {:?}", detector.phi(last + ms(1150)));
        assert!(!detector.silent(last + ms(1500)));
        assert!(detector.silent(last + ms(4000)), "but a long silence still is: phi {:?}", detector.phi(last + ms(4000)));
        let (regular, last_regular) = fed(&[250; 60], start);
        assert!(regular.silent(last_regular + ms(1500)), "the same silence on a quiet node is a verdict");
    }

    #[test]
    fn phi_grows_with_the_silence() {
        let start = Instant::now();
        let (detector, last) = fed(&[250; 20], start);
        let phis: Vec<f64> = [0, 200, 400, 600, 800, 1000, 2000].iter().map(|s| detector.phi(last + ms(*s)).expect("phi")).collect();
        assert!(phis.windows(2).all(|w| w[0] <= w[1]), "{phis:?}");
        assert!(phis[6].is_finite());
    }

    #[test]
    fn a_paused_judge_does_not_blame_the_node_for_its_own_pause() {
        let start = Instant::now();
        let (mut detector, last) = fed(&[250; 20], start);
        let woke = last + ms(3000);
        assert!(detector.silent(woke), "seen naively, the node looks silent");
        detector.judge_resumed(woke);
        assert!(!detector.silent(woke + ms(500)));
        assert_eq!(detector.silence(woke + ms(500)), ms(500));
    }
}
