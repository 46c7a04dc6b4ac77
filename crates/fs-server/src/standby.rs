//! Passive redundancy, the standby's side (`fs-server --standby-of PRIMARY`), and the
//! primary's record in the state folder.
//!
//! A standby serves the same export with the same handle key (on one machine: the same
//! state folder). It follows the primary ([`crate::replica`]): every non-idempotent reply
//! lands in its duplicate request cache before the client sees it. It suspects the
//! primary when no beat comes for [`SUSPECT`] and a fresh FOLLOW is not answered either.
//! Then, before it serves anything, it fences the primary: `--fence CMD` must succeed;
//! without it, the primary process recorded in the state folder is killed with SIGKILL
//! (after checking that the pid is still an `fs-server`), which also finishes a primary
//! that was only frozen (SIGSTOP): a stopped process dies at once, with nothing of what
//! it had in flight reaching the export afterwards. A standby that cannot fence does not
//! serve, and says why once a second.
//!
//! Several standbys may follow one primary; exactly one takes over: the one that takes
//! the state folder's `takeover.lock` (an exclusive `flock`) fences, records itself as
//! the primary and serves; the others wait for the new record and follow the new
//! primary. Every primary holds `primary.lock` for as long as it runs, so a second
//! primary of the same export (state folder) is refused with one line.

use crate::server::Server;
use fs_proto::secure::{Key, Protection};
use fs_proto::{decode, encode_frame, frame_len, Addr, Call, Cred, Errno, Reply, Request, Response};
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// No beat for this long (the primary beats every 200 ms): the primary is suspected.
pub const SUSPECT: Duration = Duration::from_millis(1000);
/// A fence command that runs longer has failed.
const FENCE_TIMEOUT: Duration = Duration::from_secs(10);

const RECORD: &str = "primary";
const PRIMARY_LOCK: &str = "primary.lock";
const TAKEOVER_LOCK: &str = "takeover.lock";

/// The primary's record: who serves the export from this state folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub pid: i32,
    pub listen: String,
}

pub fn read_record(state: &Path) -> Option<Record> {
    let text = std::fs::read_to_string(state.join(RECORD)).ok()?;
    let mut l = text.lines();
    let pid = l.next()?.trim().parse().ok()?;
    let listen = l.next()?.trim().to_string();
    Some(Record { pid, listen })
}

fn flock(f: &File, wait: bool) -> io::Result<()> {
    let op = libc::LOCK_EX | if wait { 0 } else { libc::LOCK_NB };
    // SAFETY: flock(2) on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn lock_file(state: &Path, name: &str) -> io::Result<File> {
    std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(state.join(name))
}

