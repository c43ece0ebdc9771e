//! Durations as operators write them: plain seconds (`3600`) or a number with one unit
//! (`90s`, `30m`, `6h`, `2d`, `1w`). Negative, fractional or empty values are refused with a
//! message that says what was expected. Also formats durations back for humans.

use std::time::Duration;

/// The longest duration fernetd takes: 100 years. Beyond it no lifetime or schedule means
/// anything, and time arithmetic on it could overflow.
pub const MAX: Duration = Duration::from_secs(100 * 365 * 86_400 + 25 * 86_400);

/// `secs` as a duration, or why not (more than [`MAX`]).
pub fn from_secs(secs: u64, text: &str) -> Result<Duration, String> {
    let d = Duration::from_secs(secs);
    if d > MAX {
        return Err(format!("'{text}' is more than 100 years"));
    }
    Ok(d)
}

/// Parses `3600`, `90s`, `30m`, `6h`, `2d` or `1w`.
pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.starts_with('-') {
        return Err(format!(
            "'{text}' is negative; expected seconds or 90s/30m/6h/2d/1w"
        ));
    }
    let (digits, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, ""),
    };
    let mult: u64 = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => {
            return Err(format!(
                "'{text}' is not a duration; expected seconds or 90s/30m/6h/2d/1w"
            ))
        }
    };
    if digits.is_empty() {
        return Err(format!(
            "'{text}' is not a duration; expected seconds or 90s/30m/6h/2d/1w"
        ));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{text}' is too large"))?;
    let secs = n
        .checked_mul(mult)
        .ok_or_else(|| format!("'{text}' is more than 100 years"))?;
    from_secs(secs, text)
}

/// Formats whole seconds compactly: `49h`, `2d 1h`, `90s`, `1h 30m`.
pub fn format(d: Duration) -> String {
    let mut s = d.as_secs();
    if s == 0 {
        return "0s".to_string();
    }
    let mut parts = Vec::new();
    for (unit, len) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if s >= len {
            parts.push(format!("{}{unit}", s / len));
            s %= len;
        }
    }
    parts.join(" ")
}

/// serde adapter: a TOML integer (seconds) or a string in the forms [`parse`] accepts.
pub mod serde_opt {
    use super::*;
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(i64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<Raw>::deserialize(d)? {
            None => Ok(None),
            Some(Raw::Int(n)) if n < 0 => Err(serde::de::Error::custom(format!(
                "{n} is negative; expected seconds or 90s/30m/6h/2d/1w"
            ))),
            Some(Raw::Int(n)) => from_secs(n.unsigned_abs(), &n.to_string())
                .map(Some)
                .map_err(serde::de::Error::custom),
            Some(Raw::Text(t)) => parse(&t).map(Some).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse("3600").unwrap().as_secs(), 3600);
        assert_eq!(parse("90s").unwrap().as_secs(), 90);
        assert_eq!(parse("30m").unwrap().as_secs(), 1800);
        assert_eq!(parse("6h").unwrap().as_secs(), 21_600);
        assert_eq!(parse("2d").unwrap().as_secs(), 172_800);
        assert_eq!(parse("1w").unwrap().as_secs(), 604_800);
        assert_eq!(parse(" 0 ").unwrap().as_secs(), 0);
    }

    #[test]
    fn refuses_more_than_a_century() {
        assert!(parse("36500d").is_ok());
        for t in [
            "999999999d",
            "5300w",
            "18446744073709551615",
            "18446744073709551615w",
        ] {
            let e = parse(t).unwrap_err();
            assert!(e.contains("more than 100 years"), "{t}: {e}");
        }
    }

    #[test]
    fn refuses_nonsense() {
        for bad in [
            "",
            "-5",
            "-1h",
            "h",
            "1.5h",
            "1x",
            "6 h",
            "1h30m",
            "99999999999999999999",
        ] {
            assert!(parse(bad).is_err(), "{bad} should be refused");
        }
        assert!(parse("-5").unwrap_err().contains("negative"));
    }

    #[test]
    fn formats_compactly() {
        assert_eq!(format(Duration::from_secs(176_400)), "2d 1h");
        assert_eq!(format(Duration::from_secs(90)), "1m 30s");
        assert_eq!(format(Duration::from_secs(0)), "0s");
        assert_eq!(format(Duration::from_secs(3600)), "1h");
    }
}
