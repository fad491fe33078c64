//! Manifests in, errors out: every invalid manifest names its document and field path.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks: a failure is the point

use orch_api::manifest::{check_unique_names, load_services, ManifestError};
use orch_api::pb;

const VALID: &str = r#"
apiVersion: orch/v1
kind: Service
metadata:
  name: web
spec:
  image: 127.0.0.1:5000/orch/demo-web:1.0
  ports:
    - name: http
      containerPort: 80
"#;

/// `VALID` with one line replaced (or appended under `spec:` when `from` is empty).
fn variant(from: &str, to: &str) -> String {
    if from.is_empty() {
        return format!("{VALID}{to}\n");
    }
    assert!(VALID.contains(from), "test bug: {from:?} not in the base manifest");
    VALID.replacen(from, to, 1)
}

fn errors_of(text: &str) -> Vec<ManifestError> {
    match load_services("test.yaml", text) {
        Ok(docs) => panic!("expected errors, got {} valid service(s) from:\n{text}", docs.len()),
        Err(errors) => errors,
    }
}

#[test]
fn the_example_webapp_manifest_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/webapp.yaml");
    let text = std::fs::read_to_string(path).expect("manifests/webapp.yaml is in the repository");
    let docs = load_services("webapp.yaml", &text).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(docs.len(), 1);
    let service = &docs[0].service;
    assert_eq!(service.name, "webapp");
    let spec = service.spec.as_ref().expect("spec");
    assert_eq!(spec.replicas, 3);
    let probes = spec.probes.as_ref().expect("probes");
    let liveness = probes.liveness.as_ref().expect("liveness");
    assert!(matches!(liveness.handler, Some(pb::probe::Handler::HttpGet(ref h)) if h.port == 80 && h.path == "/"));
    assert!(probes.readiness.is_some());
    assert_eq!(spec.ports[0].node_port, 30080);
    let limits = spec.resources.as_ref().and_then(|r| r.limits).expect("limits");
    assert_eq!(limits.memory_bytes, 64 << 20);
    assert_eq!(limits.cpu_millis, 250);
}

#[test]
fn the_example_stack_manifest_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/stack.yaml");
    let text = std::fs::read_to_string(path).expect("manifests/stack.yaml is in the repository");
    let docs = load_services("stack.yaml", &text).unwrap_or_else(|e| panic!("{e:?}"));
    let services: Vec<(&str, &str)> = docs.iter().map(|d| (d.service.name.as_str(), d.service.spec.as_ref().map_or("", |s| s.image.as_str()))).collect();
    assert_eq!(services, [("cache", "127.0.0.1:5000/orch/stack-cache:1.0"), ("web", "127.0.0.1:5000/orch/stack-web:1.0")]);
    let web = docs[1].service.spec.as_ref().expect("spec");
    assert_eq!((web.ports[0].service_port, web.ports[0].node_port), (80, 30081));
    assert_eq!(web.image_pull_policy(), pb::ImagePullPolicy::Unspecified, "unset: the node's default for a tagged image");
    let cache = docs[0].service.spec.as_ref().expect("spec");
    assert!(orch_api::manifest::has_local_volumes(cache), "the cache keeps its data in a local volume");
    assert_eq!(cache.volume_mounts[0].mount_path, "/data");
    let manifests = orch_api::manifest::load_manifests("stack.yaml", &text).expect("valid");
    assert_eq!(manifests.configs.iter().map(|c| c.content.name.as_str()).collect::<Vec<_>>(), ["web-conf"]);
    let refs: Vec<(pb::ConfigKind, String)> = orch_api::manifest::config_refs(web).into_iter().collect();
    assert_eq!(refs, [(pb::ConfigKind::Config, "web-conf".to_owned())], "the front's server configuration comes from a Config");
}

#[test]
fn the_example_system_manifest_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/system.yaml");
    let text = std::fs::read_to_string(path).expect("manifests/system.yaml is in the repository");
    let docs = load_services("system.yaml", &text).unwrap_or_else(|e| panic!("{e:?}"));
    let spec = docs[0].service.spec.clone().expect("spec");
    assert_eq!((spec.mode(), spec.root_volume.as_str(), spec.image.as_str()), (pb::ServiceMode::System, "root", "127.0.0.1:5000/orch/debian-system:12"));
    assert!(orch_api::manifest::has_local_volumes(&spec), "its root is a local volume: each slot stays on its node");
}

#[test]
fn defaults_are_kubernetes_defaults() {
    let docs = load_services("test.yaml", &variant("", "  probes:\n    liveness:\n      tcpSocket:\n        port: http")).expect("valid");
    let spec = docs[0].service.spec.clone().expect("spec");
    assert_eq!(spec.replicas, 1);
    assert_eq!(spec.restart_policy(), pb::RestartPolicy::Always);
    assert_eq!(spec.ports[0].service_port, 80, "servicePort defaults to containerPort");
    assert_eq!(spec.ports[0].protocol(), pb::Protocol::Tcp);
    let probe = spec.probes.and_then(|p| p.liveness).expect("liveness");
    assert_eq!((probe.initial_delay_seconds, probe.period_seconds, probe.timeout_seconds, probe.success_threshold, probe.failure_threshold), (0, 10, 1, 1, 3));
    let update = spec.update.expect("update");
    assert_eq!(update.max_surge, Some(pb::IntOrPercent { value: 25, percent: true }));
}

