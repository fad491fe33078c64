//! Volumes for real, as root: a controller in-process and `orch-agent serve` running
//! real containers. emptyDir (disk and tmpfs) and local volumes keep their files across
//! a `kill -9`; a tmpfs refuses writes past its size limit; a read-only mount refuses
//! writes; mounts are `nosuid,nodev`; a local volume outlives delete + apply and a
//! replica replacement; a subPath that a container turned into a symlink is refused; a
//! hostPath into the agent's state is refused; a purge removes the data; delete leaves no
//! mount and no emptyDir behind.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks: a failure is the point

mod common;

use std::path::Path;
use std::time::Instant;

use common::cluster::{running_ready, status, Cluster, LIMIT};
use orch_api::pb;

fn db_manifest(image: &str, host: &Path, marker: &str, extra_mount: &str) -> String {
    format!(
        r#"apiVersion: orch/v1
kind: Service
metadata: {{name: db}}
spec:
  image: {image}
  command: [sh, -c, "echo {marker}; exec sleep 100000"]
  terminationGracePeriodSeconds: 1
  restartBackoff: {{initialMillis: 100}}
  volumes:
    - {{name: scratch, emptyDir: {{}}}}
    - {{name: fast, emptyDir: {{medium: Memory, sizeLimit: 1Mi}}}}
    - {{name: data, local: {{}}}}
    - {{name: host, hostPath: {{path: {host}, type: DirectoryOrCreate}}}}
  volumeMounts:
    - {{name: scratch, mountPath: /scratch}}
    - {{name: fast, mountPath: /fast}}
    - {{name: data, mountPath: /data}}
    - {{name: data, mountPath: /sub, subPath: nested/dir}}
    - {{name: host, mountPath: /ro, readOnly: true}}
{extra_mount}"#,
        host = host.display()
    )
}

