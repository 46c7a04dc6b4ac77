//! Mount options (`-o a,b=c`): parsed and validated into [`MountOptions`]; every bad
//! option gets a one-line reason naming it.

use crate::attrcache::AttrTimeouts;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq)]
pub struct MountOptions {
    pub attr: AttrTimeouts,
    /// Page cache block size in bytes.
    pub block_size: usize,
    /// Page cache capacity in bytes.
    pub cache_size: usize,
    /// Read-ahead window limit, in blocks (0: off).
    pub readahead: u64,
    /// Largest WRITE, and how many may be in flight at once.
    pub wsize: usize,
    pub writes_in_flight: usize,
    pub soft: bool,
    /// Per-call timeout for soft mounts.
    pub timeo: Duration,
    pub retrans: u32,
    pub read_only: bool,
    /// Let users other than the one who mounted use the mount (needs root to mount).
    pub allow_other: bool,
    /// `leases=NODE_ADDR`: flock and fcntl locks take the file's lease through this
    /// `cluster node` (whole-file, exclusive), across every mount of the cluster.
    pub leases: Option<String>,
    /// `curve=DIR`: talk to the lease node with CURVE, with the cluster key in DIR.
    pub curve: Option<std::path::PathBuf>,
    /// `noatime`: reads do not update access times (no read is sent to the server for
    /// that alone). The default is `relatime`, as a local file system's.
    pub noatime: bool,
    /// `clock_check=SECS`: how often the server's clock is measured (Cristian's
    /// algorithm, see `srvclock`), besides at mount time.
    pub clock_check: Duration,
    /// Subscribe to the server's change notices (`nonotify`: no, today's timeouts only).
    pub notify: bool,
    /// `callback=SECS`: while subscribed, how long what is cached may be trusted without
    /// a notice (the AFS callback promise's bound).
    pub callback: Duration,
    /// `lookupcache=all` (default) or `none`, as nfs(5): with `none` no name is kept,
    /// in the kernel or here: every path lookup asks the server, so another mount's
    /// creates, renames and removals show at once and in the order they were made (a
    /// round trip per name looked up).
    pub lookup_cache: bool,
    /// `rdirplus=all` (default), `auto` or `none`: which listings bring each name's
    /// attributes into the kernel (see [`ReaddirPlus`]).
    pub rdirplus: ReaddirPlus,
    /// `threads=N`: FUSE request threads (1 to 64).
    pub threads: usize,
    /// `key=FILE`: prove to the server that we hold its key (see `fs_proto::secure`).
    pub key: Option<std::path::PathBuf>,
    /// `encrypt` / `noencrypt` with a key; unset: encrypted over TCP, authenticated only
    /// over a Unix socket.
    pub encrypt: Option<bool>,
}

/// Which directory listings carry each name's handle and attributes to the kernel
/// (READDIRPLUS), so that a `stat` of a listed name needs no LOOKUP request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReaddirPlus {
    /// Every page of every listing (`ls -l`, `du`, `find -ls`, `tar c`, `rm -r`: a name
    /// listed is usually used next). Each entry costs the kernel an inode: a listing
    /// alone runs at about a quarter of the plain rate.
    All,
    /// The kernel's choice (`FUSE_READDIRPLUS_AUTO`): a listing's first page, and a page
    /// after a name of the folder was looked up.
    Auto,
    /// Never: plain listings, every `stat` after them a LOOKUP.
    None,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            attr: AttrTimeouts::default(),
            block_size: 128 * 1024,
            cache_size: 256 << 20,
            readahead: 32,
            wsize: 1 << 20,
            writes_in_flight: 8,
            soft: false,
            timeo: Duration::from_secs(6),
            retrans: 2,
            read_only: false,
            allow_other: true,
            leases: None,
            curve: None,
            noatime: false,
            clock_check: Duration::from_secs(60),
            notify: true,
            callback: Duration::from_secs(300),
            lookup_cache: true,
            rdirplus: ReaddirPlus::All,
            threads: 8,
            key: None,
            encrypt: None,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionError {
    #[error("unknown mount option '{0}'")]
    Unknown(String),
    #[error("mount option '{0}' needs a value")]
    MissingValue(String),
    #[error("mount option '{0}' does not take a value")]
    UnexpectedValue(String),
    #[error("bad value for mount option '{0}': {1}")]
    BadValue(String, String),
}

