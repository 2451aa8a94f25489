//! The six services: name and default port, in one list. `tgb` (which also runs each one's
//! `serve` in-process), the fault suite (which runs their binaries) and the services themselves
//! (their default listener) read it here.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// One service of tg-bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Its name: the binary, the crate, the NATS client name.
    pub name: &'static str,
    /// The HTTP port it listens on when `TGB_HTTP_ADDR` is not set.
    pub default_port: u16,
}

impl ServiceInfo {
    /// `0.0.0.0:<default port>`.
    pub const fn default_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), self.default_port)
    }
}

/// TG webhooks and feed → `tg.*` events.
pub const TG_INGRESS: ServiceInfo = ServiceInfo {
    name: "tg-ingress",
    default_port: 8081,
};
/// Events TG must see → TG calls.
pub const TG_EGRESS: ServiceInfo = ServiceInfo {
    name: "tg-egress",
    default_port: 8082,
};
/// Dataverse both ways.
pub const DYNAMICS_ADAPTER: ServiceInfo = ServiceInfo {
    name: "dynamics-adapter",
    default_port: 8083,
};
/// Planner both ways.
pub const PLANNER_ADAPTER: ServiceInfo = ServiceInfo {
    name: "planner-adapter",
    default_port: 8084,
};
/// SLA clocks → `sla.*` events.
pub const SLA_MONITOR: ServiceInfo = ServiceInfo {
    name: "sla-monitor",
    default_port: 8085,
};
/// Documents and onboarding → `review.*`, `onboarding.*` events.
pub const DOCUMENT_REVIEW: ServiceInfo = ServiceInfo {
    name: "document-review",
    default_port: 8086,
};

/// Every service, in start order.
pub const SERVICES: [ServiceInfo; 6] = [
    TG_INGRESS,
    TG_EGRESS,
    DYNAMICS_ADAPTER,
    PLANNER_ADAPTER,
    SLA_MONITOR,
    DOCUMENT_REVIEW,
];

/// Every service's name, in start order.
pub const NAMES: [&str; 6] = {
    let mut names = [""; 6];
    let mut i = 0;
    while i < SERVICES.len() {
        names[i] = SERVICES[i].name;
        i += 1;
    }
    names
};

/// The service called `name`.
pub fn by_name(name: &str) -> Option<ServiceInfo> {
    SERVICES.into_iter().find(|s| s.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ports_are_unique_and_found_by_name() {
        for (i, s) in SERVICES.iter().enumerate() {
            assert_eq!(NAMES[i], s.name);
            assert_eq!(by_name(s.name), Some(*s));
            for t in &SERVICES[i + 1..] {
                assert_ne!(s.name, t.name);
                assert_ne!(s.default_port, t.default_port);
            }
        }
        assert_eq!(by_name("nope"), None);
        assert_eq!(TG_EGRESS.default_addr().to_string(), "0.0.0.0:8082");
    }
}
