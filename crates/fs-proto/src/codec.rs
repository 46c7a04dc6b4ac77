//! The frame codec: the only place that configures bincode.
//!
//! A frame is a big-endian `u32` payload length followed by the payload, one bincode-
//! encoded [`Call`](crate::Call) or [`Reply`](crate::Reply). Lengths over [`MAX_FRAME`]
//! are refused from the four header bytes alone, before anything is allocated, and the
//! decoder has the same byte limit, so a hostile length field inside the payload
//! (a `Vec` claiming 4 GiB) fails instead of allocating. See `PROTOCOL.md`.

use bincode::config::{Configuration, Limit};
use bincode::{Decode, Encode};

/// Largest READ or WRITE payload, the FUSE maximum (256 pages).
pub const MAX_IO: usize = 1 << 20;
/// Largest frame payload: one `MAX_IO` of data plus room for the rest of the message.
pub const MAX_FRAME: usize = MAX_IO + 64 * 1024;

type Config = Configuration<bincode::config::LittleEndian, bincode::config::Varint, Limit<MAX_FRAME>>;

const CONFIG: Config = bincode::config::standard().with_limit::<MAX_FRAME>();

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("empty frame")]
    Empty,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed payload: {0}")]
    Malformed(#[from] bincode::error::DecodeError),
    #[error("{0} bytes left over after the message")]
    Trailing(usize),
}

/// The payload length announced by a frame header, checked against the limit.
pub fn frame_len(header: [u8; 4]) -> Result<usize, FrameError> {
    match u32::from_be_bytes(header) as usize {
        0 => Err(FrameError::Empty),
        n if n > MAX_FRAME => Err(FrameError::TooLarge(n)),
        n => Ok(n),
    }
}

/// Encodes `msg` as a whole frame, header included.
pub fn encode_frame<T: Encode>(msg: &T) -> Result<Vec<u8>, FrameError> {
    // Measured first (nothing copied), so that a READ's or WRITE's megabyte is written
    // once into a buffer of the right size, not copied along as the buffer doubles.
    let mut size = bincode::enc::write::SizeWriter::default();
    bincode::encode_into_writer(msg, &mut size, CONFIG).expect("encoding into a counter");
    let mut buf = Vec::with_capacity(4 + size.bytes_written);
    buf.extend_from_slice(&[0; 4]);
    // Writing into a Vec cannot fail, and the encoder itself never errs on our types.
    bincode::encode_into_std_write(msg, &mut buf, CONFIG).expect("encoding into a Vec");
    let len = buf.len() - 4;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    buf[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(buf)
}

/// Encodes `msg` as a frame payload alone (no header): a message carried inside another.
pub fn encode_payload<T: Encode>(msg: &T) -> Vec<u8> {
    let mut buf = Vec::with_capacity(128);
    bincode::encode_into_std_write(msg, &mut buf, CONFIG).expect("encoding into a Vec");
    buf
}

/// A frame in two parts, sent one after the other: `head` holds the header and every
/// field but a READ reply's data, which stays in `tail` so it is never copied into the
/// frame buffer. For other replies `tail` is empty.
pub struct SplitFrame {
    pub head: Vec<u8>,
    pub tail: Vec<u8>,
}

/// Encodes `msg`, whose last field is an empty byte vector, as the head of the frame in
/// which that vector holds `tail_len` bytes: the caller sends the head and then the bytes,
/// which are never copied into a frame buffer. Byte for byte the frame [`encode_frame`]
/// makes of the message with those bytes in it.
pub fn encode_head<T: Encode>(msg: &T, tail_len: usize) -> Result<Vec<u8>, FrameError> {
    let mut head = encode_frame(msg)?;
    if tail_len > 0 {
        // The encoding ends in the empty vector's one-byte length 0.
        let zero = head.pop();
        debug_assert_eq!(zero, Some(0));
        bincode::encode_into_std_write(tail_len as u64, &mut head, CONFIG).expect("encoding into a Vec");
        let len = head.len() - 4 + tail_len;
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge(len));
        }
        head[..4].copy_from_slice(&(len as u32).to_be_bytes());
    }
    Ok(head)
}

/// Encodes a reply as [`encode_frame`] does, byte for byte, but leaves READ data where it
/// is. This relies on `data` being the last field of `Response::Read` and `Response`
/// being the last field of `Reply`.
pub fn encode_reply(mut reply: crate::Reply) -> Result<SplitFrame, FrameError> {
    let tail = match &mut reply.res {
        Ok(crate::Response::Read { data, .. }) => std::mem::take(data),
        _ => Vec::new(),
    };
    let head = encode_head(&reply, tail.len())?;
    Ok(SplitFrame { head, tail })
}

