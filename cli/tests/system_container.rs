//! A system container on `orch up`, as root: the Debian image deploy/images/build-system.sh
//! makes (sysvinit) boots its own init as PID 1 to runlevel 2 and runs its services
//! (cron; orch-web, busybox httpd answering on the node port); what is written to its
//! root survives a kill -9 of the init and the restart, /run starts empty each boot; a
//! delete halts it through runlevel 0 (SIGPWR), which its root volume remembers; its
//! console's output (the boot) is in `orch logs`, and `orch console` types into it.
//! The same image with systemd (`--init systemd`) boots to "running" with its own
//! cgroups and halts on SIGRTMIN+3.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks: a failure is the point

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{http_get_status, text, Up, LIMIT, ROOT};

const IMAGE_DIR: &str = "/var/lib/orch/images/debian-system";
const SYSTEMD_IMAGE_DIR: &str = "/var/lib/orch/images/debian-systemd";

/// Builds (or finds built) the image of `init` and starts `orch up` with a system
/// container `debian` of it, serving port 80 on the node port.
fn up_with_system_container(init: &str, image_dir: &str) -> Up {
    let mut up = Up::new();
    let built = Command::new("bash")
        .arg(format!("{ROOT}/deploy/images/build-system.sh"))
        .args(["--init", init, "--out", image_dir])
        .output()
        .expect("run build-system.sh");
    assert!(built.status.success(), "build-system.sh --init {init}: {}{}", text(&built.stdout), text(&built.stderr));
    let manifest = up.dir.path().join("system.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: orch/v1\nkind: Service\nmetadata: {{name: debian}}\nspec:\n  mode: system\n  image: oci:{image_dir}:12\n  rootVolume: root\n  \
             volumes: [{{name: root, local: {{}}}}]\n  ports: [{{name: http, containerPort: 80, servicePort: 80, nodePort: {}}}]\n  \
             terminationGracePeriodSeconds: 30\n",
            up.node_port
        ),
    )
    .expect("write manifest");
    up.start(&[&manifest]);
    up.wait("the system container running", |u| replica(u)["phase"] == "Running");
    up
}

