//! Block and allow lists: which phones, addresses and devices they hold, and
//! the lookups a request path asks of them.

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;

use globset::GlobSet;
use ipnet::IpNet;

/// A `[block]` or `[allow]` list of phones, addresses and devices.
///
/// Lookups are hash-based (one probe per prefix length) rather than a scan,
/// because a list may hold tens of thousands of entries and is consulted on
/// every claim.
#[derive(Debug, Clone, Default)]
pub struct IdentityList {
    /// Source text of the phone patterns, in file order (for display).
    pub(super) phone_patterns: Vec<String>,
    pub(super) exact_phones: HashSet<String>,
    /// Phone prefixes without their trailing `*`.
    pub(super) phone_prefixes: HashSet<String>,
    /// Nets as written (host bits kept), in file order (for display).
    pub(super) ip_nets: Vec<IpNet>,
    /// Truncated nets, looked up by truncating the address to each length.
    pub(super) net_set: HashSet<IpNet>,
    pub(super) v4_prefix_lens: BTreeSet<u8>,
    pub(super) v6_prefix_lens: BTreeSet<u8>,
    pub(super) device_patterns: Vec<String>,
    pub(super) device_globs: GlobSet,
}

impl IdentityList {
    pub fn is_empty(&self) -> bool {
        self.phone_patterns.is_empty() && self.ip_nets.is_empty() && self.device_patterns.is_empty()
    }

    /// Whether an E.164 number (`+8617012345678`) is on the list, exactly or
    /// by one of its prefix patterns (`+86170*`).
    pub fn has_phone(&self, e164: &str) -> bool {
        if self.exact_phones.contains(e164) {
            return true;
        }
        if self.phone_prefixes.is_empty() {
            return false;
        }
        // Every prefix of the number, shortest first; at most 16 probes.
        e164.char_indices()
            .map(|(i, c)| &e164[..i + c.len_utf8()])
            .any(|prefix| self.phone_prefixes.contains(prefix))
    }

    /// Whether an address is in one of the list's nets. An IPv4-mapped IPv6
    /// address (`::ffff:203.0.113.7`, as a dual-stack socket reports IPv4
    /// peers) matches the IPv4 nets too.
    pub fn has_ip(&self, ip: IpAddr) -> bool {
        let canonical = ip.to_canonical();
        self.in_nets(ip) || (canonical != ip && self.in_nets(canonical))
    }

    fn in_nets(&self, ip: IpAddr) -> bool {
        let lens = match ip {
            IpAddr::V4(_) => &self.v4_prefix_lens,
            IpAddr::V6(_) => &self.v6_prefix_lens,
        };
        lens.iter().any(|&len| {
            IpNet::new(ip, len)
                .map(|net| self.net_set.contains(&net.trunc()))
                .unwrap_or(false)
        })
    }

    /// Whether a device id matches one of the list's globs (case-sensitive).
    pub fn has_device(&self, device_id: &str) -> bool {
        self.device_globs.is_match(device_id)
    }

    pub fn phone_patterns(&self) -> Vec<String> {
        self.phone_patterns.clone()
    }

    pub fn ip_nets(&self) -> Vec<String> {
        self.ip_nets.iter().map(ToString::to_string).collect()
    }

    pub fn device_patterns(&self) -> Vec<String> {
        self.device_patterns.clone()
    }
}
