//! Change notices end to end: the server numbers every change and pushes it to every
//! subscribed mount, which drops what it makes stale at once, so caches can be trusted
//! until told otherwise (the AFS callback). Real mounts, default root squash where the
//! test acts as a user.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};
use tests::{metric, mount_status, wait_until, within, Rig, Watchdog};

/// Calls of operation `op` the mount at `mp` has sent, from `fs-client status`.
fn calls(mp: &Path, op: &str) -> u64 {
    let prefix = format!("call {op} ");
    mount_status(mp)
        .lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.split_whitespace().nth(2))
        .map_or(0, |n| n.parse().unwrap())
}

/// Waits until the mount at `mp` follows the server's notices.
fn subscribed(mp: &Path) {
    wait_until(Duration::from_secs(10), "subscribed", || mount_status(mp).contains("notices subscribed"));
}

fn size(p: &Path) -> Option<u64> {
    std::fs::metadata(p).ok().map(|m| m.len())
}

/// The names in folder `d`, sorted.
fn names(d: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    v.sort();
    v
}

/// Files `d/f0` .. `d/f{n-1}` of one byte each, made beside the server (no notice of
/// theirs drops what a mount holds of the folder).
fn files_beside_the_server(rig: &Rig, n: usize) {
    for i in 0..n {
        std::fs::write(rig.export(&format!("d/f{i}")), b"x").unwrap();
    }
}

/// Another mount's write and close shows in a mount that caches attributes for an hour
/// (`actimeo=3600`) within moments, and so do a new name, a removal and a rename (the
/// kernel's cached names dropped); the same mount without notices (`nonotify`) still
/// shows the old size: what makes the difference is the notice.
#[test]
fn changes_on_one_mount_reach_another_that_caches_for_an_hour() {
    let _w = Watchdog::new(Duration::from_secs(120));
    let rig = Rig::new("");
    let b = rig.second_mount("b", "actimeo=3600");
    let old = rig.second_mount("old", "actimeo=3600,nonotify");
    subscribed(&b.mountpoint);
    assert!(mount_status(&old.mountpoint).contains("notices off"));
    std::fs::write(rig.mnt("f"), b"1234").unwrap();
    std::fs::write(rig.mnt("gone"), b"x").unwrap();
    std::fs::write(rig.mnt("from"), b"x").unwrap();
    // Both watching mounts cache the size, the names and a negative answer.
    for m in [&b, &old] {
        assert_eq!(size(&m.path("f")), Some(4));
        assert!(m.path("gone").exists() && m.path("from").exists() && !m.path("to").exists());
    }
    std::fs::write(rig.mnt("f"), b"123456789012").unwrap();
    std::fs::remove_file(rig.mnt("gone")).unwrap();
    std::fs::rename(rig.mnt("from"), rig.mnt("to")).unwrap();
    std::fs::write(rig.mnt("new"), b"n").unwrap();
    wait_until(Duration::from_secs(5), "the new size on b", || size(&b.path("f")) == Some(12));
    wait_until(Duration::from_secs(5), "the removal on b", || !b.path("gone").exists());
    wait_until(Duration::from_secs(5), "the rename on b", || !b.path("from").exists() && b.path("to").exists());
    assert!(b.path("new").exists());
    assert_eq!(std::fs::read(b.path("f")).unwrap(), b"123456789012");
    // Without notices the hour-long cache holds: still the old size and names.
    assert_eq!(size(&old.path("f")), Some(4), "nonotify keeps today's timeouts");
    assert!(old.path("from").exists(), "nonotify keeps its cached name");
}

/// Under the promise an open needs no round trip: opening an unchanged file many times
/// makes no GETATTR (counted by `fs-client status`), and one change elsewhere makes the
/// next open see it.
#[test]
fn open_of_an_unchanged_file_needs_no_round_trip() {
    let _w = Watchdog::new(Duration::from_secs(120));
    let rig = Rig::new("");
    let b = rig.second_mount("b", "");
    subscribed(&b.mountpoint);
    std::fs::write(rig.mnt("f"), b"abc").unwrap();
    assert_eq!(std::fs::read(b.path("f")).unwrap(), b"abc");
    let getattrs = || calls(&b.mountpoint, "GETATTR");
    // The first reads settle the access time (relatime: the read that updates it goes
    // to the server, and the new time is fetched once).
    for _ in 0..3 {
        std::fs::read(b.path("f")).unwrap();
    }
    let before = getattrs();
    for _ in 0..50 {
        assert_eq!(std::fs::read(b.path("f")).unwrap(), b"abc");
    }
    assert_eq!(getattrs(), before, "50 opens of an unchanged file, no GETATTR");
    std::fs::write(rig.mnt("f"), b"abcdef").unwrap();
    wait_until(Duration::from_secs(5), "the change seen by open", || std::fs::read(b.path("f")).unwrap() == b"abcdef");
}

