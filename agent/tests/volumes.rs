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
    - {{name: capped, emptyDir: {{sizeLimit: 1Mi}}}}
    - {{name: fast, emptyDir: {{medium: Memory, sizeLimit: 1Mi}}}}
    - {{name: data, local: {{}}}}
    - {{name: host, hostPath: {{path: {host}, type: DirectoryOrCreate}}}}
  volumeMounts:
    - {{name: scratch, mountPath: /scratch}}
    - {{name: capped, mountPath: /capped}}
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
    for private in [cluster.volumes_dir(), cluster.state_dir().join("empty-dirs")] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&private).expect("made").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700, "{} lets local users reach the containers' data", private.display());
    }
    assert_eq!(std::fs::read_to_string(on_node.join("b")).expect("the local volume on the node"), "d\n");
    assert_eq!(std::fs::read_to_string(on_node.join("nested/dir/c")).expect("the subPath inside it"), "n\n");

    // kill -9: the container restarts with every volume's files.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid")), nix::sys::signal::Signal::SIGKILL).expect("kill -9");
    let healed = cluster.wait_replicas("db", "the killed replica back", |r| one_running(r) && status(&r[0]).restarts == 1).await;
    let pid = status(&healed[0]).host_pid;
    cluster.exec(pid, &["sh", "-c", "test -f /scratch/a && test -f /fast/e && test -f /data/b && test -f /data/nested/dir/c"]);

    // An on-disk emptyDir over its sizeLimit: evicted, as the kubelet does — an event, and
    // the container restarts with that volume empty (the others keep their files).
    cluster.exec(pid, &["sh", "-c", "echo keep > /capped/small && dd if=/dev/zero of=/capped/big bs=1024 count=2048 2>/dev/null"]);
    let evicted = cluster.wait_replicas("db", "the replica evicted and back", |r| one_running(r) && status(&r[0]).restarts == 2).await;
    let events = cluster.events_of(&format!("replica/{}", replica.id)).await;
    let event = events.iter().find(|e| e.kind == "Evicted").unwrap_or_else(|| panic!("an Evicted event: {events:#?}"));
    assert!(event.message.contains("emptyDir capped uses") && event.message.contains("over its sizeLimit of 1048576"), "{}", event.message);
    cluster.exec(status(&evicted[0]).host_pid, &["sh", "-c", "test ! -e /capped/big && test ! -e /capped/small && test -f /scratch/a && test -f /data/b"]);

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

    // A hostPath whose path a container swapped for a symlink into the agent's state (it
    // can write the parent through another hostPath): the next start refuses it.
    let state = cluster.state_dir();
    let shared = cluster.dir.path().join("shared");
    cluster
        .apply(&format!(
            "apiVersion: orch/v1\nkind: Service\nmetadata: {{name: swap}}\nspec:\n  image: {image}\n  command: [sleep, '100000']\n  \
             restartBackoff: {{initialMillis: 100}}\n  \
             volumes: [{{name: p, hostPath: {{path: {shared}, type: DirectoryOrCreate}}}}, {{name: c, hostPath: {{path: {shared}/child, type: DirectoryOrCreate}}}}]\n  \
             volumeMounts: [{{name: p, mountPath: /p}}, {{name: c, mountPath: /c}}]\n",
            shared = shared.display()
        ))
        .await;
    let swap = cluster.wait_replicas("swap", "the swap replica running", one_running).await;
    let swap_pid = status(&swap[0]).host_pid;
    cluster.exec(swap_pid, &["sh", "-c", &format!("rmdir /p/child && ln -s {} /p/child", state.display())]);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(swap_pid).expect("pid")), nix::sys::signal::Signal::SIGKILL).expect("kill -9");
    let refused_swap = cluster.wait_replicas("swap", "the swapped hostPath refused", |r| r.len() == 1 && status(&r[0]).reason.contains("refused")).await;
    assert!(status(&refused_swap[0]).reason.contains(&state.display().to_string()), "{:?}", status(&refused_swap[0]));
    cluster.api.delete_service(pb::DeleteServiceRequest { name: "swap".into(), purge_volumes: false }).await.expect("delete");

    // A hostPath into the agent's own state is refused by the node.
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

