//! Semantic validation: from the user's [`ServiceManifest`] to the checked wire type
//! [`pb::Service`], with every problem reported at its field path. Pure: no IO.

use std::collections::BTreeMap;

use super::model::{self, IntOrString, ServiceManifest, API_VERSION};
use super::names::{check_dns_label, check_env_name, check_label_key, check_label_value, check_port_name};
use super::quantity::{format_cpu_millis, format_memory_bytes, parse_cpu_millis, parse_memory_bytes};
use crate::image_ref::ImageRef;
use crate::pb;

/// Largest replica count a manifest may ask for.
/// The longest service name: its replicas' names (`<service>-<5 hex digits>`) are
/// their containers' hostnames, and stay 63-character DNS labels.
pub const MAX_SERVICE_NAME: usize = 57;

pub const MAX_REPLICAS: i64 = 10_000;
/// Node ports, as Kubernetes' default `--service-node-port-range`.
pub const NODE_PORT_RANGE: std::ops::RangeInclusive<i64> = 30_000..=32_767;
/// Largest cpu a replica may request or be limited to: 1024 cores.
pub const MAX_CPU_MILLIS: u64 = 1_024_000;
/// Largest memory a replica may request or be limited to: 16 TiB.
pub const MAX_MEMORY_BYTES: u64 = 16 << 40;
/// Smallest memory limit: below this the container cannot even start its init.
pub const MIN_MEMORY_LIMIT_BYTES: u64 = 4 << 20;
/// Largest pids limit: the kernel's `pid_max` ceiling.
pub const MAX_PIDS: i64 = 4_194_304;
/// Longest probe delay, period or timeout, in seconds.
pub const MAX_PROBE_SECONDS: i64 = 3_600;
/// Largest probe success or failure threshold.
pub const MAX_PROBE_THRESHOLD: i64 = 1_000;

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path from the document root, e.g. `spec.ports[1].containerPort`.
    pub path: String,
    pub message: String,
}

/// The path of `key` in the map at `parent`: `parent.key` for a plain name, else
/// `parent["the key"]` (empty, or with dots, slashes, spaces…), so that every key has
/// a path of its own (`metadata.labels["app.kubernetes.io/name"]`).
pub(crate) fn key_path(parent: &str, key: &str) -> String {
    let plain = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
    match (plain, parent.is_empty()) {
        (true, true) => key.to_owned(),
        (true, false) => format!("{parent}.{key}"),
        (false, _) => format!("{parent}[{key:?}]"),
    }
}

/// Kubernetes' probe defaults, applied to unset fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeDefaults {
    pub initial_delay_seconds: u32,
    pub period_seconds: u32,
    pub timeout_seconds: u32,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

pub const fn probe_defaults() -> ProbeDefaults {
    ProbeDefaults { initial_delay_seconds: 0, period_seconds: 10, timeout_seconds: 1, success_threshold: 1, failure_threshold: 3 }
}

/// Default `update.maxSurge` and `update.maxUnavailable`: 25%, as Kubernetes.
pub const DEFAULT_UPDATE_PERCENT: u32 = 25;

pub(super) struct Errors(Vec<FieldError>);

impl Errors {
    pub(super) fn new() -> Errors {
        Errors(Vec::new())
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    /// `value` if nothing was wrong, else every problem.
    pub(super) fn finish<T>(self, value: T) -> Result<T, Vec<FieldError>> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self.0)
        }
    }

    pub(super) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError { path: path.into(), message: message.into() });
    }

    /// Checks `lo <= value <= hi`, reporting with the path; returns the value as u32.
    fn range(&mut self, path: &str, value: i64, lo: i64, hi: i64) -> u32 {
        if value < lo || value > hi {
            self.push(path, format!("must be between {lo} and {hi}, got {value}"));
            return 0;
        }
        u32::try_from(value).unwrap_or(0)
    }

    fn no_nul(&mut self, path: &str, value: &str) {
        if value.contains('\0') {
            self.push(path, "must not contain a NUL character");
        }
    }
}

