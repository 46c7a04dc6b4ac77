//! Small shared pieces: random ids, the stop flag set by SIGINT/SIGTERM, socket setup.

use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Makes SIGINT and SIGTERM set the stop flag instead of killing the process, so loops
/// (which all wake at least every heartbeat) finish what they are writing and exit.
pub fn install_stop_handler() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

pub fn stopping() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// A random 64-bit id (worker, source and job ids), never 0.
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // getrandom(2) cannot fail for 8 bytes once the pool is initialised.
    // SAFETY: b has 8 writable bytes.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 8, 0) };
    let x = if n == 8 {
        u64::from_ne_bytes(b)
    } else {
        // Fallback: time and pid through BLAKE3.
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let h = blake3::hash(format!("{t:?}{}", std::process::id()).as_bytes());
        u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
    };
    x.max(1)
}

/// A socket error with the endpoint it concerns, as one line.
pub fn sock_err(what: &str, endpoint: &str, e: zmq::Error) -> anyhow::Error {
    anyhow::anyhow!("cannot {what} {endpoint}: {e}")
}

/// A socket with the option every socket of ours wants: no lingering on close (a dead
/// peer must not block shutdown).
pub fn socket(ctx: &zmq::Context, kind: zmq::SocketType) -> anyhow::Result<zmq::Socket> {
    let s = ctx.socket(kind)?;
    s.set_linger(0)?;
    Ok(s)
}
