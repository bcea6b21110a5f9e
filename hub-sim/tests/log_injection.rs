//! Strings an agent chooses (goodbye reasons, error messages, its version,
//! ack messages) cannot forge lines in hub-sim's log.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use vworkspace_protocol::{ErrorFrame, Frame, Goodbye, Hello, IntentOutcome};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const FORGED: &str = "\n2026-12-03T00:00:00.000000Z  INFO hub_sim: FORGED cluster revoked\r\x1b[2K";

#[tokio::test]
async fn newlines_from_the_agent_do_not_start_log_lines() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path()).await;
    let creds = enroll_cluster(&hub, "edge-1", "acme").await;
    hub.hub.apply(Some("edge-1"), &app("a", "team", 1)).unwrap();

    let mut agent = TestAgent::open(
        hub.tls_addr,
        &creds.ca_pem,
        Some((&creds.cert_pem, &creds.key_pem)),
    )
    .await
    .unwrap();
    agent
        .send(Frame::Hello(Hello {
            agent_version: format!("1.0{FORGED}"),
            capabilities: vec![],
            applied: vec![],
            max_in_flight: None,
            chunk: None,
            digest_buckets: false,
        }))
        .await;
    assert!(matches!(agent.recv().await.body, Frame::Welcome(_)));
    let (seq, _, p) = agent.recv_intent().await;
    agent
        .ack(
            seq,
            &p,
            IntentOutcome::Rejected {
                code: "invalid_spec".into(),
                message: format!("bad{FORGED}"),
            },
        )
        .await;
    agent
        .send(Frame::Error(ErrorFrame {
            code: format!("internal{FORGED}"),
            message: format!("oops{FORGED}"),
        }))
        .await;
    agent
        .send(Frame::Goodbye(Goodbye {
            reason: format!("leaving{FORGED}"),
            retry_after_secs: None,
        }))
        .await;
    let _ = agent.try_recv().await;
    eventually("the goodbye is logged", || async {
        String::from_utf8_lossy(&capture.0.lock().unwrap()).contains("agent said goodbye")
    })
    .await;
    let outcome = hub.hub.store().intents(Some("edge-1"), 10).unwrap()[0]
        .outcome_message
        .clone()
        .unwrap();
    hub.shutdown().await;

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("leaving\\n2026-12-03"),
        "the reason is logged, escaped"
    );
    assert!(
        logs.contains("oops\\n"),
        "the error message is logged, escaped"
    );
    for line in logs.lines() {
        assert!(
            !line.contains("FORGED") || !line.starts_with("2026-12-03T00:00:00"),
            "forged line: {line}"
        );
        assert!(
            !line.contains('\r') && !line.contains('\x1b'),
            "control character in: {line:?}"
        );
    }
    assert!(
        !outcome.contains('\n'),
        "stored ack message keeps no newline: {outcome:?}"
    );
    for row in hub_audit(dir.path()) {
        assert!(
            !row.detail.contains('\n'),
            "audit detail holds a raw newline: {row:?}"
        );
    }
}

/// The audit log as stored (the store is reopened after shutdown).
fn hub_audit(dir: &std::path::Path) -> Vec<hub_sim::store::AuditRow> {
    hub_sim::store::Store::open(dir)
        .unwrap()
        .audit_log(1000)
        .unwrap()
}