/// Restart back-off defaults: first restart immediate, then 250 ms doubling up to 30 s;
/// a run of 30 s starts over. (Kubernetes: 10 s doubling to 5 min, reset after 10 min.)
pub const DEFAULT_BACKOFF_INITIAL_MILLIS: i64 = 250;
pub const DEFAULT_BACKOFF_MAX_SECONDS: i64 = 30;
pub const DEFAULT_BACKOFF_RESET_SECONDS: i64 = 30;
/// Between SIGTERM and SIGKILL (Kubernetes' default too).
pub const DEFAULT_GRACE_SECONDS: i64 = 10;
/// A replica's output when `spec.logs` leaves it unset: files of 10 MiB, 3 of them.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 10 << 20;
pub const DEFAULT_LOG_MAX_FILES: u32 = 3;
/// What `spec.logs.maxSize` and `spec.logs.maxFiles` may be, both ends included.
pub const LOG_MAX_BYTES_RANGE: (u64, u64) = (16 << 10, 1 << 30);
pub const LOG_MAX_FILES_RANGE: (u32, u32) = (2, 16);

/// The effective `(max_bytes, max_files)` of a replica's output: a spec's log policy
/// with the defaults in place of an unset policy or its zero fields.
pub fn log_policy(spec: Option<&pb::LogPolicy>) -> (u64, u32) {
    let (max_bytes, max_files) = spec.map_or((0, 0), |p| (p.max_bytes, p.max_files));
    // Clamped as well: a record that skipped validation cannot leave files nobody removes.
    (
        if max_bytes == 0 { DEFAULT_LOG_MAX_BYTES } else { max_bytes.clamp(LOG_MAX_BYTES_RANGE.0, LOG_MAX_BYTES_RANGE.1) },
        if max_files == 0 { DEFAULT_LOG_MAX_FILES } else { max_files.clamp(LOG_MAX_FILES_RANGE.0, LOG_MAX_FILES_RANGE.1) },
    )
}

/// Validates one service manifest and returns the checked service, or every problem.
pub fn validate_service(manifest: &ServiceManifest) -> Result<pb::Service, Vec<FieldError>> {
    let mut errors = Errors(Vec::new());
    if manifest.api_version != API_VERSION {
        errors.push("apiVersion", format!("must be {API_VERSION:?}, got {:?}", manifest.api_version));
    }
    if manifest.kind != "Service" {
        errors.push("kind", format!("must be \"Service\", got {:?}", manifest.kind));
    }
    if let Err(expected) = check_dns_label(&manifest.metadata.name) {
        errors.push("metadata.name", format!("must be {expected}"));
    } else if manifest.metadata.name.len() > MAX_SERVICE_NAME {
        errors.push(
            "metadata.name",
            format!(
                "must be at most {MAX_SERVICE_NAME} characters, got {}: a replica is named after its service plus 6 (\"-1a2b3\") and is its container's hostname, a 63-character DNS label",
                manifest.metadata.name.len()
            ),
        );
    }
    check_labels(&mut errors, "metadata.labels", &manifest.metadata.labels);
    let spec = validate_spec(&mut errors, &manifest.spec);
    if errors.0.is_empty() {
        Ok(pb::Service {
            name: manifest.metadata.name.clone(),
            labels: manifest.metadata.labels.clone().into_iter().collect(),
            spec: Some(spec),
            ..Default::default()
        })
    } else {
        Err(errors.0)
    }
}

fn check_labels(errors: &mut Errors, path: &str, labels: &BTreeMap<String, String>) {
    for (key, value) in labels {
        if let Err(expected) = check_label_key(key) {
            errors.push(key_path(path, key), format!("key must be {expected}"));
        }
        if let Err(expected) = check_label_value(value) {
            errors.push(key_path(path, key), format!("must be {expected}"));
        }
    }
}

