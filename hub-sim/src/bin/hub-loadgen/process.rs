//! The hub process and this one: open-file limit, RSS and CPU from `/proc`,
//! restarting the hub with its own command line.

use std::path::PathBuf;

use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub(crate) fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    lim.rlim_cur
}

/// (VmRSS KiB, utime + stime ticks) of a process.
pub(crate) fn sample(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((rss, ticks))
}

pub(crate) fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// The hub process, found by pid; restarted with the same command line,
/// environment and working directory (read from `/proc`).
pub(crate) struct HubProcess {
    pub(crate) pid: u32,
    pub(crate) argv: Vec<std::ffi::OsString>,
    pub(crate) env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    pub(crate) cwd: PathBuf,
    /// Set once this load generator started the hub itself.
    pub(crate) child: Option<tokio::process::Child>,
    pub(crate) log: PathBuf,
}

pub(crate) fn nul_separated(bytes: &[u8]) -> Vec<std::ffi::OsString> {
    use std::os::unix::ffi::OsStrExt;
    bytes
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| std::ffi::OsStr::from_bytes(s).to_owned())
        .collect()
}

impl HubProcess {
    pub(crate) fn find(pid: u32, log: PathBuf) -> anyhow::Result<Self> {
        let argv = nul_separated(&std::fs::read(format!("/proc/{pid}/cmdline"))?);
        let env = nul_separated(&std::fs::read(format!("/proc/{pid}/environ"))?)
            .into_iter()
            .filter_map(|kv| {
                let kv = kv.into_string().ok()?;
                let (k, v) = kv.split_once('=')?;
                Some((k.into(), v.into()))
            })
            .collect();
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"))?;
        if argv.is_empty() {
            bail!("no command line for hub pid {pid}");
        }
        Ok(Self {
            pid,
            argv,
            env,
            cwd,
            child: None,
            log,
        })
    }

    /// Whether the process is gone (or a zombie: its sockets are closed).
    pub(crate) fn exited(&self) -> bool {
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Err(_) => true,
            Ok(stat) => stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next())
                .is_none_or(|state| state == "Z" || state == "X"),
        }
    }

    /// Sends `signal` and waits (at most 60 s) until the process is gone.
    pub(crate) async fn stop(&mut self, signal: i32) -> anyhow::Result<()> {
        // SAFETY: kill has no memory preconditions.
        if unsafe { libc::kill(self.pid as i32, signal) } != 0 {
            bail!(
                "kill({}, {signal}): {}",
                self.pid,
                std::io::Error::last_os_error()
            );
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(child) = self.child.as_mut() {
                if child.try_wait()?.is_some() {
                    return Ok(());
                }
            } else if self.exited() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "hub pid {} still running 60 s after signal {signal}",
                    self.pid
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Starts the hub again (same arguments, environment, directory).
    pub(crate) fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = tokio::process::Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .env_clear()
            .envs(self.env.iter().cloned())
            .current_dir(&self.cwd)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("restarting the hub")?;
        self.pid = child.id().context("restarted hub has no pid")?;
        self.child = Some(child);
        Ok(())
    }
}