#[test]
fn the_image_pull_policy_is_kept_as_written_and_defaults_by_tag_as_kubernetes_does() {
    let policy = |image: &str, policy: &str| {
        let text = variant("  image: 127.0.0.1:5000/orch/demo-web:1.0", &format!("  image: '{image}'{policy}"));
        load_services("test.yaml", &text).unwrap_or_else(|e| panic!("{image}: {e:?}"))[0].service.spec.as_ref().expect("spec").image_pull_policy()
    };
    // Unset is stored unset: the same manifest stays the same spec across upgrades.
    assert_eq!(policy("busybox", ""), pb::ImagePullPolicy::Unspecified);
    assert_eq!(policy("busybox", "\n  imagePullPolicy: IfNotPresent"), pb::ImagePullPolicy::IfNotPresent);
    assert_eq!(policy("busybox:1", "\n  imagePullPolicy: Always"), pb::ImagePullPolicy::Always);
    assert_eq!(policy("busybox:1", "\n  imagePullPolicy: Never"), pb::ImagePullPolicy::Never);
    let errors = errors_of(&variant("", "  imagePullPolicy: Sometimes"));
    assert!(errors.iter().any(|e| e.path == "spec.imagePullPolicy" && e.message.contains("unknown variant `Sometimes`")), "{errors:?}");
    // The default the node applies to an unset policy.
    let digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    for (image, want) in [
        ("127.0.0.1:5000/orch/demo-web:1.0", pb::ImagePullPolicy::IfNotPresent),
        ("127.0.0.1:5000/orch/demo-web:latest", pb::ImagePullPolicy::Always),
        ("127.0.0.1:5000/orch/demo-web", pb::ImagePullPolicy::Always),
        ("busybox", pb::ImagePullPolicy::Always),
        (&format!("busybox@{digest}"), pb::ImagePullPolicy::IfNotPresent),
        (&format!("busybox:latest@{digest}"), pb::ImagePullPolicy::IfNotPresent),
        ("oci:/images/web:2", pb::ImagePullPolicy::IfNotPresent),
        ("oci:/images/web", pb::ImagePullPolicy::Always),
    ] {
        assert_eq!(orch_api::image_ref::ImageRef::parse(image).expect("a reference").default_pull_policy(), want, "{image}");
    }
}

#[test]
fn a_security_context_is_carried_with_kubernetes_names() {
    let text = variant(
        "",
        "  securityContext:\n    runAsUser: 1000\n    runAsGroup: 2000\n    readOnlyRootFilesystem: true\n    capabilities:\n      add: [NET_ADMIN]\n      drop: [ALL]\n    seccompProfile: {type: Unconfined}\n    userNamespace: true",
    );
    let docs = load_services("t", &text).unwrap_or_else(|e| panic!("{e:?}"));
    let context = docs[0].service.spec.clone().and_then(|s| s.security_context).expect("securityContext");
    assert_eq!((context.run_as_user, context.run_as_group), (Some(1000), Some(2000)));
    assert!(context.read_only_root_filesystem && context.user_namespace);
    assert_eq!((&context.capabilities_add[..], &context.capabilities_drop[..]), (&["NET_ADMIN".to_owned()][..], &["ALL".to_owned()][..]));
    assert_eq!(context.seccomp_profile(), pb::SeccompProfileType::Unconfined);
    let plain = load_services("t", VALID).expect("valid");
    assert_eq!(plain[0].service.spec.clone().and_then(|s| s.security_context), None, "no securityContext: orch's defaults");
}

#[test]
fn limits_alone_become_requests() {
    let docs = load_services("t", &variant("", "  resources:\n    limits:\n      cpu: 1.5\n      memory: 1Gi")).expect("valid");
    let resources = docs[0].service.spec.clone().and_then(|s| s.resources).expect("resources");
    assert_eq!(resources.requests.map(|r| (r.cpu_millis, r.memory_bytes)), Some((1500, 1 << 30)));
}

