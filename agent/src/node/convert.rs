//! The agent's protobuf edge: what the controller's records mean for the node — a
//! replica's limits and confinement, the balancer's service table, routes to other
//! nodes. Pure functions, table-tested.

use orch_api::pb;

use crate::cgroups::Limits;
use crate::net::{PeerRoute, PortMapping, Protocol, ServiceEndpoints};
use crate::runtime::{capability_set, IdRange, SeccompProfile, Security, User, DEFAULT_ID_RANGE};

/// What a securityContext asks of the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confinement {
    pub user: Option<User>,
    pub user_namespace: Option<IdRange>,
    pub security: Security,
}

/// The runtime's view of a (validated) securityContext over the image's user:
/// `runAsUser` and `runAsGroup` replace the image's uid and gid one by one (an unset gid
/// is the image's, else root's; the image user's supplementary groups stay only while
/// the uid is the image's), capabilities are added to and dropped from Docker's
/// default set, and `userNamespace` maps the container's ids to the node's range.
pub fn confinement_of(context: Option<&pb::SecurityContext>, image_user: Option<User>) -> Result<Confinement, String> {
    let Some(context) = context else { return Ok(Confinement { user: image_user, user_namespace: None, security: Security::default() }) };
    let user = match (context.run_as_user, context.run_as_group) {
        (None, None) => image_user,
        (uid, gid) => {
            let image = image_user.unwrap_or(User::ids(0, 0));
            let uid = uid.unwrap_or(image.uid);
            let groups = if uid == image.uid { image.groups } else { Vec::new() };
            Some(User { uid, gid: gid.unwrap_or(image.gid), groups })
        }
    };
    let seccomp = match context.seccomp_profile() {
        pb::SeccompProfileType::RuntimeDefault => SeccompProfile::RuntimeDefault,
        pb::SeccompProfileType::Unconfined => SeccompProfile::Unconfined,
    };
    Ok(Confinement {
        user,
        user_namespace: context.user_namespace.then_some(DEFAULT_ID_RANGE),
        security: Security {
            capabilities: capability_set(&context.capabilities_add, &context.capabilities_drop)?,
            seccomp,
            read_only_root: context.read_only_root_filesystem,
        },
    })
}

/// A system container's command: the manifest's, else the image's own init
/// (`/sbin/init`, whatever the image's entrypoint); and `container=orch` in its
/// environment unless the manifest sets `container` (as LXC and systemd-nspawn set it:
/// init scripts skip what a container cannot do).
pub fn system_init(command: &[String], env: &mut Vec<String>) -> Vec<String> {
    if !env.iter().any(|e| e.starts_with("container=")) {
        env.insert(0, "container=orch".to_owned());
    }
    if command.is_empty() {
        vec!["/sbin/init".to_owned()]
    } else {
        command.to_vec()
    }
}

/// A system container's init may end itself (`halt`, `reboot`): CAP_SYS_BOOT, which
/// brings back `reboot(2)` in the seccomp filter. In the container's own PID namespace
/// that call ends the namespace's init, never the host. Not when the manifest drops it,
/// and never unconfined: without the filter, CAP_SYS_BOOT would also allow
/// `kexec_load`, which is the host's.
pub fn system_confinement(security: &mut crate::runtime::Security, dropped: &[String]) {
    let drops_it = dropped.iter().any(|c| {
        let upper = c.to_ascii_uppercase();
        matches!(upper.strip_prefix("CAP_").unwrap_or(&upper), "SYS_BOOT" | "ALL")
    });
    if drops_it || security.seccomp == crate::runtime::SeccompProfile::Unconfined {
        return;
    }
    if !security.capabilities.iter().any(|c| c == "CAP_SYS_BOOT") {
        security.capabilities.push("CAP_SYS_BOOT".to_owned());
        security.capabilities.sort();
    }
}

