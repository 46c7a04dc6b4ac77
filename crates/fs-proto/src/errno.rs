//! The one errno table.
//!
//! An [`Errno`] on the wire is a Linux errno number (RFC 1813's `nfsstat3` does the same
//! for the values it shares), so the server passes `io::Error::raw_os_error()` through
//! and the client hands the number to the kernel unchanged. The few protocol-level
//! statuses that have no errno (a handle that fails its MAC, a stale readdir cookie) live
//! above 10000 as in NFSv3, and [`Errno::to_kernel`] maps them to what a program sees.

use bincode::{Decode, Encode};

/// A Linux errno value, or one of the protocol statuses above 10000.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Errno(pub i32);

macro_rules! errnos {
    ($($name:ident = $val:expr, $text:expr;)*) => {
        impl Errno {
            $(pub const $name: Errno = Errno($val);)*

            /// The symbolic name, for logs and error messages.
            pub fn name(self) -> &'static str {
                match self.0 {
                    $($val => stringify!($name),)*
                    _ => "E?",
                }
            }

            /// A one-line description.
            pub fn description(self) -> &'static str {
                match self.0 {
                    $($val => $text,)*
                    _ => "unknown error",
                }
            }
        }
    };
}

errnos! {
    EPERM = 1, "operation not permitted";
    ENOENT = 2, "no such file or directory";
    EINTR = 4, "interrupted system call";
    EIO = 5, "input/output error";
    ENXIO = 6, "no such device or address";
    E2BIG = 7, "argument list too long";
    EBADF = 9, "bad file descriptor";
    EAGAIN = 11, "resource temporarily unavailable";
    ENOMEM = 12, "out of memory";
    EACCES = 13, "permission denied";
    EFAULT = 14, "bad address";
    EBUSY = 16, "device or resource busy";
    EEXIST = 17, "file exists";
    EXDEV = 18, "invalid cross-device link";
    ENODEV = 19, "no such device";
    ENOTDIR = 20, "not a directory";
    EISDIR = 21, "is a directory";
    EINVAL = 22, "invalid argument";
    ENFILE = 23, "too many open files in system";
    EMFILE = 24, "too many open files";
    ETXTBSY = 26, "text file busy";
    EFBIG = 27, "file too large";
    ENOSPC = 28, "no space left on device";
    ESPIPE = 29, "illegal seek";
    EROFS = 30, "read-only file system";
    EMLINK = 31, "too many links";
    ERANGE = 34, "result out of range";
    EDEADLK = 35, "resource deadlock avoided";
    ENAMETOOLONG = 36, "file name too long";
    ENOLCK = 37, "no locks available";
    ENOSYS = 38, "function not implemented";
    ENOTEMPTY = 39, "directory not empty";
    ELOOP = 40, "too many levels of symbolic links";
    ENODATA = 61, "no data available";
    EOVERFLOW = 75, "value too large for defined data type";
    EOPNOTSUPP = 95, "operation not supported";
    ETIMEDOUT = 110, "connection timed out";
    ESTALE = 116, "stale file handle";
    EDQUOT = 122, "disk quota exceeded";
    // Protocol statuses without an errno (RFC 1813, section 2.6).
    BADHANDLE = 10001, "bad file handle";
    NOT_SYNC = 10002, "update synchronization mismatch";
    BAD_COOKIE = 10003, "readdir cookie is stale";
    NOTSUPP = 10004, "operation not supported by the server";
    TOOSMALL = 10005, "buffer or request is too small";
    SERVERFAULT = 10006, "server fault";
    BADTYPE = 10007, "object type not supported";
    JUKEBOX = 10008, "try again later";
    // Ours: the server has a key and the caller did not run the key handshake.
    AUTH = 10009, "authentication required (the server has a key: mount with -o key=FILE)";
}

impl Errno {
    /// What to hand the kernel: protocol statuses become the errno a program expects.
    pub fn to_kernel(self) -> i32 {
        match self {
            Errno::BADHANDLE => Errno::ESTALE.0,
            Errno::NOT_SYNC | Errno::BAD_COOKIE | Errno::BADTYPE => Errno::EINVAL.0,
            Errno::NOTSUPP => Errno::EOPNOTSUPP.0,
            Errno::TOOSMALL => Errno::ERANGE.0,
            Errno::JUKEBOX => Errno::EAGAIN.0,
            Errno::AUTH => Errno::EACCES.0,
            Errno(n) if n <= 0 || n >= 4096 => Errno::EIO.0,
            Errno(n) => n,
        }
    }

    /// From an `io::Error`; errors that carry no OS code become `EIO` (the one fallback).
    pub fn from_io(e: &std::io::Error) -> Errno {
        match e.raw_os_error() {
            Some(n) if n > 0 => Errno(n),
            _ => Errno::EIO,
        }
    }
}

impl From<std::io::Error> for Errno {
    fn from(e: std::io::Error) -> Errno {
        Errno::from_io(&e)
    }
}

impl std::fmt::Debug for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.description(), self.name())
    }
}

impl std::error::Error for Errno {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_linux_errnos() {
        assert_eq!(Errno::ENOENT.0, 2);
        assert_eq!(Errno::ESTALE.0, 116);
        assert_eq!(Errno::ENOTEMPTY.0, 39);
        assert_eq!(Errno::from_io(&std::io::Error::from_raw_os_error(28)), Errno::ENOSPC);
        assert_eq!(Errno::from_io(&std::io::Error::other("x")), Errno::EIO);
    }

    #[test]
    fn protocol_statuses_map_to_errnos_for_the_kernel() {
        assert_eq!(Errno::BADHANDLE.to_kernel(), Errno::ESTALE.0);
        assert_eq!(Errno(-3).to_kernel(), Errno::EIO.0);
        assert_eq!(Errno::EACCES.to_kernel(), 13);
    }
}
