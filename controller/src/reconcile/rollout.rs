//! How many replicas of one service to create and which to delete, given what exists:
//! scaling, and rolling updates by spec hash bounded by maxSurge / maxUnavailable and
//! gated on readiness (the Deployment controller's arithmetic). Pure.

use orch_api::pb;

/// Resolves a rolling update's bounds against a replica count, as Kubernetes does:
/// surge rounds up, unavailability rounds down, and if both come out 0 one replica may
/// be unavailable so that the update progresses. Returns `(max_surge, max_unavailable)`.
pub fn resolve_update(update: &pb::UpdateStrategy, replicas: u32) -> (u32, u32) {
    let resolve = |v: Option<&pb::IntOrPercent>, round_up: bool| -> u32 {
        let v = v.copied().unwrap_or(pb::IntOrPercent { value: orch_api::manifest::DEFAULT_UPDATE_PERCENT, percent: true });
        if !v.percent {
            return v.value;
        }
        let scaled = u64::from(v.value) * u64::from(replicas);
        let result = if round_up { scaled.div_ceil(100) } else { scaled / 100 };
        u32::try_from(result).unwrap_or(u32::MAX)
    };
    let surge = resolve(update.max_surge.as_ref(), true);
    let unavailable = resolve(update.max_unavailable.as_ref(), false);
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

/// What the decision needs to know about one existing replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Runs the service's current template (spec hash).
    pub current: bool,
    pub bound: bool,
    pub ready: bool,
    /// Replicas of the same service on its node (scale-down takes from crowded nodes).
    pub crowd: u32,
    pub id: String,
    /// Its slot, for a service whose slots own data (local volumes): those go highest
    /// slot first, as a StatefulSet's ordinals, so the slots in use stay `0..replicas`
    /// and a duplicate goes. `None` for the others.
    pub ordinal: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// New replicas (current template) to create.
    pub create: u32,
    /// Indexes into the members to delete.
    pub delete: Vec<usize>,
}

/// Deletion preference: the highest slot of a service whose slots own data, then
/// unbound first, then not ready, then the most crowded node, then the newest-looking
/// id (highest) — so repeated runs choose the same victims.
fn victims(members: &[Member], mut candidates: Vec<usize>, count: usize) -> Vec<usize> {
    candidates.sort_by(|&a, &b| {
        let (a, b) = (&members[a], &members[b]);
        let key = |m: &Member| (std::cmp::Reverse(m.ordinal), m.bound, m.ready, std::cmp::Reverse(m.crowd), std::cmp::Reverse(m.id.clone()));
        key(a).cmp(&key(b))
    });
    candidates.truncate(count);
    candidates
}

pub fn decide(desired: u32, max_surge: u32, max_unavailable: u32, members: &[Member]) -> Decision {
    let desired = desired as usize;
    let new: Vec<usize> = (0..members.len()).filter(|&i| members[i].current).collect();
    let old: Vec<usize> = (0..members.len()).filter(|&i| !members[i].current).collect();
    let mut decision = Decision::default();

    if new.len() > desired {
        decision.delete.extend(victims(members, new.clone(), new.len() - desired));
    }
    if old.is_empty() {
        decision.create = u32::try_from(desired.saturating_sub(new.len())).unwrap_or(u32::MAX);
        return decision;
    }

    // Rolling: never more than desired + maxSurge replicas in all...
    let total = new.len() + old.len();
    let room = (desired + max_surge as usize).saturating_sub(total);
    decision.create = u32::try_from(desired.saturating_sub(new.len()).min(room)).unwrap_or(u32::MAX);

    // ...and never fewer than desired - maxUnavailable ready ones. Old replicas that are
    // not ready add nothing to availability, so they may always go.
    let (old_ready, old_unready): (Vec<usize>, Vec<usize>) = old.iter().partition(|&&i| members[i].ready);
    decision.delete.extend(&old_unready);
    let new_ready = new.iter().filter(|&&i| members[i].ready && !decision.delete.contains(&i)).count();
    let min_available = desired.saturating_sub(max_unavailable as usize);
    let removable = (new_ready + old_ready.len()).saturating_sub(min_available).min(old_ready.len());
    decision.delete.extend(victims(members, old_ready, removable));
    decision
}

