//! Token-bucket rate limits for enrollment: one bucket per peer address and
//! one for the whole hub, and an audit throttle so a flood of refusals writes
//! a handful of summary rows instead of one row per request.
//!
//! Both maps are bounded: the per-peer table forgets peers whose bucket has
//! refilled, and if it is still full it is cleared (the global bucket keeps
//! limiting while the table refills).

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Peers remembered at once; beyond this, refilled buckets are forgotten.
const MAX_PEERS: usize = 10_000;
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
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(b: Budget, now: Instant) -> Self {
        Self {
            tokens: f64::from(b.burst),
            at: now,
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
                b.tokens < f64::from(l.per_peer.burst)
            });
            if st.peers.len() >= MAX_PEERS {
                st.peers.clear();
            }
        }
        st.global.refill(l.global, now);
        let global = st.global;
        let bucket = st
            .peers
            .entry(peer)
            .or_insert_with(|| Bucket::full(l.per_peer, now));
        bucket.refill(l.per_peer, now);
        if bucket.tokens < 1.0 {
            return Decision::Limited {
                scope: "peer",
                retry_after: bucket.wait(l.per_peer),
            };
        }
        if global.tokens < 1.0 {
            return Decision::Limited {
                scope: "global",
                retry_after: global.wait(l.global),
            };
        }
        bucket.tokens -= 1.0;
        st.global.tokens -= 1.0;
        Decision::Allow
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
        assert_eq!(
            rl.check_at(ip(99), t0),
            Decision::Limited {
                scope: "global",
                retry_after: Duration::from_millis(500)
            }
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
