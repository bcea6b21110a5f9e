//! Token-bucket rate limits for enrollment: one bucket per peer address and
//! one for the whole hub, and an audit throttle so a flood of refusals writes
//! a handful of summary rows instead of one row per request.
//!
//! Both maps are bounded: the per-peer table forgets peers whose bucket has
//! refilled and who hold no reservation, and if it is still full it is
//! cleared (the global bucket keeps limiting while the table refills).
//!
//! Pacing: when the whole-hub bucket is empty, a refused request is not told
//! "the next token" (which would send every refused client back in the same
//! second) but gets a *reservation*: the hub takes a token in advance (the
//! bucket goes into debt), remembers the slot for that peer address, and
//! answers with the time at which the bucket will have refilled that far. The
//! n-th refused request of a burst is thus told `(n - tokens) / per_sec`, the
//! retries come back at the rate the hub accepts, and a returning peer finds
//! its token waiting instead of competing with newcomers. One reservation per
//! peer, none beyond [`MAX_RETRY_AFTER`]; one not claimed within
//! [`RESERVATION_GRACE`] of its slot is forfeited.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Peers remembered at once; beyond this, refilled buckets are forgotten.
/// About 64 bytes each, so the table stays within a few MiB.
const MAX_PEERS: usize = 65_536;
/// Longest `Retry-After` the hub hands out. Past this horizon no reservation
/// is made: the client is told this long and the client's jitter spreads it.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// A reservation not claimed within this long after its slot is forfeited
/// (its token is not handed back: the bucket simply refills).
pub const RESERVATION_GRACE: Duration = Duration::from_secs(60);
/// Peers named in one aggregated audit row.
const MAX_PEERS_PER_ROW: usize = 8;

/// Budget of one bucket: `burst` requests at once, refilled at `per_sec`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Budget {
    /// Requests allowed in a burst.
    pub burst: u32,
    /// Requests added back per second.
    pub per_sec: f64,
}

/// Enrollment rate limits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimits {
    /// Per peer IP address.
    pub per_peer: Budget,
    /// For the whole hub.
    pub global: Budget,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            per_peer: Budget {
                burst: 20,
                per_sec: 1.0,
            },
            global: Budget {
                burst: 200,
                per_sec: 50.0,
            },
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Below zero for the whole-hub bucket while reservations are out.
    tokens: f64,
    at: Instant,
    /// Peer buckets only: a whole-hub token taken in advance for this peer,
    /// usable from this instant.
    reserved: Option<Instant>,
}

impl Bucket {
    fn full(b: Budget, now: Instant) -> Self {
        Self {
            tokens: f64::from(b.burst),
            at: now,
            reserved: None,
        }
    }

    fn refill(&mut self, b: Budget, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * b.per_sec).min(f64::from(b.burst));
        self.at = now;
    }

    /// Time until one token is there (zero when one is).
    fn wait(&self, b: Budget) -> Duration {
        if self.tokens >= 1.0 {
            return Duration::ZERO;
        }
        if b.per_sec <= 0.0 {
            return Duration::from_secs(3600);
        }
        Duration::from_secs_f64(((1.0 - self.tokens) / b.per_sec).min(3600.0))
    }
}

/// Time until a bucket holding `tokens` (possibly negative: reservations
/// already handed out) has refilled to one more token, or `None` when that
/// lies beyond `max` (or the budget never refills): then no reservation is
/// made. For a bucket drained by a burst this is `(n - tokens) / per_sec` for
/// the n-th refused request, so refused clients are spread at the refill rate.
pub fn reservation_delay(tokens: f64, budget: Budget, max: Duration) -> Option<Duration> {
    if budget.per_sec <= 0.0 || !budget.per_sec.is_finite() {
        return None;
    }
    let secs = ((1.0 - tokens).max(0.0)) / budget.per_sec;
    (secs <= max.as_secs_f64()).then(|| Duration::from_secs_f64(secs))
}

/// What the limiter decided for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead (a token was taken from both buckets).
    Allow,
    /// Refuse; retry after this long.
    Limited {
        /// Which budget ran out: `peer` or `global`.
        scope: &'static str,
        /// When a token will be there again.
        retry_after: Duration,
    },
}

