//! The balancer's metrics, per service: connections accepted, relayed now, bytes each
//! way, and what went wrong (a connect to an endpoint that failed, a connection with
//! no endpoint left to try, one closed over the listener's cap).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Service {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Direction {
    service: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Failure {
    service: String,
    error: &'static str,
}

/// Every listener's counters, by service.
#[derive(Clone, Debug, Default)]
pub struct BalancerMetrics {
    /// Every service a listener was opened for (the families cannot be listed).
    services: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
    connections: Family<Service, Counter>,
    active: Family<Service, Gauge>,
    bytes: Family<Direction, Counter>,
    errors: Family<Failure, Counter>,
}

impl BalancerMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let orch = registry.sub_registry_with_prefix("orch");
        orch.register("balancer_connections", "TCP connections the node's balancer accepted, by service", self.connections.clone());
        orch.register("balancer_active_connections", "TCP connections the node's balancer relays now, by service", self.active.clone());
        orch.register("balancer_bytes", "Bytes the node's balancer relayed, by service and direction (to_backend: from clients)", self.bytes.clone());
        orch.register(
            "balancer_errors",
            "Balancer failures by service: connect (an endpoint refused or timed out; the next was tried), no_endpoint (none left: the client was closed), over_limit (closed over the listener's cap)",
            self.errors.clone(),
        );
    }

    /// The counters of one service's listeners.
    pub fn listener(&self, service: &str) -> ListenerStats {
        self.services.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(service.to_owned());
        let service = service.to_owned();
        let direction = |direction| Direction { service: service.clone(), direction };
        let error = |error| Failure { service: service.clone(), error };
        ListenerStats {
            connections: self.connections.get_or_create_owned(&Service { service: service.clone() }),
            active: self.active.get_or_create_owned(&Service { service: service.clone() }),
            to_backend: self.bytes.get_or_create_owned(&direction("to_backend")),
            to_client: self.bytes.get_or_create_owned(&direction("to_client")),
            connect_errors: self.errors.get_or_create_owned(&error("connect")),
            no_endpoint: self.errors.get_or_create_owned(&error("no_endpoint")),
            over_limit: self.errors.get_or_create_owned(&error("over_limit")),
        }
    }
}

/// One listener's handles on its service's counters (shared: the same series for a
/// service's VIP port and node port).
#[derive(Clone, Debug, Default)]
pub struct ListenerStats {
    pub connections: Counter,
    pub active: Gauge,
    pub to_backend: Counter,
    pub to_client: Counter,
    pub connect_errors: Counter,
    pub no_endpoint: Counter,
    pub over_limit: Counter,
}

/// One service's counters as a balancer process reports them to the agent.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServiceCounters {
    pub service: String,
    pub connections: u64,
    pub active: i64,
    pub to_backend: u64,
    pub to_client: u64,
    pub connect_errors: u64,
    pub no_endpoint: u64,
    pub over_limit: u64,
}

impl BalancerMetrics {
    /// Every service's counters now.
    pub fn snapshot(&self) -> Vec<ServiceCounters> {
        let services: Vec<String> = self.services.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().cloned().collect();
        services
            .into_iter()
            .map(|service| {
                let stats = self.listener(&service);
                ServiceCounters {
                    service,
                    connections: stats.connections.get(),
                    active: stats.active.get(),
                    to_backend: stats.to_backend.get(),
                    to_client: stats.to_client.get(),
                    connect_errors: stats.connect_errors.get(),
                    no_endpoint: stats.no_endpoint.get(),
                    over_limit: stats.over_limit.get(),
                }
            })
            .collect()
    }

    /// The TCP connections relayed now, over every service.
    pub fn active_total(&self) -> i64 {
        self.snapshot().iter().map(|s| s.active).sum()
    }

    /// Brings this copy up to another process's counters: `before` is what it reported
    /// last time, `now` what it reports now. Counters grow by the difference (by the whole
    /// value when it went down: a new balancer process counts from zero), gauges are set.
    pub fn mirror(&self, before: &[ServiceCounters], now: &[ServiceCounters]) {
        let grown = |now: u64, before: u64| if now >= before { now - before } else { now };
        for counters in now {
            let last = before.iter().find(|b| b.service == counters.service).cloned().unwrap_or_default();
            let stats = self.listener(&counters.service);
            stats.connections.inc_by(grown(counters.connections, last.connections));
            stats.active.set(counters.active);
            stats.to_backend.inc_by(grown(counters.to_backend, last.to_backend));
            stats.to_client.inc_by(grown(counters.to_client, last.to_client));
            stats.connect_errors.inc_by(grown(counters.connect_errors, last.connect_errors));
            stats.no_endpoint.inc_by(grown(counters.no_endpoint, last.no_endpoint));
            stats.over_limit.inc_by(grown(counters.over_limit, last.over_limit));
        }
    }
}

/// The kernel data path's counters, by service: the connections it balanced (the
/// counters of its DNAT rules, which see each connection's first packet).
#[derive(Clone, Debug, Default)]
pub struct KernelPathMetrics {
    connections: Family<Service, Counter>,
    /// Each service's total when last followed.
    last: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, u64>>>,
}

impl KernelPathMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let orch = registry.sub_registry_with_prefix("orch");
        orch.register("kernel_path_connections", "TCP connections the node's kernel data path balanced (nftables DNAT), by service", self.connections.clone());
    }

    /// Brings the counters up to `now`: each service's total since the kernel path started.
    pub fn follow(&self, now: &std::collections::BTreeMap<String, u64>) {
        let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (service, total) in now {
            let grown = total.saturating_sub(last.get(service).copied().unwrap_or(0));
            self.connections.get_or_create(&Service { service: service.clone() }).inc_by(grown);
        }
        last.extend(now.iter().map(|(service, total)| (service.clone(), *total)));
    }

    /// One service's counter (tests).
    pub fn connections(&self, service: &str) -> u64 {
        self.connections.get_or_create(&Service { service: service.to_owned() }).get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_path_s_counters_follow_its_totals() {
        let metrics = KernelPathMetrics::default();
        metrics.follow(&[("web".to_owned(), 5)].into());
        metrics.follow(&[("web".to_owned(), 9), ("api".to_owned(), 1)].into());
        assert_eq!((metrics.connections("web"), metrics.connections("api")), (9, 1));
        metrics.follow(&[("web".to_owned(), 9)].into());
        assert_eq!(metrics.connections("web"), 9, "no growth, no change");
    }

    fn web(connections: u64, active: i64) -> ServiceCounters {
        ServiceCounters { service: "web".into(), connections, active, to_client: connections * 10, ..ServiceCounters::default() }
    }

    #[test]
    fn a_mirror_follows_the_process_counters_and_survives_their_reset() {
        let copy = BalancerMetrics::default();
        copy.mirror(&[], &[web(5, 2)]);
        assert_eq!(copy.snapshot(), vec![web(5, 2)]);
        copy.mirror(&[web(5, 2)], &[web(8, 0)]);
        assert_eq!(copy.snapshot(), vec![web(8, 0)]);
        // A new balancer process counts from zero: the copy keeps growing.
        copy.mirror(&[web(8, 0)], &[web(3, 1)]);
        assert_eq!(copy.snapshot(), vec![web(11, 1)]);
        assert_eq!(copy.active_total(), 1);
    }
}
