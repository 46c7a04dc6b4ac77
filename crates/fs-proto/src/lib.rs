//! Wire types and the frame codec shared by `fs-server` and `fs-client`.
//!
//! This crate does no I/O. Both sides depend on it and neither depends on the other.
//!
//! # Layout
//! - [`types`]: attributes, times, the opaque [`FileHandle`], credentials.
//! - [`errno`]: the one errno table ([`Errno`]); values are Linux errno numbers, so the
//!   mapping to and from the kernel is the identity.
//! - [`msg`]: [`Call`] (client to server) and [`Reply`] (server to client), one
//!   [`Request`]/[`Response`] variant per operation.
//! - [`addr`]: `HOST:PORT` or a Unix socket path, as users type them.
//! - [`codec`]: the only place that configures bincode; frame header and size limits.
//! - [`secure`]: key files, the key handshake (Noise) and protected records. Like the
//!   codec it opens no socket: it reads and writes the streams it is given.
//!
//! The byte layout is written down in `PROTOCOL.md` at the repository root and pinned by
//! golden-byte tests in [`codec`].

pub mod addr;
pub mod codec;
pub mod errno;
pub mod msg;
pub mod secure;
pub mod types;

pub use addr::{Addr, AddrError};
pub use codec::{
    decode, encode_frame, encode_head, encode_payload, encode_reply, frame_len, read_call, read_reply, DecodeError,
    FrameError, ReadError, SplitFrame, MAX_FRAME, MAX_IO,
};
pub use errno::Errno;
pub use msg::*;
pub use types::*;