/// A paused service: no replica is replaced for its template, the count goes to
/// `desired` (new ones, or the usual victims), and a rollout caught mid-way keeps up to
/// `slack` (its maxSurge) replicas over the count, as Kubernetes' paused Deployments do.
pub fn decide_paused(desired: u32, slack: u32, members: &[Member]) -> Decision {
    let (desired, count) = (desired as usize, members.len());
    let mut decision = Decision { create: u32::try_from(desired.saturating_sub(count)).unwrap_or(u32::MAX), delete: Vec::new() };
    if count > desired + slack as usize {
        decision.delete = victims(members, (0..count).collect(), count - desired);
    }
    decision
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paused_decisions() {
        let members = |n: usize| (0..n).map(|i| member(&format!("r{i}"), i % 2 == 0, true)).collect::<Vec<_>>();
        assert_eq!(decide_paused(3, 1, &members(4)), Decision::default(), "mid-rollout: the surge replica stays");
        assert_eq!(decide_paused(3, 0, &members(4)).delete.len(), 1, "no slack: to the count");
        assert_eq!(decide_paused(2, 1, &members(4)).delete.len(), 2, "a scale-down goes to the count");
        assert_eq!(decide_paused(5, 1, &members(3)).create, 2, "a scale-up");
    }

    fn percent(value: u32) -> Option<pb::IntOrPercent> {
        Some(pb::IntOrPercent { value, percent: true })
    }

    fn count(value: u32) -> Option<pb::IntOrPercent> {
        Some(pb::IntOrPercent { value, percent: false })
    }

    #[test]
    fn resolve_update_table() {
        let table = [
            (percent(25), percent(25), 3, (1, 0)),
            (percent(25), percent(25), 4, (1, 1)),
            (percent(25), percent(25), 10, (3, 2)),
            (count(2), count(0), 5, (2, 0)),
            (percent(0), percent(10), 3, (0, 1)),
            (percent(25), percent(25), 0, (0, 1)),
        ];
        for (max_surge, max_unavailable, replicas, want) in table {
            let update = pb::UpdateStrategy { max_surge, max_unavailable };
            assert_eq!(resolve_update(&update, replicas), want, "{update:?} x {replicas}");
        }
    }

    fn member(id: &str, current: bool, ready: bool) -> Member {
        Member { current, bound: true, ready, crowd: 1, id: id.into(), ordinal: None }
    }

    /// (desired, surge, unavailable, members, expected creates, expected deleted ids)
    #[test]
    #[allow(clippy::type_complexity)] // a table
    fn decisions() {
        let cases: Vec<(&str, u32, u32, u32, Vec<Member>, u32, Vec<&str>)> = vec![
            ("fresh service", 3, 1, 0, vec![], 3, vec![]),
            ("steady", 2, 1, 0, vec![member("a", true, true), member("b", true, false)], 0, vec![]),
            ("scale up", 3, 1, 0, vec![member("a", true, true)], 2, vec![]),
            ("scale down takes not-ready first", 1, 1, 0, vec![member("a", true, true), member("b", true, false), member("c", true, true)], 0, vec!["b", "c"]),
            (
                "scale down takes unbound first",
                2,
                1,
                0,
                vec![member("a", true, true), Member { bound: false, ..member("z", true, false) }, member("c", true, true)],
                0,
                vec!["z"],
            ),
            ("rollout starts with the surge", 3, 1, 0, vec![member("a", false, true), member("b", false, true), member("c", false, true)], 1, vec![]),
            (
                "a new replica not yet ready holds old ones back",
                3,
                1,
                0,
                vec![member("a", false, true), member("b", false, true), member("c", false, true), member("n", true, false)],
                0,
                vec![],
            ),
            (
                "a ready new replica lets one old go",
                3,
                1,
                0,
                vec![member("a", false, true), member("b", false, true), member("c", false, true), member("n", true, true)],
                0,
                vec!["c"],
            ),
            (
                "maxUnavailable without surge deletes before creating",
                3,
                0,
                1,
                vec![member("a", false, true), member("b", false, true), member("c", false, true)],
                0,
                vec!["c"],
            ),
            ("old replicas that are not ready always go", 2, 1, 0, vec![member("a", false, false), member("b", false, true)], 1, vec!["a"]),
            ("scaled to zero mid-rollout", 0, 0, 0, vec![member("a", false, true), member("n", true, true)], 0, vec!["n", "a"]),
        ];
        for (name, desired, surge, unavailable, members, creates, deleted) in cases {
            let decision = decide(desired, surge, unavailable, &members);
            let ids: Vec<&str> = decision.delete.iter().map(|&i| members[i].id.as_str()).collect();
            assert_eq!((decision.create, ids), (creates, deleted), "{name}");
        }
    }

    /// Simulates a whole rollout: every pass applies the decision, then new replicas
    /// become ready; the count never leaves [desired - unavailable, desired + surge].
    #[test]
    fn a_rollout_converges_within_its_bounds() {
        for (desired, surge, unavailable) in [(3u32, 1u32, 0u32), (3, 0, 1), (10, 3, 2), (1, 1, 0), (4, 2, 2)] {
            let mut members: Vec<Member> = (0..desired).map(|i| member(&format!("old{i:02}"), false, true)).collect();
            let mut next = 0;
            for pass in 0..100 {
                let decision = decide(desired, surge, unavailable, &members);
                if decision.create == 0 && decision.delete.is_empty() {
                    assert!(members.iter().all(|m| m.current && m.ready), "pass {pass}: stuck with {members:?}");
                    assert_eq!(members.len(), desired as usize);
                    break;
                }
                let mut delete = decision.delete.clone();
                delete.sort_unstable();
                for i in delete.into_iter().rev() {
                    members.remove(i);
                }
                let ready = members.iter().filter(|m| m.ready).count() as u32;
                assert!(ready + unavailable >= desired, "pass {pass}: only {ready} ready");
                for _ in 0..decision.create {
                    next += 1;
                    members.push(member(&format!("new{next:02}"), true, false));
                }
                assert!(members.len() as u32 <= desired + surge, "pass {pass}: {} replicas", members.len());
                for m in &mut members {
                    m.ready = true;
                }
            }
            assert!(members.iter().all(|m| m.current), "({desired}, {surge}, {unavailable}) did not finish");
        }
    }
}