/// The page orch-web serves on the node port, once it answers.
fn orch_web_page(up: &Up) -> String {
    let start = Instant::now();
    loop {
        match http_get_status(&format!("127.0.0.1:{}", up.node_port), "/") {
            Ok((200, body)) => return body,
            other => assert!(start.elapsed() < LIMIT, "orch-web never answered on the node port: {other:?}\n{}", up.log()),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// After the service's delete: waits for its container to leave the node, purges its
/// root (kept, as local volumes are) and stops `orch up`: nothing of it may be left.
fn purge_and_stop(mut up: Up) {
    let state = up.dir.path().join("state/agent");
    up.wait("the system container gone from the node", |_| std::fs::read_dir(state.join("containers")).map(|d| d.count()).unwrap_or(0) == 0);
    up.ok(&["delete", "service", "debian", "--purge-volumes"]);
    let volumes = up.dir.path().join("state/volumes/debian");
    up.wait("the system container's root purged", |_| !volumes.exists());
    up.interrupt();
    up.assert_nothing_left();
}

/// The replica of `debian` (null until `orch up` answers and has one).
fn replica(up: &Up) -> serde_json::Value {
    let out = up.orch(&["get", "replicas", "debian", "-o", "json"]);
    let replicas: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    replicas.as_array().and_then(|r| r.first().cloned()).unwrap_or_default()
}

/// Runs `orch exec REPLICA -- ARGS` until its output satisfies `done`.
fn exec_until(up: &Up, name: &str, args: &[&str], done: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let mut all = vec!["exec", name, "--"];
        all.extend(args);
        let out = up.orch(&all);
        let said = text(&out.stdout);
        if out.status.success() && done(&said) {
            return said;
        }
        assert!(start.elapsed() < LIMIT, "`{}` never gave what was awaited: {said} {}\n{}", args.join(" "), text(&out.stderr), up.log());
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_debian_system_container_boots_its_init_keeps_its_root_and_halts() {
    let up = up_with_system_container("sysvinit", IMAGE_DIR);
    let name = replica(&up)["name"].as_str().expect("name").to_owned();

    // Its own init is PID 1, with its hostname, and reaches runlevel 2 with its services.
    let levels = exec_until(&up, &name, &["runlevel"], |said| said.trim().ends_with(" 2"));
    assert!(levels.trim() == "N 2" || levels.trim().starts_with("S "), "{levels}");
    let init = exec_until(&up, &name, &["cat", "/proc/1/cmdline"], |said| !said.is_empty());
    assert!(init.starts_with("/sbin/init") || init.starts_with("init"), "PID 1 is the image's init: {init:?}");
    assert_eq!(up.ok(&["exec", &name, "--", "hostname"]).trim(), name);
    assert!(up.ok(&["exec", &name, "--", "cat", "/proc/1/environ"]).split('\0').any(|v| v == "container=orch"), "the init knows it is in a container");
    exec_until(&up, &name, &["pidof", "cron"], |said| !said.trim().is_empty());
    // Its console is a pty whose output goes to the log: the rc scripts' messages.
    let start = Instant::now();
    loop {
        let logs = up.ok(&["logs", &name]);
        if logs.contains("INIT: Entering runlevel: 2") && logs.lines().any(|l| l.contains("cron")) {
            break;
        }
        assert!(start.elapsed() < LIMIT, "the boot never showed in `orch logs`:\n{logs}");
        std::thread::sleep(Duration::from_millis(250));
    }
    // `orch console`: what is typed reaches the console (its terminal echoes it back,
    // and the echo is in the log too); Ctrl-] detaches.
    let mut console = up.command().args(["console", &name]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("orch console");
    let mut typing = console.stdin.take().expect("stdin");
    let mut output = console.stdout.take().expect("stdout");
    let echoed = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buffer = [0u8; 4096];
        while let Ok(n) = std::io::Read::read(&mut output, &mut buffer) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buffer[..n]);
            if String::from_utf8_lossy(&seen).contains("typed-into-the-console") {
                break;
            }
        }
        String::from_utf8_lossy(&seen).into_owned()
    });
    // Typed again until echoed: what comes before the client is attached goes nowhere.
    let start = Instant::now();
    while !echoed.is_finished() {
        assert!(start.elapsed() < LIMIT, "the console never echoed what was typed\n{}", up.log());
        typing.write_all(b"typed-into-the-console\n").expect("type");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(echoed.join().expect("reader").contains("typed-into-the-console"));
    typing.write_all(&[0x1d]).expect("Ctrl-]");
    let detached = console.wait_with_output().expect("orch console ends");
    assert!(detached.status.success() && text(&detached.stderr).contains("detached from"), "{}", text(&detached.stderr));
    let mounts = up.ok(&["exec", &name, "--", "cat", "/proc/mounts"]);
    assert!(mounts.lines().any(|l| l.starts_with("tmpfs /run ")), "{mounts}");
    // Its cgroups at /sys/fs/cgroup, its own cgroup as their root: v1 controllers read-only
    // (its limits are files there), systemd's hierarchy its own to write (on a unified
    // host, cgroup2, writable where the host delegates).
    let cgroup_mounts: Vec<&str> = mounts.lines().filter(|l| l.split(' ').nth(1).is_some_and(|m| m.starts_with("/sys/fs/cgroup"))).collect();
    if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        assert!(cgroup_mounts.iter().any(|l| l.starts_with("cgroup2 /sys/fs/cgroup cgroup2 ")), "{cgroup_mounts:#?}");
    } else {
        assert!(cgroup_mounts.iter().any(|l| l.starts_with("cgroup /sys/fs/cgroup/memory cgroup ro,")), "{cgroup_mounts:#?}");
        assert!(cgroup_mounts.iter().any(|l| l.starts_with("cgroup /sys/fs/cgroup/systemd cgroup rw,")), "{cgroup_mounts:#?}");
        let own = up.ok(&["exec", &name, "--", "sh", "-c", "mkdir /sys/fs/cgroup/systemd/probe && rmdir /sys/fs/cgroup/systemd/probe && echo own"]);
        assert_eq!(own.trim(), "own", "systemd's hierarchy is the container's to manage");
        let limits = up.orch(&["exec", &name, "--", "sh", "-c", "echo 1 >/sys/fs/cgroup/memory/memory.limit_in_bytes"]);
        assert!(!limits.status.success(), "its own limits are out of its reach");
        let seen = up.ok(&["exec", &name, "--", "cat", "/proc/1/cgroup"]);
        assert!(seen.lines().any(|l| l.ends_with(":memory:/")), "its own cgroup is the namespace root: {seen}");
    }
    let page = orch_web_page(&up);
    assert!(page.contains(&format!("{name}: a Debian system container, booted by /usr/sbin/init")), "{page}");

    // Files in its root survive a restart; /run does not.
    up.ok(&["exec", &name, "--", "sh", "-c", "echo kept >/root/marker; echo gone >/run/marker"]);
    let pid = replica(&up)["hostPid"].as_i64().expect("pid");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid")), nix::sys::signal::Signal::SIGKILL).expect("kill -9 its init");
    up.wait("the system container restarted", |u| {
        let r = replica(u);
        r["phase"] == "Running" && r["restarts"] == 1 && r["hostPid"].as_i64() != Some(pid)
    });
    assert_eq!(replica(&up)["name"], name.as_str(), "the same replica, restarted in place");
    exec_until(&up, &name, &["runlevel"], |said| said.trim().ends_with(" 2"));
    assert_eq!(up.ok(&["exec", &name, "--", "cat", "/root/marker"]).trim(), "kept");
    let run = up.orch(&["exec", &name, "--", "cat", "/run/marker"]);
    assert!(!run.status.success(), "/run is a fresh tmpfs each boot: {}", text(&run.stdout));

    // A delete sends SIGPWR: the init halts through runlevel 0, stopping its services,
    // and the root volume (kept, as local volumes are) remembers it.
    up.ok(&["delete", "service", "debian"]);
    let stopped = up.dir.path().join("state/volumes/debian/root/0/upper/var/log/orch-web.stopped");
    up.wait("orch-web stopped by runlevel 0", |_| std::fs::read_to_string(&stopped).is_ok_and(|said| said.trim() == "orch-web stopped in runlevel 0"));
    purge_and_stop(up);
}

#[test]
fn a_debian_systemd_container_boots_to_running_and_halts_on_sigrtmin_3() {
    let up = up_with_system_container("systemd", SYSTEMD_IMAGE_DIR);
    let name = replica(&up)["name"].as_str().expect("name").to_owned();
    let state = exec_until(&up, &name, &["systemctl", "is-system-running"], |said| {
        !said.trim().is_empty() && !said.contains("starting") && !said.contains("initializing")
    });
    let failed = up.orch(&["exec", &name, "--", "systemctl", "--failed", "--no-pager"]);
    assert_eq!(state.trim(), "running", "systemd's boot: {}", text(&failed.stdout));
    assert_eq!(up.ok(&["exec", &name, "--", "readlink", "/proc/1/exe"]).trim(), "/usr/lib/systemd/systemd", "systemd is PID 1");
    assert!(orch_web_page(&up).contains("booted by /usr/lib/systemd/systemd"), "its services run (orch-web, through systemd's sysv generator)");
    // It manages its own cgroups: init.scope and the services' below its namespace root.
    let own = up.ok(&["exec", &name, "--", "cat", "/proc/1/cgroup"]);
    assert!(own.lines().any(|l| l.ends_with(":/init.scope")), "systemd moved itself into init.scope of its own hierarchy: {own}");
    exec_until(&up, &name, &["pidof", "cron"], |said| !said.trim().is_empty());
    // The image names no StopSignal: orch follows /sbin/init to systemd and sends
    // SIGRTMIN+3, and systemd halts, stopping orch-web through its init script.
    let logs = up.orch(&["logs", &name]);
    assert!(text(&logs.stdout).contains("Reached target multi-user.target"), "the boot is in the console's log: {}", text(&logs.stdout));
    up.ok(&["delete", "service", "debian"]);
    let stopped = up.dir.path().join("state/volumes/debian/root/0/upper/var/log/orch-web.stopped");
    up.wait("orch-web stopped by systemd's halt", |_| std::fs::read_to_string(&stopped).is_ok_and(|said| said.starts_with("orch-web stopped")));
    purge_and_stop(up);
}