/// Held by the primary for as long as it runs (dropping it lets the next one in).
pub struct PrimaryGuard(#[allow(dead_code)] File);

/// Becomes the primary of the export served from `state`: takes `primary.lock` (waiting
/// up to `wait`), then records this process and `listen`.
pub fn become_primary(state: &Path, listen: &str, wait: Duration) -> anyhow::Result<PrimaryGuard> {
    let f = lock_file(state, PRIMARY_LOCK)?;
    let deadline = Instant::now() + wait;
    loop {
        match flock(&f, false) {
            Ok(()) => break,
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {
                let who = read_record(state).map_or("another process".to_string(), |r| {
                    format!("fs-server pid {} (listening on {})", r.pid, r.listen)
                });
                anyhow::bail!(
                    "{who} already serves this export from {}: two primaries of one export (start a \
                     standby with --standby-of instead)",
                    state.display()
                );
            }
            Err(e) => return Err(e.into()),
        }
    }
    let tmp = state.join(format!("{RECORD}.{}", std::process::id()));
    std::fs::write(&tmp, format!("{}\n{listen}\n", std::process::id()))?;
    std::fs::rename(&tmp, state.join(RECORD))?;
    Ok(PrimaryGuard(f))
}

pub struct StandbyConfig {
    pub primary: Addr,
    pub state: PathBuf,
    /// `--fence CMD`: run with `sh -c`; must exit 0.
    pub fence: Option<String>,
    pub key: Option<Key>,
    /// Our own address (recorded when we take over).
    pub listen: String,
}

/// What ends following.
enum Lost {
    /// The primary refused us: another export or key. Nothing to take over.
    Refused(String),
    /// The connection ended or went silent; whether FOLLOW had been answered on it.
    Silent { followed: bool, why: String },
}

/// Follows the primary until it is lost and fenced; returns the guard of our primacy
/// (then serve). `ready` runs once, when the first FOLLOW is answered.
pub fn run(server: &Arc<Server>, mut cfg: StandbyConfig, mut ready: impl FnMut()) -> anyhow::Result<PrimaryGuard> {
    let mut ever = false;
    loop {
        let mut failures = 0;
        let mut last = String::new();
        // A moment for the primary to come back (a restart, a dropped standby): three
        // attempts about a third of the suspicion time apart.
        while failures < 3 {
            match follow(server, &cfg, &mut || {
                if !ever {
                    ever = true;
                    ready();
                }
            }) {
                Lost::Refused(why) => anyhow::bail!("{why}"),
                Lost::Silent { followed, why } => {
                    if !ever {
                        anyhow::bail!("cannot follow the primary at {}: {why}", cfg.primary);
                    }
                    if followed {
                        tracing::warn!("lost the primary at {} ({why}); checking it", cfg.primary);
                        failures = 0;
                    }
                    failures += 1;
                    last = why;
                    if failures < 3 {
                        std::thread::sleep(SUSPECT / 3);
                    }
                }
            }
        }
        tracing::warn!("the primary at {} is gone ({last}); taking over", cfg.primary);
        match take_over(server, &cfg)? {
            TakeOver::Mine(guard) => return Ok(guard),
            TakeOver::Follow(addr) => {
                tracing::warn!("another standby took over; following it at {addr}");
                cfg.primary = addr.parse()?;
            }
        }
    }
}

enum TakeOver {
    Mine(PrimaryGuard),
    Follow(String),
}

/// The primary answers a FOLLOW within [`SUSPECT`] (it came back, or was never gone).
fn primary_answers(server: &Server, cfg: &StandbyConfig) -> bool {
    let Ok(mut link) = connect(cfg) else { return false };
    if send(&mut *link.w, 1, Request::Follow { root: server.root().clone() }).is_err() {
        return false;
    }
    loop {
        match recv(&mut *link.r) {
            Ok(Reply { xid: 1, res: Ok(Response::Following { .. }) }) => return true,
            Ok(Reply { xid: 0, .. }) => continue,
            _ => return false,
        }
    }
}

fn take_over(server: &Server, cfg: &StandbyConfig) -> anyhow::Result<TakeOver> {
    // A live primary recorded at another address than the one we followed is a standby
    // that took over before we noticed: follow it, never fence it.
    let newer = |r: &Record| r.listen != cfg.primary.to_string() && alive_fs_server(r.pid);
    if let Some(r) = read_record(&cfg.state).filter(newer) {
        return Ok(TakeOver::Follow(r.listen));
    }
    let old = read_record(&cfg.state);
    let lock = lock_file(&cfg.state, TAKEOVER_LOCK)?;
    if flock(&lock, false).is_err() {
        // Another standby is taking over: wait for its record, then follow it.
        loop {
            if let Some(r) = read_record(&cfg.state) {
                if Some(&r) != old.as_ref() && alive_fs_server(r.pid) {
                    return Ok(TakeOver::Follow(r.listen));
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // We hold the takeover lock. Someone may have taken over just before us.
    if let Some(r) = read_record(&cfg.state) {
        if (Some(&r) != old.as_ref() || newer(&r)) && alive_fs_server(r.pid) && r.pid != std::process::id() as i32 {
            return Ok(TakeOver::Follow(r.listen));
        }
    }
    let mut said = Instant::now() - Duration::from_secs(2);
    loop {
        match fence(cfg, old.as_ref()) {
            Ok(how) => {
                tracing::warn!("fenced the primary ({how})");
                break;
            }
            Err(why) => {
                if said.elapsed() >= Duration::from_secs(1) {
                    // Once a second, as the reason may change.
                    eprintln!("fs-server: cannot fence the primary: {why}; not serving");
                    said = Instant::now();
                }
                // A primary that answers again is followed again.
                if primary_answers(server, cfg) {
                    tracing::warn!("the primary at {} answers again; following it", cfg.primary);
                    return Ok(TakeOver::Follow(cfg.primary.to_string()));
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    }
    // The fenced primary's lock goes with its process.
    let guard = become_primary(&cfg.state, &cfg.listen, Duration::from_secs(10))?;
    drop(lock);
    Ok(TakeOver::Mine(guard))
}

/// The pid runs an `fs-server` (not a zombie).
fn alive_fs_server(pid: i32) -> bool {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let named = exe.as_ref().and_then(|e| e.file_name()).is_some_and(|n| n.to_string_lossy().starts_with("fs-server"));
    named && !zombie(pid)
}

fn zombie(pid: i32) -> bool {
    // The state follows the command name in parentheses.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(true)
}

/// Makes sure the old primary can never write again.
fn fence(cfg: &StandbyConfig, old: Option<&Record>) -> Result<String, String> {
    if let Some(cmd) = &cfg.fence {
        return run_fence(cmd, old);
    }
    let Some(old) = old else {
        return Err(format!(
            "no primary recorded in {} (is it on another machine? give --fence CMD)",
            cfg.state.join(RECORD).display()
        ));
    };
    if old.pid == std::process::id() as i32 || !alive_fs_server(old.pid) {
        return Ok(format!("pid {} is gone", old.pid));
    }
    // SAFETY: kill(2); the pid was checked to be an fs-server just above.
    if unsafe { libc::kill(old.pid, libc::SIGKILL) } != 0 {
        return Err(format!("cannot kill pid {}: {}", old.pid, io::Error::last_os_error()));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive_fs_server(old.pid) {
        if Instant::now() > deadline {
            return Err(format!("pid {} did not die after SIGKILL", old.pid));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(format!("pid {} killed", old.pid))
}

fn run_fence(cmd: &str, old: Option<&Record>) -> Result<String, String> {
    let mut c = std::process::Command::new("sh");
    c.args(["-c", cmd]);
    if let Some(r) = old {
        c.env("FS_PRIMARY_PID", r.pid.to_string()).env("FS_PRIMARY_ADDR", &r.listen);
    }
    let mut child = c.spawn().map_err(|e| format!("cannot run the fence command: {e}"))?;
    let deadline = Instant::now() + FENCE_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return Ok(format!("`{cmd}` succeeded")),
            Ok(Some(st)) => return Err(format!("the fence command `{cmd}` failed ({st})")),
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("the fence command `{cmd}` did not finish in {FENCE_TIMEOUT:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("the fence command: {e}")),
        }
    }
}

/// A connection to the primary, plain or keyed.
struct Link {
    r: Box<dyn Read + Send>,
    w: Box<dyn Write + Send>,
}

fn connect(cfg: &StandbyConfig) -> io::Result<Link> {
    let (r, w): (Box<dyn Read + Send>, Box<dyn Write + Send>) = match &cfg.primary {
        Addr::Tcp { host, port } => {
            use std::net::ToSocketAddrs;
            let a = (host.as_str(), *port)
                .to_socket_addrs()?
                .next()
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))?;
            let s = std::net::TcpStream::connect_timeout(&a, SUSPECT)?;
            s.set_nodelay(true)?;
            // Silence for this long is a lost primary (the read timeout covers both halves).
            s.set_read_timeout(Some(SUSPECT))?;
            (Box::new(s.try_clone()?), Box::new(s))
        }
        Addr::Unix(p) => {
            let s = std::os::unix::net::UnixStream::connect(p)?;
            s.set_read_timeout(Some(SUSPECT))?;
            (Box::new(s.try_clone()?), Box::new(s))
        }
    };
    let Some(key) = &cfg.key else {
        return Ok(Link { r: Box::new(BufReader::new(r)), w });
    };
    struct Duplex<'a>(&'a mut (dyn Read + Send), &'a mut (dyn Write + Send));
    impl Read for Duplex<'_> {
        fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
            self.0.read(b)
        }
    }
    impl Write for Duplex<'_> {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.1.write(b)
        }
        fn flush(&mut self) -> io::Result<()> {
            self.1.flush()
        }
    }
    let (mut r, mut w) = (r, w);
    let session = fs_proto::secure::initiate(&mut Duplex(&mut *r, &mut *w), key, Protection::Encrypt)
        .map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e.to_string()))?;
    Ok(Link { r: Box::new(session.reader(BufReader::new(r))), w: Box::new(session.writer(w)) })
}

fn send(w: &mut dyn Write, xid: u64, req: Request) -> io::Result<()> {
    let call = Call { xid, client: 0, cred: Cred { uid: 0, gid: 0, groups: vec![] }, req };
    w.write_all(&encode_frame(&call).map_err(io::Error::other)?)
}

fn recv(r: &mut dyn Read) -> io::Result<Reply> {
    let mut h = [0u8; 4];
    r.read_exact(&mut h)?;
    let n = frame_len(h).map_err(io::Error::other)?;
    let mut buf = vec![0u8; n];
    r.read_exact(&mut buf)?;
    decode(&buf).map_err(io::Error::other)
}

/// One connection's worth of following.
fn follow(server: &Arc<Server>, cfg: &StandbyConfig, ready: &mut dyn FnMut()) -> Lost {
    let silent = |followed: bool, e: io::Error| Lost::Silent { followed, why: e.to_string() };
    let mut link = match connect(cfg) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Lost::Refused(e.to_string()),
        Err(e) => return silent(false, e),
    };
    if let Err(e) = send(&mut *link.w, 1, Request::Follow { root: server.root().clone() }) {
        return silent(false, e);
    }
    let mut followed = false;
    loop {
        let reply = match recv(&mut *link.r) {
            Ok(r) => r,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Lost::Silent { followed, why: format!("no beat for {SUSPECT:?}") }
            }
            Err(e) => return silent(followed, e),
        };
        match (reply.xid, reply.res) {
            (1, Ok(Response::Following { instance, notice_next, .. })) => {
                // Our sequencer continues the primary's (see `crate::replica`).
                server.notices.follow(instance, notice_next);
                followed = true;
                ready();
            }
            (1, Err(Errno::BADHANDLE)) => {
                return Lost::Refused(format!(
                    "the server at {} serves another export or has another handle key",
                    cfg.primary
                ))
            }
            (1, Err(Errno::AUTH)) => {
                return Lost::Refused(format!("the server at {} has a key: give --key FILE", cfg.primary))
            }
            (1, Err(e)) => return Lost::Refused(format!("the server at {} refused FOLLOW: {e}", cfg.primary)),
            (0, Ok(Response::Following { .. })) => {}
            (0, Ok(Response::Replica { seq, call, notice })) => {
                if let Some(c) = call {
                    match (decode::<Request>(&c.req), decode::<Reply>(&c.reply)) {
                        (Ok(req), Ok(reply)) => server.remember(c.client, c.xid, req, reply),
                        _ => tracing::error!(seq, "a malformed replica; skipped"),
                    }
                }
                if let Some(n) = notice {
                    server.notices.adopt(n);
                }
                if let Err(e) = send(&mut *link.w, 2, Request::FollowAck { seq }) {
                    return silent(followed, e);
                }
            }
            _ => {}
        }
    }
}