fn validate_spec(errors: &mut Errors, spec: &model::ServiceSpec) -> pb::ServiceSpec {
    let replicas = errors.range("spec.replicas", spec.replicas.unwrap_or(1), 0, MAX_REPLICAS);
    // Unset stays unset (the node applies Kubernetes' default for the reference): a
    // manifest applied again after an upgrade is the same spec, so nothing rolls.
    let image_pull_policy = match spec.image_pull_policy {
        Some(model::ImagePullPolicy::IfNotPresent) => pb::ImagePullPolicy::IfNotPresent,
        Some(model::ImagePullPolicy::Always) => pb::ImagePullPolicy::Always,
        Some(model::ImagePullPolicy::Never) => pb::ImagePullPolicy::Never,
        None => pb::ImagePullPolicy::Unspecified,
    };
    if let Err(e) = ImageRef::parse(&spec.image) {
        errors.push("spec.image", e.to_string());
    }
    for (i, word) in spec.command.iter().enumerate() {
        errors.no_nul(&format!("spec.command[{i}]"), word);
    }
    if spec.command.first().is_some_and(String::is_empty) {
        errors.push("spec.command[0]", "the program must not be empty");
    }
    for (i, word) in spec.args.iter().enumerate() {
        errors.no_nul(&format!("spec.args[{i}]"), word);
    }
    let env = validate_env(errors, &spec.env);
    let resources = validate_resources(errors, spec.resources.as_ref());
    let ports = validate_ports(errors, &spec.ports);
    let probes = spec.probes.as_ref().map(|probes| pb::Probes {
        liveness: probes.liveness.as_ref().map(|p| validate_probe(errors, "liveness", p, &ports)),
        readiness: probes.readiness.as_ref().map(|p| validate_probe(errors, "readiness", p, &ports)),
        startup: probes.startup.as_ref().map(|p| validate_probe(errors, "startup", p, &ports)),
    });
    check_labels(errors, "spec.nodeSelector", &spec.node_selector);
    let update = validate_update(errors, spec.update.as_ref());
    let restart_policy = match spec.restart_policy.unwrap_or_default() {
        model::RestartPolicy::Always => pb::RestartPolicy::Always,
        model::RestartPolicy::OnFailure => pb::RestartPolicy::OnFailure,
        model::RestartPolicy::Never => pb::RestartPolicy::Never,
    };
    let backoff = spec.restart_backoff.clone().unwrap_or_default();
    let restart_backoff = pb::RestartBackoff {
        initial_millis: errors.range("spec.restartBackoff.initialMillis", backoff.initial_millis.unwrap_or(DEFAULT_BACKOFF_INITIAL_MILLIS), 1, 600_000),
        max_seconds: errors.range("spec.restartBackoff.maxSeconds", backoff.max_seconds.unwrap_or(DEFAULT_BACKOFF_MAX_SECONDS), 1, 3600),
        reset_after_seconds: errors.range(
            "spec.restartBackoff.resetAfterSeconds",
            backoff.reset_after_seconds.unwrap_or(DEFAULT_BACKOFF_RESET_SECONDS),
            1,
            86_400,
        ),
    };
    let termination_grace_seconds =
        errors.range("spec.terminationGracePeriodSeconds", spec.termination_grace_period_seconds.unwrap_or(DEFAULT_GRACE_SECONDS), 0, 3600);
    let security_context = spec.security_context.as_ref().map(|context| validate_security(errors, context));
    let (volumes, volume_mounts) = super::volumes::validate_volumes(errors, &spec.volumes, &spec.volume_mounts, &mut memory);
    // Unset stays unset (the node applies the defaults): specs stored before `logs`
    // existed, and their template hashes, stay the same.
    let logs = spec.logs.as_ref().map(|logs| validate_logs(errors, logs));
    let recovery = spec.recovery.as_ref().map(|recovery| validate_recovery(errors, recovery));
    let (mode, root_volume) = validate_mode(errors, spec);
    let stop_signal = match spec.stop_signal.as_deref().map(crate::signal::parse) {
        None => String::new(),
        Some(Ok(number)) if number == crate::signal::SIGCHLD || crate::signal::FAULTS.contains(&number) => {
            errors.push(
                "spec.stopSignal",
                format!(
                    "{} cannot stop a container (the kernel raises it for faults and child processes; orch's init does not pass it on)",
                    crate::signal::name(number)
                ),
            );
            String::new()
        }
        Some(Ok(number)) => crate::signal::name(number),
        Some(Err(reason)) => {
            errors.push("spec.stopSignal", reason);
            String::new()
        }
    };
    pb::ServiceSpec {
        stop_signal,
        mode: mode.into(),
        root_volume,
        logs,
        recovery,
        rebalance: spec.rebalance,
        volumes,
        volume_mounts,
        security_context,
        restart_backoff: Some(restart_backoff),
        termination_grace_seconds,
        replicas,
        image: spec.image.clone(),
        command: spec.command.clone(),
        args: spec.args.clone(),
        env,
        resources: Some(resources),
        ports,
        probes,
        restart_policy: restart_policy.into(),
        node_selector: spec.node_selector.clone().into_iter().collect(),
        update: Some(update),
        image_pull_policy: image_pull_policy.into(),
    }
}