/// The table the foundation issue asks for: each invalid manifest and the field path
/// (and a piece of the message) its error must carry.
#[test]
fn invalid_manifests_name_their_field() {
    let table: Vec<(&str, String, &str, &str)> = vec![
        ("unknown field", variant("", "  replica: 3"), "spec.replica", "unknown field `replica`"),
        ("wrong type", variant("", "  replicas: three"), "spec.replicas", "invalid type"),
        ("negative replicas", variant("", "  replicas: -1"), "spec.replicas", "between 0 and 10000, got -1"),
        ("absurd replicas", variant("", "  replicas: 99999999"), "spec.replicas", "between 0 and 10000"),
        ("name not a DNS label", variant("name: web", "name: Web_App"), "metadata.name", "DNS label"),
        ("name too long for its replicas", variant("name: web", &format!("name: {}", "w".repeat(58))), "metadata.name", "at most 57 characters, got 58"),
        ("bad memory quantity", variant("", "  resources:\n    limits:\n      memory: 64MB"), "spec.resources.limits.memory", "unknown suffix \"MB\""),
        ("negative cpu", variant("", "  resources:\n    requests:\n      cpu: -1"), "spec.resources.requests.cpu", "negative"),
        (
            "request over limit",
            variant("", "  resources:\n    requests:\n      cpu: 2\n    limits:\n      cpu: 1"),
            "spec.resources.requests.cpu",
            "must not exceed limits.cpu",
        ),
        (
            "duplicate container port",
            variant("", "  ports:\n    - {name: a, containerPort: 80}\n    - {name: b, containerPort: 80}")
                .replace("  ports:\n    - name: http\n      containerPort: 80\n", ""),
            "spec.ports[1].containerPort",
            "duplicate port 80",
        ),
        (
            "duplicate port name",
            variant("", "  ports:\n    - {name: a, containerPort: 80}\n    - {name: a, containerPort: 81}")
                .replace("  ports:\n    - name: http\n      containerPort: 80\n", ""),
            "spec.ports[1].name",
            "duplicate port name",
        ),
        ("port out of range", variant("containerPort: 80", "containerPort: 70000"), "spec.ports[0].containerPort", "between 1 and 65535"),
        ("nodePort out of range", variant("containerPort: 80", "containerPort: 80\n      nodePort: 80"), "spec.ports[0].nodePort", "between 30000 and 32767"),
        (
            "probe without handler",
            variant("", "  probes:\n    liveness:\n      periodSeconds: 5"),
            "spec.probes.liveness",
            "exactly one of exec, httpGet or tcpSocket",
        ),
        (
            "probe with unknown port name",
            variant("", "  probes:\n    readiness:\n      httpGet: {port: admin}"),
            "spec.probes.readiness.httpGet.port",
            "names no port",
        ),
        (
            "liveness successThreshold",
            variant("", "  probes:\n    liveness:\n      tcpSocket: {port: 80}\n      successThreshold: 2"),
            "spec.probes.liveness.successThreshold",
            "must be 1",
        ),
        (
            "zero period",
            variant("", "  probes:\n    startup:\n      exec: {command: [\"true\"]}\n      periodSeconds: 0"),
            "spec.probes.startup.periodSeconds",
            "between 1 and 3600",
        ),
        ("bad restart policy", variant("", "  restartPolicy: Sometimes"), "spec.restartPolicy", "unknown variant `Sometimes`"),
        ("bad image", variant("image: 127.0.0.1:5000/orch/demo-web:1.0", "image: Not An Image"), "spec.image", "not an image reference"),
        ("missing image", variant("  image: 127.0.0.1:5000/orch/demo-web:1.0\n", ""), "spec", "missing field `image`"),
        ("missing metadata", variant("metadata:\n  name: web\n", ""), "metadata", "missing field `metadata`"),
        ("bad label", variant("name: web", "name: web\n  labels:\n    app: \"has space\""), "metadata.labels.app", "label value"),
        ("empty label key", variant("name: web", "name: web\n  labels:\n    \"\": x"), "metadata.labels[\"\"]", "label key"),
        ("unknown empty field", variant("", "  \"\": 1"), "spec[\"\"]", "unknown field ``"),
        ("duplicate env", variant("", "  env:\n    - {name: A, value: x}\n    - {name: A, value: y}"), "spec.env[1].name", "duplicate variable"),
        ("update cannot progress", variant("", "  update: {maxSurge: 0, maxUnavailable: 0}"), "spec.update", "must not both be 0"),
        ("bad percentage", variant("", "  update: {maxSurge: 150%}"), "spec.update.maxSurge", "between 0 and 100"),
        ("wrong kind", variant("kind: Service", "kind: Deployment"), "kind", "unknown kind \"Deployment\""),
        ("wrong apiVersion", variant("apiVersion: orch/v1", "apiVersion: apps/v1"), "apiVersion", "must be \"orch/v1\""),
        ("pids zero", variant("", "  resources:\n    limits:\n      pids: 0"), "spec.resources.limits.pids", "between 1 and 4194304"),
        ("negative uid", variant("", "  securityContext:\n    runAsUser: -1"), "spec.securityContext.runAsUser", "between 0 and 4294967294"),
        ("uid too large", variant("", "  securityContext:\n    runAsGroup: 4294967295"), "spec.securityContext.runAsGroup", "between 0 and"),
        (
            "unknown capability",
            variant("", "  securityContext:\n    capabilities:\n      add: [NET_ADMIN, FLY]"),
            "spec.securityContext.capabilities.add[1]",
            "\"FLY\" is not a Linux capability",
        ),
        (
            "bad seccomp profile",
            variant("", "  securityContext:\n    seccompProfile: {type: Localhost}"),
            "spec.securityContext.seccompProfile.type",
            "RuntimeDefault or Unconfined",
        ),
        ("privileged is not a field", variant("", "  securityContext:\n    privileged: true"), "spec.securityContext.privileged", "unknown field `privileged`"),
        (
            "volume without source",
            variant("", "  volumes: [{name: data}]"),
            "spec.volumes[0]",
            "exactly one of emptyDir, hostPath, local, config, secret; got 0",
        ),
        ("volume with two sources", variant("", "  volumes: [{name: data, local: {}, emptyDir: {}}]"), "spec.volumes[0]", "got 2"),
        ("volume name", variant("", "  volumes: [{name: Data_1, local: {}}]"), "spec.volumes[0].name", "DNS label"),
        ("duplicate volume", variant("", "  volumes: [{name: d, local: {}}, {name: d, emptyDir: {}}]"), "spec.volumes[1].name", "duplicate volume \"d\""),
        ("emptyDir medium", variant("", "  volumes: [{name: d, emptyDir: {medium: Disk}}]"), "spec.volumes[0].emptyDir.medium", "must be \"Memory\""),
        ("emptyDir size", variant("", "  volumes: [{name: d, emptyDir: {sizeLimit: 10MB}}]"), "spec.volumes[0].emptyDir.sizeLimit", "unknown suffix"),
        ("relative hostPath", variant("", "  volumes: [{name: d, hostPath: {path: srv}}]"), "spec.volumes[0].hostPath.path", "absolute path"),
        ("hostPath with ..", variant("", "  volumes: [{name: d, hostPath: {path: /srv/../etc}}]"), "spec.volumes[0].hostPath.path", ". or .. components"),
        (
            "hostPath into orch's state",
            variant("", "  volumes: [{name: d, hostPath: {path: /var/lib/orch/agent}}]"),
            "spec.volumes[0].hostPath.path",
            "overlaps orch's own state (/var/lib/orch)",
        ),
        ("hostPath over orch's PKI", variant("", "  volumes: [{name: d, hostPath: {path: /etc}}]"), "spec.volumes[0].hostPath.path", "(/etc/orch)"),
        ("hostPath into /proc", variant("", "  volumes: [{name: d, hostPath: {path: /proc/1/root}}]"), "spec.volumes[0].hostPath.path", "inside /proc"),
        ("hostPath type", variant("", "  volumes: [{name: d, hostPath: {path: /srv, type: Socket}}]"), "spec.volumes[0].hostPath.type", "one of Directory"),
        ("mount of no volume", variant("", "  volumeMounts: [{name: nope, mountPath: /data}]"), "spec.volumeMounts[0].name", "no volume named \"nope\""),
        (
            "relative mountPath",
            variant("", "  volumes: [{name: d, local: {}}]\n  volumeMounts: [{name: d, mountPath: data}]"),
            "spec.volumeMounts[0].mountPath",
            "absolute path",
        ),
        (
            "mount on the root",
            variant("", "  volumes: [{name: d, local: {}}]\n  volumeMounts: [{name: d, mountPath: /}]"),
            "spec.volumeMounts[0].mountPath",
            "must not be /",
        ),
        (
            "mount on /proc",
            variant("", "  volumes: [{name: d, local: {}}]\n  volumeMounts: [{name: d, mountPath: /proc/x}]"),
            "spec.volumeMounts[0].mountPath",
            "under /proc",
        ),
        (
            "two mounts on one path",
            variant("", "  volumes: [{name: d, local: {}}]\n  volumeMounts: [{name: d, mountPath: /data}, {name: d, mountPath: /data/}]"),
            "spec.volumeMounts[1].mountPath",
            "already mounted by spec.volumeMounts[0]",
        ),
        (
            "subPath escaping",
            variant("", "  volumes: [{name: d, local: {}}]\n  volumeMounts: [{name: d, mountPath: /x, subPath: ../up}]"),
            "spec.volumeMounts[0].subPath",
            ".. components",
        ),
        (
            "valueFrom and value",
            variant("", "  env: [{name: A, value: x, valueFrom: {configKey: {name: c, key: k}}}]"),
            "spec.env[0]",
            "both value and valueFrom",
        ),
        ("valueFrom of nothing", variant("", "  env: [{name: A, valueFrom: {}}]"), "spec.env[0].valueFrom", "exactly one of configKey, secretKey"),
        (
            "valueFrom bad key",
            variant("", "  env: [{name: A, valueFrom: {secretKey: {name: db, key: 'a b'}}}]"),
            "spec.env[0].valueFrom.secretKey.key",
            "letters, digits",
        ),
        (
            "config volume item path",
            variant("", "  volumes: [{name: c, config: {name: site, items: [{key: a, path: ../x}]}}]"),
            "spec.volumes[0].config.items[0].path",
            "relative path",
        ),
        (
            "secret volume mode",
            variant("", "  volumes: [{name: c, secret: {name: db, defaultMode: 644}}]"),
            "spec.volumes[0].secret.defaultMode",
            "as a string, e.g. \"0400\"",
        ),
        (
            "absolute subPath",
            variant("", "  volumes: [{name: d, local: {}}]\n  volumeMounts: [{name: d, mountPath: /x, subPath: /etc}]"),
            "spec.volumeMounts[0].subPath",
            "relative path",
        ),
        ("log size too small", variant("", "  logs: {maxSize: 1Ki}"), "spec.logs.maxSize", "must be between 16Ki and 1Gi, got 1Ki"),
        ("log size too large", variant("", "  logs: {maxSize: 2Gi}"), "spec.logs.maxSize", "must be between 16Ki and 1Gi, got 2Gi"),
        ("zero log size", variant("", "  logs: {maxSize: 0}"), "spec.logs.maxSize", "must be between 16Ki and 1Gi, got 0"),
        ("bad log size", variant("", "  logs: {maxSize: 10MB}"), "spec.logs.maxSize", "unknown suffix \"MB\""),
        ("one log file", variant("", "  logs: {maxFiles: 1}"), "spec.logs.maxFiles", "must be between 2 and 16, got 1"),
        ("too many log files", variant("", "  logs: {maxFiles: 17}"), "spec.logs.maxFiles", "must be between 2 and 16, got 17"),
        ("unknown log field", variant("", "  logs: {maxAge: 7d}"), "spec.logs.maxAge", "unknown field `maxAge`"),
        ("empty recovery", variant("", "  recovery: {}"), "spec.recovery", "name restartWithinMillis, rescheduleWithinSeconds or both"),
        (
            "zero restart target",
            variant("", "  recovery: {restartWithinMillis: 0}"),
            "spec.recovery.restartWithinMillis",
            "must be between 1 and 3600000, got 0",
        ),
        (
            "reschedule target over a day",
            variant("", "  recovery: {rescheduleWithinSeconds: 86401}"),
            "spec.recovery.rescheduleWithinSeconds",
            "must be between 1 and 86400, got 86401",
        ),
        ("unknown recovery field", variant("", "  recovery: {restartWithin: 5s}"), "spec.recovery.restartWithin", "unknown field `restartWithin`"),
        ("unknown mode", variant("", "  mode: vm"), "spec.mode", "unknown variant `vm`"),
        ("system without a root", variant("", "  mode: system"), "spec.rootVolume", "name one of spec.volumes, a `local` one"),
        ("root volume not declared", variant("", "  mode: system\n  rootVolume: root"), "spec.rootVolume", "no volume named \"root\""),
        (
            "root volume not local",
            variant("", "  mode: system\n  rootVolume: root\n  volumes: [{name: root, emptyDir: {}}]"),
            "spec.rootVolume",
            "must be a `local` volume",
        ),
        (
            "root volume mounted",
            variant("", "  mode: system\n  rootVolume: root\n  volumes: [{name: root, local: {}}]\n  volumeMounts: [{name: root, mountPath: /data}]"),
            "spec.volumeMounts[0]",
            "it is mounted nowhere else",
        ),
        (
            "system in a user namespace",
            variant("", "  mode: system\n  rootVolume: root\n  volumes: [{name: root, local: {}}]\n  securityContext: {userNamespace: true}"),
            "spec.securityContext.userNamespace",
            "without a user namespace",
        ),
        (
            "system read-only",
            variant("", "  mode: system\n  rootVolume: root\n  volumes: [{name: root, local: {}}]\n  securityContext: {readOnlyRootFilesystem: true}"),
            "spec.securityContext.readOnlyRootFilesystem",
            "root is writable",
        ),
        (
            "root volume of an application",
            variant("", "  rootVolume: root\n  volumes: [{name: root, local: {}}]"),
            "spec.rootVolume",
            "only a system container",
        ),
        ("unknown stop signal", variant("", "  stopSignal: SIGFOO"), "spec.stopSignal", "\"SIGFOO\" is not a signal"),
        ("stop signal of glibc's own", variant("", "  stopSignal: \"32\""), "spec.stopSignal", "is not a signal"),
        ("stop signal that stops nothing", variant("", "  stopSignal: SIGSEGV"), "spec.stopSignal", "SIGSEGV cannot stop a container"),
    ];
    for (what, text, path, message) in &table {
        let errors = errors_of(text);
        assert!(
            errors.iter().any(|e| e.path == *path && e.message.contains(message) && e.document == 1 && e.source_name == "test.yaml"),
            "{what}: expected an error at {path} containing {message:?}, got {errors:#?}"
        );
    }
    assert!(table.len() >= 12);
}

