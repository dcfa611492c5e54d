//! The PROXY protocol (HAProxy's specification, versions 1 and 2), parsed with the ppp
//! crate: a load balancer in front of reactor opens each connection with a header that
//! carries the client's real address, which reactor then uses for its per-address
//! limits and logs.
//!
//! Only peers in `--proxy-from` may send one: from a trusted peer the header is
//! required; from anyone else a header is a spoofing attempt, and the connection is
//! closed. A header split across reads waits for the rest under `--proxy-timeout`; a
//! malformed, truncated or oversized one closes the connection. Every refusal is
//! counted by reason.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use ppp::{PartialResult, v1, v2};

/// Longest header accepted: v1 is at most 107 bytes; v2 is 16 bytes plus addresses and
/// TLVs, which HAProxy keeps to a few hundred bytes.
pub const MAX_HEADER: usize = 4096;

/// The v2 signature, which holds a NUL byte and a CR LF pair.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// Which header versions are accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum ProxyMode {
    Off,
    V1,
    V2,
    Any,
}

/// What a header told, once complete.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Incomplete,
    /// A header of `len` bytes; `client` is the address it carries (`None` for a
    /// health check's LOCAL or UNKNOWN header: the peer speaks for itself).
    Done {
        len: usize,
        client: Option<SocketAddr>,
    },
    Refused(Refusal),
}

/// Why a connection was refused at its PROXY header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not a PROXY header at all (from a peer that must send one).
    Missing,
    /// A header that does not parse, or of a version not accepted.
    Malformed,
    /// Longer than [`MAX_HEADER`].
    Oversized,
    /// From a peer not in `--proxy-from`.
    Untrusted,
    /// Not complete within `--proxy-timeout`.
    Timeout,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::Missing => "missing",
            Refusal::Malformed => "malformed",
            Refusal::Oversized => "oversized",
            Refusal::Untrusted => "untrusted",
            Refusal::Timeout => "timeout",
        })
    }
}

/// Whether `input` starts like a PROXY header of either version (for spotting a
/// header from a peer that may not send one).
pub fn looks_like_header(input: &[u8]) -> bool {
    let n = input.len().min(V2_SIGNATURE.len());
    (n > 0 && input[..n] == V2_SIGNATURE[..n])
        || (input.len() >= 6 && &input[..6] == b"PROXY ")
        || (input.len() < 6 && b"PROXY ".starts_with(input) && !input.is_empty())
}

/// Parses the header at the start of `input`.
pub fn parse(mode: ProxyMode, input: &[u8]) -> Parsed {
    if input.is_empty() {
        return Parsed::Incomplete;
    }
    if !looks_like_header(input) {
        return Parsed::Refused(Refusal::Missing);
    }
    // Decide on the version only once its signature is whole: a prefix of either might
    // still turn out to be no header at all.
    let v2 = input.starts_with(V2_SIGNATURE);
    if !v2 && !input.starts_with(b"PROXY ") {
        return Parsed::Incomplete;
    }
    let allowed = match mode {
        ProxyMode::Off => false,
        ProxyMode::V1 => !v2,
        ProxyMode::V2 => v2,
        ProxyMode::Any => true,
    };
    if !allowed {
        return Parsed::Refused(Refusal::Malformed);
    }
    if v2 { parse_v2(input) } else { parse_v1(input) }
}

/// Version 1 is one line of at most 107 bytes: wait for its CR LF, then parse the line
/// alone (ppp's partial results on a line prefix are not reliable).
fn parse_v1(input: &[u8]) -> Parsed {
    const V1_MAX: usize = 107;
    let Some(end) = input.windows(2).take(V1_MAX - 1).position(|w| w == b"\r\n") else {
        return if input.len() >= V1_MAX {
            Parsed::Refused(Refusal::Oversized)
        } else {
            Parsed::Incomplete
        };
    };
    let line = &input[..end + 2];
    match v1::Header::try_from(line) {
        Ok(h) => Parsed::Done {
            len: line.len(),
            client: match h.addresses {
                v1::Addresses::Tcp4(a) => {
                    Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                }
                v1::Addresses::Tcp6(a) => {
                    Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                }
                v1::Addresses::Unknown => None,
            },
        },
        Err(_) => Parsed::Refused(Refusal::Malformed),
    }
}

fn parse_v2(input: &[u8]) -> Parsed {
    // The length field (bytes 14-15) says how long the header is, before it all came.
    if input.len() >= 16 {
        let len = 16 + usize::from(u16::from_be_bytes([input[14], input[15]]));
        if len > MAX_HEADER {
            return Parsed::Refused(Refusal::Oversized);
        }
    }
    let parsed = v2::Header::try_from(input);
    if parsed.is_incomplete() {
        return Parsed::Incomplete;
    }
    let Ok(h) = parsed else {
        return Parsed::Refused(Refusal::Malformed);
    };
    let client = match (h.command, h.addresses) {
        (v2::Command::Local, _) => None,
        (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
            Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
        }
        (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
            Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
        }
        (v2::Command::Proxy, _) => None,
    };
    Parsed::Done {
        len: h.len(),
        client,
    }
}