/// `tar c` and `cp -p` read a file and then `fstat` it; the kernel asks for the
/// attributes again after every read (it drops the access time it holds). Under the
/// promise the mount answers from what it holds, but not where that could be stale: after
/// a removal of another link of ours (the link count), a rename (the change time), or a
/// read that moved the access time on the server.
#[test]
fn a_stat_after_a_read_needs_no_round_trip_and_follows_our_own_changes() {
    use std::io::Read;
    let _w = Watchdog::new(Duration::from_secs(120));
    let rig = Rig::new("");
    let b = rig.second_mount("b", "");
    subscribed(&b.mountpoint);
    std::fs::write(b.path("f"), b"abc").unwrap();
    std::fs::hard_link(b.path("f"), b.path("g")).unwrap();
    // The last close's COMMIT goes in the background; its reply, late under load, is a
    // change of ours that rightly sends the next stat to the server.
    wait_until(Duration::from_secs(10), "the COMMIT answered", || calls(&b.mountpoint, "COMMIT") >= 1);
    // Each read reaches the mount: the kernel's pages of the file are dropped first (a
    // read the kernel serves itself keeps the access time it holds).
    let read_and_stat = || {
        let mut f = std::fs::File::open(b.path("f")).unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: advice on an open descriptor.
        assert_eq!(unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) }, 0);
        let mut v = Vec::new();
        f.read_to_end(&mut v).unwrap();
        assert_eq!(v, b"abc");
        f.metadata().unwrap()
    };
    // The first reads settle the access time (see above).
    for _ in 0..3 {
        read_and_stat();
    }
    let getattrs = || calls(&b.mountpoint, "GETATTR");
    let before = getattrs();
    for _ in 0..50 {
        assert_eq!(read_and_stat().nlink(), 2);
    }
    assert_eq!(getattrs(), before, "50 reads, each with a stat after it: no GETATTR");
    // A read that moves the access time on the server: the mount shows the new one.
    let old = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    std::fs::File::options()
        .write(true)
        .open(rig.export("f"))
        .unwrap()
        .set_times(std::fs::FileTimes::new().set_accessed(old))
        .unwrap();
    std::fs::write(rig.mnt("f"), b"abc").unwrap(); // through the other mount: a notice
    wait_until(Duration::from_secs(5), "the rewrite seen", || {
        std::fs::metadata(b.path("f")).unwrap().mtime() == std::fs::metadata(rig.export("f")).unwrap().mtime()
    });
    let on_server = |p: &str| std::fs::metadata(rig.export(p)).unwrap();
    let m = read_and_stat();
    assert_eq!((m.atime(), m.atime_nsec()), (on_server("f").atime(), on_server("f").atime_nsec()), "the access time");
    // A removal of the other link here: one link left.
    std::fs::remove_file(b.path("g")).unwrap();
    assert_eq!(read_and_stat().nlink(), 1, "the link count after a removal of ours");
    // A rename here moves the change time.
    let ctime = |m: &std::fs::Metadata| (m.ctime(), m.ctime_nsec());
    let was = ctime(&read_and_stat());
    std::fs::rename(b.path("f"), b.path("h")).unwrap();
    std::fs::rename(b.path("h"), b.path("f")).unwrap();
    assert_eq!(ctime(&read_and_stat()), ctime(&on_server("f")), "the change time after renames of ours");
    assert_ne!(ctime(&on_server("f")), was);
    // A `chmod` right after a close: the close's COMMIT runs in the background, and its
    // reply (attributes from before the `chmod`) may come last. A race this only gives
    // chances to, 30 times (the permission-bits regression test met it once); it does
    // not fail for certain without the COMMIT's `own_change`.
    use std::os::unix::fs::PermissionsExt;
    for i in 0..30u32 {
        std::fs::write(b.path("f"), vec![b'x'; 70_000]).unwrap();
        let mode = 0o600 | ((i % 2) * 0o44);
        std::fs::set_permissions(b.path("f"), std::fs::Permissions::from_mode(mode)).unwrap();
        std::fs::read(b.path("f")).unwrap();
        assert_eq!(std::fs::metadata(b.path("f")).unwrap().mode() & 0o777, mode, "round {i}: the mode set");
    }
}

/// Another mount's removal of one of a file's links, or rename of one, moves the file's
/// link count or change time. The notice names the folder's entry, and the file too: a
/// mount that holds the file by its other name under the promise (an hour's `actimeo`
/// here) sees the change, in the kernel's cache and ours.
#[test]
fn a_link_removed_or_renamed_on_another_mount_is_seen_through_the_other_link() {
    let _w = Watchdog::new(Duration::from_secs(120));
    let rig = Rig::new("");
    let b = rig.second_mount("b", "actimeo=3600");
    subscribed(&b.mountpoint);
    std::fs::write(rig.mnt("f"), b"abc").unwrap();
    std::fs::hard_link(rig.mnt("f"), rig.mnt("g")).unwrap();
    std::fs::hard_link(rig.mnt("f"), rig.mnt("x")).unwrap();
    wait_until(Duration::from_secs(5), "three links seen", || std::fs::metadata(b.path("f")).unwrap().nlink() == 3);
    for _ in 0..3 {
        assert_eq!(std::fs::read(b.path("f")).unwrap(), b"abc");
    }
    std::fs::remove_file(rig.mnt("g")).unwrap();
    wait_until(Duration::from_secs(5), "the removal of a link seen through another", || {
        std::fs::metadata(b.path("f")).unwrap().nlink() == 2
    });
    let ctime = |m: std::fs::Metadata| (m.ctime(), m.ctime_nsec());
    let before = ctime(std::fs::metadata(rig.export("f")).unwrap());
    std::fs::rename(rig.mnt("x"), rig.mnt("y")).unwrap();
    let after = ctime(std::fs::metadata(rig.export("f")).unwrap());
    assert_ne!(after, before, "a rename moves the change time");
    wait_until(Duration::from_secs(5), "the rename of a link seen through another", || {
        ctime(std::fs::metadata(b.path("f")).unwrap()) == after
    });
}

