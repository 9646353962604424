//! The client address a per-IP quota counts: the peer address, or, when the
//! peer is a configured trusted proxy, the right-most address of
//! `X-Forwarded-For` that is not itself a trusted proxy (the left part of the
//! header is whatever the client chose to send, so it is never believed).

use std::net::IpAddr;

/// Picks the client address from the peer and the `X-Forwarded-For` values
/// (an IPv4-mapped IPv6 address is returned as the IPv4 address).
pub fn client_ip(
    peer: Option<IpAddr>,
    forwarded_for: &[&str],
    is_trusted: impl Fn(IpAddr) -> bool,
) -> IpAddr {
    let unspecified = IpAddr::from([0u8, 0, 0, 0]);
    let mut ip = peer.unwrap_or(unspecified);
    if is_trusted(ip) {
        let hops = forwarded_for
            .iter()
            .flat_map(|h| h.split(','))
            .map(str::trim)
            .rev();
        for hop in hops {
            match hop.parse::<IpAddr>() {
                Ok(addr) => {
                    ip = addr;
                    if !is_trusted(addr) {
                        break;
                    }
                }
                // An unparsable hop ends the trusted chain: keep the last good one.
                Err(_) => break,
            }
        }
    }
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(ip: IpAddr) -> bool {
        ip.to_string().starts_with("10.") || ip.is_loopback()
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_forwards() {
        let ip = client_ip(Some("203.0.113.9".parse().unwrap()), &["1.2.3.4"], trusted);
        assert_eq!(ip, "203.0.113.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn trusted_proxy_chain_yields_rightmost_untrusted() {
        let ip = client_ip(
            Some("10.0.0.1".parse().unwrap()),
            &["6.6.6.6, 198.51.100.7", "10.0.0.2"],
            trusted,
        );
        assert_eq!(ip, "198.51.100.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn garbage_hop_stops_the_walk() {
        let ip = client_ip(
            Some("10.0.0.1".parse().unwrap()),
            &["1.1.1.1, junk"],
            trusted,
        );
        assert_eq!(ip, "10.0.0.1".parse::<IpAddr>().unwrap());
    }
}
