//! The set of connections that have not (yet) shown a client certificate:
//! TLS handshakes in progress and enrollment requests.
//!
//! It holds at most `cap` of them. A new connection always gets in: when the
//! set is full, the oldest member is told to close. A flood of idle or slow
//! unauthenticated connections therefore cannot keep an agent out, since an
//! agent's handshake takes milliseconds and leaves the set as soon as its
//! certificate is verified, while the flood's connections are the oldest.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// Bounded, oldest-evicted set of unauthenticated connections.
#[derive(Debug)]
pub(crate) struct Unauthenticated {
    cap: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    members: VecDeque<(u64, oneshot::Sender<()>)>,
}

/// Membership of one connection; leaving the set is dropping it.
#[derive(Debug)]
pub(crate) struct Ticket {
    id: u64,
    owner: Arc<Unauthenticated>,
    evicted: oneshot::Receiver<()>,
}

impl Unauthenticated {
    pub(crate) fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap: cap.max(1),
            inner: Mutex::new(Inner::default()),
        })
    }

    /// Adds a connection; returns its ticket and whether an older member was
    /// evicted to make room.
    pub(crate) fn admit(self: &Arc<Self>) -> (Ticket, bool) {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut evicted = false;
        while inner.members.len() >= self.cap {
            if let Some((_, oldest)) = inner.members.pop_front() {
                let _ = oldest.send(());
                evicted = true;
            }
        }
        let id = inner.next_id;
        inner.next_id += 1;
        inner.members.push_back((id, tx));
        (
            Ticket {
                id,
                owner: self.clone(),
                evicted: rx,
            },
            evicted,
        )
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .members
            .len()
    }
}

impl Ticket {
    /// Resolves when this connection was evicted to make room for a newer one.
    pub(crate) async fn evicted(&mut self) {
        let _ = (&mut self.evicted).await;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut inner = self.owner.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.members.retain(|(id, _)| *id != self.id);
    }
}

/// Resolves when `ticket` (if any) is evicted; never for `None`.
pub(crate) async fn evicted(ticket: &mut Option<Ticket>) {
    match ticket {
        Some(t) => t.evicted().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_oldest_member_is_evicted_and_leaving_frees_room() {
        let set = Unauthenticated::new(2);
        let (mut a, ev) = set.admit();
        assert!(!ev);
        let (b, _) = set.admit();
        let (_c, ev) = set.admit();
        assert!(ev, "a third member evicts the oldest");
        tokio::time::timeout(std::time::Duration::from_secs(1), a.evicted())
            .await
            .expect("the oldest is told");
        drop(a);
        assert_eq!(set.len(), 2);
        drop(b);
        assert_eq!(set.len(), 1);
    }
}
