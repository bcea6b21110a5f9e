//! The intent scheduler: intents from the hub are applied in arrival order
//! per object and concurrently across objects, and their acks go back to the
//! connection loop. Every rejection is also reported as a Warning event.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use vworkspace_protocol::{IntentAck, ObjectRef, SignedIntent};

use crate::hub::apply::Applier;
use crate::hub::metrics::Metrics;

/// Intents applied at once (for different objects).
const APPLY_CONCURRENCY: usize = 8;

pub(super) async fn intent_worker(
    applier: Applier,
    mut rx: mpsc::Receiver<(u64, SignedIntent)>,
    tx: mpsc::Sender<IntentAck>,
    metrics: Metrics,
    stop: CancellationToken,
) {
    // Intents for one object apply in arrival order; different objects apply
    // concurrently, at most APPLY_CONCURRENCY at a time. One intent waits in
    // `next` while its object is busy; the queue behind it stays bounded.
    let applier = Arc::new(applier);
    let mut running: tokio::task::JoinSet<(Option<ObjectRef>, IntentAck)> =
        tokio::task::JoinSet::new();
    let mut busy: HashSet<ObjectRef> = HashSet::new();
    let mut ids: HashMap<tokio::task::Id, Option<ObjectRef>> = HashMap::new();
    let mut next: Option<(u64, SignedIntent, Option<ObjectRef>)> = None;
    let mut closed = false;
    loop {
        if let Some((seq, intent, object)) = next.take() {
            let blocked = running.len() >= APPLY_CONCURRENCY
                || object.as_ref().is_some_and(|o| busy.contains(o));
            if blocked {
                next = Some((seq, intent, object));
            } else {
                if let Some(o) = &object {
                    busy.insert(o.clone());
                }
                let applier = applier.clone();
                let key = object.clone();
                let handle = running.spawn(async move {
                    let ack = applier.handle(seq, &intent).await;
                    (object, ack)
                });
                ids.insert(handle.id(), key);
            }
        }
        if closed && next.is_none() && running.is_empty() {
            return;
        }
        tokio::select! {
            Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                let (id, ack) = match done {
                    Ok((id, (_, ack))) => (id, Some(ack)),
                    // A panicked apply frees its object; the hub resends the intent later.
                    Err(e) => (e.id(), None),
                };
                if let Some(Some(o)) = ids.remove(&id) {
                    busy.remove(&o);
                }
                if let Some(ack) = ack
                    && tx.send(ack).await.is_err()
                {
                    return;
                }
            }
            // The connection ended: take no more intents, let running ones finish.
            _ = stop.cancelled(), if !closed => {
                closed = true;
                next = None;
            }
            got = rx.recv(), if next.is_none() && !closed => {
                match got {
                    Some((seq, intent)) => {
                        metrics.queue("intents", rx.len());
                        let object = intent.peek_payload().ok().map(|p| p.object);
                        next = Some((seq, intent, object));
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
