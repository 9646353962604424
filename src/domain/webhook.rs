//! Webhook destinations and signatures.
//!
//! A delivery URL is refused unless it is `https` to a public address, or
//! `http`/`https` to a loopback address when the operator allows loopback
//! (tests, a local receiver). Following OWASP's SSRF prevention advice, the
//! check is on addresses, not names: IP literals are checked here at create
//! and PATCH time; names are resolved and every address checked again right
//! before each delivery (DNS may change), and the delivery goes to the
//! checked address. Refused: loopback (unless allowed), private (RFC 1918,
//! ULA), link-local (incl. the 169.254.169.254 metadata address), CGNAT,
//! multicast, broadcast, unspecified, documentation and benchmark ranges,
//! IPv4-mapped forms of all of them, and names such as `localhost` or
//! `metadata.google.internal`. No credentials in the URL.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::domain::secret::hmac_sha256;

/// What the operator allows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UrlPolicy {
    /// `STAMPEDE_WEBHOOK_ALLOW_LOOPBACK`: loopback receivers (`http` too).
    pub allow_loopback: bool,
}

/// Whether a destination address may be reached.
pub fn address_allowed(ip: IpAddr, policy: UrlPolicy) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    if ip.is_loopback() {
        return policy.allow_loopback;
    }
    match ip {
        IpAddr::V4(v4) => public_v4(v4),
        IpAddr::V6(v6) => public_v6(v6),
    }
}

fn public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0
        || (o[0] == 100 && (64..128).contains(&o[1])) // CGNAT
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 198 && (o[1] == 18 || o[1] == 19)) // benchmarking
        || o[0] >= 240)
}

fn public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    !(ip.is_unspecified()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x0064 && s[1] == 0xff9b) // NAT64 (reaches IPv4 space)
        || (s[0] == 0x2002)) // 6to4 (reaches IPv4 space)
}

/// Host names that always mean something internal.
fn internal_name(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    h == "localhost"
        || h.ends_with(".localhost")
        || h == "metadata.google.internal"
        || h.ends_with(".internal")
        || h.ends_with(".local")
}

/// A URL that passed the create-time check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub url: url::Url,
    /// Set when the host is an IP literal (already checked).
    pub ip: Option<IpAddr>,
}

/// Checks a delivery URL as far as can be done without DNS.
pub fn check_url(raw: &str, policy: UrlPolicy) -> Result<Destination, String> {
    if raw.len() > 2048 {
        return Err("is longer than 2048 characters".into());
    }
    let url = url::Url::parse(raw).map_err(|e| format!("is not a URL: {e}"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials".into());
    }
    let host = url.host().ok_or("has no host")?;
    let ip = match host {
        url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
        url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
        url::Host::Domain(d) => {
            if internal_name(d) && !(policy.allow_loopback && d.eq_ignore_ascii_case("localhost")) {
                return Err(format!("names an internal host ({d})"));
            }
            None
        }
    };
    let loopback = match (ip, url.host_str()) {
        (Some(ip), _) => ip.is_loopback() || ip_v4_mapped_loopback(ip),
        (None, Some(h)) => h.eq_ignore_ascii_case("localhost"),
        _ => false,
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback && policy.allow_loopback => {}
        "http" => return Err("must be https (http only to loopback, when allowed)".into()),
        s => return Err(format!("must be https, not {s}")),
    }
    if let Some(ip) = ip
        && !address_allowed(ip, policy)
    {
        return Err(format!("points at a forbidden address ({ip})"));
    }
    if loopback && !policy.allow_loopback {
        return Err("points at loopback, which is not allowed here".into());
    }
    Ok(Destination { url, ip })
}

fn ip_v4_mapped_loopback(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()))
}

/// `Stampede-Signature` value for `body`: `sha256=<hex HMAC-SHA-256>`.
pub fn signature(key: &[u8; 32], body: &[u8]) -> String {
    format!("sha256={}", hex::encode(hmac_sha256(key, &[body])))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const STRICT: UrlPolicy = UrlPolicy {
        allow_loopback: false,
    };
    const LOOPBACK: UrlPolicy = UrlPolicy {
        allow_loopback: true,
    };

    #[test]
    fn only_public_https_passes_by_default() {
        assert!(check_url("https://ops.example.com/hooks/stock", STRICT).is_ok());
        assert!(check_url("https://203.0.114.5/h", STRICT).is_ok());
        for bad in [
            "http://ops.example.com/h",
            "ftp://ops.example.com/h",
            "https://user:pw@ops.example.com/h",
            "https://127.0.0.1/h",
            "https://localhost/h",
            "https://10.1.2.3/h",
            "https://172.16.0.1/h",
            "https://192.168.1.1/h",
            "https://169.254.169.254/latest/meta-data",
            "https://100.64.0.1/h",
            "https://0.0.0.0/h",
            "https://[::1]/h",
            "https://[fd00::1]/h",
            "https://[fe80::1]/h",
            "https://[::ffff:10.0.0.1]/h",
            "https://[::ffff:127.0.0.1]/h",
            "https://metadata.google.internal/computeMetadata/v1",
            "https://db.internal/h",
            "not a url",
        ] {
            assert!(check_url(bad, STRICT).is_err(), "{bad} passed");
        }
    }

    #[test]
    fn loopback_only_when_allowed() {
        assert!(check_url("http://127.0.0.1:9000/h", LOOPBACK).is_ok());
        assert!(check_url("http://localhost:9000/h", LOOPBACK).is_ok());
        assert!(check_url("http://[::1]:9000/h", LOOPBACK).is_ok());
        assert!(check_url("http://10.0.0.1/h", LOOPBACK).is_err());
        assert!(check_url("http://ops.example.com/h", LOOPBACK).is_err());
        assert!(!address_allowed(
            "169.254.169.254".parse().unwrap(),
            LOOPBACK
        ));
        assert!(address_allowed("127.0.0.1".parse().unwrap(), LOOPBACK));
        assert!(!address_allowed("127.0.0.1".parse().unwrap(), STRICT));
    }

    #[test]
    fn signatures_are_keyed_hmacs() {
        let s = signature(&[1; 32], b"{}");
        assert!(s.starts_with("sha256=") && s.len() == 7 + 64);
        assert_ne!(s, signature(&[2; 32], b"{}"));
    }
}