#[test]
fn a_log_policy_is_carried_and_an_unset_one_stays_unset() {
    let logs = |yaml: &str| {
        let docs = load_services("test.yaml", &variant("", yaml)).unwrap_or_else(|e| panic!("{yaml}: {e:?}"));
        docs[0].service.spec.clone().and_then(|s| s.logs)
    };
    assert_eq!(logs("  logs: {maxSize: 64Ki, maxFiles: 4}"), Some(pb::LogPolicy { max_bytes: 65_536, max_files: 4 }));
    assert_eq!(logs("  logs:\n    maxSize: 16Ki\n    maxFiles: 2"), Some(pb::LogPolicy { max_bytes: 16 << 10, max_files: 2 }), "the lower bounds are allowed");
    assert_eq!(logs("  logs: {maxSize: 1Gi, maxFiles: 16}"), Some(pb::LogPolicy { max_bytes: 1 << 30, max_files: 16 }), "the upper bounds are allowed");
    // An unset field is 0 (the node's default), never the default itself.
    assert_eq!(logs("  logs: {maxFiles: 5}"), Some(pb::LogPolicy { max_bytes: 0, max_files: 5 }));
    assert_eq!(logs("  logs: {maxSize: 1Mi}"), Some(pb::LogPolicy { max_bytes: 1 << 20, max_files: 0 }));
    // No `logs`: none in the spec, so specs stored before the field keep their hash.
    let plain = load_services("test.yaml", VALID).expect("valid");
    assert_eq!(plain[0].service.spec.clone().and_then(|s| s.logs), None);
}

