//! Which addresses the gateway may fetch an image from: global unicast only. A pure function
//! over one address, so every class is tested without a network.
//!
//! The ranges are IANA's special-purpose registries (RFC 6890 and its updates) for IPv4 and
//! IPv6, read strictly: a range that is special for any reason is refused, even where the
//! registry calls a few addresses inside it globally reachable (192.0.0.9, 2001:3::/32): no
//! image is served from an anycast relay. IPv6 forms that carry an IPv4 address are judged by
//! that address (IPv4-mapped, NAT64, 6to4), or refused outright where the embedded address
//! cannot be trusted to be the destination (IPv4-compatible, IPv4-translated, Teredo).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is not one to fetch from: its class, and the IPv6 form it was embedded in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotGlobal {
    /// "a private address (RFC 1918)", …
    pub class: &'static str,
    /// "an IPv4-mapped IPv6 address", when the class is that of an embedded IPv4 address.
    pub embedded_in: Option<&'static str>,
}

impl fmt::Display for NotGlobal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.class)?;
        if let Some(form) = self.embedded_in {
            write!(f, ", embedded in {form}")?;
        }
        Ok(())
    }
}

/// Ok when `ip` is a global unicast address; else its class.
pub fn check(ip: IpAddr) -> Result<(), NotGlobal> {
    match ip {
        IpAddr::V4(v4) => check_v4(v4).map_err(|class| NotGlobal {
            class,
            embedded_in: None,
        }),
        IpAddr::V6(v6) => check_v6(v6),
    }
}

/// The loopback addresses (127.0.0.0/8, ::1): what the test-only switch lets through.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback(),
    }
}

/// Whether `ip` lies in `net`/`len` (IPv4).
fn in_v4(ip: Ipv4Addr, net: [u8; 4], len: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

/// Whether `ip` lies in `net`/`len` (IPv6).
fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, len: u32) -> bool {
    let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
    u128::from(ip) & mask == u128::from(net) & mask
}

/// IPv4's special-purpose ranges, most specific first (the broadcast address is in 240/4).
const V4_RANGES: &[([u8; 4], u32, &str)] = &[
    ([255, 255, 255, 255], 32, "the broadcast address"),
    ([0, 0, 0, 0], 8, "a \"this network\" address (0.0.0.0/8)"),
    ([10, 0, 0, 0], 8, "a private address (RFC 1918)"),
    (
        [100, 64, 0, 0],
        10,
        "a shared address (CGNAT, 100.64.0.0/10, RFC 6598)",
    ),
    ([127, 0, 0, 0], 8, "a loopback address (127.0.0.0/8)"),
    (
        [169, 254, 0, 0],
        16,
        "a link-local address (169.254.0.0/16, where cloud metadata services answer)",
    ),
    ([172, 16, 0, 0], 12, "a private address (RFC 1918)"),
    (
        [192, 0, 0, 0],
        24,
        "an IETF protocol assignment (192.0.0.0/24)",
    ),
    ([192, 0, 2, 0], 24, "a documentation address (192.0.2.0/24)"),
    (
        [192, 88, 99, 0],
        24,
        "a 6to4 relay anycast address (192.88.99.0/24)",
    ),
    ([192, 168, 0, 0], 16, "a private address (RFC 1918)"),
    (
        [198, 18, 0, 0],
        15,
        "a benchmarking address (198.18.0.0/15)",
    ),
    (
        [198, 51, 100, 0],
        24,
        "a documentation address (198.51.100.0/24)",
    ),
    (
        [203, 0, 113, 0],
        24,
        "a documentation address (203.0.113.0/24)",
    ),
    ([224, 0, 0, 0], 4, "a multicast address (224.0.0.0/4)"),
    ([240, 0, 0, 0], 4, "a reserved address (240.0.0.0/4)"),
];

fn check_v4(ip: Ipv4Addr) -> Result<(), &'static str> {
    match V4_RANGES.iter().find(|(net, len, _)| in_v4(ip, *net, *len)) {
        Some((_, _, class)) => Err(class),
        None => Ok(()),
    }
}

