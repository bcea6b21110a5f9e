//! Exponential backoff with full jitter (AWS architecture blog's "full jitter"),
//! and the waits a hub asks for (`Goodbye{retry_after}`, `429 Retry-After`).

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

/// Longest `Retry-After` obeyed; a larger value (a misconfigured hub) is cut
/// to this, so one answer cannot park the agent for days.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Delay after `429 rate_limited` with `Retry-After`: at least what the hub
/// asked (capped at [`MAX_RETRY_AFTER`]), plus a jitter of up to 1 s and a
/// twentieth of the wait. The hub spreads its answers over its refill rate in
/// whole seconds; the jitter spreads the clients told the same second across
/// it, and keeps a hub that tells everyone the same number from getting them
/// all back at once. `unit` in `[0, 1]` picks the point in the jitter range.
pub fn after_rate_limit_at(retry_after: Duration, unit: f64) -> Duration {
    let wait = retry_after.min(MAX_RETRY_AFTER);
    let spread = Duration::from_secs(1) + wait / 20;
    wait + spread.mul_f64(unit.clamp(0.0, 1.0))
}

/// [`after_rate_limit_at`] at a random point of the jitter range.
pub fn after_rate_limit(retry_after: Duration) -> Duration {
    after_rate_limit_at(retry_after, rand::random_range(0.0..=1.0))
}

/// Delay before the next try of a request the hub refused or that failed:
/// the hub's `Retry-After` when it gave one ([`after_rate_limit`]),
/// otherwise full jitter over `attempt`.
pub fn after_failure(
    retry_after: Option<Duration>,
    min: Duration,
    max: Duration,
    attempt: u32,
) -> Duration {
    match retry_after {
        Some(r) => after_rate_limit(r),
        None => full_jitter(min, max, attempt),
    }
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

    #[test]
    fn a_rate_limited_wait_is_at_least_retry_after_plus_bounded_jitter() {
        let r = Duration::from_secs(40);
        assert_eq!(after_rate_limit_at(r, 0.0), r);
        assert_eq!(after_rate_limit_at(r, 1.0), Duration::from_secs(43));
        assert_eq!(after_rate_limit_at(r, 7.0), Duration::from_secs(43));
        assert_eq!(
            after_rate_limit_at(Duration::ZERO, 0.5),
            Duration::from_millis(500)
        );
        // A hub asking for a week gets an hour (plus jitter).
        let week = Duration::from_secs(7 * 24 * 3600);
        assert_eq!(after_rate_limit_at(week, 0.0), MAX_RETRY_AFTER);
        let samples: Vec<_> = (0..200).map(|_| after_rate_limit(r)).collect();
        assert!(
            samples
                .iter()
                .all(|d| *d >= r && *d <= Duration::from_secs(43))
        );
        let distinct: std::collections::BTreeSet<_> = samples.iter().collect();
        assert!(
            distinct.len() > 50,
            "clients told the same second must spread"
        );
        // With a Retry-After it wins over the attempt count; without, backoff.
        let (min, max) = (Duration::from_secs(2), Duration::from_secs(300));
        assert!(
            after_failure(Some(Duration::from_secs(120)), min, max, 1) >= Duration::from_secs(120)
        );
        assert!(after_failure(None, min, max, 1) <= min);
    }
}