#[cfg(test)]
mod ordinal_tests {
    use super::*;

    fn slot(id: &str, current: bool, ready: bool, slot: u32) -> Member {
        Member { current, bound: true, ready, crowd: 1, id: id.into(), ordinal: Some(slot) }
    }

    #[test]
    fn slots_that_own_data_go_highest_first() {
        // Scale down 3 → 1: slots 2 and 1 go, even the not-ready slot 0 stays.
        let members = [slot("x", true, false, 0), slot("y", true, true, 1), slot("z", true, true, 2)];
        let mut delete = decide(1, 0, 1, &members).delete;
        delete.sort_unstable();
        assert_eq!(delete, [1, 2]);
        // A duplicate slot (two replicas of slot 1): one of them goes.
        let members = [slot("a", true, true, 0), slot("b", true, true, 1), slot("c", true, true, 1)];
        let delete = decide(2, 0, 1, &members).delete;
        assert_eq!(delete.len(), 1);
        assert_eq!(members[delete[0]].ordinal, Some(1));
        // A rollout (surge 0, unavailable 1) replaces the highest slot first.
        let members = [slot("a", false, true, 0), slot("b", false, true, 1), slot("c", false, true, 2)];
        assert_eq!(decide(3, 0, 1, &members), Decision { create: 0, delete: vec![2] });
    }
}
