//! Timed resends of intents the agent acked `rejected{apply_failed}`.
//!
//! Such an intent was verified but could not be written (the cluster's API
//! server was down or overloaded longer than the agent's own retries). It
//! stays pending in the store; without a timer it would only go out again on
//! the next connection, and a healthy tunnel may never reconnect. So each one
//! is sent again on the same connection after a jittered, doubling delay
//! (1 s, 2 s, 4 s ... at most 60 s). Bounded: at most [`MAX_SCHEDULED`]
//! intents wait at once (the window is the most that can fail together) and
//! the attempt counts are forgotten with the connection.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// Intents scheduled at once; beyond this the oldest schedule is resent at once.
pub(super) const MAX_SCHEDULED: usize = 4096;
/// First delay before a resend.
const FIRST: Duration = Duration::from_secs(1);
/// Longest delay between resends of one intent.
const MAX: Duration = Duration::from_secs(60);

/// Delay before resend number `attempt` (0 for the first): `FIRST × 2^attempt`
/// capped at `MAX`, drawn from its upper half so resends of many intents
/// spread out but never come sooner than half the step. `unit` in `[0, 1)`.
pub(super) fn delay(attempt: u32, unit: f64) -> Duration {
    let step = FIRST
        .saturating_mul(2u32.saturating_pow(attempt.min(16)))
        .min(MAX);
    step.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
}

/// Intents waiting for a resend on one connection.
#[derive(Debug, Default)]
pub(super) struct Resends {
    /// (when, store seq, intent id), unordered (small).
    due: Vec<(Instant, i64, String)>,
    /// Resends so far per intent id on this connection.
    attempts: HashMap<String, u32>,
}

impl Resends {
    /// Schedules `intent` (at store seq `seq`) for a resend; returns the delay.
    /// When [`MAX_SCHEDULED`] are waiting, it rides along with the latest
    /// one instead: a resend rewinds to the lowest seq it holds, and every
    /// pending intent after that which is not in flight goes out with it.
    pub(super) fn schedule(&mut self, now: Instant, seq: i64, intent: &str, unit: f64) -> Duration {
        self.due.retain(|(_, _, id)| id != intent);
        if self.due.len() >= MAX_SCHEDULED
            && let Some(last) = self.due.iter_mut().max_by_key(|(at, _, _)| *at)
        {
            last.1 = last.1.min(seq);
            return last.0.saturating_duration_since(now);
        }
        let n = self.attempts.entry(intent.to_owned()).or_insert(0);
        let d = delay(*n, unit);
        *n = n.saturating_add(1);
        self.due.push((now + d, seq, intent.to_owned()));
        if self.attempts.len() > 2 * MAX_SCHEDULED {
            let keep: std::collections::HashSet<&String> =
                self.due.iter().map(|(_, _, id)| id).collect();
            self.attempts.retain(|id, _| keep.contains(id));
        }
        d
    }

    /// Forgets an intent that was settled (applied, noop or rejected for good).
    pub(super) fn settled(&mut self, intent: &str) {
        self.attempts.remove(intent);
        self.due.retain(|(_, _, id)| id != intent);
    }

    /// When the next resend is due.
    pub(super) fn next(&self) -> Option<Instant> {
        self.due.iter().map(|(at, _, _)| *at).min()
    }

    /// Takes the store seqs of every resend due at `now`.
    pub(super) fn take_due(&mut self, now: Instant) -> Vec<i64> {
        let mut seqs = Vec::new();
        self.due.retain(|(at, seq, _)| {
            let due = *at <= now;
            if due {
                seqs.push(*seq);
            }
            !due
        });
        seqs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_one_second_up_to_a_minute_and_stay_in_the_upper_half() {
        for (attempt, step) in [(0, 1), (1, 2), (2, 4), (5, 32), (6, 60), (40, 60)] {
            let step = Duration::from_secs(step);
            assert_eq!(delay(attempt, 0.0), step / 2, "attempt {attempt}");
            assert!(delay(attempt, 0.999) <= step);
            assert!(delay(attempt, 0.999) > step.mul_f64(0.99));
        }
    }

    #[test]
    fn a_resend_is_due_after_its_delay_and_taken_once() {
        let t0 = Instant::now();
        let mut r = Resends::default();
        let d = r.schedule(t0, 7, "a", 0.0);
        assert_eq!(d, Duration::from_millis(500));
        assert_eq!(r.next(), Some(t0 + d));
        assert!(r.take_due(t0).is_empty());
        assert_eq!(r.take_due(t0 + d), vec![7]);
        assert!(r.take_due(t0 + d).is_empty());
        assert_eq!(r.next(), None);
        // The second failure of the same intent waits longer.
        assert_eq!(r.schedule(t0, 7, "a", 0.0), Duration::from_secs(1));
    }

    #[test]
    fn a_settled_intent_is_not_resent_and_its_count_is_forgotten() {
        let t0 = Instant::now();
        let mut r = Resends::default();
        r.schedule(t0, 1, "a", 0.0);
        r.schedule(t0, 1, "a", 0.0);
        r.settled("a");
        assert_eq!(r.next(), None);
        assert_eq!(r.schedule(t0, 1, "a", 0.0), Duration::from_millis(500));
    }

    #[test]
    fn scheduling_the_same_intent_again_keeps_one_entry() {
        let t0 = Instant::now();
        let mut r = Resends::default();
        r.schedule(t0, 3, "a", 0.0);
        r.schedule(t0, 3, "a", 0.0);
        assert_eq!(r.take_due(t0 + MAX), vec![3]);
    }

    #[test]
    fn the_schedule_is_bounded_and_an_overflow_rides_with_the_latest_resend() {
        let t0 = Instant::now();
        let mut r = Resends::default();
        for i in 0..MAX_SCHEDULED as i64 {
            r.schedule(
                t0,
                100 + i,
                &format!("i{i}"),
                i as f64 / MAX_SCHEDULED as f64,
            );
        }
        let d = r.schedule(t0, 5, "late", 0.0);
        assert_eq!(r.due.len(), MAX_SCHEDULED);
        assert!(r.attempts.len() <= MAX_SCHEDULED);
        // It waits for the latest resend, which now rewinds to its seq.
        let due = r.take_due(t0 + d);
        assert!(due.contains(&5), "{due:?}");
    }
}
