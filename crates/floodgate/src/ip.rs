//! Which client an IP address identifies: the one rule every front end keys addresses by
//! (the tower layer's `PeerIp`, the login guard).
//!
//! An IPv4-mapped IPv6 address (`::ffff:192.0.2.1`) is the IPv4 client it maps; other IPv6
//! addresses are grouped by prefix, a /64 by default, since one subscriber is usually
//! given a whole /64 and can rotate through it at will.
//!
//! ```
//! use std::net::IpAddr;
//! use floodgate::ip;
//!
//! let v6: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
//! assert_eq!(ip::client_key(v6, ip::DEFAULT_IPV6_PREFIX), "ip:2001:db8:1:2::/64");
//! let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
//! assert_eq!(ip::client_key(mapped, 64), "ip:192.0.2.1");
//! ```

use std::net::{IpAddr, Ipv6Addr};

/// How many leading bits of an IPv6 address identify one client unless configured
/// otherwise.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

/// `ip` with an IPv4-mapped IPv6 address turned into the IPv4 address it maps.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The key of the client `ip` identifies: `ip:192.0.2.1` for IPv4 (mapped or not),
/// `ip:2001:db8::/64` for IPv6 with its first `ipv6_prefix` bits kept (at most 128).
pub fn client_key(ip: IpAddr, ipv6_prefix: u8) -> String {
    match canonical(ip) {
        IpAddr::V4(ip) => format!("ip:{ip}"),
        IpAddr::V6(ip) => {
            let bits = u32::from(ipv6_prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            format!("ip:{}/{bits}", Ipv6Addr::from(u128::from(ip) & mask))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn addresses_inside_one_ipv6_prefix_share_a_key() {
        let a = client_key(ip("2001:db8:0:1::1"), 64);
        assert_eq!(a, "ip:2001:db8:0:1::/64");
        assert_eq!(client_key(ip("2001:db8:0:1:ffff:ffff:ffff:ffff"), 64), a);
        assert_ne!(client_key(ip("2001:db8:0:2::1"), 64), a);
        assert_eq!(client_key(ip("2001:db8::1"), 128), "ip:2001:db8::1/128");
        assert_eq!(client_key(ip("2001:db8::1"), 0), "ip:::/0");
        assert_eq!(client_key(ip("2001:db8::1"), 200), "ip:2001:db8::1/128");
    }

    #[test]
    fn ipv4_mapped_ipv6_counts_as_ipv4() {
        assert_eq!(client_key(ip("::ffff:10.1.2.3"), 64), "ip:10.1.2.3");
        assert_eq!(client_key(ip("10.1.2.3"), 64), "ip:10.1.2.3");
        assert_eq!(canonical(ip("::ffff:10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(canonical(ip("::1")), ip("::1"));
    }
}