fn one_running(replicas: &[pb::Replica]) -> bool {
    replicas.len() == 1 && replicas.iter().all(running_ready)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_keep_data_where_kubernetes_does() {
    let mut cluster = Cluster::start("vol").await;
    let image = cluster.image.clone();
    let host = cluster.dir.path().join("host-dir");
    cluster.apply(&db_manifest(&image, &host, "v1", "")).await;
    let first = cluster.wait_replicas("db", "the db replica running", one_running).await;
    let replica = first[0].clone();
    assert_eq!(replica.slot, Some(0), "the first replica takes slot 0");
    let pid = status(&replica).host_pid;

    // Files in every volume; the read-only mount and the tmpfs limit refuse writes.
    cluster.exec(pid, &["sh", "-c", "echo s > /scratch/a && echo d > /data/b && echo n > /sub/c && echo f > /fast/e"]);
    assert!(host.is_dir(), "DirectoryOrCreate made the host directory");
    std::fs::write(host.join("from-host"), "h").expect("write on the host");
    cluster.exec(pid, &["sh", "-c", "test \"$(cat /ro/from-host)\" = h"]);
    let read_only = cluster.exec_output(pid, &["sh", "-c", "echo x > /ro/new"]);
    assert!(!read_only.status.success(), "a readOnly mount took a write");
    assert!(String::from_utf8_lossy(&read_only.stderr).contains("Read-only file system"), "{read_only:?}");
    let over = cluster.exec_output(pid, &["dd", "if=/dev/zero", "of=/fast/big", "bs=1024", "count=2048"]);
    assert!(!over.status.success(), "a 1Mi tmpfs took 2 MiB");
    assert!(String::from_utf8_lossy(&over.stderr).contains("No space left on device"), "{over:?}");
    let mounts = cluster.exec_output(pid, &["cat", "/proc/mounts"]);
    let mounts = String::from_utf8_lossy(&mounts.stdout).into_owned();
    for target in ["/scratch", "/fast", "/data", "/sub", "/ro"] {
        let line = mounts.lines().find(|l| l.split(' ').nth(1) == Some(target)).unwrap_or_else(|| panic!("{target} is not mounted:\n{mounts}"));
        assert!(line.contains("nosuid") && line.contains("nodev"), "{target} must be nosuid,nodev: {line}");
    }
    assert!(mounts.lines().any(|l| l.starts_with("tmpfs /fast tmpfs")), "medium Memory is a tmpfs:\n{mounts}");
    assert!(mounts.lines().any(|l| l.split(' ').nth(1) == Some("/ro") && l.split(' ').nth(3).is_some_and(|o| o.starts_with("ro"))), "{mounts}");
    let on_node = cluster.volumes_dir().join("db/data/0");
    assert_eq!(std::fs::read_to_string(on_node.join("b")).expect("the local volume on the node"), "d\n");
    assert_eq!(std::fs::read_to_string(on_node.join("nested/dir/c")).expect("the subPath inside it"), "n\n");

    // kill -9: the container restarts with every volume's files.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid")), nix::sys::signal::Signal::SIGKILL).expect("kill -9");
    let healed = cluster.wait_replicas("db", "the killed replica back", |r| one_running(r) && status(&r[0]).restarts == 1).await;
    let pid = status(&healed[0]).host_pid;
    cluster.exec(pid, &["sh", "-c", "test -f /scratch/a && test -f /fast/e && test -f /data/b && test -f /data/nested/dir/c"]);

    // Delete keeps the local volume (and says so); no emptyDir, no mount stays.
    let response = cluster.api.delete_service(pb::DeleteServiceRequest { name: "db".into(), purge_volumes: false }).await.expect("delete").into_inner();
    assert_eq!(response.kept_volumes, [pb::VolumeClaim { service: "db".into(), slot: 0, node: "node-1".into() }]);
    cluster.wait_replicas("db", "the replica gone", |r| r.is_empty()).await;
    cluster.wait_node_empty().await;
    assert!(on_node.join("b").is_file(), "a local volume outlives its service");

    // Applied again: the new replica of slot 0 finds the data.
    cluster.apply(&db_manifest(&image, &host, "v1", "")).await;
    let again = cluster.wait_replicas("db", "the db replica running again", one_running).await;
    assert_ne!(again[0].id, replica.id);
    cluster.exec(status(&again[0]).host_pid, &["sh", "-c", "test \"$(cat /data/b)\" = d && test ! -e /scratch/a"]);

    // A new template replaces the replica: same slot, same data. Meanwhile the container
    // plants a symlink out of its volume.
    cluster.exec(status(&again[0]).host_pid, &["ln", "-s", "/", "/data/escape"]);
    cluster.apply(&db_manifest(&image, &host, "v2", "")).await;
    let replaced = cluster.wait_replicas("db", "the replacement running", |r| one_running(r) && r[0].id != again[0].id).await;
    assert_eq!(replaced[0].slot, Some(0));
    cluster.exec(status(&replaced[0]).host_pid, &["sh", "-c", "test \"$(cat /data/b)\" = d"]);

    // A subPath through that symlink is refused: the replica never starts.
    cluster.apply(&db_manifest(&image, &host, "v3", "    - {name: data, mountPath: /escape, subPath: escape/etc}\n")).await;
    let refused = cluster
        .wait_replicas("db", "the replica refusing the symlinked subPath", |r| {
            r.len() == 1 && r[0].id != replaced[0].id && status(&r[0]).reason.contains("symbolic link")
        })
        .await;
    assert!(status(&refused[0]).reason.contains("subPath \"escape/etc\""), "{:?}", status(&refused[0]));

    // A hostPath into the agent's own state is refused by the node.
    let state = cluster.state_dir();
    cluster
        .apply(&format!(
            "apiVersion: orch/v1\nkind: Service\nmetadata: {{name: peek}}\nspec:\n  image: {image}\n  command: [sleep, '100000']\n  \
             volumes: [{{name: s, hostPath: {{path: {}}}}}]\n  volumeMounts: [{{name: s, mountPath: /s}}]\n",
            state.join("replicas").display()
        ))
        .await;
    let peek = cluster.wait_replicas("peek", "the hostPath refused", |r| r.len() == 1 && status(&r[0]).reason.contains("overlaps orch's own state")).await;
    assert_eq!(status(&peek[0]).host_pid, 0, "never started: {:?}", status(&peek[0]));

    // Delete with purge: the data goes from the node.
    for (name, purge) in [("db", true), ("peek", false)] {
        cluster.api.delete_service(pb::DeleteServiceRequest { name: name.into(), purge_volumes: purge }).await.expect("delete");
    }
    cluster.wait_replicas("", "every replica gone", |r| r.is_empty()).await;
    let start = Instant::now();
    while cluster.volumes_dir().join("db").exists() {
        assert!(start.elapsed() < LIMIT, "the purged volumes stay on the node\n{}", cluster.agent_log());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let start = Instant::now();
    while !cluster.events_of("service/db").await.iter().any(|e| e.kind == "VolumesPurged") {
        assert!(start.elapsed() < LIMIT, "no VolumesPurged event");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    cluster.wait_node_empty().await;
}
