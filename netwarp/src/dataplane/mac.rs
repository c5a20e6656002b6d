//! A MAC address, parsed once from Docker's `02:42:ac:11:00:02` form.

use std::{fmt, str::FromStr};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

/// A string that is not six colon-separated hex octets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed MAC address {0:?}: expected six hex octets like 02:42:ac:11:00:02")]
pub struct MalformedMac(pub String);

impl FromStr for MacAddr {
    type Err = MalformedMac;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 6];
        let mut octets = text.split(':');
        for byte in &mut bytes {
            let octet = octets.next().filter(|o| o.len() == 2);
            *byte = octet
                .and_then(|o| u8::from_str_radix(o, 16).ok())
                .ok_or_else(|| MalformedMac(text.to_owned()))?;
        }
        match octets.next() {
            None => Ok(Self(bytes)),
            Some(_) => Err(MalformedMac(text.to_owned())),
        }
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// `02:42:ac:11:00:02` as bytes, leniently: malformed octets are skipped.
/// For comparisons with what netlink reports; [`MacAddr`] where a
/// malformed address must be refused.
pub fn parse_mac(mac: &str) -> Vec<u8> {
    mac.split(':')
        .filter_map(|b| u8::from_str_radix(b, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_the_docker_form() {
        let mac: MacAddr = "02:42:AC:11:00:02".parse().unwrap();
        assert_eq!(mac.0, [0x02, 0x42, 0xac, 0x11, 0x00, 0x02]);
        assert_eq!(mac.to_string(), "02:42:ac:11:00:02");
    }

    #[test]
    fn refuses_what_is_not_six_octets() {
        for bad in [
            "",
            "02:42:ac:11:00",
            "02:42:ac:11:00:02:03",
            "02:42:ac:11:00:zz",
            "2:42:ac:11:0:2",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?} parsed");
        }
    }
}
