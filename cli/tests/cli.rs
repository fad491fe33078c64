//! The CLI as a user runs it, as root: `orch up` (a controller and a real agent in one
//! process, on a bridge, subnets and cgroup parent of this test's own) and every command
//! against it — both output formats, the errors and exit codes — then Ctrl-C, a restart
//! that brings the services back, and nothing left behind.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks: a failure is the point

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{text, Up, ORCH};

/// Reads a running command's output into `text` until `done` holds for it.
fn read_until(out: &mut impl Read, text: &mut String, what: &str, done: impl Fn(&str) -> bool) {
    let mut buffer = [0u8; 4096];
    while !done(text) {
        let n = out.read(&mut buffer).expect("read the command's output");
        assert!(n > 0, "{what} ended: {text}");
        text.push_str(&String::from_utf8_lossy(&buffer[..n]));
    }
}

fn http_get(address: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

#[test]
fn the_cli_against_orch_up() {
    let mut up = Up::new();
    let manifest = up.manifest(2, "one");
    up.start(&[&manifest]);
    up.wait("2 ready replicas", |u| u.ready_replicas() == 2);
    // orch up says where a service answers once the balancer routes to its replicas
    // (ready means answering): from then on the node port answers.
    up.wait("orch up to say where web answers", |u| u.log().contains("service/web answers on"));

    // What orch up keeps on disk is root's alone.
    let mode = |path: &Path| std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(path).expect("metadata").permissions()) & 0o777;
    let state = up.dir.path().join("state");
    assert_eq!((mode(&state), mode(&state.join("controller.redb")), mode(&state.join("agent"))), (0o700, 0o600, 0o700));
    for log in std::fs::read_dir(state.join("agent/logs")).expect("logs").flatten() {
        assert_eq!(mode(&log.path()), 0o600, "{}", log.path().display());
    }

    // The node port answers from every replica's page.
    let response = http_get(SocketAddr::from(([127, 0, 0, 1], up.node_port))).expect("node port answers");
    assert!(response.contains("Hello from web-"), "{response}");

    // apply: unchanged, then configured (a new template) with --wait.
    assert_eq!(up.ok(&["apply", "-f", manifest.to_str().expect("path")]).trim(), "service/web unchanged");
    let changed = up.manifest(2, "two");
    let out = up.ok(&["apply", "-f", changed.to_str().expect("path"), "--wait", "--timeout", "120"]);
    assert!(out.starts_with("service/web configured\n") && out.contains("service/web: 2/2 ready"), "{out}");
    // Ready means answering: the moment --wait returns, the node port round-robins over
    // both new replicas, and only over them.
    let answered: std::collections::BTreeSet<String> = (0..4)
        .map(|_| {
            let page = http_get(SocketAddr::from(([127, 0, 0, 1], up.node_port))).expect("node port answers");
            page.split("Hello from ").nth(1).and_then(|rest| rest.split('<').next()).unwrap_or_default().to_owned()
        })
        .collect();
    let current: std::collections::BTreeSet<String> =
        up.json(&["get", "replicas"]).as_array().expect("replicas").iter().filter_map(|r| r["name"].as_str().map(str::to_owned)).collect();
    assert_eq!(answered, current, "right after --wait, the node port answers from each new replica and no other");

    // get, in every format.
    let services = up.json(&["get", "services"]);
    assert_eq!(services[0]["name"], "web");
    assert_eq!(services[0]["replicas"], 2);
    assert_eq!(services[0]["readyReplicas"], 2);
    assert!(services[0]["vip"].as_str().is_some_and(|v| v.starts_with(&up.service_cidr[..8])), "{services}");
    assert_eq!(services[0]["ports"][0], serde_json::json!({"name": "http", "containerPort": 80, "servicePort": 80, "nodePort": up.node_port}));
    let replicas = up.json(&["get", "replicas"]);
    let first = &replicas[0];
    for field in ["name", "service", "node", "phase", "ready", "restarts", "ip", "hostPid", "reason"] {
        assert!(first.get(field).is_some(), "replica field {field} missing: {first}");
    }
    assert_eq!((first["phase"].as_str(), first["node"].as_str()), (Some("Running"), Some("cli-node")));
    let nodes = up.json(&["get", "nodes"]);
    for field in ["name", "address", "ready", "podCidr", "capacity", "allocated"] {
        assert!(nodes[0].get(field).is_some(), "node field {field} missing: {nodes}");
    }
    let yaml: serde_yaml::Value = serde_yaml::from_str(&up.ok(&["get", "replicas", "-o", "yaml"])).expect("valid YAML");
    assert_eq!(yaml.as_sequence().map(Vec::len), Some(2));
    let table = up.ok(&["get", "replicas", "-o", "wide"]);
    assert!(table.starts_with("NAME") && table.contains("HOST PID") && table.contains("Running"), "{table}");
    assert!(up.ok(&["get", "events"]).contains("Scheduled"));
    assert!(up.ok(&["get", "nodes"]).contains("cli-node"));

    // describe.
    let replica = first["name"].as_str().expect("name").to_owned();
    assert!(up.ok(&["describe", "service", "web"]).contains("Endpoints:"));
    assert!(up.ok(&["describe", "node", "cli-node"]).contains("Pod CIDR:"));
    let pid = first["hostPid"].as_i64().expect("pid");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid")), nix::sys::signal::Signal::SIGKILL).expect("kill -9");
    up.wait("the killed replica to be back", |u| {
        u.json(&["get", "replicas"]).as_array().is_some_and(|all| all.iter().any(|r| r["name"] == replica.as_str() && r["restarts"] == 1 && r["ready"] == true))
    });
    let described = up.ok(&["describe", "replica", &replica]);
    assert!(described.contains("Last exit:   code 137 (signal 9)") && described.contains("Restarted"), "{described}");

    // logs, exec, top, topology.
    let logs = up.ok(&["logs", &replica, "--tail", "3"]);
    assert!(logs.contains("response:200") && logs.lines().count() <= 3, "{logs}");
    let previous = up.ok(&["logs", &replica, "--previous"]);
    assert!(previous.contains("response:200"), "the run before the kill: {previous}");
    let stamped = up.ok(&["logs", &replica, "--tail", "1", "--timestamps", "--since", "1h"]);
    assert!(stamped.starts_with("20") && stamped.as_bytes().get(10) == Some(&b'T') && stamped.contains("Z "), "{stamped}");
    assert_eq!(up.ok(&["logs", &replica, "--limit-bytes", "5"]).len(), 5);
    let service_logs = up.ok(&["logs", "web", "--tail", "2"]);
    assert!(service_logs.lines().all(|l| l.starts_with("[web-")), "{service_logs}");
    assert_eq!(up.ok(&["exec", &replica, "--", "cat", "/etc/hostname"]).trim(), replica);
    assert_eq!(up.orch(&["exec", &replica, "--", "sh", "-c", "exit 3"]).status.code(), Some(3), "the command's exit code");
    // An exec'd command is confined as the replica's own: same seccomp filter, same
    // capability bounding set.
    let confined = up.ok(&["exec", &replica, "--", "sh", "-c", "grep -E '^(Seccomp|CapBnd):' /proc/self/status; grep CapBnd /proc/2/status"]);
    assert!(confined.contains("Seccomp:\t2"), "{confined}");
    let bounding: Vec<&str> = confined.lines().filter(|l| l.starts_with("CapBnd:")).collect();
    assert!(bounding.len() == 2 && bounding[0] == bounding[1], "exec and the replica's command (PID 2) differ: {confined}");
    // The container's environment reaches the command, and never a command line on the
    // host (every user reads /proc/*/cmdline): look while an exec runs.
    let mut running = up.command().args(["exec", &replica, "--", "sh", "-c", "echo \"$GREETING\"; exec sleep 5"]).stdout(Stdio::piped()).spawn().expect("exec");
    let mut greeting = String::new();
    read_until(running.stdout.as_mut().expect("stdout"), &mut greeting, "exec", |t| t.ends_with('\n'));
    assert_eq!(greeting.trim(), "two", "the replica's environment");
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        assert!(!String::from_utf8_lossy(&cmdline).contains("GREETING=two"), "the environment on a command line: {}", entry.path().display());
    }
    let _ = running.kill();
    let _ = running.wait();
    let mut piped = up.command().args(["exec", "-i", &replica, "--", "cat"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("orch exec -i");
    piped.stdin.take().expect("stdin").write_all(b"hello through stdin\n").expect("write");
    let echoed = piped.wait_with_output().expect("wait");
    assert_eq!(text(&echoed.stdout), "hello through stdin\n");
    // -it: an interactive shell on a pseudo-terminal (it echoes and prompts).
    let mut shell = up.command().args(["exec", "-it", &replica, "--", "sh"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("orch exec -it");
    shell.stdin.take().expect("stdin").write_all(b"tty; echo $((6*7))\nexit 5\n").expect("write");
    let session = shell.wait_with_output().expect("wait");
    let session_text = text(&session.stdout);
    assert!(session_text.contains("/dev/pts/") && session_text.contains("42"), "{session_text}");
    assert_eq!(session.status.code(), Some(5), "{session_text}");
    assert!(up.ok(&["top", "replicas"]).contains(&replica));
    assert!(up.ok(&["top", "nodes"]).contains("cli-node"));
    let dot = up.ok(&["topology", "-o", "dot"]);
    for r in replicas.as_array().expect("replicas") {
        assert!(dot.contains(r["name"].as_str().expect("name")), "the topology names every replica:\n{dot}");
    }
    let parsed = Command::new("dot").arg("-Tcanon").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
    let mut parsed = parsed.expect("Graphviz's dot (deploy/test.sh installs graphviz)");
    parsed.stdin.take().expect("stdin").write_all(dot.as_bytes()).expect("write");
    let parsed = parsed.wait_with_output().expect("dot");
    assert!(parsed.status.success(), "not valid DOT: {}\n{dot}", text(&parsed.stderr));

    let svg = up.ok(&["topology", "-o", "svg"]);
    assert!(svg.contains("<svg"), "{svg}");
    let mut follow = up.command().args(["logs", "-f", "--tail", "1", &replica]).stdout(Stdio::piped()).spawn().expect("orch logs -f");
    let mut followed = String::new();
    let mut out = follow.stdout.take().expect("stdout");
    // The readiness probe hits the page every second: httpd logs each request.
    read_until(&mut out, &mut followed, "logs -f", |text| text.matches("response:200").count() >= 3);
    let _ = follow.kill();
    let _ = follow.wait();

    // get -w prints the table, then rows as they change.
    let mut watch = up.command().args(["get", "services", "-w"]).stdout(Stdio::piped()).spawn().expect("get -w");
    let mut watched = String::new();
    let mut out = watch.stdout.take().expect("stdout");
    let row = |text: &str, ready: &str| text.lines().any(|l| l.starts_with("web ") && l.contains(&format!(" {ready} ")));
    read_until(&mut out, &mut watched, "get -w", |text| row(text, "2/2"));
    up.ok(&["scale", "service", "web", "--replicas", "1"]);
    read_until(&mut out, &mut watched, "get -w", |text| row(text, "1/1"));
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(watched.matches("NAME").count(), 1, "the header once: {watched}");

    // apply from standard input, delete by name.
    let mut stdin_apply = up.command().args(["apply", "-f", "-"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("apply -f -");
    let other = format!(
        "apiVersion: orch/v1\nkind: Service\nmetadata: {{name: other}}\nspec: {{replicas: 0, image: 'oci:{}:1.0'}}\n",
        up.dir.path().join("image").display()
    );
    stdin_apply.stdin.take().expect("stdin").write_all(other.as_bytes()).expect("write");
    let applied = stdin_apply.wait_with_output().expect("wait");
    assert_eq!(text(&applied.stdout).trim(), "service/other created");
    assert_eq!(up.ok(&["delete", "service", "other"]).trim(), "service/other deleted");
    assert_eq!(up.orch(&["get", "services", "other"]).status.code(), Some(1));

    // Configs and secrets from the command line: made from literals and files, listed and
    // described with their keys and sizes (a secret's value is never printed), sealed in
    // the store, deleted.
    let key_file = up.dir.path().join("tls.key");
    std::fs::write(&key_file, "-----BEGIN KEY-----\n").expect("write");
    let created = up.ok(&["create", "secret", "creds", "--from-literal", "password=p4ss-w0rd-x", "--from-file", &format!("tls.key={}", key_file.display())]);
    assert_eq!(created.trim(), "secret/creds created");
    assert_eq!(up.ok(&["create", "config", "site", "--from-literal", "greeting=hello"]).trim(), "config/site created");
    assert_eq!(up.ok(&["create", "config", "site", "--from-literal", "greeting=hello"]).trim(), "config/site unchanged");
    let listed = up.ok(&["get", "secrets", "-o", "yaml"]);
    assert!(listed.contains("password: 11") && listed.contains("tls.key: 20") && !listed.contains("p4ss-w0rd-x"), "{listed}");
    let described = up.ok(&["describe", "secret", "creds"]);
    assert!(described.contains("password (11 bytes)") && !described.contains("p4ss-w0rd-x"), "{described}");
    assert_eq!(up.json(&["get", "configs"])[0]["data"]["greeting"], "hello");
    assert!(up.ok(&["get", "secrets"]).contains("creds"));
    let store = std::fs::read(up.dir.path().join("state/controller.redb")).expect("the store file");
    assert!(!store.windows(11).any(|w| w == b"p4ss-w0rd-x"), "the store file holds the secret in clear");
    assert_eq!(mode(&up.pki().join("secrets.key")), 0o600, "orch up made the secrets key, private");
    assert_eq!(up.ok(&["delete", "secret", "creds"]).trim(), "secret/creds deleted");
    assert_eq!(up.ok(&["delete", "config", "site"]).trim(), "config/site deleted");
    assert_eq!(up.orch(&["describe", "secret", "creds"]).status.code(), Some(1));

    // A securityContext reaches the replica: its user and group, a read-only root, no
    // capabilities, and a user namespace (root inside is an unprivileged host id).
    let locked = up.dir.path().join("locked.yaml");
    let locked_text = format!(
        "apiVersion: orch/v1\nkind: Service\nmetadata: {{name: locked}}\nspec:\n  image: 'oci:{}:1.0'\n  command: [sh, -c, 'exec sleep 1000']\n  \
         securityContext: {{runAsUser: 1000, runAsGroup: 3000, readOnlyRootFilesystem: true, userNamespace: true, capabilities: {{drop: [ALL]}}}}\n",
        up.dir.path().join("image").display()
    );
    std::fs::write(&locked, locked_text).expect("write");
    up.ok(&["apply", "-f", locked.to_str().expect("path"), "--wait", "--timeout", "120"]);
    let locked_replica =
        up.json(&["get", "replicas"]).as_array().and_then(|all| all.iter().find(|r| r["service"] == "locked").cloned()).expect("a locked replica");
    let name = locked_replica["name"].as_str().expect("name");
    let inside = up.orch(&["exec", name, "--", "sh", "-c", "id; cat /proc/self/uid_map; grep -E '^(CapEff|Seccomp):' /proc/self/status; touch /x"]);
    let (said, complained) = (text(&inside.stdout), text(&inside.stderr));
    assert!(said.contains("uid=1000 gid=3000"), "{said}");
    assert_eq!(said.lines().nth(1).map(|l| l.split_whitespace().collect::<Vec<_>>()), Some(vec!["0", "100000", "65536"]), "{said}");
    assert!(said.contains("CapEff:\t0000000000000000") && said.contains("Seccomp:\t2"), "{said}");
    assert!(complained.contains("Read-only file system"), "{complained}");
    let host_pid = locked_replica["hostPid"].as_i64().expect("hostPid");
    let children = std::fs::read_to_string(format!("/proc/{host_pid}/task/{host_pid}/children")).expect("the init's children");
    let command = children.split_whitespace().next().expect("the command");
    let status = std::fs::read_to_string(format!("/proc/{command}/status")).expect("status");
    assert!(status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().skip(1).all(|u| u == "101000")), "on the host: {status}");
    assert_eq!(up.ok(&["delete", "service", "locked"]).trim(), "service/locked deleted");
    up.wait("the locked replica to go", |u| u.json(&["get", "replicas"]).as_array().is_some_and(|all| all.iter().all(|r| r["service"] != "locked")));

    // A chatty replica's log is rotated while it runs, within its policy, and read in
    // bounded chunks: a 100 MiB log (kept whole by a large policy) streams through.
    let chatty = up.dir.path().join("chatty.yaml");
    let script = "i=0; while [ $i -lt 20000 ]; do echo \"line $i\"; i=$((i+1)); done; \
                  yes 0123456789abcdef0123456789abcdef0123456789abcdef0123456789 | head -c 104888902; echo done; exec sleep 1000";
    let chatty_text = format!(
        "apiVersion: orch/v1\nkind: Service\nmetadata: {{name: chatty}}\nspec:\n  image: 'oci:{}:1.0'\n  command: [sh, -c, '{script}']\n  \
         logs: {{maxSize: 64Ki, maxFiles: 3}}\n---\napiVersion: orch/v1\nkind: Service\nmetadata: {{name: bulky}}\nspec:\n  image: 'oci:{}:1.0'\n  \
         command: [sh, -c, '{script}']\n  logs: {{maxSize: 1Gi, maxFiles: 2}}\n",
        up.dir.path().join("image").display(),
        up.dir.path().join("image").display()
    );
    std::fs::write(&chatty, chatty_text).expect("write");
    up.ok(&["apply", "-f", chatty.to_str().expect("path"), "--wait", "--timeout", "120"]);
    let replica_of = |service: &str| {
        up.json(&["get", "replicas"]).as_array().and_then(|all| all.iter().find(|r| r["service"] == service).cloned()).expect("a replica")["name"]
            .as_str()
            .expect("name")
            .to_owned()
    };
    let (chatty_replica, bulky_replica) = (replica_of("chatty"), replica_of("bulky"));
    for name in [&chatty_replica, &bulky_replica] {
        up.wait("the chatty replicas to finish writing", |u| u.ok(&["logs", name, "--tail", "1"]) == "done\n");
    }
    let logs_dir = state.join("agent/logs");
    let files: Vec<(String, u64)> = std::fs::read_dir(&logs_dir)
        .expect("logs")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&format!("{chatty_replica}.log")))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().map_or(0, |m| m.len())))
        .collect();
    assert!(files.len() == 3 && files.iter().all(|(_, size)| *size <= 64 << 10), "rotated within 64Ki x 3: {files:?}");
    let bulky_size = std::fs::metadata(logs_dir.join(format!("{bulky_replica}.log"))).expect("bulky log").len();
    assert!(bulky_size > 100 << 20, "{bulky_size}");
    let tail = up.ok(&["logs", &bulky_replica, "--tail", "2"]);
    assert_eq!(tail, "0123456789abcdef0123456789abcdef0123456789abcdef0123456789\ndone\n");
    assert_eq!(up.ok(&["logs", &bulky_replica, "--limit-bytes", "11"]), "line 0\nline");
    let all = up.command().args(["logs", &bulky_replica, "--since", "1h"]).output().expect("orch logs");
    assert!(all.status.success() && all.stdout.len() > 100 << 20, "{} bytes: {}", all.stdout.len(), text(&all.stderr));
    assert!(all.stdout.ends_with(b"done\n"));
    let bulky = up.json(&["get", "replicas"]).as_array().and_then(|a| a.iter().find(|r| r["name"] == bulky_replica.as_str()).cloned()).expect("bulky");
    assert_eq!(bulky["restarts"], 0, "{bulky}");
    // A replica whose spec names no pids limit gets the default one.
    let pids_max = ["pids", ""]
        .iter()
        .map(|hierarchy| Path::new("/sys/fs/cgroup").join(hierarchy).join(&up.cgroup_parent).join(&bulky_replica).join("pids.max"))
        .find(|path| path.exists())
        .expect("the replica's pids.max (cgroup v1 or v2)");
    assert_eq!(std::fs::read_to_string(&pids_max).expect("pids.max").trim(), "4096");
    up.ok(&["delete", "-f", chatty.to_str().expect("path")]);
    up.wait("the chatty replicas to go", |u| {
        u.json(&["get", "replicas"]).as_array().is_some_and(|all| all.iter().all(|r| r["service"] != "chatty" && r["service"] != "bulky"))
    });
    // The agent removes a deleted replica's logs once its container is gone.
    up.wait("the chatty replicas' logs to go", |_| {
        std::fs::read_dir(&logs_dir)
            .expect("logs")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .all(|name| !name.starts_with(&chatty_replica) && !name.starts_with(&bulky_replica))
    });

    // scale and rollout status.
    assert_eq!(up.ok(&["scale", "service", "web", "--replicas", "3"]).trim(), "service/web scaled to 3");
    assert!(up.ok(&["rollout", "status", "service", "web", "--timeout", "120"]).contains("successfully rolled out"));

    // Rollouts. The history names what made each template; undo goes back to the one
    // before (the replicas say so); restart replaces every replica on the same template;
    // pause records a new template and rolls nothing until resumed.
    let revisions = |up: &Up| up.json(&["rollout", "history", "service", "web"]).as_array().cloned().unwrap_or_default();
    let current = |up: &Up| revisions(up).into_iter().find(|r| r["current"] == true).unwrap_or_default();
    let greetings = |up: &Up| -> BTreeSet<String> {
        let replicas = up.json(&["get", "replicas", "web"]);
        replicas
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["name"].as_str())
            .map(|name| up.ok(&["exec", name, "--", "sh", "-c", "echo $GREETING"]).trim().to_owned())
            .collect()
    };
    let web_replicas = |up: &Up| -> BTreeSet<String> {
        up.json(&["get", "replicas", "web"]).as_array().into_iter().flatten().filter_map(|r| r["name"].as_str().map(str::to_owned)).collect()
    };
    up.wait("the current template recorded", |u| current(u)["change"] == "apply web.yaml: env GREETING");
    let before_undo = revisions(&up);
    assert!(before_undo.iter().any(|r| r["change"] == "apply web.yaml" && r["current"] == false), "{before_undo:#?}");
    assert_eq!(up.ok(&["rollout", "undo", "service", "web"]).lines().next(), Some("service/web rolled back to the revision before"));
    up.ok(&["rollout", "status", "service", "web", "--timeout", "120"]);
    assert_eq!(greetings(&up), BTreeSet::from(["one".to_owned()]), "undone: the first template's environment");
    up.wait("the undo recorded", |u| current(u)["change"].as_str().is_some_and(|c| c.starts_with("undo to revision ") && c.ends_with(": env GREETING")));
    assert_eq!(revisions(&up).len(), before_undo.len(), "the template that ran before moved to the newest number: {:#?}", revisions(&up));
    let table = up.ok(&["rollout", "history", "service", "web", "-o", "table"]);
    assert!(table.starts_with("REVISION") && table.lines().any(|l| l.contains('*') && l.contains("undo to revision")), "{table}");

    let before_restart = web_replicas(&up);
    assert!(up.ok(&["rollout", "restart", "service", "web"]).starts_with("service/web restarting"));
    up.ok(&["rollout", "status", "service", "web", "--timeout", "120"]);
    let restarted = web_replicas(&up);
    assert!(restarted.is_disjoint(&before_restart), "every replica replaced: {before_restart:?} -> {restarted:?}");
    assert_eq!(greetings(&up), BTreeSet::from(["one".to_owned()]), "a restart keeps the template");
    up.wait("the restart recorded", |u| current(u)["change"] == "restart");

    assert_eq!(up.ok(&["rollout", "pause", "service", "web"]).trim(), "service/web paused");
    let three = up.manifest(3, "three");
    up.ok(&["apply", "-f", three.to_str().expect("path")]);
    up.wait("the paused template recorded", |u| revisions(u).last().is_some_and(|r| r["change"] == "apply web.yaml: env GREETING"));
    let paused = up.orch(&["rollout", "status", "service", "web", "--timeout", "120"]);
    assert!(!paused.status.success() && text(&paused.stderr).contains("rollout is paused"), "{}", text(&paused.stderr));
    assert_eq!(web_replicas(&up), restarted, "paused: nothing rolled");
    let refused = up.orch(&["rollout", "restart", "service", "web"]);
    assert!(!refused.status.success() && text(&refused.stderr).contains("rollouts are paused"), "a restart while paused: {}", text(&refused.stderr));
    assert_eq!(up.ok(&["rollout", "resume", "service", "web"]).trim(), "service/web resumed");
    up.ok(&["rollout", "status", "service", "web", "--timeout", "120"]);
    assert_eq!(greetings(&up), BTreeSet::from(["three".to_owned()]), "resumed: the new template rolled out");
    let missing = up.orch(&["rollout", "undo", "service", "web", "--to-revision", "99"]);
    assert!(!missing.status.success() && text(&missing.stderr).contains("has no revision 99"), "{}", text(&missing.stderr));

    // Metrics and health, on the controller's listener and the node's: Prometheus' text
    // format (promtool agrees) with the cluster as it is; /healthz, /readyz.
    let through_node_port = http_get(SocketAddr::from(([127, 0, 0, 1], up.node_port))).expect("node port answers");
    assert!(through_node_port.contains("Hello from web-"));
    let controller_metrics = assert_series_at_least(
        &up.metrics,
        &[
            ("orch_replicas{service=\"web\",phase=\"Running\",ready=\"true\"}", 3.0),
            ("orch_service_desired_replicas{service=\"web\"}", 3.0),
            ("orch_leader", 1.0),
            ("orch_node_ready{node=\"cli-node\"}", 1.0),
            ("orch_reconcile_duration_seconds_count", 1.0),
            ("orch_scheduling_latency_seconds_count", 3.0),
            ("orch_store_operation_duration_seconds_count{operation=\"put\"}", 1.0),
            ("orch_node_heartbeats_total{node=\"cli-node\"}", 1.0),
        ],
    );
    let age = sample(&controller_metrics, "orch_node_heartbeat_age_seconds{node=\"cli-node\"}").expect("heartbeat age");
    assert!(age < 5.0, "the node's last heartbeat is {age} s old");
    assert_series_at_least(
        &up.node_metrics,
        &[
            ("orch_agent_session_up", 1.0),
            ("orch_node_replicas{service=\"web\",phase=\"Running\",ready=\"true\"}", 3.0),
            ("orch_container_start_duration_seconds_count{result=\"success\"}", 3.0),
            ("orch_probe_results_total{service=\"web\",probe=\"readiness\",result=\"success\"}", 1.0),
            ("orch_balancer_connections_total{service=\"web\"}", 1.0),
            ("orch_balancer_bytes_total{service=\"web\",direction=\"to_client\"}", 100.0),
        ],
    );
    assert_eq!(scrape(&up.metrics, "/healthz"), (200, "ok\n".to_owned()));
    assert_eq!(scrape(&up.metrics, "/readyz"), (200, "ready: leading\n".to_owned()));
    let node_ready = scrape(&up.node_metrics, "/readyz");
    assert!(node_ready.0 == 200 && node_ready.1.starts_with("ready: session with "), "{node_ready:?}");
    assert_eq!(scrape(&up.node_metrics, "/nothing").0, 404);

    // --log-format json: each log line one JSON object; a replica's lines carry its name
    // and service — the apply, its creation and binding on the controller, its start on
    // the node.
    let lines: Vec<serde_json::Value> = up
        .log()
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["span"]["name"] == "apply" && l["span"]["service"] == "web" && l["fields"]["message"] == "service applied"),
        "no apply line"
    );
    let bound: BTreeSet<String> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "replica created and bound" && l["span"]["service"] == "web" && l["fields"]["node"] == "cli-node")
        .filter_map(|l| l["span"]["replica"].as_str().map(str::to_owned))
        .collect();
    let started: BTreeSet<String> = lines
        .iter()
        .filter(|l| l["fields"]["kind"] == "Started" && l["span"]["name"] == "replica" && l["span"]["service"] == "web")
        .filter_map(|l| l["span"]["replica"].as_str().map(str::to_owned))
        .collect();
    assert!(!bound.is_empty() && bound.is_subset(&started), "every replica bound is seen starting, by name: bound {bound:?}, started {started:?}");

    // cordon: the one node keeps its replicas, a new one has nowhere to go and says
    // why; a drain with nowhere to go times out and stops nothing; uncordon lets it run.
    assert!(up.ok(&["cordon", "cli-node"]).contains("node/cli-node cordoned (Ready,SchedulingDisabled)"));
    assert_eq!(up.json(&["get", "nodes"])[0]["unschedulable"], true);
    up.ok(&["scale", "service", "web", "--replicas", "4"]);
    up.wait("the fourth replica pending on a cordoned node", |u| {
        u.json(&["get", "replicas"]).as_array().is_some_and(|all| all.iter().any(|r| r["reason"].as_str().is_some_and(|why| why.contains("1 cordoned"))))
    });
    let drain = up.orch(&["drain", "cli-node", "--timeout", "1"]);
    assert_eq!(drain.status.code(), Some(1), "{}", text(&drain.stdout));
    assert!(text(&drain.stderr).contains("timed out after 1s draining node cli-node: 3 replica(s) still on it"), "{}", text(&drain.stderr));
    assert!(up.ok(&["get", "nodes"]).contains("Ready,SchedulingDisabled,Draining"));
    assert_eq!(up.ready_replicas(), 3, "maxUnavailable holds: nothing stopped for replacements that cannot start");
    assert!(up.ok(&["uncordon", "cli-node"]).contains("node/cli-node uncordoned (Ready)"));
    up.wait("4 ready replicas after the uncordon", |u| u.ready_replicas() == 4);
    up.ok(&["scale", "service", "web", "--replicas", "3"]);
    up.wait("3 ready replicas", |u| u.ready_replicas() == 3 && u.json(&["get", "replicas"]).as_array().is_some_and(|a| a.len() == 3));
    let unknown_node = up.orch(&["cordon", "nope"]);
    assert_eq!(text(&unknown_node.stderr).trim(), "error: node \"nope\" is not registered");

    // Errors: one clear line, exit 1.
    let unreachable = Command::new(ORCH).args(["--server", "127.0.0.1:1", "get", "services"]).arg("--tls-dir").arg(up.pki()).output().expect("run");
    assert_eq!(unreachable.status.code(), Some(1));
    let message = text(&unreachable.stderr);
    assert!(message.starts_with("error: cannot reach the orch controller at 127.0.0.1:1") && message.lines().count() == 1, "{message}");
    let unknown = up.orch(&["describe", "service", "nope"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert_eq!(text(&unknown.stderr).trim(), "error: service \"nope\" not found");
    let bad = up.dir.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: orch/v1\nkind: Service\nmetadata: {name: bad}\nspec: {replicas: -1, image: busybox}\n").expect("write");
    let invalid = up.orch(&["apply", "-f", bad.to_str().expect("path")]);
    assert_eq!(invalid.status.code(), Some(1));
    assert!(text(&invalid.stderr).contains("bad.yaml: document 1: spec.replicas: must be between 0 and 10000, got -1"), "{}", text(&invalid.stderr));
    assert!(up.orch(&["get", "services", "bad"]).status.code() == Some(1), "nothing was applied");
    assert!(up.ok(&["completion", "bash"]).contains("orch"));
    let bad_range = Command::new(ORCH).args(["up", "--cluster-cidr", "10.88.0.0/24"]).output().expect("run");
    assert_eq!(bad_range.status.code(), Some(2));
    assert!(text(&bad_range.stderr).contains("\"10.88.0.0/24\": the prefix must be between 8 and 16"), "{}", text(&bad_range.stderr));

    // Ctrl-C stops everything; a new `orch up` brings the service back from the store.
    up.interrupt();
    up.assert_nothing_left();
    up.start(&[]);
    up.wait("the 3 replicas back after a restart of orch up", |u| u.ready_replicas() == 3);

    // delete by manifest; then nothing left at all.
    assert_eq!(up.ok(&["delete", "-f", changed.to_str().expect("path")]).trim(), "service/web deleted");
    up.wait("the replicas to go", |u| u.json(&["get", "replicas"]).as_array().is_some_and(Vec::is_empty));
    up.interrupt();
    up.assert_nothing_left();
}

/// Runs `program args` as the unprivileged user `nobody` (setpriv: uid, gid and no
/// supplementary groups), with an environment of its own (no ORCH_* from the tests).
fn as_nobody(program: &Path, args: &[&str]) -> Output {
    as_nobody_in("", program, args)
}

/// As [`as_nobody`], with `group` as its one supplementary group (none when empty).
fn as_nobody_in(group: &str, program: &Path, args: &[&str]) -> Output {
    let groups = if group.is_empty() { "--clear-groups".to_owned() } else { format!("--groups={group}") };
    Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", &groups, "--"])
        .arg(program)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", "/nonexistent")
        .stdin(Stdio::null())
        .output()
        .expect("setpriv (util-linux)")
}

/// The one line a refused caller gets, and exit 1.
fn assert_refused(what: &str, out: &Output) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{what}: exit 1 expected; stdout: {} stderr: {stderr}", text(&out.stdout));
    assert!(stderr.starts_with("error: permission denied: ") && stderr.lines().count() == 1, "{what}: one `permission denied` line expected, got: {stderr}");
}

