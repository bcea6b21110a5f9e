//! Exponential backoff with full jitter (AWS architecture blog's "full jitter").

use std::time::Duration;

/// Shortest delay ever returned, so a failing loop cannot spin.
pub const FLOOR: Duration = Duration::from_millis(100);

/// The ceiling for attempt `attempt` (1-based): `min * 2^(attempt-1)`, capped at `max`.
pub fn ceiling(min: Duration, max: Duration, attempt: u32) -> Duration {
    let shift = attempt.saturating_sub(1).min(30);
    min.saturating_mul(1u32 << shift).min(max).max(FLOOR)
}

/// A uniformly random delay in `[FLOOR, ceiling(min, max, attempt)]`.
pub fn full_jitter(min: Duration, max: Duration, attempt: u32) -> Duration {
    let cap = ceiling(min, max, attempt).as_millis() as u64;
    let floor = FLOOR.as_millis() as u64;
    Duration::from_millis(rand::random_range(floor..=cap.max(floor)))
}

/// Delay after a `Goodbye{retry_after}`: at least `retry_after`, plus up to as
/// much again of jitter (capped at `max`) so a restarted hub is not stampeded.
pub fn after_goodbye(retry_after: Duration, max: Duration) -> Duration {
    let spread = retry_after.min(max).as_millis() as u64;
    retry_after + Duration::from_millis(rand::random_range(0..=spread.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_and_cap() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!(ceiling(min, max, 1), Duration::from_secs(1));
        assert_eq!(ceiling(min, max, 3), Duration::from_secs(4));
        assert_eq!(ceiling(min, max, 50), max);
    }

    #[test]
    fn jittered_delays_stay_within_bounds_and_vary() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(8));
        let samples: Vec<_> = (0..200).map(|_| full_jitter(min, max, 10)).collect();
        assert!(samples.iter().all(|d| *d >= FLOOR && *d <= max));
        let distinct: std::collections::BTreeSet<_> = samples.iter().collect();
        assert!(distinct.len() > 50, "full jitter must spread delays");
        let g = after_goodbye(Duration::from_secs(5), max);
        assert!(g >= Duration::from_secs(5) && g <= Duration::from_secs(10));
    }
}
