//! Mounting and unmounting: checks with one-line reasons, the FUSE session, signals.

use crate::client::Client;
use crate::fuse::Fs;
use crate::options::MountOptions;
use crate::rpc::{Rpc, RpcConfig};
use anyhow::{anyhow, bail, Context};
use fs_proto::Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Whether `path` is currently a mount point (any file system), from mountinfo.
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    let want = path.to_string_lossy();
    // Field 5 is the mount point, with spaces and the like octal-escaped.
    info.lines().filter_map(|l| l.split(' ').nth(4)).any(|mp| unescape(mp) == want)
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push(u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 4]).unwrap(), 8).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn check_mountpoint(mp: &Path) -> anyhow::Result<PathBuf> {
    let meta = std::fs::metadata(mp).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow!("mount point {} does not exist", mp.display()),
        _ => anyhow!("mount point {}: {e}", mp.display()),
    })?;
    if !meta.is_dir() {
        bail!("mount point {} is not a directory", mp.display());
    }
    let canon = std::fs::canonicalize(mp).with_context(|| format!("mount point {}", mp.display()))?;
    if is_mount_point(&canon) {
        bail!("mount point {} is in use (something is already mounted there)", canon.display());
    }
    Ok(canon)
}

fn random_u64() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).is_ok() {
        return u64::from_le_bytes(b);
    }
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    t.as_nanos() as u64 ^ (u64::from(std::process::id()) << 32)
}

/// Set in the child of `mount.fuse.fs` (see `helper`): once mounted, its output goes
/// nowhere.
static DAEMON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn set_daemon() {
    DAEMON.store(true, std::sync::atomic::Ordering::Relaxed);
}

fn detach_output() {
    // SAFETY: plain descriptor calls; stdout and stderr become /dev/null.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 1);
            libc::dup2(null, 2);
            libc::close(null);
        }
    }
}

/// How this mount is taken down on a signal.
enum Unmount {
    /// We mounted: a lazy umount2 of the mount point.
    Ours(PathBuf),
    Fuser(fuser::SessionUnmounter),
}

impl Unmount {
    fn unmount(&mut self) {
        match self {
            Unmount::Ours(p) => {
                let _ = unmount(p, true);
            }
            Unmount::Fuser(u) => {
                let _ = u.unmount();
            }
        }
    }
}

/// Opens /dev/fuse and mounts it at `mp` with the type `fuse.fs` and `source` as the
/// source (what libfuse does for a subtype); the descriptor is the session's.
fn mount_fuse_fs(mp: &Path, source: &str, read_only: bool, allow_other: bool) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, OwnedFd};
    let dev = std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse")?;
    let fd: OwnedFd = dev.into();
    // SAFETY: getuid/getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut data = format!("fd={},rootmode=40000,user_id={uid},group_id={gid},default_permissions", fd.as_raw_fd());
    if allow_other {
        data += ",allow_other";
    }
    let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
    if read_only {
        flags |= libc::MS_RDONLY;
    }
    let cstr = |s: &[u8]| std::ffi::CString::new(s).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL));
    let (src, target, fstype, data) =
        (cstr(source.as_bytes())?, cstr(mp.as_os_str().as_encoded_bytes())?, cstr(b"fuse.fs")?, cstr(data.as_bytes())?);
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    let r = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), flags, data.as_ptr().cast()) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// `fs-client mount`: runs in the foreground until unmounted or signalled.
/// Two malloc arenas for the mount's threads instead of glibc's eight per core. Data
/// moves between threads here (written on a FUSE thread, freed after its COMMIT on the
/// runtime's; cache blocks filled on one, dropped on another), and every thread's own
/// arena kept what was freed into it: the resident size before each 256 MiB read grew
/// 42 -> 94 -> 104 MiB over three rounds with an empty cache, against 32 -> 32 -> 43
/// with two arenas (one: 15, flat, but creates ran about a fifth slower). Left alone
/// when `MALLOC_ARENA_MAX` is set.
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a tunable; called before the mount's threads start.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

