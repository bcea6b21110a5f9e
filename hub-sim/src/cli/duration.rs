//! Durations on the command line, parsed by jiff's friendly format.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A duration written as `90s`, `15m`, `1h30m`, `2h`, `1d`, `250ms` (jiff's
/// friendly format, days counted as 24 hours) or plain seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            let secs: u64 = s
                .parse()
                .map_err(|e| format!("invalid duration {s:?}: {e}"))?;
            return Ok(Self(Duration::from_secs(secs)));
        }
        let invalid = |e: &dyn fmt::Display| {
            format!("invalid duration {s:?} (use e.g. 90s, 15m, 1h30m, 1d): {e}")
        };
        let span: jiff::Span = s.parse().map_err(|e| invalid(&e))?;
        let signed = span
            .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
            .map_err(|e| invalid(&e))?;
        let d = Duration::try_from(signed).map_err(|e| invalid(&e))?;
        Ok(Self(d))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_millis() != 0 || d.is_zero() {
            return write!(f, "{}ms", d.as_millis());
        }
        let s = d.as_secs();
        match s {
            s if s % 86400 == 0 => write!(f, "{}d", s / 86400),
            s if s % 3600 == 0 => write!(f, "{}h", s / 3600),
            s if s % 60 == 0 => write!(f, "{}m", s / 60),
            s => write!(f, "{s}s"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip() {
        for text in ["90s", "15m", "2h", "1d", "250ms"] {
            let d: HumanDuration = text.parse().unwrap();
            assert_eq!(d.to_string(), text);
        }
        assert_eq!(
            "30".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(30)
        );
        assert_eq!("60m".parse::<HumanDuration>().unwrap().to_string(), "1h");
        assert_eq!(
            "1h30m".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(5400)
        );
        assert_eq!("1w".parse::<HumanDuration>().unwrap().to_string(), "7d");
        assert!("10x".parse::<HumanDuration>().is_err());
        assert!("h".parse::<HumanDuration>().is_err());
        assert!("-5s".parse::<HumanDuration>().is_err());
    }
}