/// Linux's capabilities, as `capabilities.add` and `.drop` name them (without `CAP_`).
pub const CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Largest uid or gid a securityContext may name (below the kernel's invalid id).
pub const MAX_ID: i64 = 4_294_967_294;

/// `spec.mode` and `spec.rootVolume`: a system container keeps its root in a `local`
/// volume of its own (mounted nowhere else), runs in the node's user namespace (its
/// root is written as the host sees it) and needs a writable root.
fn validate_mode(errors: &mut Errors, spec: &model::ServiceSpec) -> (pb::ServiceMode, String) {
    let root_volume = spec.root_volume.clone().unwrap_or_default();
    match spec.mode.unwrap_or_default() {
        model::ServiceMode::Application => {
            if spec.root_volume.is_some() {
                errors.push("spec.rootVolume", "only a system container (spec.mode: system) keeps its root in a volume");
            }
            (pb::ServiceMode::Application, String::new())
        }
        model::ServiceMode::System => {
            if root_volume.is_empty() {
                errors.push("spec.rootVolume", "a system container keeps its root in a volume: name one of spec.volumes, a `local` one");
            } else {
                match spec.volumes.iter().find(|v| v.name == root_volume) {
                    None => errors.push("spec.rootVolume", format!("no volume named {root_volume:?} in spec.volumes")),
                    Some(volume) if volume.local.is_none() => {
                        errors.push("spec.rootVolume", format!("volume {root_volume:?} must be a `local` volume (kept on its node across restarts)"))
                    }
                    Some(_) => {}
                }
                if let Some(i) = spec.volume_mounts.iter().position(|m| m.name == root_volume) {
                    errors.push(
                        format!("spec.volumeMounts[{i}]"),
                        format!("volume {root_volume:?} is the container's root (spec.rootVolume): it is mounted nowhere else"),
                    );
                }
            }
            let context = spec.security_context.clone().unwrap_or_default();
            if context.user_namespace == Some(true) {
                errors.push("spec.securityContext.userNamespace", "a system container runs without a user namespace (not supported yet)");
            }
            if context.read_only_root_filesystem == Some(true) {
                errors.push("spec.securityContext.readOnlyRootFilesystem", "a system container's root is writable (it is kept in spec.rootVolume)");
            }
            (pb::ServiceMode::System, root_volume)
        }
    }
}

fn validate_security(errors: &mut Errors, context: &model::SecurityContext) -> pb::SecurityContext {
    let mut id = |path: &str, value: Option<i64>| {
        value.map(|v| {
            if !(0..=MAX_ID).contains(&v) {
                errors.push(path, format!("must be between 0 and {MAX_ID}, got {v}"));
            }
            u32::try_from(v).unwrap_or(0)
        })
    };
    let run_as_user = id("spec.securityContext.runAsUser", context.run_as_user);
    let run_as_group = id("spec.securityContext.runAsGroup", context.run_as_group);
    let capabilities = context.capabilities.clone().unwrap_or_default();
    for (list, names) in [("add", &capabilities.add), ("drop", &capabilities.drop)] {
        for (i, name) in names.iter().enumerate() {
            let upper = name.to_ascii_uppercase();
            let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
            if bare != "ALL" && !CAPABILITIES.contains(&bare) {
                errors
                    .push(format!("spec.securityContext.capabilities.{list}[{i}]"), format!("{name:?} is not a Linux capability (such as NET_ADMIN, or ALL)"));
            }
        }
    }
    let seccomp_profile = match context.seccomp_profile.as_ref().map(|p| p.kind.as_str()) {
        None | Some("RuntimeDefault") => pb::SeccompProfileType::RuntimeDefault,
        Some("Unconfined") => pb::SeccompProfileType::Unconfined,
        Some(other) => {
            errors.push("spec.securityContext.seccompProfile.type", format!("must be RuntimeDefault or Unconfined, got {other:?}"));
            pb::SeccompProfileType::RuntimeDefault
        }
    };
    pb::SecurityContext {
        run_as_user,
        run_as_group,
        read_only_root_filesystem: context.read_only_root_filesystem.unwrap_or(false),
        capabilities_add: capabilities.add,
        capabilities_drop: capabilities.drop,
        seccomp_profile: seccomp_profile.into(),
        user_namespace: context.user_namespace.unwrap_or(false),
    }
}

fn validate_env(errors: &mut Errors, env: &[model::EnvVar]) -> Vec<pb::EnvVar> {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, var) in env.iter().enumerate() {
        let path = format!("spec.env[{i}].name");
        if let Err(expected) = check_env_name(&var.name) {
            errors.push(&path, format!("must be {expected}"));
        }
        if let Some(first) = seen.insert(&var.name, i) {
            errors.push(&path, format!("duplicate variable {:?}, already set by spec.env[{first}]", var.name));
        }
        errors.no_nul(&format!("spec.env[{i}].value"), &var.value);
    }
    env.iter()
        .enumerate()
        .map(|(i, v)| pb::EnvVar {
            name: v.name.clone(),
            value: v.value.clone(),
            value_from: v.value_from.as_ref().and_then(|from| value_from(errors, i, v, from)),
        })
        .collect()
}

