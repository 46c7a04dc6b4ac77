//! ZeroMQ's CURVE security for every socket of the cluster (`--curve DIR`, mount option
//! `curve=DIR`).
//!
//! One key pair per cluster, in `DIR/cluster.key` (`cluster keygen DIR`, mode 0600): every
//! member holds it. A bound socket (broker, lease node) is a CURVE server with the
//! cluster's secret key; a connecting socket is a CURVE client that expects the
//! cluster's public key from the server and presents the same pair as its own. Knowing
//! the public key is not enough to get in: the process's ZAP handler (RFC 27, on
//! `inproc://zeromq.zap.01`) accepts only clients whose key is the cluster's, and CURVE's
//! handshake proves the client holds the matching secret. Traffic is encrypted and
//! authenticated by libzmq (libsodium); nothing here is cryptography of our own.
//!
//! The choice is process-wide ([`enable`] once at start), so every `bind` and `connect`
//! goes through [`bind`] and [`connect`] here. `inproc://` sockets stay plain: they
//! never leave the process.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const FILE: &str = "cluster.key";
const HEADER: &str = "fs-curve-v1";
const ZAP_ENDPOINT: &str = "inproc://zeromq.zap.01";

#[derive(Clone)]
struct Keys {
    public: [u8; 32],
    secret: [u8; 32],
}

static KEYS: OnceLock<Keys> = OnceLock::new();

/// Where a cluster's key lives in `dir`.
pub fn key_path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Makes `dir` (mode 0700) and a new key pair in it; an existing key is never replaced.
pub fn keygen(dir: &Path) -> anyhow::Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    anyhow::ensure!(zmq::has("curve") == Some(true), "this build of libzmq has no CURVE support");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    let path = key_path(dir);
    let pair = zmq::CurveKeyPair::new()?;
    let mut f =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).map_err(|e| {
            match e.kind() {
                std::io::ErrorKind::AlreadyExists => {
                    anyhow::anyhow!("{} already exists (remove it first to make a new key)", path.display())
                }
                _ => anyhow::anyhow!("cannot write {}: {e}", path.display()),
            }
        })?;
    let z = |k: &[u8]| zmq::z85_encode(k).expect("32 bytes encode");
    writeln!(f, "{HEADER}\npublic {}\nsecret {}", z(&pair.public_key), z(&pair.secret_key))?;
    f.sync_all()?;
    Ok(path)
}

fn load(dir: &Path) -> anyhow::Result<Keys> {
    use std::os::unix::fs::MetadataExt;
    let path = key_path(dir);
    let meta = std::fs::metadata(&path).map_err(|e| anyhow::anyhow!("CURVE key {}: {e}", path.display()))?;
    anyhow::ensure!(
        meta.mode() & 0o077 == 0,
        "CURVE key {} may be read by others (mode {:o}): chmod 600 it",
        path.display(),
        meta.mode() & 0o7777
    );
    let text = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("CURVE key {}: {e}", path.display()))?;
    let bad = || anyhow::anyhow!("{} is not a key made by `cluster keygen`", path.display());
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return Err(bad());
    }
    let mut key = |name: &str| -> anyhow::Result<[u8; 32]> {
        let v = lines.next().and_then(|l| l.strip_prefix(name)).and_then(|l| l.strip_prefix(' ')).ok_or_else(bad)?;
        zmq::z85_decode(v.trim()).ok().and_then(|b| b.try_into().ok()).ok_or_else(bad)
    };
    Ok(Keys { public: key("public")?, secret: key("secret")? })
}

/// The cluster's public key in `dir` (what a server presents; knowing it lets no one in).
pub fn public_key(dir: &Path) -> anyhow::Result<[u8; 32]> {
    Ok(load(dir)?.public)
}

/// Turns CURVE on for every socket this process binds or connects from now on, with the
/// key in `dir`, and starts the ZAP handler in `ctx` (the context the bound sockets use;
/// a process that only connects may pass any).
pub fn enable(ctx: &zmq::Context, dir: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(zmq::has("curve") == Some(true), "this build of libzmq has no CURVE support");
    let keys = load(dir)?;
    let zap = ctx.socket(zmq::REP)?;
    zap.bind(ZAP_ENDPOINT)?;
    let public = keys.public;
    std::thread::Builder::new().name("zap".into()).spawn(move || authenticate(zap, public))?;
    KEYS.set(keys).map_err(|_| anyhow::anyhow!("CURVE enabled twice"))?;
    Ok(())
}

/// Enables CURVE for a process that only connects (no ZAP handler needed).
pub fn enable_client(dir: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(zmq::has("curve") == Some(true), "this build of libzmq has no CURVE support");
    let keys = load(dir)?;
    // A second call with the same key (two lease clients in one mount) is fine.
    let have = KEYS.get_or_init(|| keys.clone());
    anyhow::ensure!(have.public == keys.public, "a different CURVE key is already in use");
    Ok(())
}

/// The ZAP handler: a client gets in when its CURVE key is the cluster's. Ends when the
/// context is terminated.
fn authenticate(zap: zmq::Socket, public: [u8; 32]) {
    loop {
        let req = match zap.recv_multipart(0) {
            Ok(r) => r,
            Err(zmq::Error::ETERM) => return,
            Err(_) => continue,
        };
        // version, request id, domain, address, identity, mechanism, credentials...
        let ok = req.len() >= 7 && req[5] == b"CURVE" && req[6] == public;
        if !ok {
            let who = req.get(3).map(|a| String::from_utf8_lossy(a).into_owned()).unwrap_or_default();
            tracing::warn!(peer = %who, "refused a ZeroMQ peer: it does not hold the cluster's CURVE key");
        }
        let id = req.get(1).cloned().unwrap_or_default();
        let (code, text): (&[u8], &[u8]) = if ok { (b"200", b"OK") } else { (b"400", b"unknown key") };
        let reply: [&[u8]; 6] = [b"1.0", &id, code, text, b"", b""];
        if let Err(zmq::Error::ETERM) = zap.send_multipart(reply, 0) {
            return;
        }
    }
}

/// Binds `s` at `ep`, as a CURVE server when CURVE is on.
pub fn bind(s: &zmq::Socket, ep: &str) -> Result<(), zmq::Error> {
    if let Some(k) = KEYS.get().filter(|_| !ep.starts_with("inproc://")) {
        s.set_curve_server(true)?;
        s.set_curve_secretkey(&k.secret)?;
        s.set_zap_domain("fs-cluster")?;
    }
    s.bind(ep)
}

/// Connects `s` to `ep`, as a CURVE client of the cluster when CURVE is on.
pub fn connect(s: &zmq::Socket, ep: &str) -> Result<(), zmq::Error> {
    if let Some(k) = KEYS.get().filter(|_| !ep.starts_with("inproc://")) {
        s.set_curve_serverkey(&k.public)?;
        s.set_curve_publickey(&k.public)?;
        s.set_curve_secretkey(&k.secret)?;
    }
    s.connect(ep)
}