/// The TCP ports a process listens on (from `ss`).
fn listening_ports(pid: u32) -> Vec<u16> {
    let out = Command::new("ss").args(["-Hltnp"]).output().expect("ss (iproute2)");
    text(&out.stdout)
        .lines()
        .filter(|line| line.contains(&format!("pid={pid},")))
        .filter_map(|line| line.split_whitespace().nth(3)?.rsplit_once(':')?.1.parse().ok())
        .collect()
}

#[test]
fn a_local_user_who_is_not_root_can_neither_read_nor_change_anything() {
    use std::os::unix::fs::PermissionsExt;
    let mut up = Up::new();
    let manifest = up.manifest(1, "door");
    up.start(&[&manifest]);
    up.wait("1 ready replica", |u| u.ready_replicas() == 1);
    let replica = up.json(&["get", "replicas"])[0]["name"].as_str().expect("replica name").to_owned();
    let services_before = up.json(&["get", "services"]);

    // The PKI orch up made: root's (the admin credential also the `orch` group's, where
    // that group exists), nothing for other users.
    let mode = |path: &Path| std::fs::metadata(path).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&up.pki()) & 0o007, 0, "the PKI directory is closed to other users");
    assert_eq!(mode(&up.pki().join("admin.key")) & 0o037, 0, "admin.key");
    for key in ["ca.key", "controller.key", "node-cli-node.key"] {
        assert_eq!(mode(&up.pki().join(key)), 0o600, "{key}");
    }

    // What nobody has: a 0755 copy of the binaries, a manifest it can read, and a PKI
    // of its own (its own CA, and the cluster's public CA certificate to trust the
    // server with) — so that the server's refusal is tested, not only the file modes.
    let public = tempfile::Builder::new().prefix("orch-nobody-").tempdir().expect("tempdir");
    std::fs::set_permissions(public.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let orch = public.path().join("orch");
    std::fs::copy(ORCH, &orch).expect("copy orch");
    let controller_binary = public.path().join("orch-controller");
    std::fs::copy(Path::new(ORCH).with_file_name("orch-controller"), &controller_binary).expect("copy orch-controller");
    for binary in [&orch, &controller_binary] {
        std::fs::set_permissions(binary, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let scaled = public.path().join("scaled.yaml");
    std::fs::write(&scaled, std::fs::read_to_string(up.manifest(3, "door")).expect("manifest")).expect("write");
    std::fs::set_permissions(&scaled, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let own = public.path().join("pki");
    let made = as_nobody(&controller_binary, &["--tls-dir", own.to_str().expect("path"), "init"]);
    assert!(made.status.success(), "nobody makes a PKI of its own: {}", text(&made.stderr));
    std::fs::copy(up.pki().join("ca.pem"), own.join("ca.pem")).expect("the cluster's CA certificate is public");

    let server = up.server.clone();
    let pki = up.pki();
    let (pki, own, scaled) = (pki.to_str().expect("path"), own.to_str().expect("path"), scaled.to_str().expect("path"));
    let attempts: Vec<Vec<&str>> = vec![
        vec!["get", "services"],
        vec!["apply", "-f", scaled],
        vec!["scale", "service", "web", "--replicas", "3"],
        vec!["exec", &replica, "--", "id"],
        vec!["logs", &replica],
        vec!["delete", "service", "web"],
    ];
    for attempt in &attempts {
        // With the cluster's credential, which nobody cannot read.
        let mut args = vec!["--server", &server, "--tls-dir", pki];
        args.extend(attempt);
        assert_refused(&format!("nobody: orch {attempt:?} with root's credential"), &as_nobody(&orch, &args));
        // With a certificate of its own: the controller refuses it.
        let mut args = vec!["--server", &server, "--tls-dir", own];
        args.extend(attempt);
        assert_refused(&format!("nobody: orch {attempt:?} with its own certificate"), &as_nobody(&orch, &args));
    }
    // In plain text, and with no flags at all (the defaults: /etc/orch/pki, which nobody
    // may not read when it exists).
    let plain = format!("http://{server}");
    assert_refused("nobody: plain text", &as_nobody(&orch, &["--server", &plain, "get", "services"]));
    let defaults = as_nobody(&orch, &["--server", &server, "get", "services"]);
    assert_eq!(defaults.status.code(), Some(1), "nobody with the defaults: {}", text(&defaults.stderr));

    // The node API, called directly: it takes neither nobody's certificate nor plain text…
    let pid = up.child.as_ref().expect("orch up runs").id();
    let ports = listening_ports(pid);
    let others = [server.clone(), up.metrics.clone(), up.node_metrics.clone(), format!("127.0.0.1:{}", up.node_port)];
    let api_port = ports.iter().copied().find(|p| !others.contains(&format!("127.0.0.1:{p}"))).expect("the node API's port");
    let node_api = format!("127.0.0.1:{api_port}");
    assert_refused("nobody: the node API with its own certificate", &as_nobody(&orch, &["--server", &node_api, "--tls-dir", own, "get", "services"]));
    assert_refused("nobody: the node API in plain text", &as_nobody(&orch, &["--server", &format!("http://{node_api}"), "get", "services"]));
    // …nor the CLI's own admin certificate: only the controller's.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let denied = runtime.block_on(async {
        let tls = orch_api::tls::client_config(&up.pki(), "admin").expect("admin credential");
        let channel =
            tonic::transport::Channel::from_shared(format!("https://{node_api}")).expect("url").tls_config(tls).expect("tls").connect().await.expect("connect");
        let mut client = orch_api::pb::node_agent_client::NodeAgentClient::new(channel);
        client.inspect(orch_api::pb::InspectRequest::default()).await.expect_err("the admin certificate calls the node API")
    });
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");

    // Nothing changed; root's CLI, with no more than its credential, still works.
    assert_eq!(up.json(&["get", "services"]), services_before, "nobody changed nothing");
    let replicas = up.json(&["get", "replicas"]);
    assert_eq!(replicas.as_array().map(Vec::len), Some(1));
    assert_eq!(replicas[0]["restarts"], 0);
    assert!(up.ok(&["exec", &replica, "--", "id"]).contains("uid=0(root)"));
    assert_eq!(up.ok(&["scale", "service", "web", "--replicas", "2"]).trim(), "service/web scaled to 2");
    up.wait("2 ready replicas", |u| u.ready_replicas() == 2);

    // A member of the `orch` group may drive orch (the README's way to give a user
    // access): with the group present, the PKI hands the CLI's credential to it, and
    // nobody with that group as a supplementary group gets in.
    struct GroupGuard(bool);
    impl Drop for GroupGuard {
        fn drop(&mut self) {
            if self.0 {
                let _ = Command::new("groupdel").arg(orch_api::tls::ADMIN_GROUP).status();
            }
        }
    }
    let group_exists = || Command::new("getent").args(["group", orch_api::tls::ADMIN_GROUP]).output().expect("getent").status.success();
    let _group = GroupGuard(!group_exists() && Command::new("groupadd").args(["--system", orch_api::tls::ADMIN_GROUP]).status().expect("groupadd").success());
    assert!(group_exists(), "the orch group exists");
    orch_api::tls::ensure(&up.pki(), &[], &[]).expect("the PKI hands the CLI's credential to the group");
    assert_eq!(mode(&up.pki().join("admin.key")), 0o640, "admin.key: the group reads it");
    assert_eq!(mode(&up.pki()), 0o750, "the PKI directory: the group enters it");
    assert_eq!(mode(&up.pki().join("ca.key")), 0o600, "every other key stays root's");
    std::fs::set_permissions(up.dir.path(), std::fs::Permissions::from_mode(0o711)).expect("let others reach the PKI directory");
    let member = as_nobody_in(orch_api::tls::ADMIN_GROUP, &orch, &["--server", &server, "--tls-dir", pki, "get", "services"]);
    std::fs::set_permissions(up.dir.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod back");
    assert!(member.status.success() && text(&member.stdout).contains("web"), "a member of the orch group: {}", text(&member.stderr));

    // A controller binary without a PKI refuses plain text unless told so explicitly.
    let refused = Command::new(Path::new(ORCH).with_file_name("orch-controller"))
        .args(["--store", &format!("embedded:{}", up.dir.path().join("x.redb").display()), "--listen", "127.0.0.1:1"])
        .output()
        .expect("orch-controller");
    assert_eq!(refused.status.code(), Some(1));
    assert!(text(&refused.stderr).contains("no --tls-dir"), "{}", text(&refused.stderr));

    assert_eq!(up.ok(&["delete", "service", "web"]).trim(), "service/web deleted");
    up.wait("the replicas to go", |u| u.json(&["get", "replicas"]).as_array().is_some_and(Vec::is_empty));
    up.interrupt();
    up.assert_nothing_left();
}

/// `GET path` on a metrics listener: the status code and the body.
fn scrape(address: &str, path: &str) -> (u16, String) {
    common::http_get_status(address, path).unwrap_or_else(|e| panic!("GET {path} on {address}: {e}"))
}

/// Scrapes `address`: 200, promtool accepts it, and each series is at least its value.
fn assert_series_at_least(address: &str, series: &[(&str, f64)]) -> String {
    let (status, metrics) = scrape(address, "/metrics");
    assert_eq!(status, 200);
    promtool_accepts(&metrics);
    for (name, at_least) in series {
        let value = sample(&metrics, name).unwrap_or_else(|| panic!("{name} missing:\n{metrics}"));
        assert!(value >= *at_least, "{name} = {value}, expected at least {at_least}");
    }
    metrics
}

/// The value of one series (`name{labels}` exactly as exposed) in a scrape.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Debian's `promtool check metrics` reads the exposition without a complaint.
fn promtool_accepts(metrics: &str) {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; deploy/test.sh installs it)");
    promtool.stdin.take().expect("stdin").write_all(metrics.as_bytes()).expect("feed promtool");
    let checked = promtool.wait_with_output().expect("promtool");
    assert!(checked.status.success(), "promtool check metrics: {}{}\n{metrics}", text(&checked.stdout), text(&checked.stderr));
}

/// kubectl's conventions, on a `orch up` of its own: `apply --dry-run` and `diff` (the
/// store untouched, diff's exit status), `-l` selectors on get and delete, `-o name`,
/// `--no-headers`, deletions in `get -w` (a table and JSON), and contexts in the config
/// file `ORCH_CONFIG` names.
#[test]
fn kubectl_conventions_against_orch_up() {
    let mut up = Up::new();
    up.start(&[]);
    up.wait("the node", |u| {
        let out = u.orch(&["get", "nodes", "-o", "json"]);
        out.status.success() && serde_json::from_slice::<serde_json::Value>(&out.stdout).is_ok_and(|nodes| nodes[0]["ready"] == true)
    });
    let image = format!("oci:{}:1.0", up.dir.path().join("image").display());
    let service = |name: &str, labels: &str, replicas: u32, greeting: &str| {
        format!(
            "apiVersion: orch/v1\nkind: Service\nmetadata: {{name: {name}{labels}}}\nspec:\n  replicas: {replicas}\n  image: '{image}'\n  \
             env: [{{name: GREETING, value: {greeting}}}]\n"
        )
    };
    let write = |file: &str, text: String| {
        let path = up.dir.path().join(file);
        std::fs::write(&path, text).expect("write");
        path.to_str().expect("path").to_owned()
    };
    let stack = |web_replicas: u32, greeting: &str| {
        format!(
            "{}---\n{}---\n{}",
            service("web", ", labels: {app: web, tier: front}", web_replicas, greeting),
            service("cache", ", labels: {app: cache}", 0, "hi"),
            service("batch", "", 0, "hi")
        )
    };
    let first = write("stack.yaml", stack(1, "one"));

    // --dry-run: the controller's outcome, nothing written.
    let dry = up.ok(&["apply", "-f", &first, "--dry-run"]);
    assert_eq!(dry, "service/web created (dry run)\nservice/cache created (dry run)\nservice/batch created (dry run)\n");
    let nothing = up.orch(&["get", "services"]);
    assert!(nothing.status.success() && nothing.stdout.is_empty(), "{}", text(&nothing.stdout));
    assert_eq!(text(&nothing.stderr), "No resources found\n", "as kubectl, on stderr");
    // diff against nothing: every field added, exit 1.
    let created = up.orch(&["diff", "-f", &first]);
    let shown = text(&created.stdout);
    assert_eq!(created.status.code(), Some(1), "{shown}{}", text(&created.stderr));
    assert!(shown.starts_with("service/web created\n+metadata.labels.app: web\n+metadata.labels.tier: front\n"), "{shown}");
    assert!(shown.contains(&format!("+spec.image: {image}\n")) && shown.contains("service/batch created\n"), "{shown}");
    assert!(up.orch(&["get", "services", "web"]).status.code() == Some(1), "diff applied nothing");

    up.ok(&["apply", "-f", &first, "--wait", "--timeout", "120"]);
    let same = up.orch(&["diff", "-f", &first]);
    assert_eq!((same.status.code(), text(&same.stdout)), (Some(0), String::new()), "no differences: {}", text(&same.stderr));
    let second = write("stack2.yaml", stack(2, "two"));
    let changed = up.orch(&["diff", "-f", &second]);
    assert_eq!(changed.status.code(), Some(1));
    assert_eq!(
        text(&changed.stdout),
        "service/web configured\n-spec.env[GREETING].value: one\n+spec.env[GREETING].value: two\n-spec.replicas: 1\n+spec.replicas: 2\n",
        "only web, field by field"
    );
    let dry = up.ok(&["apply", "-f", &second, "--dry-run"]);
    assert_eq!(dry, "service/web configured (dry run)\nservice/cache unchanged (dry run)\nservice/batch unchanged (dry run)\n");
    let web = up.json(&["get", "services", "web"]);
    assert_eq!((web[0]["generation"].as_u64(), web[0]["replicas"].as_u64()), (Some(1), Some(1)), "the dry run wrote nothing: {web}");
    let missing = up.orch(&["diff", "-f", "/nonexistent.yaml"]);
    assert_eq!(missing.status.code(), Some(2), "an error is 2, not 1");
    assert!(text(&missing.stderr).contains("/nonexistent.yaml"), "{}", text(&missing.stderr));
    let bad = write("bad.yaml", service("bad", "", 1, "x").replace("replicas: 1", "replicas: -1"));
    let invalid = up.orch(&["diff", "-f", &bad]);
    assert_eq!(invalid.status.code(), Some(2));
    assert!(text(&invalid.stderr).contains("spec.replicas: must be between 0 and 10000, got -1"), "{}", text(&invalid.stderr));
    let invalid = up.orch(&["apply", "-f", &bad, "--dry-run"]);
    assert!(invalid.status.code() == Some(1) && text(&invalid.stderr).contains("spec.replicas"), "{}", text(&invalid.stderr));

    // Selectors pick the right services (and replicas by their service's labels).
    let names = |args: &[&str]| -> BTreeSet<String> {
        let mut all = args.to_vec();
        all.extend(["-o", "name"]);
        up.ok(&all).lines().map(str::to_owned).collect()
    };
    let set = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<String>>();
    assert_eq!(names(&["get", "services"]), set(&["service/web", "service/cache", "service/batch"]));
    for (selector, chosen) in [
        ("app=web", &["service/web"][..]),
        ("app==cache", &["service/cache"]),
        ("app!=web", &["service/cache", "service/batch"]),
        ("tier", &["service/web"]),
        ("!app", &["service/batch"]),
        ("app,!tier", &["service/cache"]),
        ("app=web,tier=back", &[]),
    ] {
        assert_eq!(names(&["get", "services", "-l", selector]), set(chosen), "-l {selector}");
    }
    let web_replicas = names(&["get", "replicas", "-l", "app=web"]);
    assert!(web_replicas.len() == 1 && web_replicas.iter().all(|r| r.starts_with("replica/web-")), "{web_replicas:?}");
    assert!(names(&["get", "replicas", "-l", "app=cache"]).is_empty());
    assert_eq!(names(&["get", "nodes"]), set(&["node/cli-node"]));
    let rows = up.ok(&["get", "services", "--no-headers"]);
    assert!(rows.lines().count() == 3 && !rows.contains("NAME") && rows.lines().any(|l| l.starts_with("web ")), "{rows}");
    assert!(up.ok(&["get", "replicas", "--no-headers", "-o", "wide"]).starts_with("web-"));
    let bad_selector = up.orch(&["get", "services", "-l", "app=we b"]);
    assert_eq!(bad_selector.status.code(), Some(1));
    assert!(
        text(&bad_selector.stderr).starts_with("error: selector \"app=we b\": \"app=we b\": the value must be a label value"),
        "{}",
        text(&bad_selector.stderr)
    );
    let both = up.orch(&["get", "services", "web", "-l", "app=web"]);
    assert!(both.status.code() == Some(2) && text(&both.stderr).contains("--selector"), "{}", text(&both.stderr));

    // get -w shows deletions: a table row marked (deleted), a JSON DELETED event.
    let mut table_watch = up.command().args(["get", "services", "-w"]).stdout(Stdio::piped()).spawn().expect("get -w");
    let mut json_watch = up.command().args(["get", "services", "-w", "-o", "json"]).stdout(Stdio::piped()).spawn().expect("get -w -o json");
    // One watched by name too: its deletion is a row, not a "not found" error.
    let mut named_watch = up.command().args(["get", "service", "batch", "-w"]).stdout(Stdio::piped()).spawn().expect("get NAME -w");
    let (mut table_out, mut json_out) = (table_watch.stdout.take().expect("stdout"), json_watch.stdout.take().expect("stdout"));
    let mut named_out = named_watch.stdout.take().expect("stdout");
    let (mut table_text, mut json_text, mut named_text) = (String::new(), String::new(), String::new());
    read_until(&mut table_out, &mut table_text, "get -w", |t| t.lines().any(|l| l.starts_with("batch ")));
    read_until(&mut json_out, &mut json_text, "get -w -o json", |t| t.contains("\n]\n"));
    read_until(&mut named_out, &mut named_text, "get service batch -w", |t| t.lines().any(|l| l.starts_with("batch ")));
    assert_eq!(up.ok(&["delete", "service", "-l", "!app"]), "service/batch deleted\n");
    read_until(&mut table_out, &mut table_text, "get -w", |t| t.lines().any(|l| l.starts_with("batch ") && l.ends_with("(deleted)")));
    read_until(&mut json_out, &mut json_text, "get -w -o json", |t| t.contains("DELETED"));
    read_until(&mut named_out, &mut named_text, "get service batch -w", |t| t.lines().any(|l| l.starts_with("batch ") && l.ends_with("(deleted)")));
    assert!(named_watch.try_wait().expect("wait").is_none(), "the named watch goes on after the deletion");
    for child in [&mut table_watch, &mut json_watch, &mut named_watch] {
        let _ = child.kill();
        let _ = child.wait();
    }
    let event: serde_json::Value = serde_json::from_str(json_text.lines().find(|l| l.contains("DELETED")).expect("the event")).expect("a JSON line");
    assert_eq!((event["type"].as_str(), event["object"]["name"].as_str()), (Some("DELETED"), Some("batch")), "{event}");
    assert_eq!(table_text.matches("NAME").count(), 1, "{table_text}");

    // delete -l: what matches, nothing when nothing does, never with a name.
    let none = up.orch(&["delete", "service", "-l", "app=nothing"]);
    assert!(none.status.success() && none.stdout.is_empty() && text(&none.stderr) == "No resources found\n", "{}", text(&none.stderr));
    let both = up.orch(&["delete", "service", "web", "-l", "app=web"]);
    assert_eq!(both.status.code(), Some(2), "{}", text(&both.stderr));
    assert_eq!(names(&["get", "services"]), set(&["service/web", "service/cache"]), "nothing else deleted");
    assert_eq!(up.ok(&["delete", "service", "-l", "app=cache"]), "service/cache deleted\n");

    // Contexts: one file, the lab's and the local one; use-context switches.
    let config = up.dir.path().join("config.toml");
    let pki = up.pki();
    let credentials =
        format!("ca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n", pki.join("ca.pem").display(), pki.join("admin.pem").display(), pki.join("admin.key").display());
    let original = format!(
        "# two clusters\ncurrent-context = \"lab\"\n\n[contexts.lab]\nservers = [\"127.0.0.1:1\"]\n{credentials}\n[contexts.local]\n# orch up\nservers = [\"{}\"]\n{credentials}",
        up.server
    );
    std::fs::write(&config, &original).expect("write");
    let orch = |args: &[&str]| -> Output {
        Command::new(ORCH)
            .args(args)
            .env("ORCH_CONFIG", &config)
            .env_remove("ORCH_SERVER")
            .env_remove("ORCH_TLS_DIR")
            .env_remove("ORCH_CONTEXT")
            .stdin(Stdio::null())
            .output()
            .expect("run orch")
    };
    let listed = orch(&["config", "get-contexts"]);
    assert_eq!(text(&listed.stdout), format!("CURRENT   NAME    SERVERS\n*         lab     127.0.0.1:1\n          local   {}\n", up.server));
    assert_eq!(text(&orch(&["config", "get-contexts", "-o", "name"]).stdout), "lab\nlocal\n");
    assert_eq!(text(&orch(&["config", "current-context"]).stdout), "lab\n");
    let unreachable = orch(&["get", "services"]);
    assert!(text(&unreachable.stderr).contains("cannot reach the orch controller at 127.0.0.1:1"), "the lab context: {}", text(&unreachable.stderr));
    let unknown = orch(&["config", "use-context", "prod"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert_eq!(text(&unknown.stderr), format!("error: {}: no context \"prod\" (its contexts: lab, local)\n", config.display()));
    assert_eq!(std::fs::read_to_string(&config).expect("read"), original, "a refused switch changes nothing");
    let switched = orch(&["config", "use-context", "local"]);
    assert!(switched.status.success(), "{}", text(&switched.stderr));
    assert_eq!(std::fs::read_to_string(&config).expect("read"), original.replace("current-context = \"lab\"", "current-context = \"local\""), "only that line");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&config).expect("stat").permissions()) & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(text(&orch(&["config", "current-context"]).stdout), "local\n");
    assert_eq!(text(&orch(&["get", "services", "-o", "name"]).stdout), "service/web\n", "the local context drives orch up");

    up.interrupt();
    up.assert_nothing_left();
}
