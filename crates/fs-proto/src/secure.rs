//! Keys, the key handshake and protected frames (`fs-server --key`, `-o key=FILE`).
//!
//! Both sides hold the same 32-byte secret (a key file made by `fs-server keygen`). Before
//! any call, they run the Noise handshake `NNpsk0` (X25519, ChaCha20-Poly1305, BLAKE2s,
//! through the `snow` crate; no home-made cryptography):
//!
//! 1. client: [`MAGIC`], then a record holding `-> psk, e` with the payload
//!    `[VERSION, protection]`. It is sealed under a key mixed from the secret, so the
//!    server learns that the client holds it (it may still be a recording).
//! 2. server: a record holding `<- e, ee`, sealed under keys mixed from the secret and
//!    both fresh ephemeral keys: the client learns that the server holds the secret. A
//!    server that could not open the first message answers an empty record instead
//!    (the client then says "wrong key"; the empty record proves nothing and opens
//!    nothing).
//! 3. client: a confirmation record ([`CONFIRM`]) under the new transport keys. Only now
//!    does the server serve: a replayed first message gets a fresh server ephemeral, and
//!    without the client's ephemeral secret no one can make the confirmation.
//!
//! After it, the byte stream of frames is cut into records: a big-endian `u16` length
//! and a body of at most 65,535 bytes. Each direction numbers its records from 0 (the
//! confirmation is record 0 from the client) and the number is the nonce, never sent: a
//! record flipped, replayed, reordered, dropped or moved to another connection fails to
//! open, and the connection is closed. Two protections, chosen by the client in step 1:
//! - [`Protection::Encrypt`]: the body is the Noise transport message (ChaCha20-Poly1305,
//!   16-byte tag): private and tamper-proof.
//! - [`Protection::Authenticate`]: the body is the plain bytes and a 32-byte keyed BLAKE3
//!   of the record number and the bytes, keyed by the handshake's per-direction transport
//!   keys (snow's raw split): tamper-proof, readable. For Unix sockets, where no one but
//!   the kernel sees the bytes.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The first four bytes of a connection that starts with a key handshake. Read as a frame
/// header it would announce ~1.2 GB, over [`crate::MAX_FRAME`], so a server without a key
/// can tell it from a call.
pub const MAGIC: [u8; 4] = *b"FSN\x01";
const VERSION: u8 = 1;
const PATTERN: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
/// The payload of the client's first transport record.
pub const CONFIRM: &[u8] = b"fs-confirm";
const MAX_RECORD: usize = 65535;
const TAG: usize = 16;
const MAC: usize = 32;
/// The first line of a key file; the key follows as 64 hex digits.
const KEY_HEADER: &str = "fs-key-v1";

/// A shared secret. Its `Debug` shows nothing of it.
#[derive(Clone)]
pub struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {0} already exists (remove it first to make a new key)")]
    Exists(PathBuf),
    #[error("key file {0}: {1}")]
    Io(PathBuf, io::Error),
    #[error("key file {0} is not a key made by `fs-server keygen`")]
    Format(PathBuf),
    #[error("key file {0} may be read by others (mode {1:o}): chmod 600 it")]
    Exposed(PathBuf, u32),
}

impl Key {
    /// 32 bytes from the kernel's random source.
    pub fn generate() -> io::Result<Key> {
        let mut b = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
        Ok(Key(b))
    }

    /// Makes a new key file (mode 0600; an existing file is never overwritten).
    pub fn create(path: &Path) -> Result<Key, KeyError> {
        use std::os::unix::fs::OpenOptionsExt;
        let key = Key::generate().map_err(|e| KeyError::Io(path.into(), e))?;
        let mut f =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| {
                match e.kind() {
                    io::ErrorKind::AlreadyExists => KeyError::Exists(path.into()),
                    _ => KeyError::Io(path.into(), e),
                }
            })?;
        let hex: String = key.0.iter().map(|b| format!("{b:02x}")).collect();
        f.write_all(format!("{KEY_HEADER}\n{hex}\n").as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| KeyError::Io(path.into(), e))?;
        Ok(key)
    }

    /// Reads a key file; one that group or others may read is refused, as ssh refuses
    /// such a private key.
    pub fn load(path: &Path) -> Result<Key, KeyError> {
        use std::os::unix::fs::MetadataExt;
        let io = |e| KeyError::Io(path.into(), e);
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.mode() & 0o077 != 0 {
            return Err(KeyError::Exposed(path.into(), meta.mode() & 0o7777));
        }
        let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData => KeyError::Format(path.into()),
            _ => io(e),
        })?;
        let mut lines = text.lines();
        let bad = || KeyError::Format(path.into());
        if lines.next() != Some(KEY_HEADER) {
            return Err(bad());
        }
        let hex = lines.next().ok_or_else(bad)?.trim();
        if hex.len() != 64 || lines.any(|l| !l.trim().is_empty()) {
            return Err(bad());
        }
        let mut b = [0u8; 32];
        for (i, out) in b.iter_mut().enumerate() {
            *out = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16).map_err(|_| bad())?;
        }
        Ok(Key(b))
    }
}

