//! NFS-style adaptive attribute timeouts (nfs(5): acregmin, acregmax, acdirmin,
//! acdirmax): a file that changed recently is revalidated soon, one that has not changed
//! for a long time can be trusted longer. The timeout is a tenth of the time since the
//! last modification, clamped to the configured bounds. Pure: times are passed in.

use fs_proto::{Attr, FileKind};
use std::time::{Duration, SystemTime};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttrTimeouts {
    pub reg_min: Duration,
    pub reg_max: Duration,
    pub dir_min: Duration,
    pub dir_max: Duration,
}

impl Default for AttrTimeouts {
    /// The Linux NFS client's defaults, but a file's minimum is 10 s rather than 3 s:
    /// sshfs trusts attributes for 20 s, and with 3 s a `stat` of files made a few
    /// seconds earlier went to the server (measured: a third of sshfs's warm `stat`
    /// rate). Opens still revalidate (close-to-open); `noac`/`actimeo` override.
    fn default() -> Self {
        AttrTimeouts {
            reg_min: Duration::from_secs(10),
            reg_max: Duration::from_secs(60),
            dir_min: Duration::from_secs(30),
            dir_max: Duration::from_secs(60),
        }
    }
}

impl AttrTimeouts {
    /// `noac`: never cache.
    pub const NONE: AttrTimeouts = AttrTimeouts {
        reg_min: Duration::ZERO,
        reg_max: Duration::ZERO,
        dir_min: Duration::ZERO,
        dir_max: Duration::ZERO,
    };

    /// `actimeo=N`: every bound the same.
    pub fn all(d: Duration) -> AttrTimeouts {
        AttrTimeouts { reg_min: d, reg_max: d, dir_min: d, dir_max: d }
    }

    /// How long `attr`, fetched at `now` (server clock as seen by us), stays valid.
    pub fn timeout(&self, attr: &Attr, now: SystemTime) -> Duration {
        let (lo, hi) = match attr.kind {
            FileKind::Directory => (self.dir_min, self.dir_max),
            _ => (self.reg_min, self.reg_max),
        };
        let mtime =
            SystemTime::UNIX_EPOCH + Duration::new(attr.mtime.sec.max(0) as u64, attr.mtime.nsec.min(999_999_999));
        let age = now.duration_since(mtime).unwrap_or(Duration::ZERO);
        (age / 10).clamp(lo, hi.max(lo))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: FileKind, mtime_sec: i64) -> Attr {
        crate::testutil::attr(kind, 5, mtime_sec)
    }

    #[test]
    fn adaptive_between_the_bounds() {
        let t = AttrTimeouts::default();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        // Just modified: the minimum.
        assert_eq!(t.timeout(&attr(FileKind::Regular, 1_000_000), now), Duration::from_secs(10));
        // Modified 200 s ago: 20 s.
        assert_eq!(t.timeout(&attr(FileKind::Regular, 1_000_000 - 200), now), Duration::from_secs(20));
        // Long ago: the maximum.
        assert_eq!(t.timeout(&attr(FileKind::Regular, 0), now), Duration::from_secs(60));
        assert_eq!(t.timeout(&attr(FileKind::Directory, 1_000_000), now), Duration::from_secs(30));
        // In the future (clock skew): the minimum.
        assert_eq!(t.timeout(&attr(FileKind::Regular, 2_000_000), now), Duration::from_secs(10));
        assert_eq!(AttrTimeouts::NONE.timeout(&attr(FileKind::Regular, 0), now), Duration::ZERO);
        assert_eq!(
            AttrTimeouts::all(Duration::from_secs(7)).timeout(&attr(FileKind::Directory, 0), now),
            Duration::from_secs(7)
        );
    }
}