struct State {
    global: Bucket,
    peers: HashMap<IpAddr, Bucket>,
}

/// Per-peer and overall token buckets.
pub struct RateLimiter {
    limits: RateLimits,
    state: Mutex<State>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// A limiter with full buckets.
    pub fn new(limits: RateLimits) -> Self {
        Self {
            limits,
            state: Mutex::new(State {
                global: Bucket::full(limits.global, Instant::now()),
                peers: HashMap::new(),
            }),
        }
    }

    /// Takes a token for `peer` from both buckets, or says which is empty.
    pub fn check(&self, peer: IpAddr) -> Decision {
        self.check_at(peer, Instant::now())
    }

    fn check_at(&self, peer: IpAddr, now: Instant) -> Decision {
        let l = self.limits;
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.peers.len() >= MAX_PEERS && !st.peers.contains_key(&peer) {
            st.peers.retain(|_, b| {
                b.refill(l.per_peer, now);
                let holds = b.reserved.is_some_and(|at| at + RESERVATION_GRACE > now);
                holds || b.tokens < f64::from(l.per_peer.burst)
            });
            if st.peers.len() >= MAX_PEERS {
                st.peers.clear();
            }
        }
        let State { global, peers } = &mut *st;
        global.refill(l.global, now);
        let bucket = peers
            .entry(peer)
            .or_insert_with(|| Bucket::full(l.per_peer, now));
        bucket.refill(l.per_peer, now);
        if bucket.tokens < 1.0 {
            return Decision::Limited {
                scope: "peer",
                retry_after: bucket.wait(l.per_peer),
            };
        }
        if let Some(at) = bucket.reserved {
            if now >= at + RESERVATION_GRACE {
                // Never claimed: forfeited.
                bucket.reserved = None;
            } else if now >= at {
                // Its whole-hub token was taken when the reservation was made.
                bucket.reserved = None;
                bucket.tokens -= 1.0;
                return Decision::Allow;
            } else {
                // Back too early: the same slot, no second reservation.
                return Decision::Limited {
                    scope: "global",
                    retry_after: at - now,
                };
            }
        }
        if global.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            global.tokens -= 1.0;
            return Decision::Allow;
        }
        match reservation_delay(global.tokens, l.global, MAX_RETRY_AFTER) {
            Some(wait) => {
                global.tokens -= 1.0;
                bucket.reserved = Some(now + wait);
                Decision::Limited {
                    scope: "global",
                    retry_after: wait,
                }
            }
            None => Decision::Limited {
                scope: "global",
                retry_after: MAX_RETRY_AFTER,
            },
        }
    }
}

/// Turns a flood of identical refusals into one audit row per window.
pub struct AuditThrottle {
    window: Duration,
    state: Mutex<Option<Window>>,
}

struct Window {
    start: Instant,
    suppressed: u64,
    peers: BTreeSet<IpAddr>,
}