/// What protects the records after the handshake (the client chooses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protection {
    /// Private and tamper-proof (ChaCha20-Poly1305).
    Encrypt,
    /// Tamper-proof only (keyed BLAKE3); the bytes stay readable.
    Authenticate,
}

impl Protection {
    fn byte(self) -> u8 {
        match self {
            Protection::Encrypt => 1,
            Protection::Authenticate => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Protection::Encrypt => "encrypted",
            Protection::Authenticate => "authenticated, not encrypted",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("the peer did not start a key handshake")]
    NoHandshake([u8; 4]),
    #[error("the server refused our key (its key differs)")]
    Refused,
    #[error("the peer's key differs (its handshake did not open)")]
    WrongKey,
    #[error("the peer did not complete the key handshake (a replayed handshake?)")]
    NotConfirmed,
    #[error("the connection closed during the key handshake")]
    Closed,
    #[error("malformed key handshake: {0}")]
    Malformed(&'static str),
    #[error("key handshake: {0}")]
    Io(io::Error),
}

impl From<io::Error> for HandshakeError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => {
                HandshakeError::Closed
            }
            _ => HandshakeError::Io(e),
        }
    }
}

fn builder(key: &Key) -> snow::Builder<'_> {
    let params = PATTERN.parse().expect("a valid Noise pattern");
    snow::Builder::new(params).psk(0, &key.0).expect("one psk at position 0")
}

fn read_record<R: Read>(r: &mut R) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    r.read_exact(&mut len)?;
    let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
    r.read_exact(&mut body)?;
    Ok(body)
}

fn write_record<W: Write>(w: &mut W, body: &[u8]) -> io::Result<()> {
    let mut out = Vec::with_capacity(2 + body.len());
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
    w.write_all(&out)
}

/// The client's side: runs the handshake on `s` and returns the session.
pub fn initiate<S: Read + Write>(s: &mut S, key: &Key, protection: Protection) -> Result<Session, HandshakeError> {
    let mut hs = builder(key).build_initiator().map_err(|_| HandshakeError::Malformed("noise setup"))?;
    let mut buf = vec![0u8; MAX_RECORD];
    let n =
        hs.write_message(&[VERSION, protection.byte()], &mut buf).map_err(|_| HandshakeError::Malformed("noise"))?;
    let mut first = MAGIC.to_vec();
    first.extend_from_slice(&(n as u16).to_be_bytes());
    first.extend_from_slice(&buf[..n]);
    s.write_all(&first)?;
    let answer = read_record(s)?;
    if answer.is_empty() {
        return Err(HandshakeError::Refused);
    }
    hs.read_message(&answer, &mut buf).map_err(|_| HandshakeError::WrongKey)?;
    let session = Session::new(hs, protection, true)?;
    let mut w = session.writer(&mut *s);
    w.write_all(CONFIRM)?;
    // The confirmation was record 0; the caller's writer starts at 1.
    Ok(Session { send_from: 1, ..session })
}

/// The server's side. The first four bytes not being [`MAGIC`] is
/// [`HandshakeError::NoHandshake`] with them, so the caller can read the plain call that
/// follows and answer it with `AUTH`.
pub fn respond<S: Read + Write>(s: &mut S, key: &Key) -> Result<(Session, Protection), HandshakeError> {
    let mut magic = [0u8; 4];
    s.read_exact(&mut magic)?;
    if magic != MAGIC {
        return Err(HandshakeError::NoHandshake(magic));
    }
    let mut hs = builder(key).build_responder().map_err(|_| HandshakeError::Malformed("noise setup"))?;
    let first = read_record(s)?;
    let mut payload = vec![0u8; MAX_RECORD];
    let n = match hs.read_message(&first, &mut payload) {
        Ok(n) => n,
        Err(_) => {
            // Tell the client why, so it can say "wrong key" (this proves nothing).
            let _ = write_record(s, &[]);
            return Err(HandshakeError::WrongKey);
        }
    };
    let protection = match payload[..n] {
        [VERSION, 1] => Protection::Encrypt,
        [VERSION, 2] => Protection::Authenticate,
        _ => return Err(HandshakeError::Malformed("unknown version or protection")),
    };
    let mut buf = vec![0u8; MAX_RECORD];
    let n = hs.write_message(&[], &mut buf).map_err(|_| HandshakeError::Malformed("noise"))?;
    write_record(s, &buf[..n])?;
    let session = Session::new(hs, protection, false)?;
    let mut confirm = [0u8; CONFIRM.len()];
    let mut r = session.reader(&mut *s);
    match r.read_exact(&mut confirm) {
        Ok(()) if confirm == CONFIRM => {}
        _ => return Err(HandshakeError::NotConfirmed),
    }
    // The confirmation was record 0; the caller's reader starts at 1.
    let session = Session { recv_from: r.nonce, ..session };
    Ok((session, protection))
}

