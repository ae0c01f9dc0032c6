//! The SSRF guard. Outbound targets and SET push receivers are URLs that a tenant's admin
//! chooses (over the API), and the server sends requests there from inside its own network.
//! Unless `--allow-private-networks`, those requests reach public addresses only: never
//! loopback, private (RFC 1918, IPv6 unique local), link-local (where cloud metadata answers:
//! 169.254.169.254), shared (100.64/10), unspecified, broadcast, multicast or documentation
//! addresses.
//!
//! Checked where the address becomes known: the resolver filters every DNS answer (so a name
//! that resolves, or is later rebound, to such an address reaches nothing), and an IP literal in
//! the URL, which no resolver sees, is checked by [`check_url`] when the URL is configured and
//! before each request. Redirects are never followed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// The flag that turns the guard off (named in every refusal).
pub const FLAG: &str = "--allow-private-networks";

/// Whether requests may not go to `ip`.
pub fn forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => forbidden_v4(v4),
            None => forbidden_v6(v6),
        },
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || (a == 100 && (64..128).contains(&b)) // shared address space (RFC 6598)
        || a == 0
}

fn forbidden_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local (fc00::/7)
        || (first & 0xffc0) == 0xfe80 // link-local (fe80::/10)
        || first == 0x2001 && ip.segments()[1] == 0x0db8 // documentation
}

/// Refuses a URL whose host is an IP literal the guard forbids (names are the resolver's).
pub fn check_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let host = parsed.host_str().unwrap_or_default();
    let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() else { return Ok(()) };
    match forbidden(ip) {
        true => Err(format!(
            "{url:?} names {ip}, a loopback, private, link-local or reserved address; requests go to public addresses only (unless {FLAG})"
        )),
        false => Ok(()),
    }
}

/// An error with its causes (`reqwest` shows only the outermost: "error sending request"),
/// so that a refusal by the guard is read where the failure is shown.
pub fn describe(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// A resolver that answers only the addresses the guard allows.
struct Guarded;

impl reqwest::dns::Resolve for Guarded {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = all.iter().copied().filter(|a| !forbidden(a.ip())).collect();
            if allowed.is_empty() {
                let why = format!(
                    "{host} resolves only to loopback, private, link-local or reserved addresses ({}); requests go to public addresses only (unless {FLAG})",
                    all.iter().map(|a| a.ip().to_string()).collect::<Vec<_>>().join(", ")
                );
                return Err(why.into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// An HTTP client builder for requests to URLs a tenant chose: no redirects, and unless
/// `allow_private`, the guarded resolver.
pub fn client_builder(allow_private: bool) -> reqwest::ClientBuilder {
    let b = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
    match allow_private {
        true => b,
        false => b.dns_resolver(Arc::new(Guarded)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let table: [(&str, bool); 18] = [
            ("127.0.0.1", true),
            ("10.1.2.3", true),
            ("172.16.0.1", true),
            ("192.168.1.1", true),
            ("169.254.169.254", true),
            ("100.64.0.1", true),
            ("0.0.0.0", true),
            ("255.255.255.255", true),
            ("224.0.0.1", true),
            ("::1", true),
            ("fd00::1", true),
            ("fe80::1", true),
            ("::ffff:127.0.0.1", true),
            ("::ffff:169.254.169.254", true),
            ("93.184.216.34", false),
            ("100.128.0.1", false),
            ("2606:4700::1111", false),
            ("::ffff:8.8.8.8", false),
        ];
        for (ip, want) in table {
            assert_eq!(forbidden(ip.parse().unwrap()), want, "{ip}");
        }
    }

    #[test]
    fn urls() {
        assert!(check_url("http://169.254.169.254/latest/meta-data").unwrap_err().contains(FLAG));
        assert!(check_url("https://[::1]:8443/scim/v2").is_err());
        assert!(check_url("https://scim.example.com/v2").is_ok(), "names are the resolver's");
        assert!(check_url("https://93.184.216.34/").is_ok());
    }

    #[tokio::test]
    async fn the_resolver_refuses_a_name_of_loopback() {
        let client = client_builder(false).build().unwrap();
        let e = client.get("http://localhost:9/").send().await.unwrap_err();
        let chain = format!("{e:?}");
        assert!(chain.contains("resolves only to loopback"), "{chain}");
    }
}