#[test]
fn recovery_targets_are_carried_and_unset_stays_unset() {
    let recovery = |yaml: &str| {
        let docs = load_services("test.yaml", &variant("", yaml)).unwrap_or_else(|e| panic!("{yaml}: {e:?}"));
        docs[0].service.spec.clone().and_then(|s| s.recovery)
    };
    assert_eq!(
        recovery("  recovery: {restartWithinMillis: 500, rescheduleWithinSeconds: 30}"),
        Some(pb::RecoveryTargets { restart_within_millis: 500, reschedule_within_seconds: 30 })
    );
    assert_eq!(recovery("  recovery:\n    rescheduleWithinSeconds: 1"), Some(pb::RecoveryTargets { restart_within_millis: 0, reschedule_within_seconds: 1 }));
    let plain = load_services("test.yaml", VALID).expect("valid");
    assert_eq!(plain[0].service.spec.clone().and_then(|s| s.recovery), None);
}

#[test]
fn a_system_container_names_its_root_and_an_application_stays_as_it_was() {
    let spec = |yaml: &str| load_services("test.yaml", &variant("", yaml)).map(|docs| docs[0].service.spec.clone().unwrap_or_default());
    let system = spec("  mode: system\n  rootVolume: root\n  volumes: [{name: root, local: {}}]").expect("valid");
    assert_eq!((system.mode(), system.root_volume.as_str()), (pb::ServiceMode::System, "root"));
    let plain = load_services("test.yaml", VALID).expect("valid")[0].service.spec.clone().unwrap_or_default();
    assert_eq!((plain.mode(), plain.root_volume.as_str()), (pb::ServiceMode::Application, ""), "the default: nothing new in the spec, no hash changes");
    assert_eq!(spec("  mode: application").expect("valid").mode(), pb::ServiceMode::Application);
}

