//! Durations (`500ms`, `10s`, `5m`, `8h`, `90d`) and sizes (`64KiB`, `32MiB`, `1GiB`, plain bytes) in config values.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer};

/// A duration written with a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }
}

impl std::str::FromStr for Duration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let invalid = || format!("invalid duration \"{text}\": write a number and a unit (500ms, 10s, 5m, 8h, 90d)");
        let number: u64 = number.parse().map_err(|_| invalid())?;
        let millis = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(invalid()),
        };
        let total = number.checked_mul(millis).ok_or_else(invalid)?;
        Ok(Self(std::time::Duration::from_millis(total)))
    }
}

/// A size in bytes, written plain or with `KiB`, `MiB`, `GiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl std::str::FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let invalid = || format!("invalid size \"{text}\": write bytes or a number with KiB, MiB or GiB");
        let number: u64 = number.parse().map_err(|_| invalid())?;
        let scale = match unit {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            _ => return Err(invalid()),
        };
        number.checked_mul(scale).map(Self).ok_or_else(invalid)
    }
}

/// Accepts a string or a plain number and parses it with `FromStr`.
fn from_text<'de, D: Deserializer<'de>, T: std::str::FromStr<Err = String>>(deserializer: D) -> Result<T, D::Error> {
    struct Text<T>(std::marker::PhantomData<T>);
    impl<T: std::str::FromStr<Err = String>> de::Visitor<'_> for Text<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a value with a unit")
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
            text.parse().map_err(E::custom)
        }
        fn visit_u64<E: de::Error>(self, number: u64) -> Result<T, E> {
            self.visit_str(&number.to_string())
        }
    }
    deserializer.deserialize_any(Text(std::marker::PhantomData))
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_text(deserializer)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_text(deserializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_parse_with_units_only() {
        assert_eq!("500ms".parse::<Duration>().unwrap().0.as_millis(), 500);
        assert_eq!("90d".parse::<Duration>().unwrap().0.as_secs(), 90 * 86_400);
        assert!("10".parse::<Duration>().is_err());
        assert!("10 s".parse::<Duration>().is_err());
        assert_eq!("32MiB".parse::<ByteSize>().unwrap().0, 32 << 20);
        assert_eq!("4096".parse::<ByteSize>().unwrap().0, 4096);
        assert!("1MB".parse::<ByteSize>().is_err());
    }
}