/// The fields of a message up to its last one, a byte vector (a WRITE's or a READ reply's
/// data), and what makes the message from them and that vector.
trait Head: Decode<()> {
    type Message: Decode<()>;
    /// The vector's length, when the message is of the kind this head is for.
    fn tail_len(&self) -> Option<u64>;
    fn with_tail(self, tail: Vec<u8>) -> Self::Message;
}

/// A `Call` whose `Request` is `Write` encodes as these (the variant's number, then its
/// fields), the data last.
#[derive(Decode)]
struct WriteHead {
    xid: u64,
    client: u64,
    cred: crate::Cred,
    variant: u32,
    fh: crate::FileHandle,
    offset: u64,
    stable: crate::Stable,
    fence: u64,
    len: u64,
}

impl Head for WriteHead {
    type Message = crate::Call;
    fn tail_len(&self) -> Option<u64> {
        (self.variant == WRITE_VARIANT).then_some(self.len)
    }
    fn with_tail(self, data: Vec<u8>) -> crate::Call {
        let req =
            crate::Request::Write { fh: self.fh, offset: self.offset, stable: self.stable, fence: self.fence, data };
        crate::Call { xid: self.xid, client: self.client, cred: self.cred, req }
    }
}

/// A `Reply` of `Ok(Response::Read)` encodes as these, the data last.
#[derive(Decode)]
struct ReadHead {
    xid: u64,
    ok: u32,
    variant: u32,
    eof: bool,
    attr: crate::Attr,
    len: u64,
}

impl Head for ReadHead {
    type Message = crate::Reply;
    fn tail_len(&self) -> Option<u64> {
        (self.ok == 0 && self.variant == READ_VARIANT).then_some(self.len)
    }
    fn with_tail(self, data: Vec<u8>) -> crate::Reply {
        crate::Reply { xid: self.xid, res: Ok(crate::Response::Read { eof: self.eof, attr: self.attr, data }) }
    }
}

/// The numbers `Request::Write` and `Response::Read` have on the wire (their places in
/// the enums; pinned by a test, as the golden bytes pin the rest).
const WRITE_VARIANT: u32 = 8;
const READ_VARIANT: u32 = 7;

/// How many bytes of a payload are read before the rest: enough for any message's fields
/// before its data.
const PEEK: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("truncated frame: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed frame: {0}")]
    Malformed(#[from] DecodeError),
}

/// Reads a frame payload of `len` bytes (its header already read and checked by
/// [`frame_len`]) from `r` and decodes the call in it. A WRITE's data is read into the
/// buffer the call keeps, not zeroed first and not copied by the decoder (the payload's
/// first bytes are decoded to find where the data starts; what `r` buffers itself it
/// copies, as for any read). Everything else is decoded as [`decode`] does, with the
/// same errors.
pub fn read_call<R: std::io::Read + ?Sized>(r: &mut R, len: usize) -> Result<crate::Call, ReadError> {
    read_message::<WriteHead, R>(r, len)
}

/// [`read_call`] for a reply: a READ's data is read straight into its own buffer.
pub fn read_reply<R: std::io::Read + ?Sized>(r: &mut R, len: usize) -> Result<crate::Reply, ReadError> {
    read_message::<ReadHead, R>(r, len)
}

fn read_message<H: Head, R: std::io::Read + ?Sized>(r: &mut R, len: usize) -> Result<H::Message, ReadError> {
    let mut payload = Vec::with_capacity(len.min(PEEK));
    read_more(r, &mut payload, len.min(PEEK))?;
    if let Ok((h, used)) = bincode::decode_from_slice::<H, _>(&payload, CONFIG) {
        if h.tail_len().is_some_and(|n| used as u64 + n == len as u64) {
            let mut data = Vec::with_capacity(len - used);
            data.extend_from_slice(&payload[used..]);
            let rest = len - payload.len();
            read_more(r, &mut data, rest)?;
            return Ok(h.with_tail(data));
        }
    }
    let rest = len - payload.len();
    payload.reserve_exact(rest);
    read_more(r, &mut payload, rest)?;
    Ok(decode(&payload)?)
}