/// Close-to-open under the promise, with no wait: the reader's `open` makes no round
/// trip, so the writer's `close` must not return before the reader's caches (ours and
/// the kernel's) dropped the file: the server answers the close's WRITEs only once every
/// other mount acknowledged their notice. 300 rounds of rewrite-and-close on one mount,
/// each read back at once through another that caches for an hour, alternating sizes.
/// (Seen to fail in the first rounds when the server does not wait.)
#[test]
fn a_close_on_one_mount_is_seen_by_the_next_open_on_another_at_once() {
    let _w = Watchdog::new(Duration::from_secs(120));
    let rig = Rig::new("");
    let b = rig.second_mount("b", "actimeo=3600");
    subscribed(&b.mountpoint);
    for round in 0..300u32 {
        let want: Vec<u8> = format!("round {round} ").repeat(1 + (round as usize * 37) % 500).into_bytes();
        std::fs::write(rig.mnt("f"), &want).unwrap();
        let got = std::fs::read(b.path("f")).unwrap();
        assert!(got == want, "round {round}: read {} bytes, want {}", got.len(), want.len());
    }
    // And an attribute change: a chmod on one mount, seen by the next stat on the other.
    use std::os::unix::fs::PermissionsExt;
    for (round, mode) in [0o600, 0o644, 0o640, 0o604].into_iter().cycle().take(40).enumerate() {
        std::fs::set_permissions(rig.mnt("f"), std::fs::Permissions::from_mode(mode)).unwrap();
        let got = std::fs::metadata(b.path("f")).unwrap().mode() & 0o777;
        assert_eq!(got, mode, "round {round}: mode");
    }
}

/// A change of a file waits only for the mounts that may hold it (AFS's callback
/// registrations, counted by the server's `notice_waits`): a subscribed mount that never
/// named the file costs its writer nothing; once it read the file, each write waits for
/// it, and it reads the next write at once. (Seen to fail when every subscribed mount
/// counts as a holder.)
#[test]
fn a_write_waits_only_for_the_mounts_that_hold_the_file() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let maddr = format!("127.0.0.1:{}", tests::free_port());
    let rig = Rig::with_server("", tests::Squash::None, &["--metrics", &maddr]);
    let b = rig.second_mount("b", "actimeo=3600");
    for m in [&rig.mount.mountpoint, &b.mountpoint] {
        subscribed(m);
    }
    let waits = || tests::metric(&tests::http_get(&maddr, "/metrics"), "fs_server_notice_waits_total");
    std::fs::write(rig.mnt("f"), b"0").unwrap();
    let before = waits();
    assert!(before >= 0.0, "the counter is served");
    for i in 1..=10 {
        std::fs::write(rig.mnt("f"), format!("{i}")).unwrap();
    }
    assert_eq!(waits(), before, "b never named f: ten rewrites waited for nobody");
    assert_eq!(std::fs::read(b.path("f")).unwrap(), b"10");
    let held = waits();
    std::fs::write(rig.mnt("f"), b"11").unwrap();
    assert!(waits() > held, "b holds f now: the rewrite waited for it");
    assert_eq!(std::fs::read(b.path("f")).unwrap(), b"11");
}

/// `security.capability` of `p`, if it has one.
fn caps(p: &Path) -> Option<Vec<u8>> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let mut buf = [0u8; 64];
    let n = unsafe { libc::getxattr(c.as_ptr(), c"security.capability".as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::ENODATA), "getxattr {}", p.display());
        return None;
    }
    Some(buf[..n as usize].to_vec())
}

