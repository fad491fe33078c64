//! A validated service as field paths in the manifest's words (`spec.image`,
//! `spec.env[GREETING].value`, `spec.ports[http].nodePort`, `metadata.labels.app`), and
//! what differs between two of them — what `orch diff` prints. Named list entries (env,
//! ports, volumes, headers) are keyed by name, so a reordering or an insertion is not a
//! change of every later entry. Pure.

use std::collections::BTreeMap;

use super::quantity::{format_cpu_millis, format_memory_bytes};
use crate::pb;

/// Field path → value as text, sorted by path.
pub type Fields = BTreeMap<String, String>;

/// One difference: `before` absent for an added field, `after` for a removed one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldChange {
    pub path: String,
    pub before: Option<String>,
    pub after: Option<String>,
}

/// What differs from `before` to `after`, in path order.
pub fn diff(before: &Fields, after: &Fields) -> Vec<FieldChange> {
    let mut paths: Vec<&String> = before.keys().chain(after.keys()).collect();
    paths.sort();
    paths.dedup();
    paths
        .into_iter()
        .filter(|path| before.get(*path) != after.get(*path))
        .map(|path| FieldChange { path: path.clone(), before: before.get(path).cloned(), after: after.get(path).cloned() })
        .collect()
}

/// `-path: before` / `+path: after` lines for `changes` (a changed field gives both).
pub fn unified(changes: &[FieldChange]) -> String {
    let mut out = String::new();
    for change in changes {
        if let Some(before) = &change.before {
            out.push_str(&format!("-{}: {before}\n", change.path));
        }
        if let Some(after) = &change.after {
            out.push_str(&format!("+{}: {after}\n", change.path));
        }
    }
    out
}

fn list(words: &[String]) -> String {
    serde_json::to_string(words).unwrap_or_default()
}

fn int_or_percent(value: &pb::IntOrPercent) -> String {
    if value.percent {
        format!("{}%", value.value)
    } else {
        value.value.to_string()
    }
}

fn key_ref(r: &pb::KeyRef) -> String {
    let kind = if r.kind() == pb::ConfigKind::Secret { "secretKey" } else { "configKey" };
    format!("{kind} {}/{}", r.name, r.key)
}

/// Field paths and values of a service: its labels and its spec.
pub fn service_fields(service: &pb::Service) -> Fields {
    let mut out = Fields::new();
    for (key, value) in &service.labels {
        out.insert(format!("metadata.labels.{key}"), value.clone());
    }
    if let Some(spec) = &service.spec {
        spec_fields(&mut out, spec);
    }
    out
}

/// A Config's keys and values (`data.KEY`: the text quoted, bytes that are not UTF-8 as
/// their size).
pub fn config_fields(data: &BTreeMap<String, Vec<u8>>) -> Fields {
    data.iter()
        .map(|(key, value)| {
            let text = match std::str::from_utf8(value) {
                Ok(text) => serde_json::to_string(text).unwrap_or_default(),
                Err(_) => format!("({} bytes, binary)", value.len()),
            };
            (format!("data.{key}"), text)
        })
        .collect()
}

/// A Secret's keys and sizes only: its values are never shown.
pub fn secret_fields(sizes: &BTreeMap<String, u64>) -> Fields {
    sizes.iter().map(|(key, size)| (format!("data.{key}"), format!("({size} bytes)"))).collect()
}