/// A network in CIDR notation (`10.0.0.0/8`, `::1/128`; a bare address is a /32 or
/// /128).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.net, ip) {
            // An IPv4 client on a dual-stack socket shows as ::ffff:a.b.c.d.
            (IpAddr::V4(_), IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return false,
            },
            (_, ip) => ip,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{s}`: not an address or CIDR network"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(|| format!("`{s}`: the prefix length is 0 to {max}"))?,
            None => max,
        };
        Ok(Cidr { net, prefix })
    }
}

/// Parses `--proxy-from`: networks separated by commas.
pub fn parse_cidrs(s: &str) -> Result<Vec<Cidr>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(str::parse)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2_header(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
        v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (src, dst),
        )
        .build()
        .unwrap()
    }

    #[test]
    fn v1_and_v2_headers_give_the_client_address() {
        let line = b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 80\r\nGET /";
        assert_eq!(
            parse(ProxyMode::Any, line),
            Parsed::Done {
                len: line.len() - 5,
                client: Some("192.0.2.7:51000".parse().unwrap())
            }
        );
        let line6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 443\r\n";
        assert!(matches!(
            parse(ProxyMode::V1, line6),
            Parsed::Done { client: Some(a), .. } if a == "[2001:db8::7]:51000".parse().unwrap()
        ));
        for (src, dst) in [
            ("192.0.2.9:4000", "10.0.0.1:80"),
            ("[2001:db8::9]:4000", "[2001:db8::1]:80"),
        ] {
            let mut h = v2_header(src.parse().unwrap(), dst.parse().unwrap());
            let len = h.len();
            h.extend_from_slice(b"payload");
            assert_eq!(
                parse(ProxyMode::V2, &h),
                Parsed::Done {
                    len,
                    client: Some(src.parse().unwrap())
                }
            );
        }
    }

    #[test]
    fn a_header_split_at_every_byte_is_incomplete_until_whole() {
        let mut h = v2_header(
            "192.0.2.9:4000".parse().unwrap(),
            "10.0.0.1:80".parse().unwrap(),
        );
        let v1 = b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 80\r\n".to_vec();
        for whole in [std::mem::take(&mut h), v1] {
            for cut in 1..whole.len() {
                assert_eq!(
                    parse(ProxyMode::Any, &whole[..cut]),
                    Parsed::Incomplete,
                    "{cut}"
                );
            }
            assert!(matches!(parse(ProxyMode::Any, &whole), Parsed::Done { .. }));
        }
    }

    #[test]
    fn bad_headers_are_refused() {
        assert_eq!(
            parse(ProxyMode::Any, b"GET / HTTP/1.1\r\n"),
            Parsed::Refused(Refusal::Missing)
        );
        assert_eq!(
            parse(ProxyMode::Any, b"PROXY TCP4 nonsense here\r\n"),
            Parsed::Refused(Refusal::Malformed)
        );
        assert_eq!(
            parse(ProxyMode::V2, b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 80\r\n"),
            Parsed::Refused(Refusal::Malformed)
        );
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; MAX_HEADER]].concat();
        assert!(matches!(
            parse(ProxyMode::Any, &long),
            Parsed::Refused(Refusal::Oversized | Refusal::Malformed)
        ));
        // A v2 signature with a length past the limit.
        let mut big = V2_SIGNATURE.to_vec();
        big.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        big.extend(std::iter::repeat_n(0u8, MAX_HEADER));
        assert_eq!(
            parse(ProxyMode::V2, &big),
            Parsed::Refused(Refusal::Oversized)
        );
    }

    /// Found by fuzzing: the reason for a refusal must not depend on how much of the
    /// input had arrived (a prefix of "PROXY " in v2-only mode was "malformed", the
    /// whole input "missing").
    #[test]
    fn a_prefix_of_a_signature_is_incomplete_not_refused() {
        for mode in [ProxyMode::V1, ProxyMode::V2, ProxyMode::Any] {
            assert_eq!(parse(mode, b"PROX"), Parsed::Incomplete);
            assert_eq!(parse(mode, b"\r\n\r\n\0"), Parsed::Incomplete);
            assert_eq!(parse(mode, b"PROXZ"), Parsed::Refused(Refusal::Missing));
        }
        assert_eq!(
            parse(ProxyMode::V2, b"PROXY "),
            Parsed::Refused(Refusal::Malformed)
        );
    }

    #[test]
    fn cidrs_match_their_networks() {
        let nets = parse_cidrs("127.0.0.0/8, 10.1.2.3,::1/128,2001:db8::/32").unwrap();
        let hit = |a: &str| nets.iter().any(|n| n.contains(a.parse().unwrap()));
        assert!(hit("127.0.0.2") && hit("10.1.2.3") && hit("::1") && hit("2001:db8:5::1"));
        assert!(hit("::ffff:127.0.0.9"));
        assert!(!hit("10.1.2.4") && !hit("192.168.0.1") && !hit("2001:db9::1"));
        assert!(parse_cidrs("10.0.0.0/33").is_err());
        assert!(parse_cidrs("nonsense").is_err());
        assert_eq!(parse_cidrs("0.0.0.0/0").unwrap()[0].prefix, 0);
        assert!(parse_cidrs("0.0.0.0/0").unwrap()[0].contains("8.8.8.8".parse().unwrap()));
    }
}
