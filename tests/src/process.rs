//! Child processes that cannot outlive the test process.
//!
//! Three layers: `Drop` stops children normally; an `atexit` hook kills the
//! process groups still registered when libtest calls `exit` (statics such as the
//! shared control plane are never dropped); and `PR_SET_PDEATHSIG` makes the
//! kernel SIGKILL a child when the test process dies abruptly (panic=abort,
//! SIGKILL). PDEATHSIG fires when the *thread* that forked the child exits, so all
//! children are forked from one thread that lives as long as the process.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("vws-child-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
                // The sender lives in a static, so this loop only ends at exit.
            })
            .expect("spawning the child-spawner thread");
        Mutex::new(tx)
    })
}

/// Spawns `cmd` in its own process group, killed with the test process.
pub(crate) fn spawn(mut cmd: Command) -> io::Result<Child> {
    install_exit_hook();
    // SAFETY: getpid is async-signal-safe and has no preconditions.
    let parent = unsafe { libc::getpid() };
    cmd.process_group(0);
    // SAFETY: the closure only calls async-signal-safe functions (prctl, getppid, _exit).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    spawner()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, tx))
        .map_err(|_| io::Error::other("child-spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| io::Error::other("child-spawner thread dropped the request"))?
}

/// One registration: id, process groups to kill, directories to delete.
type ExitEntry = (u64, Vec<i32>, Vec<PathBuf>);

/// Process groups and directories to clean up at exit.
static AT_EXIT: Mutex<Vec<ExitEntry>> = Mutex::new(Vec::new());

/// Registers process groups and directories for the exit hook; returns an id for [`unregister`].
pub(crate) fn register(pgids: Vec<i32>, dirs: Vec<PathBuf>) -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    AT_EXIT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((id, pgids, dirs));
    id
}

pub(crate) fn unregister(id: u64) {
    AT_EXIT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|(i, _, _)| *i != id);
}

extern "C" fn kill_registered() {
    let Ok(mut entries) = AT_EXIT.try_lock() else {
        return; // never block inside exit
    };
    for (_, pgids, dirs) in entries.drain(..) {
        for pgid in pgids {
            // SAFETY: plain syscalls on our own children's groups.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
                libc::waitpid(pgid, std::ptr::null_mut(), 0);
            }
        }
        for dir in dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn install_exit_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: registering a plain extern "C" fn with no captured state.
        unsafe {
            libc::atexit(kill_registered);
        }
    });
}

/// SIGTERM to the child's group, wait up to `grace`, then SIGKILL; always reaps.
pub(crate) fn stop(child: &mut Child, grace: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let pgid = child.id() as i32;
    // SAFETY: signalling our own child's process group.
    unsafe {
        libc::killpg(pgid, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            // The leader is gone; make sure nothing else in its group lingers.
            // SAFETY: as above.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: as above.
    unsafe {
        libc::killpg(pgid, libc::SIGKILL);
    }
    let _ = child.wait();
}

/// Reads a Go-duration environment variable, falling back to `default`.
pub(crate) fn env_duration(var: &str, default: Duration) -> Duration {
    std::env::var(var)
        .ok()
        .and_then(|v| crate::duration::parse(&v).ok())
        .unwrap_or(default)
}

/// The last `lines` lines of a log file, for error messages.
pub(crate) fn tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawned_child_runs_in_own_group_and_is_stopped() {
        let mut cmd = Command::new("sleep");
        cmd.arg("600");
        let mut child = spawn(cmd).unwrap();
        // SAFETY: querying the group of our own child.
        let pgid = unsafe { libc::getpgid(child.id() as i32) };
        assert_eq!(pgid, child.id() as i32);
        stop(&mut child, Duration::from_secs(5));
        assert!(child.try_wait().unwrap().is_some());
    }
}
