//! Regression tests, one per bug found from outside, each named after the bug (the
//! close-to-open size bug is covered by `client_e2e`'s two-mounts tests). Each was seen
//! to fail before its fix.

use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;
use tests::{as_user, wait_until, Rig, Squash, Watchdog, USER, USER_DIR};

fn fallocate(f: &std::fs::File, mode: i32, offset: i64, len: i64) {
    // SAFETY: fallocate(2) on an open descriptor.
    let r = unsafe { libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(f), mode, offset, len) };
    assert_eq!(r, 0, "fallocate mode {mode:#x}: {}", std::io::Error::last_os_error());
}

/// Punching a hole or zeroing a range through an open descriptor: the next read through
/// it gives zeros there (our cache and the kernel's dropped the range) and the old data
/// elsewhere (nothing more was dropped than needed is not asserted; the data is).
#[test]
fn regression_punched_and_zeroed_ranges_read_as_zeros() {
    // With `noatime` the first read fills our page cache (otherwise it goes straight to
    // the server, for the access time's sake).
    for opts in ["", "noatime"] {
        punched_and_zeroed(opts);
    }
}

fn punched_and_zeroed(opts: &str) {
    let _w = Watchdog::new(Duration::from_secs(60));
    let rig = Rig::new(opts);
    std::fs::write(rig.mnt("f"), vec![b'a'; 65536]).unwrap();
    let f = std::fs::OpenOptions::new().read(true).write(true).open(rig.mnt("f")).unwrap();
    let mut all = vec![0u8; 65536];
    f.read_exact_at(&mut all, 0).unwrap();
    assert_eq!(all, vec![b'a'; 65536]);
    let mut want = vec![b'a'; 65536];
    fallocate(&f, libc::FALLOC_FL_ZERO_RANGE, 4096, 8192);
    want[4096..12288].fill(0);
    let mut buf = [1u8; 8];
    f.read_exact_at(&mut buf, 4096).unwrap();
    assert_eq!(buf, [0; 8], "zeroed range");
    fallocate(&f, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, 20480, 8192);
    want[20480..28672].fill(0);
    f.read_exact_at(&mut buf, 20480).unwrap();
    assert_eq!(buf, [0; 8], "punched hole");
    f.read_exact_at(&mut all, 0).unwrap();
    assert!(all == want, "the whole file after both");
    // Allocation past the end: the file grows by zeros, the old last block is no end.
    fallocate(&f, 0, 60000, 20000);
    let mut grown = vec![1u8; 80000];
    f.read_exact_at(&mut grown, 0).unwrap();
    want.resize(80000, 0);
    assert!(grown == want, "after allocating past the end");
    assert_eq!(std::fs::read(rig.export("f")).unwrap(), want, "the server's file");
}

/// Relatime, as a local file system has it: the first read after a change updates the
/// access time, even when the kernel has the file's pages cached (it wrote them); a
/// second read does not.
#[test]
fn regression_reads_update_the_access_time_as_relatime() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let rig = Rig::new("");
    let local = tempfile::tempdir().unwrap();
    for dir in [local.path(), &rig.mnt("")] {
        let p = dir.join("f");
        std::fs::write(&p, vec![b'x'; 65536]).unwrap(); // whole pages: the kernel keeps them
        let m = std::fs::metadata(&p).unwrap();
        let (atime0, mtime) = ((m.atime(), m.atime_nsec()), (m.mtime(), m.mtime_nsec()));
        // The clock the file system stamps with must have moved past the write.
        let written = std::time::SystemTime::UNIX_EPOCH + Duration::new(mtime.0 as u64, mtime.1 as u32);
        wait_until(Duration::from_secs(5), "the clock moves on", || {
            std::time::SystemTime::now() > written + Duration::from_millis(20)
        });
        std::fs::read(&p).unwrap();
        let m = std::fs::metadata(&p).unwrap();
        let atime1 = (m.atime(), m.atime_nsec());
        assert!(atime1 > atime0 && atime1 > mtime, "{}: first read updates the access time", dir.display());
        std::fs::read(&p).unwrap();
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!((m.atime(), m.atime_nsec()), atime1, "{}: a second read does not", dir.display());
    }
}

/// A file replaced by a rename while open here (an editor's save, `mv`, a package
/// manager) stays usable through the open descriptor until its last close, as on a
/// local file system, and nothing is left behind; run as an ordinary user in its own
/// 0755 folder under root squash. A rename that fails leaves the target in place.
#[test]
fn regression_a_file_renamed_over_while_open_stays_usable() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let rig = Rig::with("", Squash::Root);
    let script = r#"
