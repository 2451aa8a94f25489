//! A loopback port for a child process to bind later (a benchmark's or a test's services).
//!
//! A port the OS hands out for `bind(…:0)` comes from the ephemeral range, the range outgoing
//! connections take their source ports from. Released for a child to bind, such a port can be
//! taken in between by any connection opened on the machine: a benchmark's service then failed
//! to listen ("Address already in use") while tests ran beside it. Below that range only
//! another listener takes a port, so the port is chosen there at random and checked by binding
//! it; where the range leaves no room below it, the OS chooses.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};

/// The lowest port chosen here: above the well-known and most registered service ports.
const FLOOR: u16 = 10_000;

/// The first port of the ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`), or
/// Linux's default when it cannot be read.
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// A random number (std's per-process random hash keys, no dependency).
fn random() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default(),
    );
    h.finish()
}

/// `n` distinct loopback ports that were free a moment ago, below the ephemeral range where it
/// leaves room (see the module's notes). The listeners are held until all are chosen, so none
/// is handed out twice.
pub fn free_loopback_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let top = ephemeral_start();
    let mut held = Vec::with_capacity(n);
    if top > FLOOR {
        let span = u64::from(top - FLOOR);
        for _ in 0..n.saturating_mul(50).max(50) {
            if held.len() == n {
                break;
            }
            let port = FLOOR + (random() % span) as u16;
            if let Ok(l) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
                held.push(l);
            }
        }
    }
    while held.len() < n {
        held.push(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?);
    }
    held.iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

/// One loopback address that was free a moment ago (see [`free_loopback_ports`]).
pub fn free_loopback_addr() -> std::io::Result<SocketAddr> {
    let port = free_loopback_ports(1)?[0];
    Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let ports = free_loopback_ports(12).unwrap();
        let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), 12, "{ports:?}");
        let top = ephemeral_start();
        for p in &ports {
            if top > FLOOR {
                assert!((FLOOR..top).contains(p), "{p} outside {FLOOR}..{top}");
            }
            TcpListener::bind((Ipv4Addr::LOCALHOST, *p)).expect("released for the child");
        }
    }
}
