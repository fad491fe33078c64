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