/// The kernel asks for `security.capability` before every write, and the mount keeps
/// the server's "none" as it keeps attributes (one round trip instead of one per write).
/// Another mount's `setcap` is seen at once all the same (its notice drops what was
/// kept), and a write here then drops the capability, as a write does on a local file.
/// (Seen to fail when a notice leaves the kept answer in place.)
#[test]
fn a_capability_set_on_another_mount_is_seen_and_a_write_here_drops_it() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let rig = Rig::new("actimeo=3600");
    let b = rig.second_mount("b", "");
    for m in [&rig.mount.mountpoint, &b.mountpoint] {
        subscribed(m);
    }
    std::fs::write(rig.mnt("f"), b"x").unwrap();
    let append = |p: &Path, data: &[u8]| {
        use std::io::Write;
        std::fs::OpenOptions::new().append(true).open(p).unwrap().write_all(data).unwrap();
    };
    append(&rig.mnt("f"), b"y"); // the kernel asked, and the answer "none" is kept
    let before = calls(&rig.mount.mountpoint, "GETXATTR");
    for _ in 0..20 {
        append(&rig.mnt("f"), b"z");
    }
    assert_eq!(calls(&rig.mount.mountpoint, "GETXATTR"), before, "20 appends, no GETXATTR");
    // cap_net_bind_service, permitted (struct vfs_cap_data, revision 2, little-endian).
    let mut value = 0x0200_0000u32.to_le_bytes().to_vec();
    value.extend_from_slice(&(1u32 << 10).to_le_bytes());
    value.extend_from_slice(&[0u8; 12]);
    let c = std::ffi::CString::new(b.path("f").into_os_string().into_encoded_bytes()).unwrap();
    let r =
        unsafe { libc::setxattr(c.as_ptr(), c"security.capability".as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    assert_eq!(r, 0, "setcap through b: {}", std::io::Error::last_os_error());
    assert_eq!(caps(&rig.export("f")), Some(value.clone()));
    assert_eq!(caps(&rig.mnt("f")), Some(value), "the capability b set, seen here at once");
    append(&rig.mnt("f"), b"w");
    assert_eq!(caps(&rig.export("f")), None, "a write drops the capability");
    assert_eq!(caps(&b.path("f")), None);
    assert_eq!(std::fs::read(rig.export("f")).unwrap(), b"xyzzzzzzzzzzzzzzzzzzzzw");
}

/// Order: one mount renames one file along a chain of names (x0 -> x1 -> ...), and
/// creates and removes others around it, while another mount watches the chain through
/// its caches (`actimeo=3600`). At every moment exactly one name of the chain exists on
/// the server, in increasing order. The kernel's cached names are dropped by the notifier
/// thread a moment after the notice arrives, so a fresh answer about a later name can
/// overtake the drop of an earlier one: the watcher may see an earlier name for that
/// moment (measured here, and in the README; a quarter of a second fails the test), and
/// its listing ends identical to the server's. Without the notices'
/// name drops the earlier names stay for the hour: the test fails (seen).
#[test]
fn a_storm_of_renames_is_seen_in_order() {
    storm_of_renames("actimeo=3600", Duration::ZERO);
}

/// The same storm watched through a mount that keeps no names (`lookupcache=none`, as
/// nfs(5)): every lookup asks the server, so no earlier name is ever seen after a later
/// one. (Seen to fail when the kernel keeps the names a listing or a lookup brought.)
#[test]
fn a_storm_of_renames_is_seen_in_strict_order_without_a_lookup_cache() {
    storm_of_renames("actimeo=3600,lookupcache=none", Duration::ZERO);
}

/// The storm, watched through a mount with `watcher_opts`; an earlier name may be seen
/// for up to `tolerance` after a later one (none at all for zero).
fn storm_of_renames(watcher_opts: &str, tolerance: Duration) {
    let _w = Watchdog::new(Duration::from_secs(120));
    let rig = Rig::new("");
    let b = rig.second_mount("b", watcher_opts);
    subscribed(&b.mountpoint);
    const N: usize = 400;
    std::fs::create_dir(rig.mnt("d")).unwrap();
    std::fs::write(rig.mnt("d/x0"), b"x").unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (violations, last_seen) = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            let mut latest = 0usize;
            let mut latest_at = Instant::now();
            let mut violations: Vec<(usize, usize, Duration)> = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || latest < N {
                // Probe the names around the latest seen (through the kernel's caches).
                for k in latest.saturating_sub(3)..=(latest + 3).min(N) {
                    if b.path(&format!("d/x{k}")).exists() {
                        if k < latest {
                            violations.push((k, latest, latest_at.elapsed()));
                        } else if k > latest {
                            latest = k;
                            latest_at = Instant::now();
                        }
                    }
                }
                if stop.load(std::sync::atomic::Ordering::Relaxed) && latest < N {
                    // The storm is over: the end must come (no notice lost).
                    assert!(
                        within(Duration::from_secs(5), || b.path(&format!("d/x{N}")).exists()),
                        "the watcher never saw the last name"
                    );
                    latest = N;
                }
            }
            (violations, latest)
        });
        for k in 0..N {
            std::fs::write(rig.mnt(&format!("d/y{k}")), b"y").unwrap();
            std::fs::rename(rig.mnt(&format!("d/x{k}")), rig.mnt(&format!("d/x{}", k + 1))).unwrap();
            if k > 0 {
                std::fs::remove_file(rig.mnt(&format!("d/y{}", k - 1))).unwrap();
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        watcher.join().unwrap()
    });
    let longest = violations.iter().map(|v| v.2).max().unwrap_or_default();
    let status = mount_status(&b.mountpoint);
    eprintln!(
        "{} probes saw an earlier name after a later one; the longest {longest:?} after the later one was seen \
         (kernel name epochs {}, answers made again {})",
        violations.len(),
        metric(&status, "kernel name epochs"),
        metric(&status, "answers about names made again"),
    );
    assert!(
        if tolerance.is_zero() { violations.is_empty() } else { longest < tolerance },
        "an earlier name still seen {longest:?} after a later one: {:?}",
        &violations[..violations.len().min(10)]
    );
    assert_eq!(last_seen, N);
    assert_eq!(names(&b.path("d")), [format!("x{N}"), format!("y{}", N - 1)]);
    assert_eq!(names(&b.path("d")), names(&rig.export("d")), "the watcher's listing ends as the server's");
    for k in 0..N {
        assert!(!b.path(&format!("d/x{k}")).exists(), "x{k} is gone on the watcher too");
        assert_eq!(b.path(&format!("d/y{k}")).exists(), k == N - 1, "y{k} on the watcher");
    }
}