/// The signal that asks a replica's container to stop: the manifest's `stopSignal`, else
/// the image's `StopSignal` (Docker's order), else SIGTERM — and for a system container's
/// init SIGRTMIN+3 when it is systemd (`init`: where its command leads inside the image;
/// systemd's halt request, as Podman sends it) or SIGPWR (sysvinit's power-failure
/// action, as LXC sends it).
pub fn stop_signal(spec: &pb::ServiceSpec, image_signal: Option<&str>, init: Option<&std::path::Path>) -> Result<i32, String> {
    use orch_api::signal;
    if !spec.stop_signal.is_empty() {
        return signal::parse(&spec.stop_signal).map_err(|e| format!("spec.stopSignal: {e}"));
    }
    if let Some(written) = image_signal {
        return signal::parse(written).map_err(|e| format!("the image's StopSignal: {e}"));
    }
    let systemd = init.and_then(std::path::Path::file_name).is_some_and(|name| name == "systemd");
    Ok(match spec.mode() {
        pb::ServiceMode::Application => signal::SIGTERM,
        pb::ServiceMode::System if systemd => signal::SIGRTMIN_3,
        pb::ServiceMode::System => signal::SIGPWR,
    })
}

/// The service's image pull policy; an unset one (the manifest names none, or a record
/// from before the field) gets the default for its reference (Kubernetes': `Always` for no tag or `:latest`, else
/// `IfNotPresent`).
pub fn pull_policy(spec: &pb::ServiceSpec) -> pb::ImagePullPolicy {
    match spec.image_pull_policy() {
        pb::ImagePullPolicy::Unspecified => {
            orch_api::image_ref::ImageRef::parse(&spec.image).map_or(pb::ImagePullPolicy::IfNotPresent, |image| image.default_pull_policy())
        }
        set => set,
    }
}

/// The container's `NAME=value` list: values as written, or one key of a Config or
/// Secret the node was sent (text without NUL; a Secret's value is never in an error).
pub fn env_of(vars: &[pb::EnvVar], configs: &dyn Fn(pb::ConfigKind, &str) -> Option<pb::ConfigData>) -> Result<Vec<String>, String> {
    vars.iter()
        .map(|var| {
            let Some(from) = &var.value_from else { return Ok(format!("{}={}", var.name, var.value)) };
            let what = orch_api::manifest::object_name(from.kind(), &from.name);
            let data = configs(from.kind(), &from.name).ok_or_else(|| format!("env {}: {what} not found", var.name))?;
            let bytes = data.data.get(&from.key).ok_or_else(|| format!("env {}: {what} has no key {:?}", var.name, from.key))?;
            match std::str::from_utf8(bytes) {
                Ok(text) if !text.contains('\0') => Ok(format!("{}={text}", var.name)),
                _ => Err(format!("env {}: key {:?} of {what} is not text without NUL (mount it as a file instead)", var.name, from.key)),
            }
        })
        .collect()
}

/// The most processes a replica may have when its spec names no limit (a fork bomb in
/// one container stops there, not at the node's `pid_max`).
pub const DEFAULT_PIDS_LIMIT: u64 = 4096;

/// A replica's cgroup limits from its spec's resources (none given: only the pids
/// limit, [`DEFAULT_PIDS_LIMIT`]).
pub fn limits_of(resources: Option<&pb::Resources>) -> Limits {
    let limits = resources.and_then(|r| r.limits).unwrap_or_default();
    let requests = resources.and_then(|r| r.requests).unwrap_or_default();
    let some = |v: u64| (v > 0).then_some(v);
    Limits {
        memory_bytes: some(limits.memory_bytes),
        cpu_limit_millis: some(limits.cpu_millis),
        cpu_request_millis: some(requests.cpu_millis).or(some(limits.cpu_millis)),
        pids: some(limits.pids).or(Some(DEFAULT_PIDS_LIMIT)),
        ..Limits::default()
    }
}

/// Why a record from the controller cannot be used: the record and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("service {service}: vip {value:?} is not an IPv4 address")]
    Vip { service: String, value: String },
    #[error("route to node {node}: pod subnet: {reason}")]
    RouteSubnet { node: String, reason: String },
    #[error("route to node {node}: via {value:?} is not an IPv4 address")]
    RouteVia { node: String, value: String },
}

