//! Losing the store and restoring it from a backup, in the lab (as root), on both
//! stores: back up a running cluster (etcd: `orch-controller backup` while it runs;
//! embedded: `orch backup` through the controller, since the file is locked — and the
//! offline command says so), stop the controller, wipe the store (a new etcd on a new
//! data directory; the redb file removed), restore, start the controller: the cluster
//! converges with the same replicas, none restarted — including a service whose template
//! names a Config's store revision — and the controller acts on it again.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failure is the point

mod common;

use std::collections::BTreeMap;

use common::lab::{all_running, http_get, Lab};
use common::{text, ROOT};

/// A Config, and a service that reads one of its keys into its environment: its
/// template carries the Config's store revision.
const SITE: &str = "apiVersion: orch/v1\nkind: Config\nmetadata: {name: site}\ndata: {greeting: hello from the backup}\n---\n\
apiVersion: orch/v1\nkind: Service\nmetadata: {name: site}\nspec:\n  replicas: 1\n  image: 127.0.0.1:5000/orch/demo-web:1.0\n  \
env: [{name: GREETING, valueFrom: {configKey: {name: site, key: greeting}}}]\n";

/// Each replica by name: its host PID and restart count, once every one has a PID.
fn identities(replicas: &[serde_json::Value]) -> Option<BTreeMap<String, (i64, i64)>> {
    replicas
        .iter()
        .map(|r| {
            let pid = r["hostPid"].as_i64().filter(|p| *p > 1)?;
            Some((r["name"].as_str()?.to_owned(), (pid, r["restarts"].as_i64()?)))
        })
        .collect()
}

fn lose_the_store_and_restore_it(store: &'static str) {
    let lab = Lab::up_with_store(2, store);
    let site = lab.dir.path().join("site.yaml");
    std::fs::write(&site, SITE).expect("write the manifest");
    lab.ok(&["apply", "-f", &format!("{ROOT}/manifests/webapp.yaml"), "-f", site.to_str().expect("path"), "--wait", "--timeout", "120"]);
    let before = identities(&lab.wait("4 ready replicas", all_running(4))).expect("every replica has a PID");

    let file = lab.dir.path().join("cluster.orch");
    let file_arg = file.to_str().expect("path");
    if store == "embedded" {
        let refused = lab.script(&["backup", file_arg]);
        assert!(!refused.status.success(), "an offline backup of a store file in use must fail");
        assert!(text(&refused.stderr).contains("in use by another process"), "{}", text(&refused.stderr));
        let taken = lab.ok(&["backup", file_arg]);
        assert!(taken.contains("keys at revision"), "{taken}");
    } else {
        lab.script_ok(&["backup", file_arg]);
    }
    let mode = std::fs::metadata(&file).expect("the backup file").permissions();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600, "the backup holds the whole cluster: root's alone");

    lab.script_ok(&["stop-controller"]);
    lab.script_ok(&["wipe-store"]);
    let restored = lab.script(&["restore", file_arg]);
    assert!(restored.status.success(), "restore: {}\n{}", text(&restored.stderr), lab.logs());
    assert!(text(&restored.stdout).contains("restored"), "{}", text(&restored.stdout));
    // Restoring twice is refused: the store is not empty any more.
    let again = lab.script(&["restore", file_arg]);
    assert!(!again.status.success() && text(&again.stderr).contains("already holds"), "{}", text(&again.stderr));
    lab.script_ok(&["start-controller"]);

    // The same replicas, running and ready, with the same processes.
    let after =
        lab.wait("the same replicas, ready", |replicas| all_running(4)(replicas) && identities(replicas).is_some_and(|ids| ids.keys().eq(before.keys())));
    assert_eq!(identities(&after).expect("PIDs"), before, "no replica restarted or was replaced");
    // The controller acts on the restored state: a scale-up gets a replica, and the
    // others still run untouched.
    lab.ok(&["scale", "service", "site", "--replicas", "2"]);
    let scaled = identities(&lab.wait("5 ready replicas", all_running(5))).expect("PIDs");
    for (name, identity) in &before {
        assert_eq!(scaled.get(name), Some(identity), "{name} after the scale-up: {scaled:#?}");
    }
    let answer = http_get(lab.node_address(1)).unwrap_or_else(|e| panic!("the node port after the restore: {e}\n{}", lab.logs()));
    assert!(answer.starts_with("webapp-"), "{answer}");
}

#[test]
fn a_cluster_restored_from_a_backup_converges_with_no_replica_restarted() {
    lose_the_store_and_restore_it("etcd");
    lose_the_store_and_restore_it("embedded");
}
