//! The intent scheduler: intents from the hub are applied in arrival order
//! per object and concurrently across objects, and their acks go back to the
//! connection loop. Every rejection is also reported as a Warning event.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use vworkspace_protocol::{IntentAck, ObjectRef, SignedIntent};

use crate::hub::apply::Applier;
use crate::hub::metrics::Metrics;

/// Intents applied at once (for different objects). The API server on the
/// reference machine is fastest at about this many parallel writes
/// (docs/benchmarks.md, controller concurrency).
pub(super) const APPLY_CONCURRENCY: usize = 16;

type Queued = (u64, SignedIntent, Option<ObjectRef>);

/// Intents taken from the connection and not yet acked, by state.
#[derive(Default)]
struct Held {
    /// Runnable: their object has nothing running; waiting for a free slot.
    ready: VecDeque<Queued>,
    /// Behind an earlier intent for the same object, in arrival order.
    waiting: HashMap<ObjectRef, VecDeque<(u64, SignedIntent)>>,
    waiting_len: usize,
    /// Objects with an intent ready or running.
    busy: HashSet<ObjectRef>,
}

impl Held {
    fn take(&mut self, seq: u64, intent: SignedIntent, object: Option<ObjectRef>) {
        match object {
            Some(o) if self.busy.contains(&o) => {
                self.waiting.entry(o).or_default().push_back((seq, intent));
                self.waiting_len += 1;
            }
            Some(o) => {
                self.busy.insert(o.clone());
                self.ready.push_back((seq, intent, Some(o)));
            }
            None => self.ready.push_back((seq, intent, None)),
        }
    }

    /// The intent for `object` finished: its next one (if any) becomes runnable.
    fn done(&mut self, object: &ObjectRef) {
        let next = self.waiting.get_mut(object).and_then(VecDeque::pop_front);
        match next {
            Some((seq, intent)) => {
                self.waiting_len -= 1;
                if self.waiting.get(object).is_some_and(VecDeque::is_empty) {
                    self.waiting.remove(object);
                }
                self.ready.push_back((seq, intent, Some(object.clone())));
            }
            None => {
                self.busy.remove(object);
            }
        }
    }

    fn len(&self) -> usize {
        self.ready.len() + self.waiting_len
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// Applies the intents of one connection. At most `capacity` intents are
/// held here beyond the channel (the hub's window bounds both).
pub(super) async fn intent_worker(
    applier: Applier,
    mut rx: mpsc::Receiver<(u64, SignedIntent)>,
    tx: mpsc::Sender<IntentAck>,
    metrics: Metrics,
    stop: CancellationToken,
    capacity: usize,
) {
    // Intents for one object apply in arrival order; different objects apply
    // concurrently, at most APPLY_CONCURRENCY at a time. An intent whose
    // object is busy waits in that object's queue and blocks no other object.
    let applier = Arc::new(applier);
    let mut running: tokio::task::JoinSet<IntentAck> = tokio::task::JoinSet::new();
    let mut ids: HashMap<tokio::task::Id, Option<ObjectRef>> = HashMap::new();
    let mut held = Held::default();
    let mut closed = false;
    let mut stopped = false;
    loop {
        while running.len() < APPLY_CONCURRENCY
            && let Some((seq, intent, object)) = held.ready.pop_front()
        {
            let applier = applier.clone();
            let handle = running.spawn(async move { applier.handle(seq, &intent).await });
            ids.insert(handle.id(), object);
        }
        if closed && held.is_empty() && running.is_empty() {
            return;
        }
        let room = held.len() + running.len() < capacity;
        tokio::select! {
            Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                let (id, ack) = match done {
                    Ok((id, ack)) => (id, Some(ack)),
                    // A panicked apply frees its object; the hub resends the intent later.
                    Err(e) => (e.id(), None),
                };
                if let Some(Some(o)) = ids.remove(&id) {
                    held.done(&o);
                }
                if let Some(ack) = ack
                    && tx.send(ack).await.is_err()
                {
                    return;
                }
            }
            // The connection ended: take no more intents, let running ones
            // finish; those held are resent by the hub.
            _ = stop.cancelled(), if !stopped => {
                stopped = true;
                closed = true;
                held.clear();
            }
            got = rx.recv(), if room && !closed => {
                match got {
                    Some((seq, intent)) => {
                        metrics.queue("intents", rx.len() + held.len());
                        let object = intent.peek_payload().ok().map(|p| p.object);
                        held.take(seq, intent, object);
                    }
                    None => closed = true,
                }
            }
        }
    }
}

/// The audit event for a rejected intent (protocol: every rejection is also a Warning event).
pub(super) fn rejection_event(ack: &IntentAck) -> Option<vworkspace_protocol::Event> {
    let vworkspace_protocol::IntentOutcome::Rejected { code, message } = &ack.outcome else {
        return None;
    };
    Some(vworkspace_protocol::Event {
        time: vworkspace_protocol::unix_now(),
        severity: "Warning".into(),
        reason: "IntentRejected".into(),
        message: format!("{code}: {message}"),
        object: ack.object.clone(),
        intent_id: (!ack.intent_id.is_empty()).then(|| ack.intent_id.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vworkspace_protocol::ObjectKind;

    fn intent(n: u8) -> SignedIntent {
        SignedIntent {
            kid: format!("k{n}"),
            payload: vec![n],
            signature: vec![],
        }
    }

    fn obj(name: &str) -> ObjectRef {
        ObjectRef::new(ObjectKind::ApplicationInstance, "ns", name)
    }

    #[test]
    fn a_busy_object_queues_its_intents_without_blocking_others() {
        let mut h = Held::default();
        h.take(1, intent(1), Some(obj("a")));
        h.take(2, intent(2), Some(obj("a")));
        h.take(3, intent(3), Some(obj("b")));
        h.take(4, intent(4), None);
        let order: Vec<u64> = h.ready.iter().map(|(s, _, _)| *s).collect();
        assert_eq!(
            order,
            vec![1, 3, 4],
            "b and the undecodable one pass a's second intent"
        );
        assert_eq!(h.len(), 4);
        h.ready.clear();
        h.done(&obj("a"));
        let order: Vec<u64> = h.ready.iter().map(|(s, _, _)| *s).collect();
        assert_eq!(order, vec![2], "a's second intent runs after its first");
        assert!(h.busy.contains(&obj("a")));
        h.ready.clear();
        h.done(&obj("a"));
        h.done(&obj("b"));
        assert!(h.busy.is_empty());
        assert!(h.waiting.is_empty());
        assert_eq!(h.len(), 0);
    }
}