/// A service from the controller as the balancer wants it. A port out of range or a
/// ready address that is not one is left out (the rest of the service still serves).
impl TryFrom<&pb::ServiceEndpoints> for ServiceEndpoints {
    type Error = ConvertError;

    fn try_from(service: &pb::ServiceEndpoints) -> Result<ServiceEndpoints, ConvertError> {
        let vip = service.vip.parse().map_err(|_| ConvertError::Vip { service: service.service.clone(), value: service.vip.clone() })?;
        let ports = service
            .ports
            .iter()
            .filter_map(|p| {
                Some(PortMapping {
                    name: p.name.clone(),
                    protocol: if p.protocol() == pb::Protocol::Udp { Protocol::Udp } else { Protocol::Tcp },
                    service_port: u16::try_from(p.service_port).ok()?,
                    target_port: u16::try_from(p.container_port).ok()?,
                    node_port: u16::try_from(p.node_port).ok().filter(|&n| n != 0),
                })
            })
            .collect();
        let ready = service.ready_ips.iter().filter_map(|ip| ip.parse().ok()).collect();
        Ok(ServiceEndpoints { name: service.service.clone(), vip, ports, ready })
    }
}

/// A route to another node's pods: its typed subnet, or the text an earlier controller
/// sends.
impl TryFrom<&pb::NodeRoute> for PeerRoute {
    type Error = ConvertError;

    fn try_from(route: &pb::NodeRoute) -> Result<PeerRoute, ConvertError> {
        let subnet = orch_api::cidr::from_wire(route.pod_subnet.as_ref(), &route.pod_cidr)
            .map_err(|e| ConvertError::RouteSubnet { node: route.node.clone(), reason: e.to_string() })?;
        let via = route.via.parse().map_err(|_| ConvertError::RouteVia { node: route.node.clone(), value: route.via.clone() })?;
        Ok(PeerRoute { subnet_network: subnet.network(), prefix: subnet.prefix(), via })
    }
}

impl From<&PeerRoute> for pb::NodeRoute {
    fn from(route: &PeerRoute) -> pb::NodeRoute {
        let subnet = orch_api::cidr::Ipv4Cidr::new(route.subnet_network, route.prefix).ok();
        pb::NodeRoute {
            node: String::new(),
            pod_cidr: format!("{}/{}", route.subnet_network, route.prefix),
            via: route.via.to_string(),
            pod_subnet: subnet.map(Into::into),
        }
    }
}