pub fn mount(addr: &str, mountpoint: &Path, opts: &str) -> anyhow::Result<()> {
    // ADDR1,ADDR2,...: a primary and its standbys, tried in turn.
    let addrs = addr.split(',').map(str::parse).collect::<Result<Vec<Addr>, _>>()?;
    let addr = addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",");
    let opts = MountOptions::parse(opts)?;
    let mp = check_mountpoint(mountpoint)?;
    limit_malloc_arenas();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let key = match &opts.key {
        Some(k) => Some(Arc::new(fs_proto::secure::Key::load(k)?)),
        None => None,
    };
    // Over a Unix socket only the kernel sees the bytes: authenticated, not encrypted,
    // unless asked (README, "Keys").
    let encrypt = opts.encrypt.unwrap_or(!addrs.iter().all(|a| matches!(a, Addr::Unix(_))));
    let protection =
        if encrypt { fs_proto::secure::Protection::Encrypt } else { fs_proto::secure::Protection::Authenticate };
    let cfg = RpcConfig { addrs, soft: opts.soft, timeo: opts.timeo, retrans: opts.retrans, key, protection };
    let rpc = Rpc::connect(cfg, random_u64(), Duration::from_secs(10)).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => anyhow!("server {addr}: {e}"),
        _ => anyhow!("cannot reach server {addr}: {e}"),
    })?;
    let client = rt.block_on(async {
        let client = tokio::time::timeout(Duration::from_secs(30), Client::new(rpc, opts.clone()))
            .await
            .map_err(|_| anyhow!("server {addr} did not answer MOUNT"))?
            .map_err(|e| anyhow!("server {addr} refused the mount: {e}"))?;
        // The server's clock before anything is cached (ages of files are measured by it).
        match tokio::time::timeout(Duration::from_secs(10), client.measure_clock()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!("the server did not tell its time ({e}); file ages use this machine's clock for now")
            }
            Err(_) => {
                tracing::warn!("the server did not tell its time in 10 s; file ages use this machine's clock for now")
            }
        }
        anyhow::Ok(Arc::new(client))
    })?;
    // And again every `clock_check` (slewed, never stepped: see `srvclock`).
    let c = client.clone();
    let every = opts.clock_check;
    rt.spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = c.measure_clock().await {
                tracing::debug!("TIME: {e}");
            }
        }
    });
    let mut mount_opts = vec![
        // The server is the source, as `mount` and `df` show it (type `fuse.fs`).
        fuser::MountOption::FSName(addr.to_string()),
        fuser::MountOption::Subtype("fs".into()),
        fuser::MountOption::DefaultPermissions,
    ];
    if opts.read_only {
        mount_opts.push(fuser::MountOption::RO);
    }
    let mut config = fuser::Config::default();
    config.mount_options = mount_opts;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    config.acl = if opts.allow_other && root { fuser::SessionACL::All } else { fuser::SessionACL::Owner };
    config.n_threads = Some(opts.threads);
    config.clone_fd = true;
    let locks = match &opts.leases {
        Some(node) => {
            if let Some(dir) = &opts.curve {
                coord::curve::enable_client(dir).map_err(|e| anyhow!("curve: {e}"))?;
            }
            let lease = coord::lease::LeaseClient::connect(node).map_err(|e| anyhow!("leases: {e}"))?;
            anyhow::ensure!(
                lease.status(Duration::from_secs(10)).is_some(),
                "leases: the cluster node at {node} does not answer"
            );
            Some(Arc::new(crate::locks::Locks::new(lease)))
        }
        None => None,
    };
    let fs = Fs::new(client.clone(), rt.handle().clone(), locks);
    let notifier = fs.notifier_slot();
    // As root, mount(2) ourselves, to give the mount its type, `fuse.fs` (fuser's own
    // mount says `fuse` whatever the subtype); otherwise fuser mounts (fusermount).
    let allow_other = matches!(config.acl, fuser::SessionACL::All);
    let (session, mut unmount) = match mount_fuse_fs(&mp, &addr.to_string(), opts.read_only, allow_other) {
        Ok(fd) => {
            let acl = config.acl;
            let s = fuser::Session::from_fd(fs, fd, acl, config)
                .map_err(|e| anyhow!("cannot mount at {}: {e}", mp.display()))?;
            (s, Unmount::Ours(mp.clone()))
        }
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            let mut s =
                fuser::Session::new(fs, &mp, &config).map_err(|e| anyhow!("cannot mount at {}: {e}", mp.display()))?;
            let u = s.unmount_callable();
            (s, Unmount::Fuser(u))
        }
        Err(e) => bail!("cannot mount at {}: {e}", mp.display()),
    };
    let _ = notifier.set(session.notifier());
    // For the notifications fuser has no call for (see `client::order`).
    match std::os::fd::AsFd::as_fd(&session).try_clone_to_owned() {
        Ok(fd) => client.set_device(fd),
        Err(e) => {
            tracing::warn!("no second descriptor of /dev/fuse ({e}): names may be seen out of order for a moment")
        }
    }
    if opts.notify {
        crate::notifier::start(client.clone(), rt.handle().clone(), notifier);
    }
    println!("mounted {addr} at {}", mp.display());
    let _ = std::io::Write::flush(&mut std::io::stdout());
    if DAEMON.load(std::sync::atomic::Ordering::Relaxed) {
        // The helper that waited for that line has gone: nothing more goes to its pipe.
        detach_output();
    }

    // SIGINT/SIGTERM: unmount (lazily, so a busy mount point cannot hold us), then give
    // the session a moment to end; if open files keep the connection alive, exiting
    // closes /dev/fuse, which aborts it. Nothing here waits on the server.
    rt.spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (mut term, mut int) = (signal(SignalKind::terminate()).unwrap(), signal(SignalKind::interrupt()).unwrap());
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!("signal: unmounting");
        let _ = tokio::task::spawn_blocking(move || unmount.unmount()).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        std::process::exit(0);
    });
    let result = session.run();
    // Commits still running in the background get a moment to finish.
    rt.block_on(client.quiesce(Duration::from_secs(5)));
    rt.shutdown_timeout(Duration::from_millis(200));
    match result {
        // An unmount with requests in flight aborts the connection instead of closing it:
        // the unmount was wanted all the same.
        Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) && !is_mount_point(&mp) => Ok(()),
        r => r.map_err(|e| anyhow!("FUSE session ended: {e}")),
    }
}