/// IPv6 forms with an IPv4 address in their low 32 bits (or, for 6to4, bits 16..48) that is
/// the real destination: judged by that address.
fn embedded_v4(ip: Ipv6Addr) -> Option<(Ipv4Addr, &'static str)> {
    let bits = u128::from(ip);
    let low = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
    if in_v6(ip, Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96) {
        return Some((low, "an IPv4-mapped IPv6 address (::ffff:0:0/96)"));
    }
    if in_v6(ip, Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96) {
        return Some((low, "a NAT64 address (64:ff9b::/96)"));
    }
    if in_v6(ip, Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16) {
        let v4 = Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32);
        return Some((v4, "a 6to4 address (2002::/16)"));
    }
    None
}

/// IPv6's special-purpose ranges, refused whatever follows the prefix, most specific first.
fn v6_ranges() -> [(Ipv6Addr, u32, &'static str); 14] {
    let a = Ipv6Addr::new;
    [
        (Ipv6Addr::UNSPECIFIED, 128, "the unspecified address (::)"),
        (Ipv6Addr::LOCALHOST, 128, "the loopback address (::1)"),
        (
            a(0, 0, 0, 0, 0xffff, 0, 0, 0),
            96,
            "an IPv4-translated address (::ffff:0:0:0/96)",
        ),
        (
            a(0, 0, 0, 0, 0, 0, 0, 0),
            96,
            "an IPv4-compatible address (::/96, deprecated)",
        ),
        (
            a(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
            48,
            "a local-use NAT64 address (64:ff9b:1::/48)",
        ),
        (
            a(0x100, 0, 0, 0, 0, 0, 0, 0),
            64,
            "a discard-only address (100::/64)",
        ),
        (
            a(0x2001, 0, 0, 0, 0, 0, 0, 0),
            32,
            "a Teredo address (2001::/32)",
        ),
        (
            a(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
            32,
            "a documentation address (2001:db8::/32)",
        ),
        (
            a(0x2001, 0, 0, 0, 0, 0, 0, 0),
            23,
            "an IETF protocol assignment (2001::/23)",
        ),
        (
            a(0x3fff, 0, 0, 0, 0, 0, 0, 0),
            20,
            "a documentation address (3fff::/20)",
        ),
        (
            a(0xfc00, 0, 0, 0, 0, 0, 0, 0),
            7,
            "a unique local address (fc00::/7)",
        ),
        (
            a(0xfe80, 0, 0, 0, 0, 0, 0, 0),
            10,
            "a link-local address (fe80::/10)",
        ),
        (
            a(0xfec0, 0, 0, 0, 0, 0, 0, 0),
            10,
            "a site-local address (fec0::/10, deprecated)",
        ),
        (
            a(0xff00, 0, 0, 0, 0, 0, 0, 0),
            8,
            "a multicast address (ff00::/8)",
        ),
    ]
}

fn check_v6(ip: Ipv6Addr) -> Result<(), NotGlobal> {
    if let Some((v4, form)) = embedded_v4(ip) {
        return check_v4(v4).map_err(|class| NotGlobal {
            class,
            embedded_in: Some(form),
        });
    }
    let plain = |class| NotGlobal {
        class,
        embedded_in: None,
    };
    if let Some((_, _, class)) = v6_ranges()
        .iter()
        .find(|(net, len, _)| in_v6(ip, *net, *len))
    {
        return Err(plain(class));
    }
    // Global unicast is 2000::/3; everything else is unassigned or special.
    if !in_v6(ip, Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3) {
        return Err(plain("not a global unicast address (outside 2000::/3)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(addr: &str) -> Result<(), String> {
        let ip: IpAddr = addr.parse().expect("a test address");
        check(ip).map_err(|e| e.to_string())
    }

    fn refused(addr: &str, want: &str) {
        match class(addr) {
            Ok(()) => panic!("{addr} was allowed; expected {want}"),
            Err(got) => assert!(got.contains(want), "{addr}: {got:?} does not say {want:?}"),
        }
    }

    #[test]
    fn global_addresses_are_allowed() {
        for ok in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.1",
            "192.167.1.1",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2a00:1450:4001:82b::200e",
            "2001:200::1",
            "64:ff9b::808:808",
            "::ffff:8.8.8.8",
            "2002:808:808::1",
        ] {
            assert_eq!(class(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn every_special_ipv4_range_is_refused() {
        for (addr, want) in [
            ("0.0.0.0", "this network"),
            ("0.1.2.3", "this network"),
            ("10.0.0.1", "private"),
            ("10.255.255.255", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "CGNAT"),
            ("100.127.255.255", "CGNAT"),
            ("127.0.0.1", "loopback"),
            ("127.255.0.1", "loopback"),
            ("169.254.169.254", "link-local"),
            ("169.254.0.1", "metadata"),
            ("192.0.0.1", "IETF protocol assignment"),
            ("192.0.0.9", "IETF protocol assignment"),
            ("192.0.2.1", "documentation"),
            ("198.51.100.7", "documentation"),
            ("203.0.113.9", "documentation"),
            ("192.88.99.1", "6to4 relay"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.255", "benchmarking"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("240.0.0.1", "reserved"),
            ("254.1.2.3", "reserved"),
            ("255.255.255.255", "broadcast"),
        ] {
            refused(addr, want);
        }
    }

    #[test]
    fn every_special_ipv6_range_is_refused() {
        for (addr, want) in [
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fc00::1", "unique local"),
            ("fd12:3456::1", "unique local"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("fec0::1", "site-local"),
            ("ff02::1", "multicast"),
            ("ff0e::1", "multicast"),
            ("2001:db8::1", "documentation"),
            ("3fff::1", "documentation"),
            ("2001::1", "Teredo"),
            // Teredo with an obfuscated private client address: refused as Teredo, whatever
            // it embeds.
            ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "Teredo"),
            ("2001:2::1", "IETF protocol assignment"),
            ("2001:10::1", "IETF protocol assignment"),
            ("100::1", "discard-only"),
            ("64:ff9b:1::a00:1", "local-use NAT64"),
            ("4000::1", "outside 2000::/3"),
            ("::1:0:0:1", "outside 2000::/3"),
        ] {
            refused(addr, want);
        }
    }

    #[test]
    fn ipv6_forms_of_special_ipv4_addresses_are_refused_by_what_they_embed() {
        for (addr, class, form) in [
            ("::ffff:127.0.0.1", "loopback", "IPv4-mapped"),
            ("::ffff:10.0.0.1", "private", "IPv4-mapped"),
            ("::ffff:169.254.169.254", "link-local", "IPv4-mapped"),
            ("::ffff:100.64.0.1", "CGNAT", "IPv4-mapped"),
            ("::ffff:0.0.0.0", "this network", "IPv4-mapped"),
            ("::ffff:192.168.0.1", "private", "IPv4-mapped"),
            ("::ffff:255.255.255.255", "broadcast", "IPv4-mapped"),
            ("64:ff9b::7f00:1", "loopback", "NAT64"),
            ("64:ff9b::a9fe:a9fe", "link-local", "NAT64"),
            ("2002:7f00:1::1", "loopback", "6to4"),
            ("2002:a00:1::", "private", "6to4"),
            ("2002:c0a8:101::1", "private", "6to4"),
        ] {
            let got = class_of(addr);
            assert!(
                got.contains(class) && got.contains(form),
                "{addr}: {got:?} should name {class:?} and {form:?}"
            );
        }
        // IPv4-compatible (::a.b.c.d) and IPv4-translated forms are refused whatever they hold.
        refused("::127.0.0.1", "IPv4-compatible");
        refused("::10.0.0.1", "IPv4-compatible");
        refused("::8.8.8.8", "IPv4-compatible");
        refused("::ffff:0:10.0.0.1", "IPv4-translated");
    }

    fn class_of(addr: &str) -> String {
        class(addr).expect_err(addr)
    }

    #[test]
    fn the_test_switch_knows_only_loopback() {
        for lo in ["127.0.0.1", "127.1.2.3", "::1"] {
            assert!(is_loopback(lo.parse().expect("ip")), "{lo}");
        }
        for other in [
            "10.0.0.1",
            "::ffff:127.0.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "::",
        ] {
            assert!(!is_loopback(other.parse().expect("ip")), "{other}");
        }
    }
}