#[test]
fn a_stop_signal_is_stored_by_its_canonical_name_and_unset_stays_unset() {
    let stop = |yaml: &str| load_services("test.yaml", &variant("", yaml)).map(|docs| docs[0].service.spec.clone().unwrap_or_default().stop_signal);
    assert_eq!(stop("  stopSignal: quit").expect("valid"), "SIGQUIT");
    assert_eq!(stop("  stopSignal: RTMIN+3").expect("valid"), "SIGRTMIN+3");
    assert_eq!(stop("  stopSignal: \"3\"").expect("valid"), "SIGQUIT");
    assert_eq!(load_services("test.yaml", VALID).expect("valid")[0].service.spec.clone().unwrap_or_default().stop_signal, "", "no hash changes");
}

#[test]
fn rebalance_is_a_boolean_and_unset_stays_unset() {
    let rebalance = |yaml: &str| load_services("test.yaml", &variant("", yaml)).map(|docs| docs[0].service.spec.clone().and_then(|s| s.rebalance));
    assert_eq!(rebalance("  rebalance: false").expect("valid"), Some(false));
    assert_eq!(rebalance("  rebalance: true").expect("valid"), Some(true));
    assert_eq!(load_services("test.yaml", VALID).expect("valid")[0].service.spec.clone().and_then(|s| s.rebalance), None);
    let errors = errors_of(&variant("", "  rebalance: sometimes"));
    assert!(errors.iter().any(|e| e.path == "spec.rebalance"), "{errors:#?}");
}

#[test]
fn the_log_policy_defaults_fill_what_is_unset() {
    use orch_api::manifest::{log_policy, DEFAULT_LOG_MAX_BYTES, DEFAULT_LOG_MAX_FILES, LOG_MAX_BYTES_RANGE, LOG_MAX_FILES_RANGE};
    assert_eq!((DEFAULT_LOG_MAX_BYTES, DEFAULT_LOG_MAX_FILES), (10 << 20, 3));
    assert_eq!(log_policy(None), (DEFAULT_LOG_MAX_BYTES, DEFAULT_LOG_MAX_FILES));
    assert_eq!(log_policy(Some(&pb::LogPolicy { max_bytes: 0, max_files: 0 })), (10 << 20, 3));
    assert_eq!(log_policy(Some(&pb::LogPolicy { max_bytes: 65_536, max_files: 0 })), (65_536, 3));
    assert_eq!(log_policy(Some(&pb::LogPolicy { max_bytes: 0, max_files: 7 })), (10 << 20, 7));
    assert_eq!(log_policy(Some(&pb::LogPolicy { max_bytes: 1 << 30, max_files: 16 })), (1 << 30, 16));
    // The defaults are themselves within what a manifest may ask for.
    assert!((LOG_MAX_BYTES_RANGE.0..=LOG_MAX_BYTES_RANGE.1).contains(&DEFAULT_LOG_MAX_BYTES));
    assert!((LOG_MAX_FILES_RANGE.0..=LOG_MAX_FILES_RANGE.1).contains(&DEFAULT_LOG_MAX_FILES));
}