fn spec_fields(out: &mut Fields, spec: &pb::ServiceSpec) {
    let mut put = |path: String, value: String| {
        out.insert(path, value);
    };
    put("spec.replicas".into(), spec.replicas.to_string());
    put("spec.image".into(), spec.image.clone());
    if !spec.command.is_empty() {
        put("spec.command".into(), list(&spec.command));
    }
    if !spec.args.is_empty() {
        put("spec.args".into(), list(&spec.args));
    }
    for (i, env) in spec.env.iter().enumerate() {
        match &env.value_from {
            Some(from) => put(format!("spec.env[{}].valueFrom", env.name), key_ref(from)),
            None => put(format!("spec.env[{}].value", env.name), env.value.clone()),
        }
        put(format!("spec.env[{}].position", env.name), i.to_string());
    }
    if let Some(resources) = &spec.resources {
        for (which, list) in [("requests", &resources.requests), ("limits", &resources.limits)] {
            let Some(list) = list else { continue };
            if list.cpu_millis > 0 {
                put(format!("spec.resources.{which}.cpu"), format_cpu_millis(list.cpu_millis));
            }
            if list.memory_bytes > 0 {
                put(format!("spec.resources.{which}.memory"), format_memory_bytes(list.memory_bytes));
            }
            if list.pids > 0 {
                put(format!("spec.resources.{which}.pids"), list.pids.to_string());
            }
        }
    }
    for port in &spec.ports {
        let at = format!("spec.ports[{}]", port.name);
        put(format!("{at}.containerPort"), port.container_port.to_string());
        put(format!("{at}.servicePort"), port.service_port.to_string());
        if port.node_port != 0 {
            put(format!("{at}.nodePort"), port.node_port.to_string());
        }
        put(format!("{at}.protocol"), if port.protocol() == pb::Protocol::Udp { "UDP" } else { "TCP" }.into());
    }
    if let Some(probes) = &spec.probes {
        for (which, probe) in [("liveness", &probes.liveness), ("readiness", &probes.readiness), ("startup", &probes.startup)] {
            if let Some(probe) = probe {
                probe_fields(&mut put, &format!("spec.probes.{which}"), probe);
            }
        }
    }
    let policy = match spec.restart_policy() {
        pb::RestartPolicy::Always => "Always",
        pb::RestartPolicy::OnFailure => "OnFailure",
        pb::RestartPolicy::Never => "Never",
    };
    put("spec.restartPolicy".into(), policy.into());
    if spec.mode() == pb::ServiceMode::System {
        put("spec.mode".into(), "system".into());
        put("spec.rootVolume".into(), spec.root_volume.clone());
    }
    if !spec.stop_signal.is_empty() {
        put("spec.stopSignal".into(), spec.stop_signal.clone());
    }
    for (key, value) in &spec.node_selector {
        put(format!("spec.nodeSelector.{key}"), value.clone());
    }
    if let Some(update) = &spec.update {
        if let Some(surge) = &update.max_surge {
            put("spec.update.maxSurge".into(), int_or_percent(surge));
        }
        if let Some(unavailable) = &update.max_unavailable {
            put("spec.update.maxUnavailable".into(), int_or_percent(unavailable));
        }
    }
    if let Some(backoff) = &spec.restart_backoff {
        put("spec.restartBackoff.initialMillis".into(), backoff.initial_millis.to_string());
        put("spec.restartBackoff.maxSeconds".into(), backoff.max_seconds.to_string());
        put("spec.restartBackoff.resetAfterSeconds".into(), backoff.reset_after_seconds.to_string());
    }
    put("spec.terminationGracePeriodSeconds".into(), spec.termination_grace_seconds.to_string());
    if let Some(rebalance) = spec.rebalance {
        put("spec.rebalance".into(), rebalance.to_string());
    }
    if let Some(recovery) = &spec.recovery {
        if recovery.restart_within_millis > 0 {
            put("spec.recovery.restartWithinMillis".into(), recovery.restart_within_millis.to_string());
        }
        if recovery.reschedule_within_seconds > 0 {
            put("spec.recovery.rescheduleWithinSeconds".into(), recovery.reschedule_within_seconds.to_string());
        }
    }
    if let Some(security) = &spec.security_context {
        let at = "spec.securityContext";
        if let Some(user) = security.run_as_user {
            put(format!("{at}.runAsUser"), user.to_string());
        }
        if let Some(group) = security.run_as_group {
            put(format!("{at}.runAsGroup"), group.to_string());
        }
        put(format!("{at}.readOnlyRootFilesystem"), security.read_only_root_filesystem.to_string());
        if !security.capabilities_add.is_empty() {
            put(format!("{at}.capabilities.add"), list(&security.capabilities_add));
        }
        if !security.capabilities_drop.is_empty() {
            put(format!("{at}.capabilities.drop"), list(&security.capabilities_drop));
        }
        let seccomp = if security.seccomp_profile() == pb::SeccompProfileType::Unconfined { "Unconfined" } else { "RuntimeDefault" };
        put(format!("{at}.seccompProfile.type"), seccomp.into());
        put(format!("{at}.userNamespace"), security.user_namespace.to_string());
    }
    match spec.image_pull_policy() {
        pb::ImagePullPolicy::Unspecified => {}
        pb::ImagePullPolicy::IfNotPresent => put("spec.imagePullPolicy".into(), "IfNotPresent".into()),
        pb::ImagePullPolicy::Always => put("spec.imagePullPolicy".into(), "Always".into()),
        pb::ImagePullPolicy::Never => put("spec.imagePullPolicy".into(), "Never".into()),
    }
    for volume in &spec.volumes {
        volume_fields(&mut put, &format!("spec.volumes[{}]", volume.name), volume);
    }
    for (i, mount) in spec.volume_mounts.iter().enumerate() {
        let mut text = format!("{} at {}", mount.name, mount.mount_path);
        if !mount.sub_path.is_empty() {
            text.push_str(&format!(", subPath {}", mount.sub_path));
        }
        if mount.read_only {
            text.push_str(", readOnly");
        }
        put(format!("spec.volumeMounts[{i}]"), text);
    }
    if let Some(logs) = &spec.logs {
        put("spec.logs.maxSize".into(), format_memory_bytes(logs.max_bytes));
        put("spec.logs.maxFiles".into(), logs.max_files.to_string());
    }
}