enum Cipher {
    Encrypt(snow::StatelessTransportState),
    Authenticate { send: [u8; 32], recv: [u8; 32] },
}

/// A finished handshake: makes the reading and writing halves of the connection.
pub struct Session {
    cipher: Arc<Cipher>,
    protection: Protection,
    /// The first record numbers each half uses (the confirmation takes 0 one way).
    send_from: u64,
    recv_from: u64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("protection", &self.protection).finish_non_exhaustive()
    }
}

impl Session {
    fn new(mut hs: snow::HandshakeState, protection: Protection, initiator: bool) -> Result<Session, HandshakeError> {
        let cipher = match protection {
            Protection::Authenticate => {
                let (i2r, r2i) = hs.dangerously_get_raw_split();
                let (send, recv) = if initiator { (i2r, r2i) } else { (r2i, i2r) };
                Cipher::Authenticate { send, recv }
            }
            Protection::Encrypt => Cipher::Encrypt(
                hs.into_stateless_transport_mode().map_err(|_| HandshakeError::Malformed("unfinished handshake"))?,
            ),
        };
        Ok(Session { cipher: Arc::new(cipher), protection, send_from: 0, recv_from: 0 })
    }

    /// The reading half over `r` (which should be buffered: a record is read in two
    /// reads).
    pub fn reader<R: Read>(&self, r: R) -> SecureRead<R> {
        SecureRead {
            inner: r,
            cipher: self.cipher.clone(),
            nonce: self.recv_from,
            buf: Vec::new(),
            pos: 0,
            raw: Vec::new(),
        }
    }

    /// The writing half over `w`. Every `write` sends one record: give it whole frames.
    pub fn writer<W: Write>(&self, w: W) -> SecureWrite<W> {
        SecureWrite { inner: w, cipher: self.cipher.clone(), nonce: self.send_from, out: Vec::new() }
    }
}

/// Plain bytes out of protected records.
pub struct SecureRead<R> {
    inner: R,
    cipher: Arc<Cipher>,
    nonce: u64,
    buf: Vec<u8>,
    pos: usize,
    /// The last record as read (its capacity is used again).
    raw: Vec<u8>,
}

fn forged() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "a record failed authentication (tampered, replayed or reordered)")
}

fn mac(key: &[u8; 32], nonce: u64, data: &[u8]) -> blake3::Hash {
    blake3::Hasher::new_keyed(key).update(&nonce.to_le_bytes()).update(data).finalize()
}

impl<R: Read> SecureRead<R> {
    /// Reads and opens the next record; false at a clean end of stream.
    fn fill(&mut self) -> io::Result<bool> {
        let mut len = [0u8; 2];
        match self.inner.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(e),
        }
        // Both buffers keep their capacity from record to record.
        let mut body = std::mem::take(&mut self.raw);
        body.resize(u16::from_be_bytes(len) as usize, 0);
        self.inner.read_exact(&mut body)?;
        let nonce = self.nonce;
        self.nonce += 1;
        match &*self.cipher {
            Cipher::Encrypt(t) => {
                if body.len() <= TAG {
                    return Err(forged());
                }
                self.buf.resize(body.len() - TAG, 0);
                t.read_message(nonce, &body, &mut self.buf).map_err(|_| forged())?;
                self.raw = body;
            }
            Cipher::Authenticate { recv, .. } => {
                if body.len() <= MAC {
                    return Err(forged());
                }
                let (data, tag) = body.split_at(body.len() - MAC);
                let tag: [u8; MAC] = tag.try_into().expect("MAC bytes");
                // `Hash`'s equality is constant-time.
                if mac(recv, nonce, data) != blake3::Hash::from(tag) {
                    return Err(forged());
                }
                body.truncate(body.len() - MAC);
                self.raw = std::mem::replace(&mut self.buf, body);
            }
        }
        self.pos = 0;
        Ok(true)
    }
}

