//! A crowd of clusters enrolling at once from distinct addresses is paced by
//! the whole-hub limit: every one gets in, the accepted rate stays within the
//! budget, and the `Retry-After` values are spread so the refused come back
//! at the rate the hub accepts instead of all together.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpSocket;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use vworkspace_protocol::enrollment::EnrollRequest;

const CLUSTERS: usize = 60;
const BURST: u32 = 5;
const RATE: f64 = 10.0;

/// One enrollment request from `source`: status and `Retry-After` seconds.
async fn enroll_from(
    source: IpAddr,
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    body: &[u8],
) -> (u16, Option<u64>) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let stream = TlsConnector::from(tls)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("/v1/enroll")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::copy_from_slice(body)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(http::header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
    resp.into_body().collect().await.unwrap();
    (status, retry_after)
}

/// What one cluster saw: when it was accepted (since the start) and each
/// `Retry-After` it was told on the way.
struct Outcome {
    accepted_at: Duration,
    told: Vec<u64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_from_distinct_addresses_is_paced_and_all_get_in() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub_with(dir.path(), |c| {
        c.enroll_rate = hub_sim::ratelimit::RateLimits {
            per_peer: hub_sim::ratelimit::Budget {
                burst: 20,
                per_sec: 1.0,
            },
            global: hub_sim::ratelimit::Budget {
                burst: BURST,
                per_sec: RATE,
            },
        };
    })
    .await;
    let ca_pem = hub.hub.ca().cert_pem().to_owned();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let tls = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let bodies: Vec<Vec<u8>> = (0..CLUSTERS)
        .map(|i| {
            let token = hub
                .hub
                .create_token(&format!("crowd-{i}"), "acme", None)
                .unwrap()
                .token;
            serde_json::to_vec(&EnrollRequest {
                token,
                csr_pem: new_csr().0,
            })
            .unwrap()
        })
        .collect();

    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, body) in bodies.into_iter().enumerate() {
        let (addr, tls) = (hub.tls_addr, tls.clone());
        // Each cluster its own loopback address, so only the whole-hub
        // budget applies.
        let source = IpAddr::V4(Ipv4Addr::new(127, 3, 0, i as u8 + 1));
        tasks.spawn(async move {
            let mut told = Vec::new();
            loop {
                match enroll_from(source, addr, tls.clone(), &body).await {
                    (200, _) => {
                        return Outcome {
                            accepted_at: t0.elapsed(),
                            told,
                        };
                    }
                    (429, Some(secs)) => {
                        told.push(secs);
                        // Back exactly when told: the worst case, every
                        // cluster told the same second returns together.
                        tokio::time::sleep(Duration::from_secs(secs)).await;
                    }
                    other => panic!("cluster {i}: unexpected answer {other:?}"),
                }
            }
        });
    }
    let mut outcomes = Vec::new();
    let all = async {
        while let Some(o) = tasks.join_next().await {
            outcomes.push(o.unwrap());
        }
    };
    // (60 - 5) / 10 = 5.5 s of pacing; the deadline leaves room for a slow machine.
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("every cluster enrolls within the deadline");
    assert_eq!(outcomes.len(), CLUSTERS);

    // Within budget: by any time t, at most the burst plus the refill.
    let mut accepted: Vec<Duration> = outcomes.iter().map(|o| o.accepted_at).collect();
    accepted.sort();
    for (n, at) in accepted.iter().enumerate() {
        let budget = f64::from(BURST) + RATE * at.as_secs_f64() + 1.0;
        assert!(
            (n + 1) as f64 <= budget,
            "{} accepted by {at:?}, over the budget {budget:.1}",
            n + 1
        );
    }
    let last = accepted.last().unwrap().as_secs_f64();
    assert!(
        last >= (CLUSTERS as f64 - f64::from(BURST)) / RATE - 1.0,
        "all {CLUSTERS} accepted in {last:.2} s: faster than the budget allows"
    );

    // Spread: the refused were told different seconds, about one second per
    // `RATE` of them, and each got in on its first return.
    let told: Vec<u64> = outcomes.iter().flat_map(|o| o.told.clone()).collect();
    let distinct: std::collections::BTreeSet<u64> = told.iter().copied().collect();
    assert!(told.len() >= CLUSTERS - BURST as usize - 2, "{told:?}");
    assert!(
        distinct.len() >= 5,
        "Retry-After values not spread: {distinct:?}"
    );
    let most_told_same = distinct
        .iter()
        .map(|d| told.iter().filter(|t| *t == d).count())
        .max()
        .unwrap();
    assert!(
        most_told_same <= RATE as usize + 2,
        "{most_told_same} clusters told the same second: {told:?}"
    );
    let most_refusals = outcomes.iter().map(|o| o.told.len()).max().unwrap();
    assert!(
        most_refusals <= 1,
        "a cluster was refused {most_refusals} times"
    );
    println!(
        "{CLUSTERS} clusters, burst {BURST} + {RATE}/s: all enrolled in {last:.2} s; {} refusals, Retry-After {distinct:?}",
        told.len()
    );
    hub.shutdown().await;
}
