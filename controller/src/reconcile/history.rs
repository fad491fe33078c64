//! A service's revision history: each template it ran, numbered in the order it became
//! current, with the change that made it — what `orch rollout history` shows and
//! `orch rollout undo` goes back to. Kept level-triggered by the reconciler: when the
//! service's template (its spec hash) is not the newest revision, it becomes one. Pure.

use orch_api::pb;

/// Revisions kept per service (Kubernetes' `revisionHistoryLimit` default).
pub const MAX_REVISIONS: usize = 10;

/// What to write to a service's history.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HistoryChange {
    /// The new newest revision.
    pub record: Option<pb::ServiceRevision>,
    /// Revision numbers to delete: the current template's older entry (it moved to the
    /// newest) and those beyond [`MAX_REVISIONS`].
    pub delete: Vec<u64>,
}

/// `revisions`: the service's, oldest first.
/// The new record's `created_unix_ms` is left for the writer to stamp.
pub fn plan(service: &pb::Service, revisions: &[&pb::ServiceRevision]) -> HistoryChange {
    let mut change = HistoryChange::default();
    let Some(spec) = service.spec.as_ref() else { return change };
    let newest = revisions.last();
    let mut kept: Vec<u64> = revisions.iter().map(|r| r.revision).collect();
    if newest.is_none_or(|r| r.spec_hash != service.spec_hash) {
        // A template that ran before (an undo, an older manifest applied again) moves
        // to the newest number; its old entry goes.
        let earlier = revisions.iter().rev().find(|r| r.spec_hash == service.spec_hash);
        if let Some(earlier) = earlier {
            change.delete.push(earlier.revision);
            kept.retain(|&n| n != earlier.revision);
        }
        let what = newest.and_then(|r| r.spec.as_ref()).map(|before| describe(before, spec)).unwrap_or_default();
        let text = match (service.change_cause.as_str(), what.as_str()) {
            ("", "") => earlier.map_or_else(|| "created".to_owned(), |e| e.change.clone()),
            ("", what) => what.to_owned(),
            (cause, "") => cause.to_owned(),
            (cause, what) => format!("{cause}: {what}"),
        };
        let number = newest.map_or(1, |r| r.revision + 1);
        kept.push(number);
        change.record = Some(pb::ServiceRevision {
            service: service.name.clone(),
            revision: number,
            spec: Some(spec.clone()),
            spec_hash: service.spec_hash.clone(),
            change: text,
            created_unix_ms: 0,
            restarted_unix_ms: service.restarted_unix_ms,
        });
    }
    // An older entry of the newest template (its delete failed once while the new
    // number was written): it goes too.
    if let Some(newest) = newest.filter(|r| r.spec_hash == service.spec_hash) {
        for older in revisions.iter().filter(|r| r.spec_hash == newest.spec_hash && r.revision != newest.revision) {
            change.delete.push(older.revision);
            kept.retain(|&n| n != older.revision);
        }
    }
    let excess = kept.len().saturating_sub(MAX_REVISIONS);
    change.delete.extend(kept.into_iter().take(excess));
    change
}

