//! Bandwidth caps: rates such as `20mbit` and burst sizes such as `64kb`.
//!
//! Units follow tc(8): `bit`, `kbit`, `mbit`, `gbit` are bits per second
//! and `bps`, `kbps`, `mbps`, `gbps` are *bytes* per second, all with
//! decimal prefixes; sizes take `b`, `kb`/`k`, `mb`/`m`, `gb`/`g` with
//! binary prefixes (1k = 1024 bytes), as tc's sizes do.

use std::fmt;

/// A cap's rate can not be below this: slower caps would take seconds per
/// packet and are almost certainly a typo (`10bit` for `10mbit`).
pub const MIN_RATE_BITS: u64 = 8_000;
/// Nor above this (what a 400G link carries).
pub const MAX_RATE_BITS: u64 = 400_000_000_000;
/// Largest burst accepted (1 GiB).
pub const MAX_BURST_BYTES: u64 = 1 << 30;
/// Smallest burst accepted: one full-size Ethernet frame.
pub const MIN_BURST_BYTES: u64 = 1514;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    #[error("`{0}` is not a rate (expected e.g. 500kbit, 20mbit, 1gbit or 10mbps)")]
    Rate(String),
    #[error("`{input}` has no unit; write e.g. {input}mbit (bits) or {input}mbps (bytes)")]
    RateUnit { input: String },
    #[error("rate `{input}` is outside {min}..={max} bit/s")]
    RateRange { input: String, min: u64, max: u64 },
    #[error("`{0}` is not a size (expected e.g. 32kb, 1mb or 20000 bytes)")]
    Size(String),
    #[error("burst `{input}` is outside {min}..={max} bytes")]
    SizeRange { input: String, min: u64, max: u64 },
}

/// A rate in bits per second.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rate {
    bits_per_second: u64,
}

impl Rate {
    pub fn from_bits_per_second(bits_per_second: u64) -> Self {
        Self { bits_per_second }
    }

    pub fn bits_per_second(self) -> u64 {
        self.bits_per_second
    }

    pub fn bytes_per_second(self) -> u64 {
        self.bits_per_second / 8
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits = self.bits_per_second;
        for (unit, scale) in [
            ("gbit", 1_000_000_000),
            ("mbit", 1_000_000),
            ("kbit", 1_000),
        ] {
            if bits >= scale && bits.is_multiple_of(scale) {
                return write!(f, "{}{unit}", bits / scale);
            }
        }
        write!(f, "{bits}bit")
    }
}

/// Parses a rate such as `20mbit`, `1.5gbit` or `10mbps`.
pub fn parse_rate(input: &str) -> Result<Rate, RateError> {
    let text = input.trim().to_ascii_lowercase();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if unit.is_empty() && !number.is_empty() {
        return Err(RateError::RateUnit {
            input: input.trim().to_owned(),
        });
    }
    let bits_per_unit: u64 = match unit {
        "bit" => 1,
        "kbit" => 1_000,
        "mbit" => 1_000_000,
        "gbit" => 1_000_000_000,
        "bps" => 8,
        "kbps" => 8_000,
        "mbps" => 8_000_000,
        "gbps" => 8_000_000_000,
        _ => return Err(RateError::Rate(input.to_owned())),
    };
    let bits = scaled(number, bits_per_unit).ok_or_else(|| RateError::Rate(input.to_owned()))?;
    if !(MIN_RATE_BITS..=MAX_RATE_BITS).contains(&bits) {
        return Err(RateError::RateRange {
            input: input.trim().to_owned(),
            min: MIN_RATE_BITS,
            max: MAX_RATE_BITS,
        });
    }
    Ok(Rate::from_bits_per_second(bits))
}

/// Parses a burst size in bytes: `20000`, `32kb`, `1mb`.
pub fn parse_size(input: &str) -> Result<u64, RateError> {
    let text = input.trim().to_ascii_lowercase();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale: u64 = match unit {
        "" | "b" => 1,
        "k" | "kb" => 1 << 10,
        "m" | "mb" => 1 << 20,
        "g" | "gb" => 1 << 30,
        _ => return Err(RateError::Size(input.to_owned())),
    };
    let bytes = scaled(number, scale).ok_or_else(|| RateError::Size(input.to_owned()))?;
    if !(MIN_BURST_BYTES..=MAX_BURST_BYTES).contains(&bytes) {
        return Err(RateError::SizeRange {
            input: input.trim().to_owned(),
            min: MIN_BURST_BYTES,
            max: MAX_BURST_BYTES,
        });
    }
    Ok(bytes)
}

/// `number × scale` for a decimal number with at most 9 fractional digits,
/// computed exactly in integers; None when malformed or overflowing.
fn scaled(number: &str, scale: u64) -> Option<u64> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || fraction.len() > 9 || (number.contains('.') && fraction.is_empty()) {
        return None;
    }
    let whole: u64 = whole.parse().ok()?;
    let mut value = whole.checked_mul(scale)?;
    if !fraction.is_empty() {
        let digits: u64 = fraction.parse().ok()?;
        let denominator = 10u64.pow(fraction.len() as u32);
        let part = u128::from(digits) * u128::from(scale) / u128::from(denominator);
        value = value.checked_add(u64::try_from(part).ok()?)?;
    }
    Some(value)
}