/// A mount that keeps a file open across a server restart makes no LOOKUP or open of it
/// afterwards: the new server learns that it holds the file from the handle its READs
/// name (AFS's callback registration). Another mount's rewrites then wait for it, and
/// each read through the open file right after one sees the new bytes, though the
/// mount cached the old ones. (Seen to fail when only handed-out handles register.)
#[test]
fn a_file_kept_open_across_a_restart_is_held_by_the_mount_that_reads_it() {
    use std::os::unix::fs::FileExt;
    let _w = Watchdog::new(Duration::from_secs(120));
    let mut rig = Rig::new("");
    let b = rig.second_mount("b", "actimeo=3600");
    subscribed(&b.mountpoint);
    std::fs::write(rig.mnt("f"), b"v0000").unwrap();
    let f = std::fs::File::open(b.path("f")).unwrap();
    let read = |f: &std::fs::File| {
        let mut buf = [0u8; 5];
        f.read_exact_at(&mut buf, 0).unwrap();
        buf
    };
    assert_eq!(&read(&f), b"v0000");
    let instance = |mp: &Path| mount_status(mp).lines().find(|l| l.starts_with("notices subscribed")).map(String::from);
    let (was_a, was_b) = (instance(&rig.mount.mountpoint), instance(&b.mountpoint));
    rig.server.kill();
    rig.start_server_again();
    wait_until(Duration::from_secs(20), "both mounts subscribed to the new instance", || {
        let (a, bb) = (instance(&rig.mount.mountpoint), instance(&b.mountpoint));
        a.is_some() && a != was_a && bb.is_some() && bb != was_b
    });
    for i in 1..=100 {
        assert_eq!(&read(&f), format!("v{:04}", i - 1).as_bytes(), "b's read before rewrite {i}");
        std::fs::write(rig.mnt("f"), format!("v{i:04}")).unwrap();
        assert_eq!(&read(&f), format!("v{i:04}").as_bytes(), "b's read right after rewrite {i}");
    }
}

/// A restarted server is a new instance: the mount drops what it cached (it cannot know
/// what changed while it was away) and subscribes again; a change made behind its back
/// while the server was down shows.
#[test]
fn a_restarted_server_makes_the_mount_revalidate() {
    let _w = Watchdog::new(Duration::from_secs(120));
    let mut rig = Rig::new("actimeo=3600");
    subscribed(&rig.mount.mountpoint);
    std::fs::write(rig.mnt("f"), b"1234").unwrap();
    let instance = |st: &str| st.lines().find(|l| l.starts_with("notices subscribed")).map(|l| l.to_string());
    let first = instance(&mount_status(&rig.mount.mountpoint)).unwrap();
    assert_eq!(size(&rig.mnt("f")), Some(4));
    rig.server.kill();
    // Changed behind the mount's back, in the export itself, while no server runs.
    std::fs::write(rig.export("f"), b"123456789").unwrap();
    rig.start_server_again();
    wait_until(Duration::from_secs(20), "subscribed to the new instance", || {
        instance(&mount_status(&rig.mount.mountpoint)).is_some_and(|l| l != first)
    });
    wait_until(Duration::from_secs(5), "the change made while away", || size(&rig.mnt("f")) == Some(9));
    assert_eq!(std::fs::metadata(rig.mnt("f")).unwrap().size(), 9);
}

/// Latency of a change seen through another mount's `stat` polling with `actimeo=3600`
/// (only a notice can make it visible): p50 and p99 over 200 changes, printed for the
/// README (the benchmark runs 1,000 in `scripts/bench-fs`); asserted only to arrive.
#[test]
fn notice_latency_is_measured() {
    let _w = Watchdog::new(Duration::from_secs(120));
    let rig = Rig::new("");
    let b = rig.second_mount("b", "actimeo=3600");
    subscribed(&b.mountpoint);
    let lat = tests::notice_latency(&rig.mnt("f"), &b.path("f"), 200);
    eprintln!("p50 {:?} p99 {:?}", lat[lat.len() / 2], lat[lat.len() * 99 / 100]);
}