/// Converts every record that can be, warning about each that cannot.
pub fn usable<'a, W: 'a, T>(records: impl IntoIterator<Item = &'a W>) -> Vec<T>
where
    T: TryFrom<&'a W, Error = ConvertError>,
{
    records
        .into_iter()
        .filter_map(|record| match T::try_from(record) {
            Ok(converted) => Some(converted),
            Err(error) => {
                tracing::warn!(%error, "ignoring a record from the controller");
                None
            }
        })
        .collect()
}

/// One listener of the node's balancer and where it sends connections, for `Inspect`.
pub fn balancer_listener(key: &crate::net::table::ListenKey, backends: &[std::net::SocketAddrV4]) -> pb::BalancerListener {
    use crate::net::table::ListenKey;
    let (vip, port, protocol) = match key {
        ListenKey::Vip(address) => (address.ip().to_string(), address.port(), "tcp"),
        ListenKey::UdpVip(address) => (address.ip().to_string(), address.port(), "udp"),
        ListenKey::NodePort(port) => (String::new(), *port, "tcp"),
        ListenKey::UdpNodePort(port) => (String::new(), *port, "udp"),
    };
    pb::BalancerListener { vip, port: u32::from(port), protocol: protocol.into(), backends: backends.iter().map(ToString::to_string).collect() }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn an_unset_pull_policy_is_the_default_for_the_reference() {
        let spec = |image: &str, policy: pb::ImagePullPolicy| pb::ServiceSpec { image: image.into(), image_pull_policy: policy.into(), ..Default::default() };
        for (image, set, want) in [
            ("busybox", pb::ImagePullPolicy::Unspecified, pb::ImagePullPolicy::Always),
            ("busybox:1", pb::ImagePullPolicy::Unspecified, pb::ImagePullPolicy::IfNotPresent),
            ("busybox:latest", pb::ImagePullPolicy::Unspecified, pb::ImagePullPolicy::Always),
            ("busybox", pb::ImagePullPolicy::Never, pb::ImagePullPolicy::Never),
            ("busybox:1", pb::ImagePullPolicy::Always, pb::ImagePullPolicy::Always),
            ("not a reference", pb::ImagePullPolicy::Unspecified, pb::ImagePullPolicy::IfNotPresent),
        ] {
            assert_eq!(pull_policy(&spec(image, set)), want, "{image} {set:?}");
        }
    }

    #[test]
    fn a_security_context_over_the_image_user() {
        let image = Some(User { uid: 5, gid: 6, groups: vec![7] });
        assert_eq!(confinement_of(None, image.clone()), Ok(Confinement { user: image.clone(), user_namespace: None, security: Security::default() }));
        let context = |uid: Option<u32>, gid: Option<u32>| pb::SecurityContext { run_as_user: uid, run_as_group: gid, ..Default::default() };
        let user = |uid, gid, groups: &[u32]| Some(User { uid, gid, groups: groups.to_vec() });
        let cases = [
            (context(None, None), image.clone(), image.clone()),
            (context(Some(1000), None), image.clone(), user(1000, 6, &[])),
            (context(Some(5), None), image.clone(), user(5, 6, &[7])),
            (context(None, Some(8)), image.clone(), user(5, 8, &[7])),
            (context(Some(1000), None), None, user(1000, 0, &[])),
            (context(None, Some(2000)), None, user(0, 2000, &[])),
            (context(Some(1), Some(2)), image.clone(), user(1, 2, &[])),
        ];
        for (context, image, user) in cases {
            assert_eq!(confinement_of(Some(&context), image.clone()).map(|c| c.user), Ok(user), "{context:?} over {image:?}");
        }
        let strict = pb::SecurityContext {
            read_only_root_filesystem: true,
            capabilities_drop: vec!["ALL".into()],
            capabilities_add: vec!["NET_BIND_SERVICE".into()],
            seccomp_profile: pb::SeccompProfileType::Unconfined.into(),
            user_namespace: true,
            ..Default::default()
        };
        let confinement = confinement_of(Some(&strict), None).expect("valid");
        assert_eq!(confinement.security.capabilities, ["CAP_NET_BIND_SERVICE"]);
        assert_eq!(confinement.security.seccomp, SeccompProfile::Unconfined);
        assert!(confinement.security.read_only_root);
        assert_eq!(confinement.user_namespace, Some(DEFAULT_ID_RANGE));
    }

    #[test]
    fn env_from_configs_and_secrets() {
        let configs = |kind: pb::ConfigKind, name: &str| {
            (name == "db").then(|| pb::ConfigData {
                data: [("user".to_owned(), b"app".to_vec()), ("bin".to_owned(), vec![0, 1]), ("password".to_owned(), b"hunter2".to_vec())]
                    .into_iter()
                    .filter(|(k, _)| kind == pb::ConfigKind::Secret || k != "password")
                    .collect(),
            })
        };
        let from = |kind: pb::ConfigKind, name: &str, key: &str| Some(pb::KeyRef { kind: kind.into(), name: name.into(), key: key.into() });
        let var = |name: &str, value: &str, value_from| pb::EnvVar { name: name.into(), value: value.into(), value_from };
        let vars =
            [var("A", "1", None), var("USER", "", from(pb::ConfigKind::Config, "db", "user")), var("PW", "", from(pb::ConfigKind::Secret, "db", "password"))];
        assert_eq!(env_of(&vars, &configs), Ok(vec!["A=1".to_owned(), "USER=app".to_owned(), "PW=hunter2".to_owned()]));
        let missing = [var("PW", "", from(pb::ConfigKind::Config, "db", "password"))];
        assert_eq!(env_of(&missing, &configs), Err("env PW: config/db has no key \"password\"".to_owned()));
        assert!(env_of(&[var("X", "", from(pb::ConfigKind::Secret, "nope", "k"))], &configs).is_err_and(|e| e == "env X: secret/nope not found"));
        let binary = env_of(&[var("B", "", from(pb::ConfigKind::Secret, "db", "bin"))], &configs);
        assert!(binary.is_err_and(|e| e.contains("not text without NUL") && !e.contains("hunter2")));
    }

    #[test]
    fn a_system_container_runs_its_init_knows_it_is_contained_and_may_halt() {
        let mut env = vec!["A=1".to_owned()];
        assert_eq!(system_init(&[], &mut env), ["/sbin/init"]);
        assert_eq!(env, ["container=orch", "A=1"]);
        let mut own = vec!["container=lxc".to_owned()];
        assert_eq!(system_init(&["/lib/systemd/systemd".to_owned()], &mut own), ["/lib/systemd/systemd"], "the manifest's command wins");
        assert_eq!(own, ["container=lxc"], "the manifest's `container` wins");
        let mut security = crate::runtime::Security::default();
        system_confinement(&mut security, &[]);
        system_confinement(&mut security, &[]);
        assert_eq!(security.capabilities.iter().filter(|c| *c == "CAP_SYS_BOOT").count(), 1);
        assert!(security.capabilities.windows(2).all(|w| w[0] <= w[1]), "sorted");
        for dropped in [vec!["sys_boot".to_owned()], vec!["ALL".to_owned()]] {
            let mut kept = crate::runtime::Security::default();
            system_confinement(&mut kept, &dropped);
            assert!(!kept.capabilities.iter().any(|c| c == "CAP_SYS_BOOT"), "a drop wins: {dropped:?}");
        }
        let mut unconfined = crate::runtime::Security { seccomp: crate::runtime::SeccompProfile::Unconfined, ..Default::default() };
        system_confinement(&mut unconfined, &[]);
        assert!(!unconfined.capabilities.iter().any(|c| c == "CAP_SYS_BOOT"), "never without the filter (kexec_load)");
    }

    #[test]
    fn the_stop_signal_is_the_manifests_else_the_images_else_the_modes() {
        use std::path::Path;
        let application = pb::ServiceSpec::default();
        let system = pb::ServiceSpec { mode: pb::ServiceMode::System.into(), ..Default::default() };
        let systemd = Some(Path::new("/usr/lib/systemd/systemd"));
        let sysvinit = Some(Path::new("/usr/sbin/init"));
        let quit = pb::ServiceSpec { stop_signal: "SIGQUIT".into(), ..system.clone() };
        // The spec, the image's StopSignal, where its init leads: the signal or an error.
        type Case<'a> = (&'a pb::ServiceSpec, Option<&'a str>, Option<&'a Path>, Result<i32, &'a str>);
        let table: [Case; 9] = [
            (&application, None, None, Ok(15)),
            (&application, Some("SIGQUIT"), None, Ok(3)),
            (&application, None, systemd, Ok(15)),
            (&system, None, sysvinit, Ok(30)),
            (&system, None, None, Ok(30)),
            (&system, None, systemd, Ok(37)),
            (&system, Some("SIGTERM"), systemd, Ok(15)),
            (&quit, Some("SIGTERM"), systemd, Ok(3)),
            (&application, Some("SIGNOPE"), None, Err("the image's StopSignal: \"SIGNOPE\" is not a signal")),
        ];
        for (spec, image, init, expected) in table {
            let got = stop_signal(spec, image, init);
            match expected {
                Ok(number) => assert_eq!(got, Ok(number), "{:?} {image:?} {init:?}", spec.stop_signal),
                Err(message) => assert!(got.as_ref().is_err_and(|e| e.contains(message)), "{got:?}"),
            }
        }
    }

    #[test]
    fn limits_come_from_the_spec() {
        let resources = pb::Resources {
            requests: Some(pb::ResourceList { cpu_millis: 50, memory_bytes: 0, pids: 0 }),
            limits: Some(pb::ResourceList { cpu_millis: 250, memory_bytes: 64 << 20, pids: 64 }),
        };
        let limits = limits_of(Some(&resources));
        assert_eq!((limits.memory_bytes, limits.cpu_limit_millis, limits.cpu_request_millis, limits.pids), (Some(64 << 20), Some(250), Some(50), Some(64)));
        let unlimited = limits_of(Some(&pb::Resources::default()));
        assert_eq!((unlimited.memory_bytes, unlimited.pids), (None, Some(DEFAULT_PIDS_LIMIT)), "a pids limit unless the spec says");
        assert_eq!(limits_of(None), unlimited);
    }
    #[test]
    fn controller_records_convert_and_bad_ones_are_skipped() {
        let service = pb::ServiceEndpoints {
            service: "web".into(),
            vip: "10.96.0.7".into(),
            ports: vec![pb::ServicePort { name: "http".into(), container_port: 8080, service_port: 80, node_port: 30080, protocol: 0 }],
            ready_ips: vec!["10.88.1.5".into(), "junk".into()],
            ..Default::default()
        };
        let converted = ServiceEndpoints::try_from(&service).expect("converts");
        assert_eq!(converted.vip, Ipv4Addr::new(10, 96, 0, 7));
        assert_eq!(converted.ready, [Ipv4Addr::new(10, 88, 1, 5)]);
        assert_eq!((converted.ports[0].target_port, converted.ports[0].node_port), (8080, Some(30080)));
        let bad_vip = ServiceEndpoints::try_from(&pb::ServiceEndpoints { vip: "nope".into(), ..service.clone() });
        assert_eq!(bad_vip.map_err(|e| e.to_string()), Err("service web: vip \"nope\" is not an IPv4 address".to_owned()));
        let expected = PeerRoute { subnet_network: Ipv4Addr::new(10, 88, 2, 0), prefix: 24, via: Ipv4Addr::new(192, 0, 2, 2) };
        let from_text = pb::NodeRoute { node: "n2".into(), pod_cidr: "10.88.2.0/24".into(), via: "192.0.2.2".into(), pod_subnet: None };
        assert_eq!(PeerRoute::try_from(&from_text), Ok(expected), "an earlier controller's text");
        let typed = pb::NodeRoute::from(&expected);
        assert_eq!(typed.pod_subnet, Some(pb::Ipv4Cidr { network: 0x0a58_0200, prefix: 24 }));
        assert_eq!(PeerRoute::try_from(&pb::NodeRoute { pod_cidr: String::new(), ..typed }), Ok(expected), "the typed subnet first");
        let broken = pb::NodeRoute { pod_cidr: "10.88.2.0".into(), ..from_text };
        assert!(PeerRoute::try_from(&broken).is_err_and(|e| e.to_string().starts_with("route to node n2: pod subnet:")));
        let services: Vec<ServiceEndpoints> = usable(&[service.clone(), pb::ServiceEndpoints { vip: "nope".into(), ..service }]);
        assert_eq!(services.len(), 1, "the broken record is left out, the good one kept");
    }

    #[test]
    fn balancer_listeners_name_their_vip_port_and_protocol() {
        use crate::net::table::ListenKey;
        let backends = ["10.88.0.2:80".parse().expect("address")];
        let vip = "10.96.0.10:80".parse().expect("address");
        let table = [
            (ListenKey::Vip(vip), ("10.96.0.10", 80, "tcp")),
            (ListenKey::UdpVip(vip), ("10.96.0.10", 80, "udp")),
            (ListenKey::NodePort(30080), ("", 30080, "tcp")),
            (ListenKey::UdpNodePort(30053), ("", 30053, "udp")),
        ];
        for (key, (ip, port, protocol)) in table {
            let listener = balancer_listener(&key, &backends);
            assert_eq!((listener.vip.as_str(), listener.port, listener.protocol.as_str()), (ip, port, protocol), "{key:?}");
            assert_eq!(listener.backends, ["10.88.0.2:80"]);
        }
    }
}