/// `spec.env[i].valueFrom`: exactly one of `configKey`, `secretKey`, and no `value`.
fn value_from(errors: &mut Errors, i: usize, var: &model::EnvVar, from: &model::EnvSource) -> Option<pb::KeyRef> {
    let base = format!("spec.env[{i}].valueFrom");
    if !var.value.is_empty() {
        errors.push(format!("spec.env[{i}]"), "has both value and valueFrom: give one");
    }
    let (kind, selector, field) = match (&from.config_key, &from.secret_key) {
        (Some(selector), None) => (pb::ConfigKind::Config, selector, "configKey"),
        (None, Some(selector)) => (pb::ConfigKind::Secret, selector, "secretKey"),
        _ => {
            errors.push(base, "must have exactly one of configKey, secretKey");
            return None;
        }
    };
    if let Err(expected) = check_dns_label(&selector.name) {
        errors.push(format!("{base}.{field}.name"), format!("must be {expected}"));
    }
    if let Err(message) = super::configs::check_config_key(&selector.key) {
        errors.push(format!("{base}.{field}.key"), message);
    }
    Some(pb::KeyRef { kind: kind.into(), name: selector.name.clone(), key: selector.key.clone() })
}

fn cpu(errors: &mut Errors, path: &str, raw: Option<&model::RawQuantity>) -> u64 {
    let Some(raw) = raw else { return 0 };
    match parse_cpu_millis(&raw.0) {
        Ok(0) => {
            errors.push(path, "must be more than 0 (omit it for no value)");
            0
        }
        Ok(millis) if millis > MAX_CPU_MILLIS => {
            errors.push(path, format!("must be at most {} cores, got {}", MAX_CPU_MILLIS / 1000, raw.0));
            0
        }
        Ok(millis) => millis,
        Err(e) => {
            errors.push(path, e.to_string());
            0
        }
    }
}

fn memory(errors: &mut Errors, path: &str, raw: Option<&model::RawQuantity>) -> u64 {
    let Some(raw) = raw else { return 0 };
    match parse_memory_bytes(&raw.0) {
        Ok(0) => {
            errors.push(path, "must be more than 0 (omit it for no value)");
            0
        }
        Ok(bytes) if bytes > MAX_MEMORY_BYTES => {
            errors.push(path, format!("must be at most {}, got {}", format_memory_bytes(MAX_MEMORY_BYTES), raw.0));
            0
        }
        Ok(bytes) => bytes,
        Err(e) => {
            errors.push(path, e.to_string());
            0
        }
    }
}