/// A listing answers later LOOKUPs without a round trip while the promise covers it (an
/// `ls -l` after `ls`); another mount's rename and create in the folder take that away at
/// once: the old name is gone, the new names are found, by name and by listing.
#[test]
fn lookups_answered_from_a_listing_follow_another_mounts_changes() {
    let _w = Watchdog::new(Duration::from_secs(120));
    let rig = Rig::new("");
    // (`rdirplus=auto`: the kernel takes names from the first page only and looks up the
    // rest, which the listing answers; by default it takes them all.)
    let b = rig.second_mount("b", "actimeo=3600,rdirplus=auto");
    subscribed(&b.mountpoint);
    std::fs::create_dir(rig.mnt("d")).unwrap();
    // Made beside the server, so that no notice of theirs (the background COMMITs of 300
    // writes through a mount, late under load) drops the listing below.
    files_beside_the_server(&rig, 300);
    let lookups = || calls(&b.mountpoint, "LOOKUP");
    let listed = std::fs::read_dir(b.path("d")).unwrap().count();
    assert_eq!(listed, 300);
    let before = lookups();
    for i in 0..300 {
        assert!(std::fs::symlink_metadata(b.path(&format!("d/f{i}"))).is_ok());
    }
    assert!(!b.path("d/nothing").exists(), "a name the listing lacks is not there");
    assert_eq!(lookups(), before, "ls -l after ls: no LOOKUP reached the server");
    // A file of the folder grows elsewhere: its new size, not the listing's.
    std::fs::write(rig.mnt("d/f3"), b"longer").unwrap();
    // The kernel forgets its names and inodes, so the next `stat` is a LOOKUP, which
    // the kept listing would answer.
    std::fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
    wait_until(Duration::from_secs(5), "f3's new size", || std::fs::metadata(b.path("d/f3")).unwrap().len() == 6);
    // And here: a change of ours is not hidden by the listing either (`touch` then
    // `make`, found by the git-and-make test).
    std::fs::write(b.path("d/f4"), b"mine!").unwrap();
    assert_eq!(std::fs::metadata(b.path("d/f4")).unwrap().len(), 5);
    std::fs::rename(rig.mnt("d/f7"), rig.mnt("d/renamed")).unwrap();
    std::fs::write(rig.mnt("d/nothing"), b"now").unwrap();
    wait_until(Duration::from_secs(5), "the rename seen", || !b.path("d/f7").exists());
    assert!(b.path("d/renamed").exists());
    assert_eq!(std::fs::read(b.path("d/nothing")).unwrap(), b"now");
    let seen = names(&b.path("d"));
    assert!(seen.contains(&"renamed".to_string()) && seen.contains(&"nothing".to_string()));
    assert!(!seen.contains(&"f7".to_string()));
    assert_eq!(seen.len(), 301);
}

/// `rm` after `ls`: our own removals keep the folder's listing, which follows them, so
/// each removal's LOOKUP is answered from it; the listing and every LOOKUP then show the
/// folder as it is, and the other name of a hard-linked file shows its new link count
/// (the listing held the old one, so it is not kept past that removal).
#[test]
fn removals_here_keep_the_listing_and_it_follows_them() {
    let _w = Watchdog::new(Duration::from_secs(120));
    let rig = Rig::new("");
    // (`rdirplus=auto`, so that removals past the first page look their names up.)
    let b = rig.second_mount("b", "actimeo=3600,rdirplus=auto");
    subscribed(&b.mountpoint);
    std::fs::create_dir(rig.mnt("d")).unwrap();
    files_beside_the_server(&rig, 200);
    std::fs::write(rig.export("d/a"), b"linked").unwrap();
    std::fs::hard_link(rig.export("d/a"), rig.export("d/a2")).unwrap();
    std::fs::create_dir(rig.export("d/sub")).unwrap();
    assert_eq!(names(&b.path("d")).len(), 203);
    let before = calls(&b.mountpoint, "LOOKUP");
    for i in 0..100 {
        std::fs::remove_file(b.path(&format!("d/f{i}"))).unwrap();
    }
    std::fs::remove_dir(b.path("d/sub")).unwrap();
    assert_eq!(calls(&b.mountpoint, "LOOKUP"), before, "rm after ls: no LOOKUP reached the server");
    assert_eq!(names(&b.path("d")), names(&rig.export("d")), "the listing follows our removals");
    // The kernel forgets its names, so each `stat` below is a LOOKUP of ours.
    std::fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
    assert!(!b.path("d/f5").exists() && !b.path("d/sub").exists() && b.path("d/f150").exists());
    assert_eq!(std::fs::metadata(b.path("d/a2")).unwrap().nlink(), 2);
    std::fs::remove_file(b.path("d/a")).unwrap();
    std::fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
    assert_eq!(std::fs::metadata(b.path("d/a2")).unwrap().nlink(), 1, "the other name's link count");
    assert_eq!(std::fs::read(b.path("d/a2")).unwrap(), b"linked");
    assert_eq!(names(&b.path("d")), names(&rig.export("d")));
}

/// Gaps: a server that pushes no seventh notice, and one that pushes none at all (a test
/// switch; they are numbered and kept all the same). The mount notices each gap (at the
/// next notice, or at the server's beat when no notice follows), reconnects, catches up
/// from the history, and ends identical to the server: every size and every name. (With
/// the beat's check taken out, the mount that hears no notice stays stale: seen.)
#[test]
fn notices_dropped_on_purpose_are_caught_up() {
    for every in ["7", "1"] {
        dropped(every);
    }
}

fn dropped(every: &str) {
    let _w = Watchdog::new(Duration::from_secs(120));
    let rig = Rig::with_server("", tests::Squash::None, &["--test-drop-notices-every", every]);
    let b = rig.second_mount("b", "actimeo=3600");
    subscribed(&b.mountpoint);
    std::fs::create_dir(rig.mnt("d")).unwrap();
    assert!(b.path("d").is_dir());
    // With every notice dropped each change waits for the beat (a second) before the
    // other mount catches up and acknowledges it: fewer rounds keep it within the watchdog.
    let rounds = if every == "1" { 12 } else { 40 };
    for i in 1..=rounds {
        std::fs::write(rig.mnt(&format!("d/f{}", i % 5)), vec![b'x'; i]).unwrap();
        if i % 3 == 0 {
            std::fs::write(rig.mnt(&format!("d/n{i}")), b"n").unwrap();
        }
        if i % 6 == 0 {
            std::fs::remove_file(rig.mnt(&format!("d/n{}", i - 3))).unwrap();
        }
        // The watching mount looks at everything as it goes, caching it for an hour.
        for e in std::fs::read_dir(b.path("d")).unwrap() {
            let _ = std::fs::metadata(e.unwrap().path());
        }
    }
    let view = |root: &Path| {
        let mut v: Vec<(String, u64)> = std::fs::read_dir(root.join("d"))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name().into_string().unwrap(), std::fs::metadata(e.path()).unwrap().len())
            })
            .collect();
        v.sort();
        v
    };
    let server = view(&rig.export(""));
    wait_until(Duration::from_secs(10), "the watching mount caught up", || view(&b.mountpoint) == server);
    for (name, len) in &server {
        assert_eq!(std::fs::metadata(b.path(&format!("d/{name}"))).unwrap().len(), *len, "{name}");
    }
}