#[test]
fn volumes_are_carried_with_kubernetes_names() {
    let text = variant(
        "",
        "  volumes:\n    - {name: scratch, emptyDir: {}}\n    - {name: fast, emptyDir: {medium: Memory, sizeLimit: 16Mi}}\n    - {name: data, local: {}}\n    \
         - {name: logs, hostPath: {path: /srv/logs, type: DirectoryOrCreate}}\n  volumeMounts:\n    - {name: data, mountPath: /data, subPath: redis/}\n    \
         - {name: logs, mountPath: /logs, readOnly: true}",
    );
    let docs = load_services("test.yaml", &text).unwrap_or_else(|e| panic!("{e:?}"));
    let spec = docs[0].service.spec.clone().expect("spec");
    use pb::volume::Source;
    let sources: Vec<(&str, Option<Source>)> = spec.volumes.iter().map(|v| (v.name.as_str(), v.source.clone())).collect();
    assert_eq!(
        sources,
        [
            ("scratch", Some(Source::EmptyDir(pb::EmptyDirVolume { memory: false, size_limit_bytes: 0 }))),
            ("fast", Some(Source::EmptyDir(pb::EmptyDirVolume { memory: true, size_limit_bytes: 16 << 20 }))),
            ("data", Some(Source::Local(pb::LocalVolume {}))),
            ("logs", Some(Source::HostPath(pb::HostPathVolume { path: "/srv/logs".into(), r#type: pb::HostPathType::DirectoryOrCreate.into() }))),
        ]
    );
    assert_eq!(
        spec.volume_mounts,
        [
            pb::VolumeMount { name: "data".into(), mount_path: "/data".into(), read_only: false, sub_path: "redis".into() },
            pb::VolumeMount { name: "logs".into(), mount_path: "/logs".into(), read_only: true, sub_path: String::new() },
        ]
    );
    assert!(orch_api::manifest::has_local_volumes(&spec));
}

#[test]
fn configs_and_secrets_are_documents_of_their_own() {
    use orch_api::manifest::load_manifests;
    let text = "apiVersion: orch/v1\nkind: Config\nmetadata: {name: site}\ndata: {index.html: hi}\nbinaryData: {logo.png: AAEC}\n---\n\
                apiVersion: orch/v1\nkind: Secret\nmetadata: {name: db}\ndata: {password: hunter2}\n---\n"
        .to_owned()
        + &variant("", "  env: [{name: PW, valueFrom: {secretKey: {name: db, key: password}}}]\n  volumes: [{name: www, config: {name: site, defaultMode: \"0440\", items: [{key: index.html, path: i/index.html, mode: 256}]}}]");
    let manifests = load_manifests("test.yaml", &text).unwrap_or_else(|e| panic!("{e:?}"));
    type Content<'a> = (pb::ConfigKind, &'a str, Vec<(&'a str, &'a [u8])>);
    let configs: Vec<Content<'_>> = manifests
        .configs
        .iter()
        .map(|c| (c.content.kind, c.content.name.as_str(), c.content.data.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect()))
        .collect();
    assert_eq!(
        configs,
        [
            (pb::ConfigKind::Config, "site", vec![("index.html", b"hi".as_slice()), ("logo.png", [0u8, 1, 2].as_slice())]),
            (pb::ConfigKind::Secret, "db", vec![("password", b"hunter2".as_slice())]),
        ]
    );
    assert!(!format!("{:?}", manifests.configs).contains("hunter2"), "a secret's value never reaches a debug line");
    let spec = manifests.services[0].service.spec.clone().expect("spec");
    assert_eq!(spec.env[0].value_from, Some(pb::KeyRef { kind: pb::ConfigKind::Secret.into(), name: "db".into(), key: "password".into() }));
    let Some(pb::volume::Source::Config(volume)) = &spec.volumes[0].source else { panic!("a config volume: {:?}", spec.volumes) };
    assert_eq!((volume.default_mode, volume.items[0].mode), (Some(0o440), Some(0o400)));
    let refs: Vec<(pb::ConfigKind, String)> = orch_api::manifest::config_refs(&spec).into_iter().collect();
    assert_eq!(refs, [(pb::ConfigKind::Config, "site".to_owned()), (pb::ConfigKind::Secret, "db".to_owned())]);
    // load_services leaves Configs and Secrets out.
    assert_eq!(orch_api::manifest::load_services("test.yaml", &text).expect("valid").len(), 1);

    let bad = |doc: &str| errors_of(&format!("apiVersion: orch/v1\n{doc}"));
    let table = [
        ("kind: Config\nmetadata: {name: c}\ndata: {'a b': x}", "data[\"a b\"]", "letters, digits"),
        ("kind: Config\nmetadata: {name: c}\nbinaryData: {k: '%%%'}", "binaryData.k", "must be base64"),
        ("kind: Secret\nmetadata: {name: c}\ndata: {k: x}\nbinaryData: {k: eA==}", "binaryData.k", "also in data"),
        ("kind: Secret\nmetadata: {name: C}\ndata: {k: x}", "metadata.name", "DNS label"),
        ("kind: Secret\nmetadata: {name: c}\nspec: {}", "spec", "unknown field `spec`"),
        ("kind: ConfigMap\nmetadata: {name: c}", "kind", "expected \"Service\", \"Config\" or \"Secret\""),
    ];
    for (doc, path, message) in table {
        let errors = bad(doc);
        assert!(errors.iter().any(|e| e.path == path && e.message.contains(message)), "{doc}: expected {path}: {message}, got {errors:#?}");
    }
    // A Secret's value is never in an error: an unquoted number, bad base64.
    for (doc, path) in [
        ("kind: Secret\nmetadata: {name: c}\ndata: {pin: 987654}", "data.pin"),
        ("kind: Secret\nmetadata: {name: c}\ndata: {\"tls.key\": 987654}", "data[\"tls.key\"]"),
        ("kind: Secret\nmetadata: {name: c}\nbinaryData: {\"\": '98765#'}", "binaryData[\"\"]"),
        ("kind: Secret\nmetadata: {name: c}\nbinaryData: {pin: '98765#'}", "binaryData.pin"),
        ("kind: Secret\nmetadata: {name: c}\ndata: hunter98765", "data"),
        ("kind: Secret\nmetadata: {name: c}\nbinaryData: 98765", "binaryData"),
    ] {
        let errors = bad(doc);
        assert!(errors.iter().any(|e| e.path == path), "{doc}: expected an error at {path}, got {errors:#?}");
        assert!(errors.iter().all(|e| !e.to_string().contains("98765") && !e.to_string().contains('#')), "{doc}: the value is shown: {errors:#?}");
    }
    let content = orch_api::manifest::load_manifests("s.yaml", "apiVersion: orch/v1\nkind: Secret\nmetadata: {name: c}\ndata: {pw: hunter2}\n")
        .expect("valid")
        .configs
        .remove(0);
    assert!(!format!("{:?}", content.content).contains("hunter2"), "Debug shows a secret's value");
    let big = format!("kind: Config\nmetadata: {{name: c}}\ndata: {{k: {}}}", "x".repeat(orch_api::manifest::MAX_CONFIG_BYTES + 1));
    assert!(bad(&big).iter().any(|e| e.path == "data" && e.message.contains("1 MiB")));
}

#[test]
fn errors_display_file_document_path_and_message() {
    let text = format!("{VALID}---\n{}", variant("", "  replicas: -4"));
    let errors = errors_of(&text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].to_string(), "test.yaml: document 2: spec.replicas: must be between 0 and 10000, got -4");
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let text = variant("", "  replicas: -1\n  restartPolicy: Never\n  nodeSelector: {\"bad key!\": x}").replace("containerPort: 80", "containerPort: 0");
    let errors = errors_of(&text);
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert!(paths.contains(&"spec.replicas"), "{paths:?}");
    assert!(paths.contains(&"spec.ports[0].containerPort"), "{paths:?}");
    assert!(paths.contains(&"spec.nodeSelector[\"bad key!\"]"), "{paths:?}");
}

#[test]
fn multi_document_files_skip_empty_documents() {
    let second = VALID.replace("name: web", "name: api");
    let text = format!("---\n# only a comment\n---\n{VALID}---\n{second}---\n");
    let docs = load_services("multi.yaml", &text).expect("valid");
    let names: Vec<&str> = docs.iter().map(|d| d.service.name.as_str()).collect();
    assert_eq!(names, ["web", "api"]);
    assert_eq!(docs[1].document, 3);
}

#[test]
fn yaml_syntax_errors_name_the_document() {
    let text = format!("{VALID}---\nspec: [unclosed\n");
    let errors = errors_of(&text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].document, 2);
    assert!(errors[0].message.starts_with("invalid YAML"), "{errors:?}");
}

#[test]
fn non_mapping_documents_are_rejected() {
    for text in ["- a\n- b\n", "just text\n", "42\n"] {
        let errors = errors_of(text);
        assert_eq!(errors[0].document, 1);
        assert!(errors[0].message.contains("expected a mapping"), "{errors:?}");
    }
}

#[test]
fn the_same_service_twice_is_rejected() {
    let mut docs = load_services("a.yaml", VALID).expect("valid");
    docs.extend(load_services("b.yaml", VALID).expect("valid"));
    let errors = check_unique_names(&docs);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].to_string(), "b.yaml: document 1: metadata.name: service \"web\" is already defined in a.yaml document 1");
}

