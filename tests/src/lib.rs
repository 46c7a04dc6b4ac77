//! Test fixtures shared by the end-to-end tests and the benchmarks.
//!
//! # Layout
//! - [`ServerProc`]: an `fs-server` process on temporary folders, stopped on drop.
//! - [`rpc::Conn`]: a small blocking RPC client (pipelining by hand: `send`, `recv`).
//! - [`Watchdog`]: a hard time limit for a test.
//!
//! The binaries come from the same `target/` folder as the test executable; the README's
//! test command builds them first (`cargo build --workspace --bins`).

pub mod rpc;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Path of a workspace binary next to the running test executable.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe folder").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join(name);
    assert!(p.exists(), "{} is missing: run `cargo build --workspace --bins` first", p.display());
    p
}

/// A command whose process is killed when the thread that spawned it ends, so a test that
/// panics or is aborted by its watchdog never leaves a server behind.
pub fn command(bin: &Path) -> Command {
    let mut c = Command::new(bin);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        c.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    c
}

/// Waits for a child's first stdout line, up to `timeout`.
pub fn first_line(child: &mut Child, timeout: Duration) -> Option<String> {
    let out = child.stdout.take()?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    rx.recv_timeout(timeout).ok().filter(|l| !l.is_empty()).map(|l| l.trim_end().to_string())
}

/// An `fs-server` process. Dropping it kills the process.
pub struct ServerProc {
    child: Option<Child>,
    /// What clients connect to (the real port when started on port 0).
    pub addr: String,
    pub export: PathBuf,
    pub state: PathBuf,
}

impl ServerProc {
    /// Starts a server on `listen` (e.g. "127.0.0.1:0" or a socket path) and waits for its
    /// `listening on ADDR` line.
    pub fn start(export: &Path, state: &Path, listen: &str, extra: &[&str]) -> ServerProc {
        let mut child = command(&bin_path("fs-server"))
            .arg("--export")
            .arg(export)
            .arg("--state-dir")
            .arg(state)
            .args(["--listen", listen])
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn fs-server");
        let line = first_line(&mut child, Duration::from_secs(20));
        let addr = match line.as_deref().and_then(|l| l.strip_prefix("listening on ")) {
            Some(a) => a.to_string(),
            None => {
                let _ = child.kill();
                panic!("fs-server did not start: first line {line:?}");
            }
        };
        ServerProc { child: Some(child), addr, export: export.into(), state: state.into() }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait: a clean shutdown.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        c.wait().expect("wait")
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs the command and returns (exit status, stdout, stderr) with a time limit.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> (ExitStatus, String, String) {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let out = child.wait_with_output().expect("output");
            return (status, String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into());
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A hard time limit: aborts the whole test process if not dropped in time (children die
/// with it, see [`command`]). Tests that mount must also unmount in their guards' drops,
/// which run on panic; the watchdog is the last resort for a hang.
pub struct Watchdog(Option<mpsc::Sender<()>>);

impl Watchdog {
    pub fn new(limit: Duration) -> Watchdog {
        let (tx, rx) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                eprintln!("watchdog: test exceeded {limit:?}; aborting");
                std::process::abort();
            }
        });
        Watchdog(Some(tx))
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}