fn probe_fields(put: &mut impl FnMut(String, String), at: &str, probe: &pb::Probe) {
    match &probe.handler {
        Some(pb::probe::Handler::Exec(exec)) => put(format!("{at}.exec.command"), list(&exec.command)),
        Some(pb::probe::Handler::HttpGet(http)) => {
            put(format!("{at}.httpGet.path"), http.path.clone());
            put(format!("{at}.httpGet.port"), http.port.to_string());
            for header in &http.http_headers {
                put(format!("{at}.httpGet.httpHeaders[{}]", header.name), header.value.clone());
            }
        }
        Some(pb::probe::Handler::TcpSocket(tcp)) => put(format!("{at}.tcpSocket.port"), tcp.port.to_string()),
        None => {}
    }
    put(format!("{at}.initialDelaySeconds"), probe.initial_delay_seconds.to_string());
    put(format!("{at}.periodSeconds"), probe.period_seconds.to_string());
    put(format!("{at}.timeoutSeconds"), probe.timeout_seconds.to_string());
    put(format!("{at}.successThreshold"), probe.success_threshold.to_string());
    put(format!("{at}.failureThreshold"), probe.failure_threshold.to_string());
}

fn volume_fields(put: &mut impl FnMut(String, String), at: &str, volume: &pb::Volume) {
    use pb::volume::Source;
    match &volume.source {
        Some(Source::EmptyDir(empty)) => {
            put(format!("{at}.emptyDir.medium"), if empty.memory { "Memory" } else { "" }.into());
            if empty.size_limit_bytes > 0 {
                put(format!("{at}.emptyDir.sizeLimit"), format_memory_bytes(empty.size_limit_bytes));
            }
        }
        Some(Source::HostPath(host)) => {
            put(format!("{at}.hostPath.path"), host.path.clone());
            let kind = match host.r#type() {
                pb::HostPathType::Unset => "",
                pb::HostPathType::Directory => "Directory",
                pb::HostPathType::DirectoryOrCreate => "DirectoryOrCreate",
                pb::HostPathType::File => "File",
                pb::HostPathType::FileOrCreate => "FileOrCreate",
            };
            put(format!("{at}.hostPath.type"), kind.into());
        }
        Some(Source::Local(_)) => put(format!("{at}.local"), "{}".into()),
        Some(Source::Config(config)) => config_volume_fields(put, &format!("{at}.config"), config),
        Some(Source::Secret(secret)) => config_volume_fields(put, &format!("{at}.secret"), secret),
        None => {}
    }
}