/// What differs between two templates, field by field as a manifest names them: the
/// image with both references, environment variables by name, other fields by name.
/// Empty when only the count or the update strategy differ.
pub fn describe(before: &pb::ServiceSpec, after: &pb::ServiceSpec) -> String {
    let mut changed: Vec<String> = Vec::new();
    if before.image != after.image {
        changed.push(format!("image {} -> {}", before.image, after.image));
    }
    let env_names = |spec: &pb::ServiceSpec| spec.env.iter().map(|e| e.name.clone()).collect::<std::collections::BTreeSet<String>>();
    let names: std::collections::BTreeSet<String> = env_names(before).union(&env_names(after)).cloned().collect();
    let differing: Vec<String> = names
        .into_iter()
        .filter(|name| {
            let of = |spec: &pb::ServiceSpec| spec.env.iter().find(|e| e.name == *name).cloned();
            of(before) != of(after)
        })
        .collect();
    if !differing.is_empty() {
        changed.push(format!("env {}", differing.join(", ")));
    }
    #[rustfmt::skip]
    let fields: [(&str, bool); 15] = [
        ("command", before.command != after.command),
        ("args", before.args != after.args),
        ("resources", before.resources != after.resources),
        ("ports", before.ports != after.ports),
        ("probes", before.probes != after.probes),
        ("restartPolicy", before.restart_policy != after.restart_policy),
        ("nodeSelector", before.node_selector != after.node_selector),
        ("restartBackoff", before.restart_backoff != after.restart_backoff),
        ("terminationGracePeriodSeconds", before.termination_grace_seconds != after.termination_grace_seconds),
        ("securityContext", before.security_context != after.security_context),
        ("imagePullPolicy", before.image_pull_policy != after.image_pull_policy),
        ("volumes", before.volumes != after.volumes),
        ("volumeMounts", before.volume_mounts != after.volume_mounts),
        ("logs", before.logs != after.logs),
        ("env order", changed.iter().all(|c| !c.starts_with("env ")) && before.env != after.env),
    ];
    changed.extend(fields.iter().filter(|(_, differs)| *differs).map(|(name, _)| (*name).to_owned()));
    let template = |spec: &pb::ServiceSpec| pb::ServiceSpec { replicas: 0, update: None, ..spec.clone() };
    if changed.is_empty() && template(before) != template(after) {
        // A field this list does not know yet.
        changed.push("template".to_owned());
    }
    changed.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(image: &str, greeting: &str) -> pb::ServiceSpec {
        pb::ServiceSpec {
            replicas: 3,
            image: image.into(),
            env: vec![pb::EnvVar { name: "GREETING".into(), value: greeting.into(), ..Default::default() }],
            ..Default::default()
        }
    }

    fn service(spec: pb::ServiceSpec, hash: &str, cause: &str) -> pb::Service {
        pb::Service { name: "web".into(), spec: Some(spec), spec_hash: hash.into(), change_cause: cause.into(), ..Default::default() }
    }

    fn revision(number: u64, spec: pb::ServiceSpec, hash: &str, change: &str) -> pb::ServiceRevision {
        pb::ServiceRevision { service: "web".into(), revision: number, spec: Some(spec), spec_hash: hash.into(), change: change.into(), ..Default::default() }
    }

    #[test]
    fn changes_are_named_as_a_manifest_names_them() {
        let table = [
            (spec("demo:1.0", "hi"), spec("demo:1.1", "hi"), "image demo:1.0 -> demo:1.1"),
            (spec("demo:1.0", "hi"), spec("demo:1.0", "hello"), "env GREETING"),
            (spec("demo:1.0", "hi"), pb::ServiceSpec { replicas: 9, ..spec("demo:1.0", "hi") }, ""),
            (
                spec("demo:1.0", "hi"),
                pb::ServiceSpec { args: vec!["-v".into()], termination_grace_seconds: 3, ..spec("demo:1.1", "yo") },
                "image demo:1.0 -> demo:1.1; env GREETING; args; terminationGracePeriodSeconds",
            ),
            (spec("demo:1.0", "hi"), pb::ServiceSpec { env: vec![], ..spec("demo:1.0", "hi") }, "env GREETING"),
        ];
        for (before, after, want) in table {
            assert_eq!(describe(&before, &after), want, "{before:?} -> {after:?}");
        }
    }

    #[test]
    fn a_new_service_is_revision_one_and_a_new_template_the_next() {
        let first = plan(&service(spec("demo:1.0", "hi"), "aaa", "apply web.yaml"), &[]);
        let one = first.record.expect("recorded");
        assert_eq!((one.revision, one.change.as_str()), (1, "apply web.yaml"));
        assert!(first.delete.is_empty());

        let next = plan(&service(spec("demo:1.1", "hi"), "bbb", "apply web.yaml"), &[&one]);
        let two = next.record.expect("recorded");
        assert_eq!((two.revision, two.change.as_str()), (2, "apply web.yaml: image demo:1.0 -> demo:1.1"));

        assert_eq!(plan(&service(spec("demo:1.1", "hi"), "bbb", "apply web.yaml"), &[&one, &two]), HistoryChange::default(), "recorded already");
    }

    #[test]
    fn a_template_that_ran_before_moves_to_the_newest_number() {
        let one = revision(1, spec("demo:1.0", "hi"), "aaa", "apply web.yaml");
        let two = revision(2, spec("demo:1.1", "hi"), "bbb", "apply web.yaml: image demo:1.0 -> demo:1.1");
        let undo = plan(&service(spec("demo:1.0", "hi"), "aaa", "undo to revision 1"), &[&one, &two]);
        let three = undo.record.expect("recorded");
        assert_eq!((three.revision, three.change.as_str()), (3, "undo to revision 1: image demo:1.1 -> demo:1.0"));
        assert_eq!(undo.delete, [1], "its old entry goes");
    }

    #[test]
    fn a_restart_or_a_config_is_the_cause_alone() {
        let one = revision(1, spec("demo:1.0", "hi"), "aaa", "apply web.yaml");
        let restarted = plan(&service(spec("demo:1.0", "hi"), "ccc", "restart"), &[&one]).record.expect("recorded");
        assert_eq!(restarted.change, "restart");
        let config = plan(&service(spec("demo:1.0", "hi"), "ddd", "config/site changed"), &[&one]).record.expect("recorded");
        assert_eq!(config.change, "config/site changed");
    }

    #[test]
    fn a_duplicate_of_the_newest_template_goes() {
        let one = revision(1, spec("demo:1.0", "hi"), "aaa", "apply");
        let two = revision(2, spec("demo:1.1", "hi"), "bbb", "apply");
        let three = revision(3, spec("demo:1.0", "hi"), "aaa", "undo to revision 1");
        assert_eq!(plan(&service(spec("demo:1.0", "hi"), "aaa", ""), &[&one, &two, &three]), HistoryChange { record: None, delete: vec![1] });
    }

    #[test]
    fn at_most_ten_are_kept_the_oldest_go() {
        let old: Vec<pb::ServiceRevision> = (1..=10).map(|n| revision(n, spec(&format!("demo:{n}"), "hi"), &format!("h{n}"), "apply")).collect();
        let refs: Vec<&pb::ServiceRevision> = old.iter().collect();
        let change = plan(&service(spec("demo:11", "hi"), "h11", "apply"), &refs);
        assert_eq!(change.record.map(|r| r.revision), Some(11));
        assert_eq!(change.delete, [1]);
        // Eleven found (a limit lowered, a write raced): back to ten, nothing new.
        let eleven: Vec<pb::ServiceRevision> = (1..=11).map(|n| revision(n, spec("demo", "hi"), &format!("h{n}"), "apply")).collect();
        let refs: Vec<&pb::ServiceRevision> = eleven.iter().collect();
        assert_eq!(plan(&service(spec("demo", "hi"), "h11", "apply"), &refs), HistoryChange { record: None, delete: vec![1] });
    }
}