/// `fs-client status`: the mount's vitals, read from its root (see `fuse::STATUS_XATTR`).
pub fn status(mountpoint: &Path) -> anyhow::Result<String> {
    let c = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes())
        .map_err(|_| anyhow!("bad mount point {}", mountpoint.display()))?;
    let name = std::ffi::CString::new(crate::fuse::STATUS_XATTR).expect("no NUL");
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: c and name are NUL-terminated; buf is writable for its length.
    let n = unsafe { libc::getxattr(c.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        anyhow::bail!("{} is not an fs-client mount ({e})", mountpoint.display());
    }
    buf.truncate(n as usize);
    String::from_utf8(buf).map_err(|_| anyhow!("{}: not an fs-client mount", mountpoint.display()))
}

/// `fs-client unmount`: unmounts, lazily with `lazy`.
pub fn unmount(mountpoint: &Path, lazy: bool) -> anyhow::Result<()> {
    let c = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes())
        .map_err(|_| anyhow!("bad mount point {}", mountpoint.display()))?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: c is NUL-terminated.
    if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EBUSY) => {
            bail!("{} is busy (files open?); `fs-client unmount --lazy` detaches it now", mountpoint.display())
        }
        Some(libc::EINVAL) => bail!("{} is not a mount point", mountpoint.display()),
        Some(libc::ENOENT) => bail!("{} does not exist", mountpoint.display()),
        Some(libc::EPERM) => bail!("unmounting {} needs root", mountpoint.display()),
        _ => bail!("cannot unmount {}: {e}", mountpoint.display()),
    }
}