fn config_volume_fields(put: &mut impl FnMut(String, String), at: &str, config: &pb::ConfigVolume) {
    put(format!("{at}.name"), config.name.clone());
    for item in &config.items {
        let mode = item.mode.map(|m| format!(" (mode {m:04o})")).unwrap_or_default();
        put(format!("{at}.items[{}]", item.key), format!("{}{mode}", item.path));
    }
    if let Some(mode) = config.default_mode {
        put(format!("{at}.defaultMode"), format!("{mode:04o}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(text: &str) -> pb::Service {
        let loaded = crate::manifest::load_services("test.yaml", text).unwrap_or_else(|e| panic!("{e:?}"));
        loaded.into_iter().next().map(|d| d.service).expect("one service")
    }

    const WEB: &str = "apiVersion: orch/v1\nkind: Service\nmetadata: {name: web, labels: {app: web}}\nspec:\n  replicas: 2\n  image: demo:1.0\n  \
                       env: [{name: A, value: one}, {name: B, value: two}]\n  ports: [{name: http, containerPort: 80, nodePort: 30080}]\n  \
                       probes: {readiness: {httpGet: {path: /, port: http}}}\n";

    #[test]
    fn a_service_reads_as_its_manifest_names_it() {
        let fields = service_fields(&service(WEB));
        let expect = [
            ("metadata.labels.app", "web"),
            ("spec.replicas", "2"),
            ("spec.image", "demo:1.0"),
            ("spec.env[A].value", "one"),
            ("spec.env[B].position", "1"),
            ("spec.ports[http].containerPort", "80"),
            ("spec.ports[http].nodePort", "30080"),
            ("spec.ports[http].protocol", "TCP"),
            ("spec.probes.readiness.httpGet.path", "/"),
            ("spec.probes.readiness.httpGet.port", "80"),
            ("spec.restartPolicy", "Always"),
        ];
        for (path, value) in expect {
            assert_eq!(fields.get(path).map(String::as_str), Some(value), "{path} in {fields:#?}");
        }
    }

    #[test]
    fn differences_field_by_field() {
        let before = service_fields(&service(WEB));
        let table: &[(&str, &str, &[&str])] = &[
            ("replicas: 2", "replicas: 3", &["-spec.replicas: 2", "+spec.replicas: 3"]),
            ("demo:1.0", "demo:1.1", &["-spec.image: demo:1.0", "+spec.image: demo:1.1"]),
            ("labels: {app: web}", "labels: {app: web, tier: front}", &["+metadata.labels.tier: front"]),
            (", nodePort: 30080", "", &["-spec.ports[http].nodePort: 30080"]),
            (
                "{name: B, value: two}",
                "{name: B, value: two}, {name: C, valueFrom: {secretKey: {name: db, key: pw}}}",
                &["+spec.env[C].position: 2", "+spec.env[C].valueFrom: secretKey db/pw"],
            ),
            ("path: /,", "path: /healthz,", &["-spec.probes.readiness.httpGet.path: /", "+spec.probes.readiness.httpGet.path: /healthz"]),
            (
                "  replicas: 2\n",
                "  replicas: 2\n  resources: {limits: {memory: 64Mi, cpu: 500m}}\n",
                &[
                    "+spec.resources.limits.cpu: 0.5",
                    "+spec.resources.limits.memory: 64Mi",
                    // Requests default to the limits, as Kubernetes'.
                    "+spec.resources.requests.cpu: 0.5",
                    "+spec.resources.requests.memory: 64Mi",
                ],
            ),
        ];
        for (from, to, want) in table {
            let after = service_fields(&service(&WEB.replace(from, to)));
            let lines = unified(&diff(&before, &after));
            assert_eq!(lines.lines().collect::<Vec<_>>(), *want, "{from} -> {to}");
        }
        assert!(diff(&before, &service_fields(&service(WEB))).is_empty(), "the same manifest: no difference");
        let swapped = WEB.replace("[{name: A, value: one}, {name: B, value: two}]", "[{name: B, value: two}, {name: A, value: one}]");
        let reordered: Vec<String> = diff(&before, &service_fields(&service(&swapped))).into_iter().map(|c| c.path).collect();
        assert_eq!(reordered, ["spec.env[A].position", "spec.env[B].position"], "an order change is one, named by entry");
    }

    #[test]
    fn configs_show_values_and_secrets_sizes() {
        let data = BTreeMap::from([("index.html".to_owned(), b"<p>hi</p>\n".to_vec()), ("blob".to_owned(), vec![0xff, 0xfe])]);
        let fields = config_fields(&data);
        assert_eq!(fields["data.index.html"], "\"<p>hi</p>\\n\"", "quoted, on one line");
        assert_eq!(fields["data.blob"], "(2 bytes, binary)");
        let sizes = BTreeMap::from([("password".to_owned(), 11)]);
        assert_eq!(secret_fields(&sizes), Fields::from([("data.password".to_owned(), "(11 bytes)".to_owned())]));
    }

    #[test]
    fn every_example_manifest_reads_as_fields() {
        for file in ["webapp.yaml", "stack.yaml"] {
            let path = format!("{}/../manifests/{file}", env!("CARGO_MANIFEST_DIR"));
            let text = std::fs::read_to_string(&path).expect("example manifest");
            for document in crate::manifest::load_services(&path, &text).unwrap_or_else(|e| panic!("{e:?}")) {
                let fields = service_fields(&document.service);
                assert!(fields.contains_key("spec.image") && fields.values().all(|v| !v.contains('\n')), "{file}: {fields:#?}");
            }
        }
    }
}