/// Appends exactly `n` bytes from `r` to `buf`, into its spare room (not zeroed first).
fn read_more<R: std::io::Read + ?Sized>(r: &mut R, buf: &mut Vec<u8>, n: usize) -> std::io::Result<()> {
    let want = buf.len() + n;
    std::io::Read::read_to_end(&mut std::io::Read::take(&mut *r, n as u64), buf)?;
    if buf.len() < want {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Decodes one frame payload (without its header). Trailing bytes are an error.
pub fn decode<T: Decode<()>>(payload: &[u8]) -> Result<T, DecodeError> {
    let (msg, used) = bincode::decode_from_slice(payload, CONFIG)?;
    if used != payload.len() {
        return Err(DecodeError::Trailing(payload.len() - used));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;
    use proptest::prelude::*;

    fn payload<T: Encode>(msg: &T) -> Vec<u8> {
        encode_frame(msg).unwrap()[4..].to_vec()
    }

    /// Pins the byte layout documented in PROTOCOL.md; a change here is a protocol change.
    #[test]
    fn golden_getattr_call() {
        let call = Call {
            xid: 1,
            client: 300,
            cred: Cred { uid: 1000, gid: 100, groups: vec![4] },
            req: Request::GetAttr { fh: FileHandle(vec![0xaa, 0xbb]) },
        };
        let frame = encode_frame(&call).unwrap();
        #[rustfmt::skip]
        let want = [
            0, 0, 0, 14,        // frame header: payload length, u32 big-endian
            0x01,               // xid = 1 (varint: values < 251 are one byte)
            0xfb, 0x2c, 0x01,   // client = 300 (251 = u16 follows, little-endian)
            0xfb, 0xe8, 0x03,   // cred.uid = 1000
            0x64,               // cred.gid = 100
            0x01, 0x04,         // cred.groups = [4] (length, then elements)
            0x02,               // Request variant 2 = GetAttr
            0x02, 0xaa, 0xbb,   // fh: length 2, bytes
        ];
        assert_eq!(frame, want);
        assert_eq!(decode::<Call>(&frame[4..]).unwrap(), call);
    }

    #[test]
    fn golden_error_reply() {
        let reply = Reply { xid: 7, res: Err(Errno::ENOENT) };
        #[rustfmt::skip]
        let want = [
            0x07,   // xid = 7
            0x01,   // Result variant 1 = Err
            0x04,   // errno 2, zig-zag encoded (signed varint)
        ];
        assert_eq!(payload(&reply), want);
    }

    #[test]
    fn the_variants_read_apart_are_pinned() {
        let w = Request::Write { fh: FileHandle(vec![]), offset: 0, stable: Stable::Unstable, fence: 0, data: vec![] };
        assert_eq!(encode_payload(&w)[0] as u32, WRITE_VARIANT);
        let attr = bincode::decode_from_slice::<Attr, _>(&[0; 64], CONFIG).unwrap().0;
        let r = Response::Read { eof: false, attr, data: vec![] };
        assert_eq!(encode_payload(&r)[0] as u32, READ_VARIANT);
    }

    #[test]
    fn header_limits() {
        assert_eq!(frame_len(0u32.to_be_bytes()), Err(FrameError::Empty));
        assert_eq!(frame_len(((MAX_FRAME + 1) as u32).to_be_bytes()), Err(FrameError::TooLarge(MAX_FRAME + 1)));
        assert_eq!(frame_len(100u32.to_be_bytes()), Ok(100));
    }

    #[test]
    fn hostile_length_inside_payload_is_refused() {
        // Write request whose data Vec claims u64::MAX bytes.
        let mut p = payload(&Call {
            xid: 1,
            client: 1,
            cred: Cred::default(),
            req: Request::Write { fh: FileHandle(vec![]), offset: 0, stable: Stable::Unstable, fence: 0, data: vec![] },
        });
        p.pop(); // the data length (0)
        p.extend_from_slice(&[0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        assert!(decode::<Call>(&p).is_err());
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut p = payload(&Reply { xid: 1, res: Ok(Response::Null) });
        p.push(0);
        assert!(matches!(decode::<Reply>(&p), Err(DecodeError::Trailing(1))));
    }

    #[test]
    fn a_full_io_fits_a_frame() {
        let call = Call {
            xid: u64::MAX,
            client: u64::MAX,
            cred: Cred { uid: u32::MAX, gid: u32::MAX, groups: vec![u32::MAX; 64] },
            req: Request::Write {
                fh: FileHandle(vec![0xff; MAX_HANDLE]),
                offset: u64::MAX,
                stable: Stable::FileSync,
                fence: u64::MAX,
                data: vec![1; MAX_IO],
            },
        };
        let f = encode_frame(&call).unwrap();
        assert_eq!(decode::<Call>(&f[4..]).unwrap(), call);
    }

    /// The derived strategy for `Reply` is deep enough to overflow a test thread's
    /// default 2 MiB stack in a debug build, so this one runs on a bigger stack.
    #[test]
    fn reply_round_trips() {
        std::thread::Builder::new()
            .stack_size(64 << 20)
            .spawn(|| {
                let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(512));
                runner
                    .run(&any::<Reply>(), |reply| {
                        let f = encode_frame(&reply).unwrap();
                        prop_assert_eq!(read_reply(&mut &f[4..], f.len() - 4).unwrap(), reply.clone());
                        prop_assert_eq!(decode::<Reply>(&f[4..]).unwrap(), reply);
                        Ok(())
                    })
                    .unwrap();
            })
            .unwrap()
            .join()
            .unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn call_round_trips(call: Call) {
            let f = encode_frame(&call).unwrap();
            prop_assert_eq!(frame_len(f[..4].try_into().unwrap()).unwrap(), f.len() - 4);
            prop_assert_eq!(decode::<Call>(&f[4..]).unwrap(), call);
        }

        #[test]
        fn a_borrowed_call_is_the_same_bytes(call: Call) {
            let borrowed = CallRef { xid: call.xid, client: call.client, cred: &call.cred, req: &call.req };
            let f = encode_frame(&borrowed).unwrap();
            prop_assert_eq!(f.len(), f.capacity(), "written once into a buffer of its size");
            prop_assert_eq!(f, encode_frame(&call).unwrap());
        }

        #[test]
        fn split_reply_is_the_same_bytes(xid: u64, eof: bool, attr: Attr, len in 0..70_000usize) {
            let reply = Reply { xid, res: Ok(Response::Read { eof, attr, data: vec![7; len] }) };
            let whole = encode_frame(&reply).unwrap();
            let split = encode_reply(reply).unwrap();
            prop_assert_eq!([split.head, split.tail].concat(), whole);
        }

        #[test]
        fn a_call_is_read_as_decoded(call: Call) {
            let f = encode_frame(&call).unwrap();
            let mut r = &f[4..];
            prop_assert_eq!(read_call(&mut r, f.len() - 4).unwrap(), call);
            prop_assert!(r.is_empty());
        }

        #[test]
        fn a_write_is_read_whole(call: Call, len in 0..40_000usize, extra in 0..3usize) {
            let mut call = call;
            call.req = Request::Write { fh: FileHandle(vec![3; 40]), offset: 7, stable: Stable::Unstable, fence: 9, data: (0..len).map(|i| i as u8).collect() };
            let f = encode_frame(&call).unwrap();
            let data_len = len;
            // The head alone, as the mount sends it: the same bytes.
            let mut empty = call.clone();
            if let Request::Write { data, .. } = &mut empty.req { data.clear() }
            let head = encode_head(&empty, data_len).unwrap();
            prop_assert_eq!(&head[..], &f[..head.len()]);
            // Its data is found without decoding it (read into a buffer of its own).
            let (h, used) = bincode::decode_from_slice::<WriteHead, _>(&f[4..], CONFIG).unwrap();
            prop_assert_eq!(h.tail_len().map(|n| used + n as usize), Some(f.len() - 4));
            // Read from a stream that ends early: an error, never a short call.
            let cut = f.len() - 4 - extra.min(f.len() - 4);
            let mut r = &f[4..4 + cut];
            let got = read_call(&mut r, f.len() - 4);
            if extra == 0 { prop_assert_eq!(got.unwrap(), call); } else { prop_assert!(got.is_err()); }
        }

        #[test]
        fn a_read_reply_is_read_whole(xid: u64, eof: bool, attr: Attr, len in 0..40_000usize, extra in 0..3usize) {
            let reply = Reply { xid, res: Ok(Response::Read { eof, attr, data: (0..len).map(|i| i as u8).collect() }) };
            let f = encode_frame(&reply).unwrap();
            let (h, used) = bincode::decode_from_slice::<ReadHead, _>(&f[4..], CONFIG).unwrap();
            prop_assert_eq!(h.tail_len().map(|n| used + n as usize), Some(f.len() - 4));
            let cut = f.len() - 4 - extra.min(f.len() - 4);
            let got = read_reply(&mut &f[4..4 + cut], f.len() - 4);
            if extra == 0 { prop_assert_eq!(got.unwrap(), reply); } else { prop_assert!(got.is_err()); }
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<Call>(&bytes);
            let _ = decode::<Reply>(&bytes);
        }

        #[test]
        fn mutated_frames_never_panic(call: Call, at in any::<usize>(), byte in any::<u8>()) {
            let mut p = payload(&call);
            let i = at % p.len();
            p[i] = byte;
            let _ = decode::<Call>(&p);
            let _ = read_call(&mut &p[..], p.len());
            let _ = read_reply(&mut &p[..], p.len());
            p.truncate(i);
            let _ = decode::<Call>(&p);
        }
    }
}
