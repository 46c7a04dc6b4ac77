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

/// Encodes a reply as [`encode_frame`] does, byte for byte, but leaves READ data where it
/// is. This relies on `data` being the last field of `Response::Read` and `Response`
/// being the last field of `Reply`: the encoding of a reply with empty data ends in the
/// one-byte length 0, which is replaced by the real length.
pub fn encode_reply(mut reply: crate::Reply) -> Result<SplitFrame, FrameError> {
    let tail = match &mut reply.res {
        Ok(crate::Response::Read { data, .. }) => std::mem::take(data),
        _ => Vec::new(),
    };
    let mut head = encode_frame(&reply)?;
    if !tail.is_empty() {
        let zero = head.pop();
        debug_assert_eq!(zero, Some(0));
        bincode::encode_into_std_write(tail.len() as u64, &mut head, CONFIG).expect("encoding into a Vec");
        let len = head.len() - 4 + tail.len();
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge(len));
        }
        head[..4].copy_from_slice(&(len as u32).to_be_bytes());
    }
    Ok(SplitFrame { head, tail })
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
            p.truncate(i);
            let _ = decode::<Call>(&p);
        }
    }
}