/// `spec.logs`: each field 0 (the node's default) when unset, else within its range.
/// `spec.recovery`: each target given is between 1 ms and an hour (a restart), 1 s and a
/// day (a reschedule); at least one is given.
fn validate_recovery(errors: &mut Errors, recovery: &model::RecoveryTargets) -> pb::RecoveryTargets {
    if recovery.restart_within_millis.is_none() && recovery.reschedule_within_seconds.is_none() {
        errors.push("spec.recovery", "name restartWithinMillis, rescheduleWithinSeconds or both");
    }
    pb::RecoveryTargets {
        restart_within_millis: recovery.restart_within_millis.map_or(0, |millis| errors.range("spec.recovery.restartWithinMillis", millis, 1, 3_600_000)),
        reschedule_within_seconds: recovery
            .reschedule_within_seconds
            .map_or(0, |seconds| errors.range("spec.recovery.rescheduleWithinSeconds", seconds, 1, 86_400)),
    }
}

fn validate_logs(errors: &mut Errors, logs: &model::LogPolicy) -> pb::LogPolicy {
    let (lo, hi) = LOG_MAX_BYTES_RANGE;
    let max_bytes = match &logs.max_size {
        None => 0,
        Some(raw) => match parse_memory_bytes(&raw.0) {
            Ok(bytes) if (lo..=hi).contains(&bytes) => bytes,
            Ok(_) => {
                errors.push("spec.logs.maxSize", format!("must be between {} and {}, got {}", format_memory_bytes(lo), format_memory_bytes(hi), raw.0));
                0
            }
            Err(e) => {
                errors.push("spec.logs.maxSize", e.to_string());
                0
            }
        },
    };
    let (lo, hi) = LOG_MAX_FILES_RANGE;
    let max_files = logs.max_files.map_or(0, |n| errors.range("spec.logs.maxFiles", n, i64::from(lo), i64::from(hi)));
    pb::LogPolicy { max_bytes, max_files }
}

fn validate_resources(errors: &mut Errors, resources: Option<&model::Resources>) -> pb::Resources {
    let requests = resources.and_then(|r| r.requests.as_ref());
    let limits = resources.and_then(|r| r.limits.as_ref());
    let mut req = pb::ResourceList {
        cpu_millis: cpu(errors, "spec.resources.requests.cpu", requests.and_then(|r| r.cpu.as_ref())),
        memory_bytes: memory(errors, "spec.resources.requests.memory", requests.and_then(|r| r.memory.as_ref())),
        pids: 0,
    };
    let lim = pb::ResourceList {
        cpu_millis: cpu(errors, "spec.resources.limits.cpu", limits.and_then(|l| l.cpu.as_ref())),
        memory_bytes: memory(errors, "spec.resources.limits.memory", limits.and_then(|l| l.memory.as_ref())),
        pids: limits.and_then(|l| l.pids).map_or(0, |p| u64::from(errors.range("spec.resources.limits.pids", p, 1, MAX_PIDS))),
    };
    if lim.memory_bytes != 0 && lim.memory_bytes < MIN_MEMORY_LIMIT_BYTES {
        errors.push(
            "spec.resources.limits.memory",
            format!("must be at least {}, got {}", format_memory_bytes(MIN_MEMORY_LIMIT_BYTES), format_memory_bytes(lim.memory_bytes)),
        );
    }
    // As Kubernetes: a limit without a request requests the limit.
    if req.cpu_millis == 0 {
        req.cpu_millis = lim.cpu_millis;
    } else if lim.cpu_millis != 0 && req.cpu_millis > lim.cpu_millis {
        errors.push(
            "spec.resources.requests.cpu",
            format!("must not exceed limits.cpu ({}), got {}", format_cpu_millis(lim.cpu_millis), format_cpu_millis(req.cpu_millis)),
        );
    }
    if req.memory_bytes == 0 {
        req.memory_bytes = lim.memory_bytes;
    } else if lim.memory_bytes != 0 && req.memory_bytes > lim.memory_bytes {
        errors.push(
            "spec.resources.requests.memory",
            format!("must not exceed limits.memory ({}), got {}", format_memory_bytes(lim.memory_bytes), format_memory_bytes(req.memory_bytes)),
        );
    }
    pb::Resources { requests: Some(req), limits: Some(lim) }
}