const SECRET: &str = "s3cr3t-never-on-disk";

fn site_manifest(image: &str, page: &str) -> String {
    format!(
        r#"apiVersion: orch/v1
kind: Config
metadata: {{name: site}}
data:
  index.html: "{page}"
---
apiVersion: orch/v1
kind: Secret
metadata: {{name: db}}
data:
  password: {SECRET}
---
apiVersion: orch/v1
kind: Service
metadata: {{name: site}}
spec:
  replicas: 2
  image: {image}
  command: [sh, -c, 'echo "$PW" > /dev/shm/pw-seen; exec httpd -f -p 8080 -h /www']
  securityContext: {{runAsUser: 1000, runAsGroup: 1000}}
  env: [{{name: PW, valueFrom: {{secretKey: {{name: db, key: password}}}}}}]
  ports: [{{name: http, containerPort: 8080, servicePort: 80}}]
  probes:
    readiness: {{tcpSocket: {{port: http}}, periodSeconds: 1}}
  terminationGracePeriodSeconds: 1
  volumes:
    - {{name: www, config: {{name: site}}}}
    - {{name: creds, secret: {{name: db, items: [{{key: password, path: db/pw}}]}}}}
  volumeMounts:
    - {{name: www, mountPath: /www}}
    - {{name: creds, mountPath: /run/secrets}}
"#
    )
}

/// Every regular file under `dir` that holds `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return found };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if meta.is_dir() {
            found.extend(files_holding(&path, needle));
        } else if meta.is_file() && std::fs::read(&path).is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle)) {
            found.push(path);
        }
    }
    found
}

