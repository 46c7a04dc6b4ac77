//! Test fixtures shared by the end-to-end tests and the benchmarks.
//!
//! # Layout
//! - [`ServerProc`]: an `fs-server` process on temporary folders, stopped on drop.
//! - [`rpc::Conn`]: a small blocking RPC client (pipelining by hand: `send`, `recv`).
//! - [`ClusterProc`]: a `cluster` process (broker, worker, spool), killed on drop.
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
        ServerProc::start_with(export, state, listen, extra, Stdio::inherit())
    }

    /// As [`ServerProc::start`], with the server's log (stderr) written to `log`.
    pub fn start_logged(export: &Path, state: &Path, listen: &str, extra: &[&str], log: &Path) -> ServerProc {
        let f = std::fs::File::create(log).expect("server log");
        ServerProc::start_with(export, state, listen, extra, Stdio::from(f))
    }

    /// A standby of `primary` (`--standby-of`), serving on `listen` once it takes over;
    /// waits for its `standby of` line. Its log goes to `log`.
    pub fn start_standby(
        export: &Path,
        state: &Path,
        listen: &str,
        primary: &str,
        extra: &[&str],
        log: &Path,
    ) -> ServerProc {
        let mut args = vec!["--standby-of", primary];
        args.extend_from_slice(extra);
        let f = std::fs::File::create(log).expect("standby log");
        ServerProc::start_expecting(export, state, listen, &args, Stdio::from(f), "standby of ")
    }

    /// The server's process id.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Whether the process has ended, and how (reaps it).
    pub fn ended(&mut self) -> Option<ExitStatus> {
        let st = self.child.as_mut()?.try_wait().ok()??;
        let mut c = self.child.take().expect("child");
        SERVERS.lock().unwrap().retain(|&p| p != c.id());
        // Already reaped by try_wait; this returns the same status at once.
        let _ = c.wait();
        Some(st)
    }

    fn start_with(export: &Path, state: &Path, listen: &str, extra: &[&str], stderr: Stdio) -> ServerProc {
        ServerProc::start_expecting(export, state, listen, extra, stderr, "listening on ")
    }

    fn start_expecting(
        export: &Path,
        state: &Path,
        listen: &str,
        extra: &[&str],
        stderr: Stdio,
        ready: &str,
    ) -> ServerProc {
        let mut child = command(&bin_path("fs-server"))
            .arg("--export")
            .arg(export)
            .arg("--state-dir")
            .arg(state)
            .args(["--listen", listen])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn fs-server");
        let line = first_line(&mut child, Duration::from_secs(20));
        let addr = match line.as_deref().and_then(|l| l.strip_prefix(ready)) {
            Some(a) if ready == "listening on " => a.to_string(),
            Some(_) => listen.to_string(),
            None => {
                let _ = child.kill();
                panic!("fs-server did not start: first line {line:?}");
            }
        };
        SERVERS.lock().unwrap().push(child.id());
        ServerProc { child: Some(child), addr, export: export.into(), state: state.into() }
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            SERVERS.lock().unwrap().retain(|&p| p != c.id());
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait: a clean shutdown.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        SERVERS.lock().unwrap().retain(|&p| p != c.id());
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

/// A `cluster` process (broker, worker, spool...). Dropping it kills the process.
pub struct ClusterProc {
    child: Option<Child>,
    /// The process's first line (its readiness line).
    pub ready: String,
    /// What it printed after that, line by line, as it goes.
    lines: Option<mpsc::Receiver<String>>,
}

impl ClusterProc {
    /// Starts `cluster ARGS` and waits for its first line to start with `ready_prefix`.
    pub fn start(args: &[&str], ready_prefix: &str) -> ClusterProc {
        ClusterProc::start_with(args, ready_prefix, Stdio::inherit())
    }

    /// As [`ClusterProc::start`], with the process's log (stderr) written to `log`.
    pub fn start_logged(args: &[&str], ready_prefix: &str, log: &Path) -> ClusterProc {
        ClusterProc::start_with(args, ready_prefix, Stdio::from(std::fs::File::create(log).expect("log file")))
    }

    fn start_with(args: &[&str], ready_prefix: &str, stderr: Stdio) -> ClusterProc {
        let mut child = command(&bin_path("cluster"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn cluster");
        let out = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let first = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
        let mut p = ClusterProc { child: Some(child), ready: first.clone(), lines: Some(rx) };
        if !first.starts_with(ready_prefix) {
            p.kill();
            panic!("cluster {args:?} did not start: first line {first:?}");
        }
        p
    }

    /// The next line it prints, waiting up to `timeout`.
    pub fn next_line(&self, timeout: Duration) -> Option<String> {
        self.lines.as_ref()?.recv_timeout(timeout).ok()
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

    /// SIGTERM and wait up to 10 s; returns whether it exited by itself.
    pub fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else { return false };
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }
}

impl Drop for ClusterProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A process that keeps one CPU busy (`taskset -c CPU`, a shell loop); killed on drop.
pub struct Busy(Child);

impl Busy {
    pub fn on_cpu(cpu: usize) -> Busy {
        let c = command(Path::new("taskset"))
            .args(["-c", &cpu.to_string(), "sh", "-c", "while :; do :; done"])
            .spawn()
            .expect("spawn taskset (util-linux)");
        Busy(c)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Pins every thread of process `pid` to `cpu` (`taskset -a -p -c`).
pub fn pin(pid: i32, cpu: usize) {
    let out = command(Path::new("taskset"))
        .args(["-a", "-p", "-c", &cpu.to_string(), &pid.to_string()])
        .output()
        .expect("taskset");
    assert!(out.status.success(), "taskset: {}", String::from_utf8_lossy(&out.stderr));
}

/// A broker and workers on an ipc:// address in a temporary folder.
pub struct Pipeline {
    // Field order is drop order: workers before the broker, the folder last.
    pub workers: Vec<ClusterProc>,
    pub broker: ClusterProc,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Pipeline {
    pub fn new(workers: usize, broker_args: &[&str], worker_args: &[&str]) -> Pipeline {
        let dir = tempfile::tempdir().unwrap();
        let addr = dir.path().join("broker").display().to_string();
        let mut args = vec!["broker", "--listen", &addr];
        args.extend_from_slice(broker_args);
        let broker = ClusterProc::start(&args, "broker listening on");
        let workers = (0..workers).map(|_| Self::worker(&addr, worker_args)).collect();
        Pipeline { workers, broker, addr, _dir: dir }
    }

    pub fn worker(addr: &str, extra: &[&str]) -> ClusterProc {
        let mut args = vec!["worker", "--broker", addr];
        args.extend_from_slice(extra);
        ClusterProc::start(&args, "worker ")
    }
}

/// What was published for one job.
#[derive(Default)]
pub struct Collected {
    /// Sorted.
    pub primes: Vec<i64>,
    pub done_numbers: u64,
    pub done_messages: u64,
    pub workers: std::collections::HashSet<u64>,
    /// Batches reported done, per worker.
    pub batches: std::collections::HashMap<u64, u64>,
    /// From the first submission until every number was reported done (the one-time
    /// subscription handshake before it is not counted).
    pub elapsed: Duration,
}

/// Submits `values` to the broker at `addr` in batches as one job, and collects what is
/// published for it until every number is reported done, then `linger` more (to catch
/// duplicates). `progress` sees the count of numbers done so far.
pub fn run_job(addr: &str, values: &[i64], batch: usize, linger: Duration, mut progress: impl FnMut(u64)) -> Collected {
    use cluster::wire::{job_prefix, tag, Msg};
    let ctx = zmq::Context::new();
    let addr = cluster::endpoint::BrokerAddr::parse(addr).expect("broker address");
    let job = cluster::util::random_u64();
    let prefixes = [job_prefix(tag::PRIMES, job), job_prefix(tag::DONE, job), job_prefix(tag::HELLO, job)];
    let refs: Vec<&[u8]> = prefixes.iter().map(|p| &p[..]).collect();
    let sub = cluster::sink::subscribe(&ctx, &addr, &refs).expect("subscribe");
    let mut src = cluster::source::Source::connect(&ctx, &addr).expect("source");
    src.wait_subscribed(&sub, job).expect("subscription in place");
    let mut c = Collected::default();
    let mut absorb = |c: &mut Collected, body: &[u8]| match Msg::decode(body).expect("well-formed publication") {
        Msg::Primes { primes, .. } => c.primes.extend(primes.iter()),
        Msg::Done { count, worker, .. } => {
            c.done_numbers += count as u64;
            c.done_messages += 1;
            c.workers.insert(worker);
            *c.batches.entry(worker).or_default() += 1;
            progress(c.done_numbers);
        }
        _ => {}
    };
    let started = std::time::Instant::now();
    for (i, chunk) in values.chunks(batch).enumerate() {
        src.submit(job, i as u32, chunk).expect("submit");
        while let Ok(b) = sub.recv_bytes(zmq::DONTWAIT) {
            absorb(&mut c, &b);
        }
    }
    let mut until: Option<std::time::Instant> = None;
    while until.is_none_or(|t| std::time::Instant::now() < t) {
        if sub.poll(zmq::POLLIN, 50).expect("poll") > 0 {
            absorb(&mut c, &sub.recv_bytes(0).expect("recv"));
        }
        if c.done_numbers >= values.len() as u64 && until.is_none() {
            c.elapsed = started.elapsed();
            until = Some(std::time::Instant::now() + linger);
        }
    }
    c.primes.sort_unstable();
    c
}

/// fs-server processes of this test process, for the watchdog: the server changes its
/// file-system uid per request, which clears the parent-death signal (prctl(2)), so an
/// aborted test would otherwise leave it running.
static SERVERS: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// Mount points of this test process, for the watchdog's last-resort cleanup.
static MOUNTED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// An `fs-client` mount process. Dropping it unmounts (`fs-client unmount`, then a lazy
/// `umount2` as the last resort) and reaps the process, on every path, panics included.
pub struct MountProc {
    child: Option<Child>,
    pub mountpoint: PathBuf,
}

impl MountProc {
    /// Mounts `addr` at `mountpoint` with `-o opts` and waits for the `mounted` line.
    pub fn start(addr: &str, mountpoint: &Path, opts: &str) -> MountProc {
        let mut child = command(&bin_path("fs-client"))
            .args(["mount", addr])
            .arg(mountpoint)
            .args(["-o", opts])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn fs-client");
        let line = first_line(&mut child, Duration::from_secs(20));
        let mp = MountProc { child: Some(child), mountpoint: mountpoint.to_path_buf() };
        MOUNTED.lock().unwrap().push(mp.mountpoint.clone());
        match line {
            Some(l) if l.starts_with("mounted ") => mp,
            other => panic!("fs-client did not mount: first line {other:?}"),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mountpoint.join(rel)
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// Unmounts and waits for the process to end; returns its exit status.
    pub fn unmount(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        MOUNTED.lock().unwrap().retain(|m| m != &self.mountpoint);
        let ok = Command::new(bin_path("fs-client"))
            .arg("unmount")
            .arg(&self.mountpoint)
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            lazy_unmount(&self.mountpoint);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                return Some(s);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for MountProc {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// For mounts made by a child process (such as `cluster up`): detaches the mount on drop
/// if it is still there, and lets the watchdog do the same before aborting.
pub struct MountGuard(PathBuf);

impl MountGuard {
    pub fn new(p: &Path) -> MountGuard {
        MOUNTED.lock().unwrap().push(p.to_path_buf());
        MountGuard(p.to_path_buf())
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        MOUNTED.lock().unwrap().retain(|m| m != &self.0);
        if is_mounted(&self.0) {
            lazy_unmount(&self.0);
        }
    }
}

/// Whether `p` is a mount point now (from /proc/self/mountinfo).
pub fn is_mounted(p: &Path) -> bool {
    let want = p.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|s| s.lines().any(|l| l.split(' ').nth(4) == Some(want.as_str())))
        .unwrap_or(false)
}

/// `umount2(MNT_DETACH)`: never blocks, even on a dead FUSE daemon.
pub fn lazy_unmount(p: &Path) {
    if let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) {
        // SAFETY: c is NUL-terminated.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// How the server treats a client's root: the default, root squash (root becomes
/// `nobody`), or `--no-root-squash`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Squash {
    /// The server's default, as users get it.
    Root,
    None,
}

/// A server and a mount of it on fresh temporary folders.
pub struct Rig {
    // Field order is drop order: the mount goes before the server and the folders.
    pub mount: MountProc,
    pub server: ServerProc,
    pub dirs: tempfile::TempDir,
    squash: Squash,
    /// More server arguments (kept for restarts).
    server_extra: Vec<String>,
}

/// The ordinary user the root-squash runs act as, and the folder of the export it owns.
pub const USER: u32 = 1000;
pub const USER_DIR: &str = "user";

impl Rig {
    /// A rig whose server does not squash root: the test acts as root.
    pub fn new(opts: &str) -> Rig {
        Rig::with(opts, Squash::None)
    }

    /// With [`Squash::Root`], the export also holds [`USER_DIR`], owned by [`USER`] with
    /// mode 0755, for tests that act as that user.
    pub fn with(opts: &str, squash: Squash) -> Rig {
        Rig::with_server(opts, squash, &[])
    }

    /// With more server arguments (`extra`).
    pub fn with_server(opts: &str, squash: Squash, extra: &[&str]) -> Rig {
        let dirs = tempfile::tempdir().expect("tempdir");
        for d in ["export", "state", "mnt"] {
            std::fs::create_dir(dirs.path().join(d)).unwrap();
        }
        // The temporary folder is 0700; ordinary users must reach the mount in it.
        std::fs::set_permissions(dirs.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let export = dirs.path().join("export");
        if squash == Squash::Root {
            let user = export.join(USER_DIR);
            std::fs::create_dir(&user).unwrap();
            std::os::unix::fs::chown(&user, Some(USER), Some(USER)).unwrap();
        }
        let server_extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let args = Rig::server_args(squash, &server_extra);
        let server = ServerProc::start(&export, &dirs.path().join("state"), "127.0.0.1:0", &args);
        let mount = MountProc::start(&server.addr, &dirs.path().join("mnt"), opts);
        Rig { mount, server, dirs, squash, server_extra }
    }

    fn server_args(squash: Squash, extra: &[String]) -> Vec<&str> {
        let mut args: Vec<&str> = extra.iter().map(|s| s.as_str()).collect();
        if squash == Squash::None {
            args.push("--no-root-squash");
        }
        args
    }

    /// Kills the server and starts it again on the same address with other extra
    /// arguments.
    pub fn restart_server_with(&mut self, extra: &[&str]) {
        self.server.kill();
        self.server_extra = extra.iter().map(|s| s.to_string()).collect();
        self.start_server_again();
    }

    pub fn export(&self, rel: &str) -> PathBuf {
        self.dirs.path().join("export").join(rel)
    }

    pub fn mnt(&self, rel: &str) -> PathBuf {
        self.mount.path(rel)
    }

    /// Starts the server again after [`ServerProc::kill`], on the same address.
    pub fn start_server_again(&mut self) {
        let addr = self.server.addr.clone();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        // The port may linger for a moment after the old process died.
        loop {
            let try_start = std::panic::catch_unwind(|| {
                ServerProc::start(
                    &self.dirs.path().join("export"),
                    &self.dirs.path().join("state"),
                    &addr,
                    &Rig::server_args(self.squash, &self.server_extra),
                )
            });
            match try_start {
                Ok(s) => {
                    self.server = s;
                    return;
                }
                Err(_) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
                Err(e) => std::panic::resume_unwind(e),
            }
        }
    }

    /// A second mount of the same export.
    pub fn second_mount(&self, name: &str, opts: &str) -> MountProc {
        let mp = self.dirs.path().join(name);
        std::fs::create_dir_all(&mp).unwrap();
        MountProc::start(&self.server.addr, &mp, opts)
    }
}

/// What `fs-client status` prints for the mount at `mountpoint` (read the same way: the
/// mount's root answers the extended attribute `user.fs-client.status` itself).
pub fn mount_status(mountpoint: &Path) -> String {
    let c = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes()).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: the names are NUL-terminated; buf is writable for its length.
    let n =
        unsafe { libc::getxattr(c.as_ptr(), c"user.fs-client.status".as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(n >= 0, "status of {}: {}", mountpoint.display(), std::io::Error::last_os_error());
    buf.truncate(n as usize);
    String::from_utf8(buf).unwrap()
}

/// A description of a tree for comparing two trees: per path (sorted), the type, the
/// permission bits, owner, size, link target or BLAKE3 of the content, and extended
/// attributes. Times are left out (two runs of the same commands differ in them).
pub fn manifest(root: &Path) -> Vec<String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for p in entries {
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let ft = m.file_type();
            let what = if ft.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if ft.is_symlink() {
                format!("link -> {}", std::fs::read_link(&p).unwrap().display())
            } else if ft.is_fifo() {
                "fifo".to_string()
            } else if ft.is_file() {
                format!("file {} {}", m.len(), blake3::hash(&std::fs::read(&p).unwrap()).to_hex())
            } else {
                "other".to_string()
            };
            let xattrs = if ft.is_symlink() { String::new() } else { list_xattrs(&p) };
            let nlink = if ft.is_dir() { 0 } else { m.nlink() };
            out.push(format!(
                "{rel}: {what} mode={:o} uid={} gid={} nlink={nlink} {xattrs}",
                m.mode() & 0o7777,
                m.uid(),
                m.gid()
            ));
        }
    }
    out.sort();
    out
}

fn list_xattrs(p: &Path) -> String {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: buf has buf.len() bytes; c is NUL-terminated.
    let n = unsafe { libc::listxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return String::new();
    }
    let mut names: Vec<_> = buf[..n as usize]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    names.sort();
    names.join(",")
}

/// Runs a shell script in `dir`, panicking with its output if it fails.
pub fn sh(dir: &Path, script: &str) -> String {
    let (status, out, err) = run_with_timeout(
        Command::new("bash").arg("-c").arg(format!("set -euo pipefail\n{script}")).current_dir(dir),
        Duration::from_secs(300),
    );
    assert!(status.success(), "script failed in {}:\n{script}\nstdout:\n{out}\nstderr:\n{err}", dir.display());
    out
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
                eprintln!("watchdog: test exceeded {limit:?}; unmounting and aborting");
                // Abort skips destructors: detach every mount this process made first,
                // so no stale mount is left to block whoever touches it.
                for m in MOUNTED.lock().map(|m| m.clone()).unwrap_or_default() {
                    lazy_unmount(&m);
                }
                for pid in SERVERS.lock().map(|s| s.clone()).unwrap_or_default() {
                    // SAFETY: plain kill(2) of a child we started.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                }
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

/// Runs `script` with bash in `dir` as `uid`:`gid` with exactly the supplementary
/// `groups` (through `setpriv`, as an ordinary user would run it; the folder is entered
/// before the identity changes).
pub fn as_user(uid: u32, gid: u32, groups: &[u32], dir: &Path, script: &str) -> std::process::Output {
    let groups_arg = if groups.is_empty() {
        "--clear-groups".to_string()
    } else {
        format!("--groups={}", groups.iter().map(u32::to_string).collect::<Vec<_>>().join(","))
    };
    let mut cmd = Command::new("setpriv");
    cmd.args([format!("--reuid={uid}"), format!("--regid={gid}"), groups_arg])
        .args(["bash", "-c", script])
        .current_dir(dir);
    let (status, stdout, stderr) = run_with_timeout(&mut cmd, Duration::from_secs(300));
    std::process::Output { status, stdout: stdout.into_bytes(), stderr: stderr.into_bytes() }
}

/// Like [`sh`], as [`USER`] (uid and gid 1000, no supplementary groups).
pub fn sh_as_user(dir: &Path, script: &str) -> String {
    let out = as_user(USER, USER, &[], dir, &format!("set -euo pipefail\n{script}"));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "script failed as uid {USER} in {}:\n{script}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        dir.display()
    );
    stdout.into_owned()
}

/// Waits until `cond` holds, polling, and panics naming `what` after `limit`.
pub fn wait_until(limit: Duration, what: &str, cond: impl FnMut() -> bool) {
    assert!(within(limit, cond), "not within {limit:?}: {what}");
}

/// Whether `cond` becomes true within `limit` (checked every 10 ms).
pub fn within(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while !cond() {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Waits for `child` to exit, up to `limit`; its status.
pub fn wait_exit(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let mut status = None;
    wait_until(limit, what, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    status.expect("exited")
}

/// A `delay-proxy` process in front of a server, killed on drop. With `trace`, every
/// call and reply that leaves it is reported by [`DelayProxy::next_line`], stamped with
/// when this process read it.
pub struct DelayProxy {
    child: Child,
    pub addr: String,
    lines: mpsc::Receiver<(std::time::Instant, String)>,
}

impl DelayProxy {
    pub fn start(to: &str, delay_ms: u32, trace: bool) -> DelayProxy {
        let mut cmd = command(&bin_path("delay-proxy"));
        cmd.args(["--listen", "127.0.0.1:0", "--to", to, "--delay-ms", &delay_ms.to_string()]);
        if trace {
            cmd.arg("--trace");
        }
        let mut child = cmd.stdout(Stdio::piped()).spawn().expect("spawn delay-proxy");
        let out = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send((std::time::Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        let addr = match lines.recv_timeout(Duration::from_secs(10)) {
            Ok((_, l)) if l.starts_with("listening on ") => l["listening on ".len()..].to_string(),
            other => panic!("delay-proxy did not start: {other:?}"),
        };
        DelayProxy { child, addr, lines }
    }

    /// The next traced line, waiting up to `timeout`.
    pub fn next_line(&self, timeout: Duration) -> Option<(std::time::Instant, String)> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// Waits for a traced line that `pred` accepts (earlier ones are dropped); panics
    /// naming `what` after `limit`.
    pub fn wait_for(&self, limit: Duration, what: &str, pred: impl Fn(&str) -> bool) -> std::time::Instant {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.next_line(left) {
                Some((at, l)) if pred(&l) => return at,
                Some(_) => {}
                None => panic!("delay-proxy: no {what} within {limit:?}"),
            }
        }
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes this thread's file system accesses those of `uid`:`gid` (setfsuid(2) and
/// setfsgid(2) are per thread) until dropped: for reading a mount as a user would, from
/// within the test.
pub struct FsIdentity {
    uid: u32,
    gid: u32,
}

impl FsIdentity {
    pub fn assume(uid: u32, gid: u32) -> FsIdentity {
        // SAFETY: plain system calls; they return the previous ids.
        let (old_gid, old_uid) = unsafe { (libc::setfsgid(gid), libc::setfsuid(uid)) };
        FsIdentity { uid: old_uid as u32, gid: old_gid as u32 }
    }
}

impl Drop for FsIdentity {
    fn drop(&mut self) {
        // SAFETY: as above; back to the ids we had.
        unsafe {
            libc::setfsuid(self.uid);
            libc::setfsgid(self.gid);
        }
    }
}

/// Change-notice latency: `n` times, writes `writer` (through one mount) with a new size
/// and closes it, then polls `stat` of `reader` (the same file through another mount)
/// until the new size shows. Returns the times from the close to the size seen, sorted.
pub fn notice_latency(writer: &Path, reader: &Path, n: usize) -> Vec<Duration> {
    let mut lat = Vec::with_capacity(n);
    for i in 1..=n {
        std::fs::write(writer, vec![b'x'; i]).unwrap();
        let t = std::time::Instant::now();
        let deadline = t + Duration::from_secs(10);
        while std::fs::metadata(reader).map(|m| m.len()).ok() != Some(i as u64) {
            assert!(std::time::Instant::now() < deadline, "size {i} not seen in 10 s");
            std::hint::spin_loop();
        }
        lat.push(t.elapsed());
    }
    lat.sort_unstable();
    lat
}

/// `GET path` from a `--metrics` address: the whole HTTP answer.
pub fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).unwrap();
    s
}

/// The value of the first sample whose line starts with `key` in a Prometheus text
/// exposition (-1 when there is none).
pub fn metric(text: &str, key: &str) -> f64 {
    text.lines().find(|l| l.starts_with(key)).and_then(|l| l.rsplit(' ').next()).map_or(-1.0, |v| v.parse().unwrap())
}

/// A TCP port on 127.0.0.1 with the `n - 1` after it free right now too.
pub fn free_ports(n: u16) -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if p < 65000 && (1..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok()) {
            return p;
        }
    }
}

/// A TCP port on 127.0.0.1 free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