fn validate_ports(errors: &mut Errors, ports: &[model::Port]) -> Vec<pb::ServicePort> {
    let mut out = Vec::with_capacity(ports.len());
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    let mut container: BTreeMap<(i64, bool), usize> = BTreeMap::new();
    let mut service: BTreeMap<(i64, bool), usize> = BTreeMap::new();
    let mut node: BTreeMap<(i64, bool), usize> = BTreeMap::new();
    for (i, port) in ports.iter().enumerate() {
        let at = |field: &str| format!("spec.ports[{i}].{field}");
        let udp = port.protocol == Some(model::Protocol::Udp);
        match &port.name {
            Some(name) => {
                if let Err(expected) = check_port_name(name) {
                    errors.push(at("name"), format!("must be {expected}"));
                }
                if let Some(first) = names.insert(name, i) {
                    errors.push(at("name"), format!("duplicate port name {name:?}, already used by spec.ports[{first}]"));
                }
            }
            None if ports.len() > 1 => errors.push(at("name"), "is required when a service has more than one port"),
            None => {}
        }
        let container_port = errors.range(&at("containerPort"), port.container_port, 1, 65_535);
        if let Some(first) = container.insert((port.container_port, udp), i) {
            errors.push(at("containerPort"), format!("duplicate port {}, already used by spec.ports[{first}]", port.container_port));
        }
        let service_value = port.service_port.unwrap_or(port.container_port);
        let service_port = errors.range(&at("servicePort"), service_value, 1, 65_535);
        if let Some(first) = service.insert((service_value, udp), i) {
            errors.push(at("servicePort"), format!("duplicate port {service_value}, already used by spec.ports[{first}]"));
        }
        let node_port = match port.node_port {
            Some(value) => {
                if let Some(first) = node.insert((value, udp), i) {
                    errors.push(at("nodePort"), format!("duplicate port {value}, already used by spec.ports[{first}]"));
                }
                errors.range(&at("nodePort"), value, *NODE_PORT_RANGE.start(), *NODE_PORT_RANGE.end())
            }
            None => 0,
        };
        out.push(pb::ServicePort {
            name: port.name.clone().unwrap_or_default(),
            container_port,
            service_port,
            node_port,
            protocol: if udp { pb::Protocol::Udp } else { pb::Protocol::Tcp }.into(),
        });
    }
    out
}

fn validate_probe(errors: &mut Errors, kind: &str, probe: &model::Probe, ports: &[pb::ServicePort]) -> pb::Probe {
    let base = format!("spec.probes.{kind}");
    let defaults = probe_defaults();
    let handlers = [probe.exec.is_some(), probe.http_get.is_some(), probe.tcp_socket.is_some()];
    let handler = match handlers.iter().filter(|set| **set).count() {
        1 => probe_handler(errors, &base, probe, ports),
        0 => {
            errors.push(&base, "must set exactly one of exec, httpGet or tcpSocket, got none");
            None
        }
        _ => {
            errors.push(&base, "must set exactly one of exec, httpGet or tcpSocket, got several");
            None
        }
    };
    let mut timing = |field: &str, value: Option<i64>, default: u32, lo: i64, hi: i64| match value {
        Some(v) => errors.range(&format!("{base}.{field}"), v, lo, hi),
        None => default,
    };
    let initial_delay_seconds = timing("initialDelaySeconds", probe.initial_delay_seconds, defaults.initial_delay_seconds, 0, MAX_PROBE_SECONDS);
    let period_seconds = timing("periodSeconds", probe.period_seconds, defaults.period_seconds, 1, MAX_PROBE_SECONDS);
    let timeout_seconds = timing("timeoutSeconds", probe.timeout_seconds, defaults.timeout_seconds, 1, MAX_PROBE_SECONDS);
    let success_threshold = timing("successThreshold", probe.success_threshold, defaults.success_threshold, 1, MAX_PROBE_THRESHOLD);
    let failure_threshold = timing("failureThreshold", probe.failure_threshold, defaults.failure_threshold, 1, MAX_PROBE_THRESHOLD);
    if kind != "readiness" && success_threshold > 1 {
        errors.push(format!("{base}.successThreshold"), format!("must be 1 for a {kind} probe, got {success_threshold}"));
    }
    pb::Probe { handler, initial_delay_seconds, period_seconds, timeout_seconds, success_threshold, failure_threshold }
}