impl std::fmt::Debug for AuditThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditThrottle")
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl AuditThrottle {
    /// At most one row per `window`.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            state: Mutex::new(None),
        }
    }

    /// Records one refusal from `peer`. Returns the detail of an audit row to
    /// write now, or `None` when this refusal is only counted.
    pub fn record(&self, peer: IpAddr) -> Option<String> {
        self.record_at(peer, Instant::now())
    }

    fn record_at(&self, peer: IpAddr, now: Instant) -> Option<String> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match st.as_mut() {
            Some(w) if now.saturating_duration_since(w.start) < self.window => {
                w.suppressed += 1;
                if w.peers.len() < MAX_PEERS_PER_ROW {
                    w.peers.insert(peer);
                }
                None
            }
            previous => {
                let summary = match previous {
                    Some(w) if w.suppressed > 0 => format!(
                        "; {} more refused in the previous {}s from {}",
                        w.suppressed,
                        self.window.as_secs(),
                        w.peers
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(",")
                    ),
                    _ => String::new(),
                };
                *st = Some(Window {
                    start: now,
                    suppressed: 0,
                    peers: BTreeSet::new(),
                });
                Some(format!(
                    "peer={peer} refused as rate_limited (further refusals within {}s are counted, not logged){summary}",
                    self.window.as_secs()
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn one_peer_runs_out_before_others_and_refills() {
        let rl = RateLimiter::new(RateLimits {
            per_peer: Budget {
                burst: 3,
                per_sec: 1.0,
            },
            global: Budget {
                burst: 100,
                per_sec: 100.0,
            },
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(rl.check_at(ip(1), t0), Decision::Allow);
        }
        let Decision::Limited { scope, retry_after } = rl.check_at(ip(1), t0) else {
            panic!("fourth request of a burst of three must be limited");
        };
        assert_eq!(scope, "peer");
        assert_eq!(retry_after, Duration::from_secs(1));
        // Another peer is not affected by the first one's budget.
        assert_eq!(rl.check_at(ip(2), t0), Decision::Allow);
        // One second later one token is back.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(rl.check_at(ip(1), t1), Decision::Allow);
        assert!(matches!(rl.check_at(ip(1), t1), Decision::Limited { .. }));
    }

    #[test]
    fn many_peers_together_hit_the_global_budget() {
        let rl = RateLimiter::new(RateLimits {
            per_peer: Budget {
                burst: 5,
                per_sec: 1.0,
            },
            global: Budget {
                burst: 10,
                per_sec: 2.0,
            },
        });
        let t0 = Instant::now();
        let allowed = (0..40u8)
            .filter(|i| rl.check_at(ip(*i), t0) == Decision::Allow)
            .count();
        assert_eq!(allowed, 10);
        // 30 reservations are out: the next one is 31 tokens away at 2/s.
        assert_eq!(
            rl.check_at(ip(99), t0),
            Decision::Limited {
                scope: "global",
                retry_after: Duration::from_millis(15_500)
            }
        );
    }

    #[test]
    fn reservation_delays_grow_with_the_debt_and_stop_at_the_horizon() {
        let b = Budget {
            burst: 5,
            per_sec: 10.0,
        };
        let max = Duration::from_secs(300);
        assert_eq!(
            reservation_delay(0.0, b, max),
            Some(Duration::from_millis(100))
        );
        assert_eq!(
            reservation_delay(-9.0, b, max),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            reservation_delay(0.5, b, max),
            Some(Duration::from_millis(50))
        );
        // A full bucket needs no wait.
        assert_eq!(reservation_delay(3.0, b, max), Some(Duration::ZERO));
        assert_eq!(reservation_delay(-2999.0, b, max), Some(max));
        assert_eq!(reservation_delay(-3000.0, b, max), None);
        let never = Budget {
            burst: 5,
            per_sec: 0.0,
        };
        assert_eq!(reservation_delay(0.0, never, max), None);
    }

    fn small_global() -> RateLimiter {
        RateLimiter::new(RateLimits {
            per_peer: Budget {
                burst: 20,
                per_sec: 1.0,
            },
            global: Budget {
                burst: 5,
                per_sec: 10.0,
            },
        })
    }

    fn peer(i: u32) -> IpAddr {
        IpAddr::from((0x0a01_0000 + i).to_be_bytes())
    }

    fn limited(d: Decision) -> Duration {
        match d {
            Decision::Limited {
                scope: "global",
                retry_after,
            } => retry_after,
            other => panic!("expected a global refusal, got {other:?}"),
        }
    }

    #[test]
    fn refused_peers_get_spread_slots_and_find_their_token_waiting() {
        let rl = small_global();
        let t0 = Instant::now();
        for i in 0..5 {
            assert_eq!(rl.check_at(peer(i), t0), Decision::Allow);
        }
        let waits: Vec<Duration> = (5..60).map(|i| limited(rl.check_at(peer(i), t0))).collect();
        // The n-th refused is told n / 10 s: one slot per token the hub refills.
        for (n, w) in waits.iter().enumerate() {
            assert_eq!(
                *w,
                Duration::from_millis(100 * (n as u64 + 1)),
                "refusal {n}"
            );
        }
        // Too early: the same slot again, not a new one at the end.
        let early = t0 + Duration::from_millis(50);
        assert_eq!(
            limited(rl.check_at(peer(5), early)),
            Duration::from_millis(50)
        );
        // A newcomer one second later does not take a reserved token: it is
        // queued behind the 55 reservations.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(
            limited(rl.check_at(peer(1000), t1)),
            Duration::from_millis(4_600)
        );
        // Every reserved peer returning at its slot is let in.
        for (i, w) in (5..60).zip(&waits) {
            assert_eq!(rl.check_at(peer(i), t0 + *w), Decision::Allow, "peer {i}");
        }
    }

    #[test]
    fn an_unclaimed_reservation_is_forfeited_after_the_grace() {
        let rl = small_global();
        let t0 = Instant::now();
        for i in 0..5 {
            assert_eq!(rl.check_at(peer(i), t0), Decision::Allow);
        }
        let w = limited(rl.check_at(peer(9), t0));
        let late = t0 + w + RESERVATION_GRACE + Duration::from_secs(1);
        // The bucket has long refilled; the peer is served like a newcomer.
        assert_eq!(rl.check_at(peer(9), late), Decision::Allow);
    }

    #[test]
    fn past_the_horizon_the_answer_is_the_cap_and_nothing_is_reserved() {
        let rl = RateLimiter::new(RateLimits {
            per_peer: Budget {
                burst: 20,
                per_sec: 1.0,
            },
            global: Budget {
                burst: 1,
                per_sec: 1.0,
            },
        });
        let t0 = Instant::now();
        assert_eq!(rl.check_at(peer(0), t0), Decision::Allow);
        for i in 1..=300 {
            assert_eq!(
                limited(rl.check_at(peer(i), t0)),
                Duration::from_secs(u64::from(i))
            );
        }
        for i in 301..310 {
            assert_eq!(limited(rl.check_at(peer(i), t0)), MAX_RETRY_AFTER);
        }
        // Those past the horizon hold nothing: the 301st slot is still free.
        assert_eq!(limited(rl.check_at(peer(1000), t0)), MAX_RETRY_AFTER);
        let t300 = t0 + Duration::from_secs(300);
        assert_eq!(rl.check_at(peer(300), t300), Decision::Allow);
    }

    /// A storm of 1,000 peers who each come back after the whole seconds of
    /// `Retry-After` (as the header carries it): all get in, no second is
    /// over the budget, and the whole storm takes about `(n - burst) / rate`.
    #[test]
    fn a_storm_that_honours_retry_after_is_paced_at_the_refill_rate() {
        let rl = small_global();
        let t0 = Instant::now();
        let n = 1_000u32;
        // (when the peer asks next, peer)
        let mut queue: std::collections::BTreeMap<Duration, Vec<u32>> = Default::default();
        queue.insert(Duration::ZERO, (0..n).collect());
        let mut per_second = vec![0u32; 200];
        let mut attempts = 0u32;
        let mut done = 0u32;
        while let Some((at, peers)) = queue.pop_first() {
            for p in peers {
                attempts += 1;
                match rl.check_at(peer(p), t0 + at) {
                    Decision::Allow => {
                        per_second[at.as_secs() as usize] += 1;
                        done += 1;
                    }
                    Decision::Limited { retry_after, .. } => {
                        let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                        queue
                            .entry(at + Duration::from_secs(secs))
                            .or_default()
                            .push(p);
                    }
                }
            }
        }
        assert_eq!(done, n);
        // Everyone asks once, and once more at the slot.
        assert!(attempts <= 2 * n, "{attempts} attempts");
        // The burst in the first second, then no more than the refill rate.
        assert!(per_second[0] <= 5 + 10, "{:?}", &per_second[..3]);
        assert!(
            per_second[1..].iter().all(|c| *c <= 10 + 1),
            "{per_second:?}"
        );
        let last = per_second.iter().rposition(|c| *c > 0).unwrap();
        assert!(
            (99..=101).contains(&last),
            "last admission in second {last}"
        );
    }

    #[test]
    fn audit_throttle_writes_one_row_per_window_with_the_count() {
        let th = AuditThrottle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(th.record_at(ip(1), t0).is_some());
        for i in 0..999 {
            assert!(th.record_at(ip((i % 3) as u8), t0).is_none());
        }
        let row = th
            .record_at(ip(7), t0 + Duration::from_secs(11))
            .expect("a new window writes a row");
        assert!(row.contains("999 more refused"), "{row}");
    }
}