impl<R: Read> Read for SecureRead<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.pos == self.buf.len() && !self.fill()? {
            return Ok(0);
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Plain bytes into protected records.
pub struct SecureWrite<W> {
    inner: W,
    cipher: Arc<Cipher>,
    nonce: u64,
    out: Vec<u8>,
}

impl<W: Write> Write for SecureWrite<W> {
    /// Sends one record of up to ~64 KiB of `data` and says how much it took.
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        let nonce = self.nonce;
        self.nonce += 1;
        self.out.clear();
        let n = match &*self.cipher {
            Cipher::Encrypt(t) => {
                let n = data.len().min(MAX_RECORD - TAG);
                self.out.resize(2 + n + TAG, 0);
                let sealed = t
                    .write_message(nonce, &data[..n], &mut self.out[2..])
                    .map_err(|e| io::Error::other(format!("sealing a record: {e}")))?;
                debug_assert_eq!(sealed, n + TAG);
                self.out[..2].copy_from_slice(&((n + TAG) as u16).to_be_bytes());
                n
            }
            Cipher::Authenticate { send, .. } => {
                let n = data.len().min(MAX_RECORD - MAC);
                self.out.extend_from_slice(&((n + MAC) as u16).to_be_bytes());
                self.out.extend_from_slice(&data[..n]);
                self.out.extend_from_slice(mac(send, nonce, &data[..n]).as_bytes());
                n
            }
        };
        // A record half written leaves the stream unusable, as any write error does.
        self.inner.write_all(&self.out)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn key(b: u8) -> Key {
        Key([b; 32])
    }

    type Sides =
        (Result<Session, HandshakeError>, Result<(Session, Protection), HandshakeError>, UnixStream, UnixStream);

    /// A client and a server over a socket pair; returns what each side's handshake
    /// gave, and the client's and the server's socket.
    fn pair(ck: Key, sk: Key, p: Protection) -> Sides {
        let (mut c, mut s) = UnixStream::pair().unwrap();
        let (c2, s2) = (c.try_clone().unwrap(), s.try_clone().unwrap());
        let server = std::thread::spawn(move || respond(&mut s, &sk));
        let client = initiate(&mut c, &ck, p);
        (client, server.join().unwrap(), c2, s2)
    }

    #[test]
    fn frames_cross_both_ways_under_both_protections() {
        for p in [Protection::Encrypt, Protection::Authenticate] {
            let (c, s, cs, ss) = pair(key(7), key(7), p);
            let (c, (s, got)) = (c.unwrap(), s.unwrap());
            assert_eq!(got, p);
            let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
            let mut cw = c.writer(&cs);
            cw.write_all(&big).unwrap();
            let mut sr = s.reader(std::io::BufReader::new(&ss));
            let mut back = vec![0u8; big.len()];
            sr.read_exact(&mut back).unwrap();
            assert_eq!(back, big);
            let mut sw = s.writer(&ss);
            sw.write_all(b"reply").unwrap();
            let mut cr = c.reader(&cs);
            let mut r = [0u8; 5];
            cr.read_exact(&mut r).unwrap();
            assert_eq!(&r, b"reply");
        }
    }

    #[test]
    fn a_wrong_key_is_refused_on_both_sides() {
        let (c, s, _, _) = pair(key(1), key(2), Protection::Encrypt);
        assert!(matches!(c, Err(HandshakeError::Refused)), "{c:?}");
        assert!(matches!(s, Err(HandshakeError::WrongKey)), "{:?}", s.err());
    }

    /// A record flipped, replayed or reordered does not open.
    #[test]
    fn tampered_replayed_and_reordered_records_fail() {
        for p in [Protection::Encrypt, Protection::Authenticate] {
            let (c, s, _cs, _ss) = pair(key(3), key(3), p);
            let (c, (s, _)) = (c.unwrap(), s.unwrap());
            let mut wire = Vec::new();
            let mut w = c.writer(&mut wire);
            w.write_all(b"first").unwrap();
            let one = wire.len();
            let mut w = SecureWrite { inner: &mut wire, cipher: c.cipher.clone(), nonce: 2, out: Vec::new() };
            w.write_all(b"second").unwrap();
            let (first, second) = (wire[..one].to_vec(), wire[one..].to_vec());
            let opens = |bytes: Vec<u8>| {
                let mut r = s.reader(&bytes[..]);
                let mut out = Vec::new();
                r.read_to_end(&mut out).map(|_| out)
            };
            assert_eq!(opens(first.clone()).unwrap(), b"first");
            let mut flipped = first.clone();
            flipped[4] ^= 1;
            assert!(opens(flipped).is_err(), "a flipped bit");
            assert!(opens([first.clone(), first.clone()].concat()).is_err(), "a replayed record");
            assert!(opens(second.clone()).is_err(), "a record out of order");
        }
    }

    #[test]
    fn key_files_round_trip_and_exposed_ones_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("fs-key-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("k");
        let _ = std::fs::remove_file(&path);
        let k = Key::create(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(Key::load(&path).unwrap().0, k.0);
        assert!(matches!(Key::create(&path), Err(KeyError::Exists(_))));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(Key::load(&path), Err(KeyError::Exposed(_, 0o644))));
        std::fs::write(dir.join("bad"), "not a key\n").unwrap();
        std::fs::set_permissions(dir.join("bad"), std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(Key::load(&dir.join("bad")), Err(KeyError::Format(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