/// `128K`, `64M`, `1G` or plain bytes.
fn size(key: &str, v: &str) -> Result<usize, OptionError> {
    let bad = || OptionError::BadValue(key.into(), format!("'{v}' is not a size (e.g. 4096, 128K, 64M, 1G)"));
    let (num, mult) = match v.char_indices().last() {
        Some((i, 'k' | 'K')) => (&v[..i], 1 << 10),
        Some((i, 'm' | 'M')) => (&v[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&v[..i], 1 << 30),
        _ => (v, 1),
    };
    num.parse::<usize>().ok().and_then(|n| n.checked_mul(mult)).ok_or_else(bad)
}

fn number<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, OptionError> {
    v.parse().map_err(|_| OptionError::BadValue(key.into(), format!("'{v}' is not a whole number")))
}

impl MountOptions {
    /// Parses a comma-separated option list, as `mount -o` takes it.
    pub fn parse(s: &str) -> Result<MountOptions, OptionError> {
        let mut o = MountOptions::default();
        let secs = |key: &str, v: &str| number::<u64>(key, v).map(Duration::from_secs);
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (key, val) = match item.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (item, None),
            };
            let need = || val.ok_or_else(|| OptionError::MissingValue(key.into()));
            let flag = |set: &mut bool, to: bool| match val {
                Some(_) => Err(OptionError::UnexpectedValue(key.into())),
                None => {
                    *set = to;
                    Ok(())
                }
            };
            match key {
                "noac" => {
                    let mut x = false;
                    flag(&mut x, true)?;
                    o.attr = AttrTimeouts::NONE;
                }
                "actimeo" => o.attr = AttrTimeouts::all(secs(key, need()?)?),
                "acregmin" => o.attr.reg_min = secs(key, need()?)?,
                "clock_check" => {
                    o.clock_check = secs(key, need()?)?;
                    if o.clock_check.is_zero() {
                        return Err(OptionError::BadValue(key.into(), "must be at least 1 (seconds)".into()));
                    }
                }
                "acregmax" => o.attr.reg_max = secs(key, need()?)?,
                "acdirmin" => o.attr.dir_min = secs(key, need()?)?,
                "acdirmax" => o.attr.dir_max = secs(key, need()?)?,
                "cache_size" => o.cache_size = size(key, need()?)?,
                "block_size" => {
                    let b = size(key, need()?)?;
                    if !(4096..=fs_proto::MAX_IO).contains(&b) || !b.is_power_of_two() {
                        return Err(OptionError::BadValue(key.into(), "a power of two from 4K to 1M".into()));
                    }
                    o.block_size = b;
                }
                "readahead" => o.readahead = number(key, need()?)?,
                "hard" => flag(&mut o.soft, false)?,
                "soft" => flag(&mut o.soft, true)?,
                "retrans" => o.retrans = number(key, need()?)?,
                // Tenths of a second, as nfs(5).
                "timeo" => {
                    let t: u64 = number(key, need()?)?;
                    if t == 0 {
                        return Err(OptionError::BadValue(
                            key.into(),
                            "must be at least 1 (tenths of a second)".into(),
                        ));
                    }
                    o.timeo = Duration::from_millis(t * 100);
                }
                "ro" => flag(&mut o.read_only, true)?,
                "noatime" => flag(&mut o.noatime, true)?,
                "relatime" => flag(&mut o.noatime, false)?,
                "rw" => flag(&mut o.read_only, false)?,
                "allow_other" => flag(&mut o.allow_other, true)?,
                "noallow_other" => flag(&mut o.allow_other, false)?,
                "leases" => o.leases = Some(need()?.to_string()),
                "curve" => o.curve = Some(need()?.into()),
                "notify" => flag(&mut o.notify, true)?,
                "nonotify" => flag(&mut o.notify, false)?,
                "callback" => o.callback = secs(key, need()?)?,
                "lookupcache" => {
                    o.lookup_cache = match need()? {
                        "all" => true,
                        "none" => false,
                        _ => return Err(OptionError::BadValue(key.into(), "all or none".into())),
                    }
                }
                "rdirplus" => {
                    o.rdirplus = match need()? {
                        "all" => ReaddirPlus::All,
                        "auto" => ReaddirPlus::Auto,
                        "none" => ReaddirPlus::None,
                        _ => return Err(OptionError::BadValue(key.into(), "all, auto or none".into())),
                    }
                }
                "threads" => {
                    o.threads = number(key, need()?)?;
                    if !(1..=64).contains(&o.threads) {
                        return Err(OptionError::BadValue(key.into(), "from 1 to 64".into()));
                    }
                }
                "key" => o.key = Some(need()?.into()),
                "encrypt" | "noencrypt" => {
                    let mut x = false;
                    flag(&mut x, key == "encrypt")?;
                    o.encrypt = Some(x);
                }
                _ => return Err(OptionError::Unknown(item.into())),
            }
        }
        if o.curve.is_some() && o.leases.is_none() {
            return Err(OptionError::BadValue(
                "curve".into(),
                "curve=DIR secures the lease node's connection: it needs leases=NODE_ADDR".into(),
            ));
        }
        if o.encrypt.is_some() && o.key.is_none() {
            return Err(OptionError::BadValue(
                "encrypt".into(),
                "encrypt and noencrypt need key=FILE (the key makes the traffic's keys)".into(),
            ));
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nfs_style_options() {
        let o = MountOptions::parse("soft,retrans=3,timeo=5,actimeo=7,cache_size=64M,block_size=256K,readahead=8,ro")
            .unwrap();
        assert!(o.soft && o.read_only);
        assert_eq!((o.retrans, o.timeo), (3, Duration::from_millis(500)));
        assert_eq!(o.attr, AttrTimeouts::all(Duration::from_secs(7)));
        assert_eq!((o.cache_size, o.block_size, o.readahead), (64 << 20, 256 << 10, 8));
        assert_eq!(MountOptions::parse("noac").unwrap().attr, AttrTimeouts::NONE);
        assert_eq!(MountOptions::parse("").unwrap(), MountOptions::default());
        let o = MountOptions::parse("nonotify,callback=30").unwrap();
        assert!(!o.notify);
        assert_eq!(o.callback, Duration::from_secs(30));
        assert!(MountOptions::parse("").unwrap().lookup_cache);
        assert!(!MountOptions::parse("lookupcache=none").unwrap().lookup_cache);
        assert!(MountOptions::parse("lookupcache=all").unwrap().lookup_cache);
        assert_eq!(MountOptions::parse("").unwrap().rdirplus, ReaddirPlus::All);
        assert_eq!(MountOptions::parse("rdirplus=auto").unwrap().rdirplus, ReaddirPlus::Auto);
        assert_eq!(MountOptions::parse("rdirplus=none").unwrap().rdirplus, ReaddirPlus::None);
        assert!(matches!(MountOptions::parse("rdirplus=some"), Err(OptionError::BadValue(..))));
    }

    #[test]
    fn bad_options_are_named() {
        assert_eq!(MountOptions::parse("bogus"), Err(OptionError::Unknown("bogus".into())));
        assert_eq!(MountOptions::parse("retrans"), Err(OptionError::MissingValue("retrans".into())));
        assert_eq!(MountOptions::parse("soft=1"), Err(OptionError::UnexpectedValue("soft".into())));
        assert!(matches!(MountOptions::parse("cache_size=lots"), Err(OptionError::BadValue(..))));
        assert!(matches!(MountOptions::parse("block_size=3000"), Err(OptionError::BadValue(..))));
        assert!(matches!(MountOptions::parse("timeo=0"), Err(OptionError::BadValue(..))));
        assert!(matches!(MountOptions::parse("encrypt"), Err(OptionError::BadValue(..))));
        assert!(matches!(MountOptions::parse("lookupcache=positive"), Err(OptionError::BadValue(..))));
        assert_eq!(MountOptions::parse("key=/k,noencrypt").unwrap().encrypt, Some(false));
        let msg = MountOptions::parse("readahead=-1").unwrap_err().to_string();
        assert!(msg.contains("readahead") && !msg.contains('\n'), "{msg}");
    }
}