fn probe_handler(errors: &mut Errors, base: &str, probe: &model::Probe, ports: &[pb::ServicePort]) -> Option<pb::probe::Handler> {
    if let Some(exec) = &probe.exec {
        if exec.command.is_empty() || exec.command[0].is_empty() {
            errors.push(format!("{base}.exec.command"), "must name a program to run");
        }
        for (i, word) in exec.command.iter().enumerate() {
            errors.no_nul(&format!("{base}.exec.command[{i}]"), word);
        }
        return Some(pb::probe::Handler::Exec(pb::ExecAction { command: exec.command.clone() }));
    }
    if let Some(http) = &probe.http_get {
        let path = http.path.clone().unwrap_or_else(|| "/".to_owned());
        if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            errors.push(format!("{base}.httpGet.path"), format!("must be an absolute URL path such as /healthz, got {path:?}"));
        }
        for (i, header) in http.http_headers.iter().enumerate() {
            let token = !header.name.is_empty() && header.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !token {
                errors.push(format!("{base}.httpGet.httpHeaders[{i}].name"), format!("must be an HTTP header name, got {:?}", header.name));
            }
            if header.value.contains(['\r', '\n', '\0']) {
                errors.push(format!("{base}.httpGet.httpHeaders[{i}].value"), "must not contain line breaks or NUL");
            }
        }
        let port = resolve_port(errors, &format!("{base}.httpGet.port"), &http.port, ports);
        let http_headers = http.http_headers.iter().map(|h| pb::EnvVar { name: h.name.clone(), value: h.value.clone(), value_from: None }).collect();
        return Some(pb::probe::Handler::HttpGet(pb::HttpGetAction { path, port, http_headers }));
    }
    let tcp = probe.tcp_socket.as_ref()?;
    let port = resolve_port(errors, &format!("{base}.tcpSocket.port"), &tcp.port, ports);
    Some(pb::probe::Handler::TcpSocket(pb::TcpSocketAction { port }))
}

/// A probe port: a number, or the name of one of the service's ports.
fn resolve_port(errors: &mut Errors, path: &str, port: &IntOrString, ports: &[pb::ServicePort]) -> u32 {
    match port {
        IntOrString::Int(n) => errors.range(path, *n, 1, 65_535),
        IntOrString::Str(name) => match ports.iter().find(|p| !p.name.is_empty() && &p.name == name) {
            Some(p) => p.container_port,
            None => {
                let known: Vec<&str> = ports.iter().map(|p| p.name.as_str()).filter(|n| !n.is_empty()).collect();
                errors.push(path, format!("names no port of spec.ports: got {name:?}, known names are {known:?}"));
                0
            }
        },
    }
}

fn validate_update(errors: &mut Errors, update: Option<&model::UpdateStrategy>) -> pb::UpdateStrategy {
    let default = pb::IntOrPercent { value: DEFAULT_UPDATE_PERCENT, percent: true };
    let mut field = |name: &str, raw: Option<&IntOrString>| -> pb::IntOrPercent {
        let path = format!("spec.update.{name}");
        match raw {
            None => default,
            Some(IntOrString::Int(n)) => pb::IntOrPercent { value: errors.range(&path, *n, 0, MAX_REPLICAS), percent: false },
            Some(IntOrString::Str(text)) => match text.strip_suffix('%').map(str::parse::<i64>) {
                Some(Ok(p)) => pb::IntOrPercent { value: errors.range(&path, p, 0, 100), percent: true },
                _ => {
                    errors.push(&path, format!("must be a count such as 1 or a percentage such as 25%, got {text:?}"));
                    default
                }
            },
        }
    };
    let max_surge = field("maxSurge", update.and_then(|u| u.max_surge.as_ref()));
    let max_unavailable = field("maxUnavailable", update.and_then(|u| u.max_unavailable.as_ref()));
    if max_surge.value == 0 && max_unavailable.value == 0 {
        errors.push("spec.update", "maxSurge and maxUnavailable must not both be 0: the update could never make progress");
    }
    pb::UpdateStrategy { max_surge: Some(max_surge), max_unavailable: Some(max_unavailable) }
}