#[test]
fn a_node_port_two_services_declare_is_rejected_naming_both() {
    let service = |name: &str, node_port: u32| {
        format!("apiVersion: orch/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{image: x, ports: [{{containerPort: 80, nodePort: {node_port}}}]}}\n")
    };
    let mut docs = load_services("a.yaml", &service("web", 30080)).expect("valid");
    docs.extend(load_services("b.yaml", &format!("{}---\n{}", service("other", 30081), service("api", 30080))).expect("valid"));
    let errors = orch_api::manifest::check_unique_node_ports(&docs);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].to_string(), "b.yaml: document 2: spec.ports[0].nodePort: 30080 is already used by service \"web\" (a.yaml document 1)");
}

/// Garbage never panics the loader.
#[test]
fn arbitrary_input_never_panics() {
    let samples = [
        "",
        "---",
        "\0\0\0",
        "{",
        "apiVersion: orch/v1\nkind: Service\nmetadata: 3\nspec: []",
        "kind: [1,2]",
        "a: &a [*a]",
        "apiVersion: orch/v1\nkind: Service\nmetadata: {name: x}\nspec: {image: x, ports: [{containerPort: 99999999999999999999}]}",
        "apiVersion: orch/v1\nkind: Service\nmetadata: {name: x}\nspec: {image: x, resources: {limits: {memory: 1e400}}}",
        "!!binary aGVsbG8=",
        "? [a]\n: b",
    ];
    for sample in samples {
        let _ = load_services("fuzz", sample);
    }
    // Every prefix of a valid manifest as well.
    for end in 0..VALID.len() {
        let _ = load_services("fuzz", &VALID[..end]);
    }
}