/// The output of `command` run in the container of `pid` as user 1000, which must succeed.
fn check_in(cluster: &Cluster, pid: u32, command: &str) -> String {
    let out = cluster.exec_as(pid, Some("1000:1000"), &["sh", "-c", command]);
    assert!(out.status.success(), "{command}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configs_and_secrets_reach_the_container_and_no_disk() {
    let mut cluster = Cluster::start("cfg").await;
    let image = cluster.image.clone();
    cluster.apply(&site_manifest(&image, "page one")).await;
    let replicas = cluster.wait_replicas("site", "two ready replicas", |r| r.len() == 2 && r.iter().all(running_ready)).await;
    let pid = status(&replicas[0]).host_pid;

    // The config as files (0444), the secret as a file (0400, the container's user's) and
    // as the environment.
    let check = |command: &str| check_in(&cluster, pid, command);
    assert_eq!(check("cat /www/index.html"), "page one");
    assert_eq!(check("stat -c '%a %u' /www/index.html"), "444 1000");
    assert_eq!(check("stat -c '%a %u:%g' /run/secrets/db/pw"), "400 1000:1000");
    assert_eq!(check("cat /run/secrets/db/pw"), SECRET);
    assert_eq!(check("cat /dev/shm/pw-seen"), SECRET, "valueFrom.secretKey reached the command's environment");
    let refused = cluster.exec_output(pid, &["sh", "-c", "echo x > /www/index.html"]);
    assert!(!refused.status.success(), "a config volume is read-only");
    let other = cluster.exec_as(pid, Some("1001:1001"), &["cat", "/run/secrets/db/pw"]);
    assert!(!other.status.success(), "another user of the container reads the secret");

    // On the node the files live on a tmpfs only; no file on its disk holds the secret.
    let run_root = format!("/run/orch/{}", cluster.bridge);
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
    assert!(mounts.lines().any(|l| l.split(' ').nth(1) == Some(run_root.as_str()) && l.split(' ').nth(2) == Some("tmpfs")), "{run_root} is a tmpfs:\n{mounts}");
    let on_disk = files_holding(cluster.dir.path(), SECRET.as_bytes());
    assert!(on_disk.is_empty(), "the secret is on the node's disk: {on_disk:?}");

    // A new page rolls the service; requests through the VIP keep being answered.
    let vip: std::net::Ipv4Addr =
        cluster.api.get_service(pb::GetServiceRequest { name: "site".into() }).await.expect("get").into_inner().vip.parse().expect("vip");
    let address = std::net::SocketAddr::from((vip, 80));
    let start = Instant::now();
    while common::cluster::http_get(address).map_or(true, |body| body != "page one") {
        assert!(start.elapsed() < LIMIT, "the VIP never answered");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The load runs until it has itself been answered by the new page a few times.
    let load = std::thread::spawn(move || {
        let (mut answers, mut failures) = (std::collections::BTreeMap::<String, u32>::new(), Vec::new());
        let begun = Instant::now();
        // Bounded in count and time.
        for _ in 0..20_000 {
            if answers.get("page two").is_some_and(|&n| n >= 5) || begun.elapsed() > LIMIT {
                break;
            }
            match common::cluster::http_get(address) {
                Ok(body) => *answers.entry(body).or_default() += 1,
                Err(e) => failures.push(e.to_string()),
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        (answers, failures)
    });
    cluster.apply(&site_manifest(&image, "page two")).await;
    let old: Vec<String> = replicas.iter().map(|r| r.id.clone()).collect();
    cluster.wait_replicas("site", "the rollout to the new page", |r| r.len() == 2 && r.iter().all(|x| running_ready(x) && !old.contains(&x.id))).await;
    let (answers, failures) = tokio::task::spawn_blocking(move || load.join()).await.expect("join").expect("the load thread");
    assert!(failures.is_empty(), "requests lost during the rollout: {failures:?} (answers {answers:?})\nagent log:\n{}", cluster.agent_log());
    assert!(answers.contains_key("page one") && answers.contains_key("page two"), "{answers:?}");
    let events = cluster.events_of("").await;
    assert!(!events.iter().any(|e| e.message.contains(SECRET)), "an event carries the secret");
    assert!(!cluster.agent_log().contains(SECRET), "the agent's log carries the secret");

    // The agent restarts (kill -9): it adopts the running containers before the controller
    // answers, with the Configs and Secrets it kept on its tmpfs — their files stay in
    // place in the running containers, and a container killed now restarts with them.
    let before = cluster.wait_replicas("site", "two ready replicas", |r| r.len() == 2 && r.iter().all(running_ready)).await;
    cluster.kill_agent();
    cluster.start_agent();
    let start = Instant::now();
    while cluster.agent_log().matches("re-adopting").count() < 2 {
        assert!(start.elapsed() < LIMIT, "the new agent never adopted its replicas:\n{}", cluster.agent_log());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let pid = status(&before[0]).host_pid;
    assert_eq!(check_in(&cluster, pid, "cat /www/index.html"), "page two", "the running container kept its config files");
    assert_eq!(check_in(&cluster, pid, "cat /run/secrets/db/pw"), SECRET);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid")), nix::sys::signal::Signal::SIGKILL).expect("kill -9");
    let healed = cluster
        .wait_replicas("site", "the killed replica back", |r| r.len() == 2 && r.iter().all(running_ready) && r.iter().any(|x| status(x).restarts == 1))
        .await;
    let restarted = healed.iter().find(|x| status(x).restarts == 1).expect("the restarted replica");
    assert_eq!(restarted.id, before[0].id, "the same replica restarted");
    let pid = status(restarted).host_pid;
    assert_eq!(check_in(&cluster, pid, "cat /www/index.html"), "page two");
    assert_eq!(check_in(&cluster, pid, "cat /dev/shm/pw-seen"), SECRET, "the restart had the secret's value");
    let failed: Vec<String> = cluster.events_of("").await.into_iter().filter(|e| e.message.contains("not found")).map(|e| e.message).collect();
    assert!(failed.is_empty(), "the adopted replicas waited for their Configs: {failed:?}");

    cluster.api.delete_service(pb::DeleteServiceRequest { name: "site".into(), purge_volumes: false }).await.expect("delete");
    cluster.wait_replicas("site", "the replicas gone", |r| r.is_empty()).await;
    cluster.wait_node_empty().await;
    let left: Vec<_> = std::fs::read_dir(&run_root).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "config and secret files left in {run_root}: {left:?}");
}
