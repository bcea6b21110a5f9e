//! Durations as people and Go programs write them (`90s`, `5m`, `1h30m`,
//! `500ms`), parsed by jiff's friendly format; a bare number is seconds (as
//! envtest's variables allow). The demo's `--deadline` and the control plane's
//! environment variables share this one grammar.

use std::time::Duration;

/// A duration that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("invalid duration {text:?} (use e.g. 90s, 5m, 1h30m or 500ms): {reason}")]
pub struct DurationError {
    text: String,
    reason: String,
}

/// Parses `90s`, `1m30s`, `5m`, `1h30m`, `500ms`, or a bare (possibly
/// fractional) number of seconds. Negative durations are refused.
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    let text = s.trim();
    let err = |reason: String| DurationError {
        text: text.to_owned(),
        reason,
    };
    if let Ok(secs) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|e| err(e.to_string()));
    }
    let signed: jiff::SignedDuration = text.parse().map_err(|e: jiff::Error| err(e.to_string()))?;
    Duration::try_from(signed).map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_and_friendly_durations() {
        assert_eq!(parse("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("45").unwrap(), Duration::from_secs(45));
        assert_eq!(parse("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse("10x").is_err());
        assert!(parse("-5s").is_err());
        assert!(parse("").is_err());
    }
}
