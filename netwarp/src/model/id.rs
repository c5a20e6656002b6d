//! A container id as a fixed-size value: Docker's 64 lowercase hex digits
//! held as their 32 bytes. The event path keys its pending set by it, so a
//! storm of events allocates nothing per event for the ids it keeps.

use std::{fmt, str::FromStr};

/// A full container id (`docker inspect --format '{{.Id}}'`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerId([u8; 32]);

/// Why a text is not a full container id.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error(
        "container id {0:?} has {1} characters; a full id has 64 (docker inspect --format '{{{{.Id}}}}' prints it)"
    )]
    Length(String, usize),
    #[error(
        "container id {0:?} has {1:?} at position {2}; a full id is 64 lowercase hexadecimal digits (0-9, a-f)"
    )]
    Digit(String, char, usize),
}

impl ContainerId {
    /// Parses a full id; a short id, a name or any other text is refused.
    pub fn parse(text: &str) -> Result<Self, IdError> {
        let length = text.chars().count();
        if text.len() != 64 || length != 64 {
            return Err(IdError::Length(text.to_owned(), length));
        }
        let digit = |i: usize| {
            let byte = text.as_bytes()[i];
            match byte {
                b'0'..=b'9' => Ok(byte - b'0'),
                b'a'..=b'f' => Ok(byte - b'a' + 10),
                _ => Err(IdError::Digit(text.to_owned(), char::from(byte), i)),
            }
        };
        let mut bytes = [0; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = (digit(2 * i)? << 4) | digit(2 * i + 1)?;
        }
        Ok(Self(bytes))
    }
}

impl FromStr for ContainerId {
    type Err = IdError;

    fn from_str(text: &str) -> Result<Self, IdError> {
        Self::parse(text)
    }
}

impl fmt::Display for ContainerId {
    /// The 64 hex digits, as Docker writes them; `{:.12}` gives the short
    /// id `docker ps` shows.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = [0; 64];
        for (i, byte) in self.0.iter().enumerate() {
            text[2 * i] = HEX[usize::from(byte >> 4)];
            text[2 * i + 1] = HEX[usize::from(byte & 0xf)];
        }
        let text = std::str::from_utf8(&text).expect("hex digits are ASCII");
        f.pad(text)
    }
}

impl fmt::Debug for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContainerId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f6a0c9e2b7d1a3c5e8f0b2d4a6c8e1f3b5d7a9c0e2f4b6d8a1c3e5f7b9d0a2c";

    #[test]
    fn a_full_id_round_trips_and_shortens() {
        let id = ContainerId::parse(ID).unwrap();
        assert_eq!(id.to_string(), ID);
        assert_eq!(format!("{id:.12}"), &ID[..12]);
        assert_eq!(ID.parse::<ContainerId>(), Ok(id));
        let other = ContainerId::parse(&ID.replace('4', "5")).unwrap();
        assert_ne!(id, other);
        assert_eq!(
            ContainerId::parse(&"0".repeat(64)).unwrap().to_string(),
            "0".repeat(64)
        );
        assert_eq!(
            ContainerId::parse(&"f".repeat(64)).unwrap().to_string(),
            "f".repeat(64)
        );
    }

    #[test]
    fn anything_but_64_lowercase_hex_digits_is_refused_saying_why() {
        for (text, says) in [
            ("", "has 0 characters"),
            (&ID[..12], "has 12 characters; a full id has 64"),
            ("warp-a", "has 6 characters"),
            (&format!("{ID}0"), "has 65 characters"),
        ] {
            let error = ContainerId::parse(text).unwrap_err();
            assert!(error.to_string().contains(says), "{text:?}: {error}");
        }
        let upper = ID.to_uppercase();
        let error = ContainerId::parse(&upper).unwrap_err();
        assert_eq!(error, IdError::Digit(upper, 'F', 1));
        assert!(
            error.to_string().contains("lowercase hexadecimal"),
            "{error}"
        );
        let mut bad = ID.to_owned();
        bad.replace_range(63..64, "g");
        assert_eq!(
            ContainerId::parse(&bad).unwrap_err(),
            IdError::Digit(bad.clone(), 'g', 63)
        );
        // 64 bytes but fewer characters: not mistaken for an id.
        let multibyte = format!("é{}", &ID[2..]);
        assert_eq!(multibyte.len(), 64);
        assert!(matches!(
            ContainerId::parse(&multibyte),
            Err(IdError::Length(_, 63))
        ));
    }
}
