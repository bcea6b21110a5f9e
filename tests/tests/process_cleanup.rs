//! kube-apiserver and etcd must not outlive the test process, however it ends,
//! and a missing toolchain must fail loudly with the fix.
//!
//! `main` re-runs this binary as a child in one mode per case (selected by
//! `VWS_CLEANUP_CHILD`); the child starts the shared control plane, reports its
//! process ids and temp dir, then exits, panics or aborts.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const MODE: &str = "VWS_CLEANUP_CHILD";
const REPORT: &str = "VWS_CLEANUP_REPORT";

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match std::env::var(MODE) {
        Ok(mode) => child(&mode),
        Err(_) => parent(),
    }
}

fn child(mode: &str) {
    let cp = vworkspace_e2e::shared();
    let pids: Vec<String> = cp.pids().iter().map(u32::to_string).collect();
    let report = format!("{}\n{}\n", pids.join(" "), cp.dir().display());
    std::fs::write(std::env::var(REPORT).expect("report path"), report).expect("write report");
    match mode {
        "exit" => std::process::exit(0),
        "panic" => panic!("test panicked on purpose"),
        "abort" => std::process::abort(),
        other => panic!("unknown mode {other}"),
    }
}

/// Dead, or a zombie waiting for its new parent to reap it.
fn is_dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

fn wait_until(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !done() {
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run_child(mode: &str, scratch: &Path) -> (Vec<u32>, PathBuf, std::process::Output) {
    let report = scratch.join(format!("{mode}.report"));
    let out = Command::new(std::env::current_exe().unwrap())
        .env(MODE, mode)
        .env(REPORT, &report)
        .output()
        .unwrap();
    let text = std::fs::read_to_string(&report).unwrap_or_else(|e| {
        panic!(
            "child ({mode}) wrote no report ({e}); stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let mut lines = text.lines();
    let pids = lines
        .next()
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    (pids, PathBuf::from(lines.next().unwrap()), out)
}

fn parent() {
    let scratch = tempfile::tempdir().unwrap();
    let mut passed = 0;
    for mode in ["exit", "panic", "abort"] {
        let (pids, dir, out) = run_child(mode, scratch.path());
        assert_eq!(pids.len(), 2, "apiserver and etcd pids: {pids:?}");
        match mode {
            "exit" => assert!(out.status.success(), "{:?}", out.status),
            _ => assert!(!out.status.success(), "{:?}", out.status),
        }
        // PDEATHSIG (abort) or the exit hook (exit, panic) kills both.
        wait_until(
            &format!("{mode}: pids {pids:?} are dead"),
            Duration::from_secs(30),
            || pids.iter().all(|p| is_dead(*p)),
        );
        if mode != "abort" {
            // The exit hook also removes the temp dir; after abort nothing can.
            assert!(!dir.exists(), "{mode}: {} left behind", dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&dir);
        }
        println!("test child_{mode}_kills_control_plane ... ok");
        passed += 1;
    }

    // No binaries and no Go: fail loudly, saying how to fix it.
    let empty_cache = scratch.path().join("empty-cache");
    std::fs::create_dir_all(&empty_cache).unwrap();
    for (case, envs) in [
        (
            "bad_kubebuilder_assets",
            vec![(
                "KUBEBUILDER_ASSETS",
                "/nonexistent/kubebuilder/bin".to_string(),
            )],
        ),
        (
            "no_go_no_cache",
            vec![
                ("GO", "/nonexistent/go".to_string()),
                ("XDG_CACHE_HOME", empty_cache.display().to_string()),
            ],
        ),
    ] {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.env(MODE, "exit")
            .env(REPORT, scratch.path().join("never-written"))
            .env_remove("KUBEBUILDER_ASSETS")
            .env_remove("TEST_ASSET_KUBE_APISERVER")
            .env_remove("TEST_ASSET_ETCD")
            .env_remove("TEST_ASSET_KUBECTL");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{case}: must fail");
        assert!(
            stderr.contains("KUBEBUILDER_ASSETS") && stderr.contains("install Go >= 1.26"),
            "{case}: message must say how to fix it:\n{stderr}"
        );
        println!("test {case}_fails_with_fix ... ok");
        passed += 1;
    }
    println!("\ntest result: ok. {passed} passed; 0 failed");
}