printf 'old contents\n' > old
exec 3<> old
printf 'new\n' > new
mv new old
stat -L -c '%s %h' /proc/self/fd/3
head -c 3 <&3; echo
printf 'WRITTEN' >&3
cat /proc/self/fd/3
exec 3>&-
cat old
"#;
    let local = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(local.path(), Some(USER), Some(USER)).unwrap();
    let want = tests::sh_as_user(local.path(), script);
    assert_eq!(want, "13 0\nold\noldWRITTENts\nnew\n", "(the script, locally)");
    assert_eq!(tests::sh_as_user(&rig.mnt(USER_DIR), script), want);
    // The last close's RELEASE reaches the mount after close(2) returns, and the silly
    // file goes after it (as on NFS): wait for it, with a deadline.
    let export = rig.export(USER_DIR);
    wait_until(Duration::from_secs(10), "only 'old' left", || {
        std::fs::read_dir(&export).unwrap().map(|e| e.unwrap().file_name()).collect::<Vec<_>>() == ["old"]
    });
    // A rename that the server refuses (its source was removed through another mount,
    // while this one still has it cached) after the open target was moved aside: the
    // target gets its name back.
    let other = rig.second_mount("mnt2", "");
    let out = tests::sh_as_user(
        &rig.mnt(USER_DIR),
        &format!(
            r#"
printf 'target\n' > t
printf 'source\n' > s
ls s >/dev/null
exec 3< t
rm {other}/s
perl -e 'rename(q(s), q(t)) or print qq(rename: $!\n)'
cat t
exec 3<&-
"#,
            other = other.path(USER_DIR).display()
        ),
    );
    assert_eq!(out, "rename: No such file or directory\ntarget\n");
}

/// Writing to a set-id file as another user clears the set-id bits, as a local file
/// system does (the mount answered EPERM: the kernel asked to clear them with a SETATTR
/// that only the owner may make).
#[test]
fn regression_writing_to_a_setid_file_as_another_user() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let rig = Rig::new("");
    let local = tempfile::tempdir().unwrap();
    std::fs::set_permissions(local.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for mode in [0o4777, 0o2777, 0o6777] {
        let mut seen = Vec::new();
        for dir in [local.path(), &rig.mnt("")] {
            let p = dir.join(format!("s{mode:o}"));
            std::fs::write(&p, b"x\n").unwrap();
            std::os::unix::fs::chown(&p, Some(USER), Some(USER)).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let out = as_user(2000, 2000, &[], dir, &format!("echo hi >> s{mode:o}"));
            assert!(out.status.success(), "{}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
            let m = std::fs::metadata(&p).unwrap();
            seen.push((m.mode() & 0o7777, std::fs::read(&p).unwrap()));
        }
        assert_eq!(seen[1], seen[0], "mode {mode:o}: the mount as a local folder");
        assert_eq!(seen[1].1, b"x\nhi\n");
        assert_eq!(seen[1].0 & 0o6000, 0, "mode {mode:o}: set-id bits cleared");
    }
}

/// Every permission bit alone, against owner, primary group, supplementary group and
/// others: read, write, execute and access(2) give what a local folder gives. (A file of
/// mode 010 could not be executed by its group: the server refused the kernel's READ of
/// the program.)
#[test]
fn regression_permission_bits_as_a_local_folder() {
    let _w = Watchdog::new(Duration::from_secs(120));
    let rig = Rig::new("");
    let local = tempfile::tempdir().unwrap();
    std::fs::set_permissions(local.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let modes: Vec<u32> = (0..9).map(|b| 1 << b).collect();
    for dir in [local.path(), &rig.mnt("")] {
        for mode in &modes {
            let p = dir.join(format!("m{mode:03o}"));
            std::fs::copy("/bin/true", &p).unwrap();
            std::os::unix::fs::chown(&p, Some(99), Some(99)).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).unwrap();
        }
    }
    let check = modes
        .iter()
        .map(|m| {
            let f = format!("m{m:03o}");
            format!(
                "r=$(head -c1 {f} >/dev/null 2>&1 && echo r || echo -); \
                 w=$( (: >> {f}) 2>/dev/null && echo w || echo -); \
                 x=$(./{f} 2>/dev/null && echo x || echo -); \
                 a=$( (test -r {f} && echo r || echo -; test -w {f} && echo w || echo -; test -x {f} && echo x || echo -) | tr -d '\\n'); \
                 echo \"{f} $r$w$x $a\""
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    // (uid, gid, supplementary groups): owner, group (primary), group (supplementary),
    // other.
    let users: [(u32, u32, &[u32]); 4] = [(99, 500, &[]), (200, 99, &[]), (201, 500, &[99]), (300, 300, &[])];
    for (uid, gid, groups) in users {
        let run = |dir: &Path| {
            let out = as_user(uid, gid, groups, dir, &check);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).unwrap()
        };
        let (want, got) = (run(local.path()), run(&rig.mnt("")));
        assert_eq!(got, want, "uid {uid} gid {gid} groups {groups:?}: mount vs local");
    }
}
