//! The anti-abuse edge, before any use case runs: who the client is (its
//! address, through trusted proxies only, resolved once for every route).
//! The shield, the rules engine and the block/allow lists build on it.

pub mod client_ip;

use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use ipnet::IpNet;

use crate::domain::identity::ClientIp;
use crate::domain::limits::Defaults;
use crate::settings::Validated;

/// How the client address is read: the service settings, overridden by the
/// rules file's `[defaults]` (and reloaded with it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeConfig {
    pub trusted_proxies: Vec<IpNet>,
    pub ipv6_prefix: u8,
}

/// The client of one request: its address as seen (for CIDR lists) and as
/// counted (IPv6 cut to the configured prefix).
#[derive(Debug, Clone, Copy)]
pub struct Client {
    pub addr: IpAddr,
    pub ip: ClientIp,
}

#[derive(Debug)]
pub struct Guard {
    base: EdgeConfig,
    edge: ArcSwap<EdgeConfig>,
}

impl Guard {
    pub fn new(settings: &Validated) -> Self {
        let base = EdgeConfig {
            trusted_proxies: settings.raw.trusted_proxies.clone(),
            ipv6_prefix: settings.raw.ipv6_prefix,
        };
        Self {
            edge: ArcSwap::from_pointee(base.clone()),
            base,
        }
    }

    /// Applies a rules file's `[defaults]`: each one set there overrides the
    /// service setting of the same name; one removed from the file falls back
    /// to the service setting.
    pub fn apply_defaults(&self, d: &Defaults) {
        self.edge.store(Arc::new(EdgeConfig {
            trusted_proxies: d
                .trusted_proxies
                .clone()
                .unwrap_or_else(|| self.base.trusted_proxies.clone()),
            ipv6_prefix: d.ipv6_prefix.unwrap_or(self.base.ipv6_prefix),
        }));
    }

    pub fn edge(&self) -> Arc<EdgeConfig> {
        self.edge.load_full()
    }

    /// The client of a request from its peer address and `X-Forwarded-For` values.
    pub fn client(&self, peer: Option<IpAddr>, forwarded_for: &[&str]) -> Client {
        let edge = self.edge.load();
        let addr = client_ip::client_ip(peer, forwarded_for, |ip| {
            edge.trusted_proxies.iter().any(|n| n.contains(&ip))
        });
        Client {
            addr,
            ip: ClientIp::new(addr, edge.ipv6_prefix),
        }
    }
}
