//! IPv4 and IPv6 CIDR blocks, as EC2 accepts them.

use std::net::{Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ipv4Cidr {
    pub addr: u32,
    pub prefix: u8,
}

impl Ipv4Cidr {
    /// Parses `a.b.c.d/n`. `strict` also requires no host bits set (VPC and subnet blocks).
    pub fn parse(s: &str, strict: bool) -> Option<Ipv4Cidr> {
        let (a, p) = s.split_once('/')?;
        let addr: Ipv4Addr = a.parse().ok()?;
        if p.is_empty() || p.len() > 2 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let prefix: u8 = p.parse().ok()?;
        if prefix > 32 {
            return None;
        }
        let c = Ipv4Cidr { addr: u32::from(addr), prefix };
        (!strict || c.addr & !c.mask() == 0).then_some(c)
    }

    /// The block with its host bits cleared.
    pub fn network(self) -> Ipv4Cidr {
        Ipv4Cidr { addr: self.addr & self.mask(), prefix: self.prefix }
    }

    pub fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }

    pub fn first(&self) -> u32 {
        self.addr & self.mask()
    }

    pub fn last(&self) -> u32 {
        self.first() | !self.mask()
    }

    pub fn size(&self) -> u64 {
        1u64 << (32 - self.prefix)
    }

    pub fn contains(&self, other: &Ipv4Cidr) -> bool {
        other.prefix >= self.prefix && other.first() >= self.first() && other.last() <= self.last()
    }

    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        self.first() <= other.last() && other.first() <= self.last()
    }
}

impl std::fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.addr), self.prefix)
    }
}

pub fn valid_ipv6_cidr(s: &str) -> bool {
    match s.split_once('/') {
        Some((a, p)) => {
            a.parse::<Ipv6Addr>().is_ok()
                && p.len() <= 3
                && p.bytes().all(|b| b.is_ascii_digit())
                && p.parse::<u8>().is_ok_and(|n| n <= 128)
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_relate() {
        let vpc = Ipv4Cidr::parse("172.31.0.0/16", true).unwrap();
        let sub = Ipv4Cidr::parse("172.31.16.0/20", true).unwrap();
        assert!(vpc.contains(&sub));
        assert_eq!(sub.size(), 4096);
        assert!(Ipv4Cidr::parse("172.31.0.1/16", true).is_none());
        assert!(Ipv4Cidr::parse("172.31.0.1/16", false).is_some());
        assert_eq!(
            Ipv4Cidr::parse("10.250.1.0/16", false).map(|c| c.network().to_string()).as_deref(),
            Some("10.250.0.0/16")
        );
        assert!(Ipv4Cidr::parse("1.2.3.4/33", false).is_none());
        assert!(Ipv4Cidr::parse("1.2.3/8", false).is_none());
        assert!(Ipv4Cidr::parse("0.0.0.0/0", true).is_some());
        assert!(!sub.overlaps(&Ipv4Cidr::parse("172.31.32.0/20", true).unwrap()));
        assert!(valid_ipv6_cidr("::/0"));
        assert!(!valid_ipv6_cidr("::/129"));
    }
}