/// One direction's cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cap {
    pub rate: Rate,
    /// Bytes that may pass at once after an idle period.
    pub burst_bytes: u64,
}

/// Burst when none is given: 20 ms at the rate, but at least 128 KiB, so
/// that TCP's segmentation-offload bursts (up to 64 KiB per packet) and
/// its loss recovery do not eat into the rate it gets.
pub fn default_burst(rate: Rate) -> u64 {
    (rate.bytes_per_second() / 50).clamp(128 << 10, MAX_BURST_BYTES)
}

impl Cap {
    pub fn new(rate: Rate, burst_bytes: Option<u64>) -> Self {
        Self {
            rate,
            burst_bytes: burst_bytes.unwrap_or_else(|| default_burst(rate)),
        }
    }
}

/// A container's caps: egress is what it sends, ingress what it receives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Caps {
    pub egress: Option<Cap>,
    pub ingress: Option<Cap>,
}

impl Caps {
    pub fn is_empty(&self) -> bool {
        self.egress.is_none() && self.ingress.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_in_bits_and_bytes() {
        let cases = [
            ("500kbit", 500_000),
            ("20mbit", 20_000_000),
            ("20MBit", 20_000_000),
            (" 1gbit ", 1_000_000_000),
            ("1.5gbit", 1_500_000_000),
            ("0.5mbit", 500_000),
            ("10mbps", 80_000_000),
            ("125kbps", 1_000_000),
            ("1gbps", 8_000_000_000),
            ("64000bit", 64_000),
            ("8000bps", 64_000),
        ];
        for (input, bits) in cases {
            assert_eq!(
                parse_rate(input).map(Rate::bits_per_second),
                Ok(bits),
                "{input}"
            );
        }
    }

    #[test]
    fn malformed_rates_say_why() {
        let cases = [
            (
                "",
                "`` is not a rate (expected e.g. 500kbit, 20mbit, 1gbit or 10mbps)",
            ),
            (
                "fast",
                "`fast` is not a rate (expected e.g. 500kbit, 20mbit, 1gbit or 10mbps)",
            ),
            (
                "20",
                "`20` has no unit; write e.g. 20mbit (bits) or 20mbps (bytes)",
            ),
            (
                "20mb",
                "`20mb` is not a rate (expected e.g. 500kbit, 20mbit, 1gbit or 10mbps)",
            ),
            (
                "-5mbit",
                "`-5mbit` is not a rate (expected e.g. 500kbit, 20mbit, 1gbit or 10mbps)",
            ),
            (
                "1.mbit",
                "`1.mbit` is not a rate (expected e.g. 500kbit, 20mbit, 1gbit or 10mbps)",
            ),
            ("10bit", "rate `10bit` is outside 8000..=400000000000 bit/s"),
            ("0mbit", "rate `0mbit` is outside 8000..=400000000000 bit/s"),
            (
                "999gbit",
                "rate `999gbit` is outside 8000..=400000000000 bit/s",
            ),
            (
                "99999999999999999999gbit",
                "`99999999999999999999gbit` is not a rate (expected e.g. 500kbit, 20mbit, 1gbit or 10mbps)",
            ),
        ];
        for (input, message) in cases {
            let error = parse_rate(input).expect_err(input);
            assert_eq!(error.to_string(), message, "{input}");
        }
    }

    #[test]
    fn sizes_use_binary_prefixes() {
        let cases = [
            ("20000", 20_000),
            ("1514b", 1514),
            ("32kb", 32 << 10),
            ("32K", 32 << 10),
            ("1.5mb", 3 << 19),
            ("1g", 1 << 30),
        ];
        for (input, bytes) in cases {
            assert_eq!(parse_size(input), Ok(bytes), "{input}");
        }
    }

    #[test]
    fn malformed_sizes_say_why() {
        let cases = [
            (
                "big",
                "`big` is not a size (expected e.g. 32kb, 1mb or 20000 bytes)",
            ),
            (
                "10mbit",
                "`10mbit` is not a size (expected e.g. 32kb, 1mb or 20000 bytes)",
            ),
            ("100", "burst `100` is outside 1514..=1073741824 bytes"),
            ("2gb", "burst `2gb` is outside 1514..=1073741824 bytes"),
        ];
        for (input, message) in cases {
            assert_eq!(parse_size(input).expect_err(input).to_string(), message);
        }
    }

    #[test]
    fn rates_print_in_the_largest_exact_unit() {
        for text in ["20mbit", "1gbit", "500kbit", "1500mbit", "64001bit"] {
            assert_eq!(parse_rate(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn default_burst_covers_offload_bursts_and_scales_with_the_rate() {
        let mbit = |n: u64| Rate::from_bits_per_second(n * 1_000_000);
        assert_eq!(default_burst(mbit(1)), 128 << 10);
        assert_eq!(default_burst(mbit(1000)), 2_500_000);
        assert_eq!(Cap::new(mbit(20), Some(5000)).burst_bytes, 5000);
    }
}