/// Deadlock: 10,000 notices and more against a folder and its files (written, made and
/// removed through one mount) while threads look them up and read them through another
/// mount, with one FUSE thread and with eight. The notifier drops the kernel's names and
/// pages while READs and LOOKUPs of the same objects are in flight: nothing may hang (the
/// watchdog fails the test) and the mount's threads end in no uninterruptible sleep.
#[test]
fn notices_racing_lookups_and_reads_never_hang() {
    for threads in ["1", "8"] {
        storm_against_readers(threads);
    }
}

fn storm_against_readers(threads: &str) {
    let _w = Watchdog::new(Duration::from_secs(120));
    let rig = Rig::new("");
    let b = rig.second_mount("b", &format!("threads={threads}"));
    subscribed(&b.mountpoint);
    std::fs::create_dir(rig.mnt("d")).unwrap();
    for i in 0..8 {
        std::fs::write(rig.mnt(&format!("d/f{i}")), vec![b'a'; 64 << 10]).unwrap();
    }
    let applied = || {
        let st = mount_status(&b.mountpoint);
        st.lines()
            .find(|l| l.starts_with("notices subscribed"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let start = applied();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for r in 0..3 {
            let (b, stop) = (&b, &stop);
            s.spawn(move || {
                let mut x = r;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    x = (x + 1) % 8;
                    let p = b.path(&format!("d/f{x}"));
                    let _ = std::fs::metadata(&p);
                    let _ = std::fs::read(&p);
                    let _ = std::fs::read_dir(b.path("d")).map(|d| d.count());
                    let _ = b.path(&format!("d/t{x}")).exists();
                }
            });
        }
        let mut i = 0usize;
        while applied() < start + 10_000 {
            for _ in 0..50 {
                i += 1;
                std::fs::write(rig.mnt(&format!("d/f{}", i % 8)), vec![b'a' + (i % 26) as u8; 4096 + i % 60000])
                    .unwrap();
                let t = rig.mnt(&format!("d/t{}", i % 8));
                if i.is_multiple_of(2) {
                    std::fs::write(&t, b"t").unwrap();
                } else {
                    let _ = std::fs::remove_file(&t);
                }
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    // Nothing of the mount's process is left waiting uninterruptibly.
    let task_states = || -> Vec<char> {
        std::fs::read_dir(format!("/proc/{}/task", b.pid()))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("stat")).ok())
            .filter_map(|st| st.rsplit(')').next().and_then(|r| r.trim().chars().next()))
            .collect()
    };
    wait_until(Duration::from_secs(10), "no thread of the mount in D state", || !task_states().contains(&'D'));
    // And the mount still answers, with what the server has.
    let last = std::fs::read(rig.export("d/f0")).unwrap();
    wait_until(Duration::from_secs(5), "the last content", || std::fs::read(b.path("d/f0")).unwrap() == last);
}

/// A folder this mount made: it knows every name in it through its own changes, so
/// looking up a new name before making it (`create`, untar) costs no round trip. Another
/// mount's create in it is seen at once (the knowledge ends with its notice), and our own
/// changes after that are right too.
#[test]
fn names_of_a_folder_we_made_need_no_lookup_and_follow_another_mount() {
    let _w = Watchdog::new(Duration::from_secs(120));
    let rig = Rig::new("");
    let b = rig.second_mount("b", "");
    for m in [&rig.mount.mountpoint, &b.mountpoint] {
        subscribed(m);
    }
    std::fs::create_dir(rig.mnt("d")).unwrap();
    let lookups = || calls(&rig.mount.mountpoint, "LOOKUP");
    let before = lookups();
    let make = |p: std::path::PathBuf| {
        std::fs::OpenOptions::new().write(true).create_new(true).open(p).unwrap();
    };
    for i in 0..100 {
        make(rig.mnt(&format!("d/f{i}")));
    }
    std::fs::rename(rig.mnt("d/f0"), rig.mnt("d/g0")).unwrap();
    std::fs::remove_file(rig.mnt("d/f1")).unwrap();
    std::fs::create_dir(rig.mnt("d/sub")).unwrap();
    make(rig.mnt("d/sub/x"));
    for gone in ["d/f0", "d/f1", "d/nothing", "d/sub/y"] {
        assert!(!rig.mnt(gone).exists(), "{gone}");
    }
    // 104 new names were looked up; none of them reached the server. (An existing name
    // may be asked again: an answer given while the notifier held its gate, under load,
    // is not promised.)
    let asked = lookups() - before;
    assert!(asked < 20, "no LOOKUP of a new name reached the server ({asked} LOOKUPs did)");
    // Another mount makes a name here: this mount's "no such name" ends with its notice.
    std::fs::write(b.path("d/theirs"), b"x").unwrap();
    wait_until(Duration::from_secs(5), "the other mount's file seen", || rig.mnt("d/theirs").exists());
    make(rig.mnt("d/f100"));
    std::fs::remove_file(b.path("d/f2")).unwrap();
    wait_until(Duration::from_secs(5), "the other mount's removal seen", || !rig.mnt("d/f2").exists());
    let seen = names(&rig.mnt("d"));
    assert_eq!(seen, names(&rig.export("d")));
    assert_eq!(seen.len(), 101, "f0 renamed, f1 and f2 gone, sub, f100 and theirs made");
}

/// Kernel listing pages the mount at `mp` was asked for, from `fs-client status`.
fn listing_pages(mp: &Path) -> f64 {
    tests::metric(&mount_status(mp), "kernel listing pages")
}

/// A folder listed again is answered by the kernel alone (`FOPEN_CACHE_DIR`, kept at the
/// next open only if made from the listing the promise still covers), and that copy
/// follows every change: another mount's (its notice), ours through the kernel, and ours
/// the kernel does not see (the last close of a silly-renamed file removes it). With the
/// kernel's copy kept at every open of a promised folder, the removed silly name stays
/// listed: seen.
#[test]
fn a_listing_again_is_answered_by_the_kernel_and_follows_every_change() {
    let _w = Watchdog::new(Duration::from_secs(120));
    // (An hour's attribute timeout: the kernel would otherwise ask for the folder's
    // attributes again soon after a change, and drop its copy on a new change time.)
    let rig = Rig::new("actimeo=3600");
    let b = rig.second_mount("b", "");
    let a = &rig.mount.mountpoint;
    for m in [a, &b.mountpoint] {
        subscribed(m);
    }
    std::fs::create_dir(rig.export("d")).unwrap();
    files_beside_the_server(&rig, 500);
    let same = || names(&rig.mnt("d")) == names(&rig.export("d"));
    assert!(same());
    let first = listing_pages(a);
    assert!(first > 0.0);
    for _ in 0..3 {
        assert!(same());
    }
    assert_eq!(listing_pages(a), first, "listed again: no page asked of the mount");
    // Another mount's changes: seen once their notice is applied.
    std::fs::write(b.path("d/new"), b"n").unwrap();
    std::fs::rename(b.path("d/f1"), b.path("d/moved")).unwrap();
    std::fs::remove_file(b.path("d/f2")).unwrap();
    wait_until(Duration::from_secs(10), "another mount's changes listed", same);
    // Ours, through the kernel: at once.
    std::fs::write(rig.mnt("d/mine"), b"m").unwrap();
    assert!(same(), "our create listed at once");
    std::fs::remove_file(rig.mnt("d/f3")).unwrap();
    assert!(same(), "our removal listed at once");
    // Ours, unseen by the kernel: a file removed while open here is renamed aside, and
    // its last close removes that name.
    let open = std::fs::File::open(rig.mnt("d/f4")).unwrap();
    std::fs::remove_file(rig.mnt("d/f4")).unwrap();
    let silly = || names(&rig.export("d")).into_iter().any(|n| n.starts_with(".fs-silly-"));
    assert!(silly());
    assert!(same(), "the silly name listed");
    assert!(same(), "the silly name listed again");
    drop(open);
    wait_until(Duration::from_secs(10), "the silly name removed", || !silly());
    assert!(same(), "the removed silly name is no longer listed");
}

/// `git status` or `make` in a folder nobody listed looks each name up: after the second
/// LOOKUP that finds its name at the server, the folder's listing is fetched in the
/// background, and the rest are answered from it, a name it lacks included, while
/// another mount's changes there still show. Seen to fail without the fetch.
#[test]
fn lookups_by_name_in_a_folder_nobody_listed_are_answered_from_a_fetched_listing() {
    let _w = Watchdog::new(Duration::from_secs(120));
    let rig = Rig::new("");
    let b = rig.second_mount("b", "actimeo=3600");
    subscribed(&b.mountpoint);
    std::fs::create_dir(rig.export("d")).unwrap();
    files_beside_the_server(&rig, 300);
    let lookups = || calls(&b.mountpoint, "LOOKUP");
    for i in 0..2 {
        assert!(std::fs::symlink_metadata(b.path(&format!("d/f{i}"))).is_ok());
    }
    wait_until(Duration::from_secs(10), "the folder's listing fetched", || calls(&b.mountpoint, "READDIRPLUS") >= 1);
    let before = lookups();
    for i in 2..300 {
        assert!(std::fs::symlink_metadata(b.path(&format!("d/f{i}"))).is_ok());
    }
    assert!(!b.path("d/nothing").exists());
    // (One LOOKUP may still have raced the listing's keeping.)
    assert!(lookups() <= before + 1, "298 names and an absent one: {} LOOKUPs", lookups() - before);
    std::fs::write(rig.mnt("d/new"), b"n").unwrap();
    std::fs::remove_file(rig.mnt("d/f5")).unwrap();
    wait_until(Duration::from_secs(10), "another mount's create seen", || b.path("d/new").exists());
    wait_until(Duration::from_secs(10), "another mount's removal seen", || !b.path("d/f5").exists());
    assert_eq!(names(&b.path("d")), names(&rig.export("d")));
}
