//! `fs-client` on a real mount: ordinary tools give the same results as on a local
//! folder. Every test mounts on temporary folders and unmounts on every path (the
//! fixtures' `Drop`), with a watchdog as the last resort.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;
use tests::{manifest, sh, sh_as_user, Rig, Squash, Watchdog, USER, USER_DIR};

/// The same commands in a local folder and in the mount must leave the same tree.
const SCRIPT: &str = r#"
mkdir -p a/b/c
echo hello > a/f1
seq 1 200000 > a/nums
cp -a a copy
mv copy/f1 copy/f1.moved
ln a/f1 a/hard
ln -s ../f1 a/b/sym
chmod 640 a/f1
chown 1000:1000 a/nums
touch -d '2020-01-02 03:04:05' a/f1
truncate -s 12345 a/nums
truncate -s 5000000 a/sparse
mkfifo a/fifo
setfattr -n user.color -v blue a/f1
setfattr -n user.gone -v x a/nums
setfattr -x user.gone a/nums
fallocate -l 1M a/alloc
tar cf t.tar a
mkdir untar
tar xf t.tar -C untar
rm t.tar
# An editor's save: write a temporary file, then rename it over the original.
printf 'new contents\n' > a/.f1.tmp
mv a/.f1.tmp a/f1
rm -r copy
[ "$(cat a/hard)" = hello ]
[ "$(stat -c %Y untar/a/nums)" = "$(stat -c %Y a/nums)" ]
"#;

/// Where a test acts, and as whom: as root at the top of the mount, or under root squash
/// as an ordinary user in the folder it owns (root would be `nobody` there).
fn workdir(rig: &Rig, squash: Squash) -> (std::path::PathBuf, std::path::PathBuf) {
    match squash {
        Squash::None => (rig.mnt(""), rig.export("")),
        Squash::Root => (rig.mnt(USER_DIR), rig.export(USER_DIR)),
    }
}

/// Runs a script as the test's actor (see [`workdir`]).
fn run(squash: Squash, dir: &Path, script: &str) -> String {
    match squash {
        Squash::None => sh(dir, script),
        Squash::Root => sh_as_user(dir, script),
    }
}

/// A local folder the test's actor may write.
fn local_dir(squash: Squash) -> tempfile::TempDir {
    let local = tempfile::tempdir().unwrap();
    if squash == Squash::Root {
        std::os::unix::fs::chown(local.path(), Some(USER), Some(USER)).unwrap();
    }
    local
}

fn ordinary_tools(squash: Squash) {
    let _w = Watchdog::new(Duration::from_secs(120));
    let rig = Rig::with("", squash);
    let (mnt, export) = workdir(&rig, squash);
    let local = local_dir(squash);
    run(squash, local.path(), SCRIPT);
    run(squash, &mnt, SCRIPT);
    {
        // Root squashed may not read the user's files: look as the user does.
        let _as = (squash == Squash::Root).then(|| tests::FsIdentity::assume(USER, USER));
        assert_eq!(manifest(&mnt), manifest(local.path()));
    }
    // What the server stored is what the mount shows.
    assert_eq!(manifest(&export), manifest(local.path()));
    let f1 = std::fs::metadata(mnt.join("untar/a/f1")).unwrap();
    assert_eq!(f1.mtime(), std::fs::metadata(local.path().join("untar/a/f1")).unwrap().mtime());
    let out = run(squash, &mnt, "getfattr --only-values -n user.color a/hard; df -P . | tail -1; ls -l a | wc -l");
    assert!(out.starts_with("blue"), "{out}");
}

#[test]
fn ordinary_tools_match_a_local_folder() {
    ordinary_tools(Squash::None);
}

#[test]
fn ordinary_tools_match_a_local_folder_under_root_squash() {
    ordinary_tools(Squash::Root);
}

#[test]
fn rm_r_of_a_large_tree_and_many_files() {
    let _w = Watchdog::new(Duration::from_secs(120));
    let rig = Rig::new("");
    sh(&rig.mnt(""), "mkdir big; for i in $(seq 1 1500); do echo $i > big/f$i; done; mkdir -p deep/1/2/3/4/5; touch deep/1/2/3/4/5/x");
    assert_eq!(std::fs::read_dir(rig.mnt("big")).unwrap().count(), 1500);
    assert_eq!(std::fs::read_to_string(rig.mnt("big/f777")).unwrap(), "777\n");
    sh(&rig.mnt(""), "rm -r big deep");
    assert_eq!(std::fs::read_dir(rig.export("")).unwrap().count(), 0);
}

#[test]
fn git_clone_and_make_in_the_mount() {
    let _w = Watchdog::new(Duration::from_secs(180));
    let rig = Rig::new("");
    let repo = tempfile::tempdir().unwrap();
    sh(
        repo.path(),
        r#"
git init -q -b main .
cat > main.c <<'C'
#include <stdio.h>
int add(int, int);
int main(void) { printf("%d\n", add(40, 2)); return 0; }
C
cat > add.c <<'C'
int add(int a, int b) { return a + b; }
C
printf 'prog: main.o add.o\n\tcc -o prog main.o add.o\n%%.o: %%.c\n\tcc -c -o $@ $<\n' > Makefile
git add . && git -c user.name=t -c user.email=t@e commit -q -m init
"#,
    );
    let src = repo.path().display().to_string();
    sh(&rig.mnt(""), &format!("git clone -q {src} clone"));
    let out = sh(&rig.mnt("clone"), "git fsck --no-progress 2>&1; git status --porcelain; make -s; ./prog; make");
    assert!(out.contains("42\n"), "{out}");
    assert!(out.contains("is up to date") || out.contains("Nothing to be done"), "a second make does nothing: {out}");
    // Touching a source rebuilds it: timestamps work through the mount.
    let out = sh(&rig.mnt("clone"), "sleep 1; touch add.c; make");
    assert!(out.contains("cc -c -o add.o add.c"), "{out}");
    assert_eq!(std::fs::read(rig.export("clone/add.c")).unwrap(), std::fs::read(repo.path().join("add.c")).unwrap());
}

/// Close-to-open between two mounts, sizes included: each round one mount rewrites the
/// file (growing or shrinking it) and closes it, after the other had read it whole (so
/// its kernel holds the old size and pages); the other's next open must see the new
/// file whole: a partial read (`head -c`, `dd bs=1`), a read at the old size (`dd
/// skip=`, a pread there), the size of the open file (`wc -c` takes it from fstat), and
/// the whole content.
const CLOSE_TO_OPEN: &str = r#"
w=$WANT
old=0
i=0
for n in 5 2100 40 70000 3 131073 1 4096 200000 17; do
  if [ $((i % 2)) = 0 ]; then wr=$A; rd=$B; else wr=$B; rd=$A; fi
  i=$((i + 1))
  head -c $n /dev/urandom | base64 -w0 > $w.b64
  head -c $n $w.b64 > $w
  # (What the kernel holds of the file and its folder, should the write be refused.)
  cat $w > $wr/f || { echo "round $i: writing $wr/f refused; uid gid mode: $(stat -c '%u %g %a' $wr/f $wr 2>&1 | tr '\n' ' ')"; exit 1; }
  got=$(head -c 12 $rd/f)
  [ "$got" = "$(head -c 12 $w)" ] || { echo "round $i: head -c 12 gave '$got' ($old -> $n bytes)"; exit 1; }
  c=$((n < 300 ? n : 300))
  cmp <(dd if=$rd/f bs=1 count=$c status=none) <(head -c $c $w) || { echo "round $i: dd bs=1 count=$c"; exit 1; }
  cmp <(dd if=$rd/f bs=4096 skip=$old count=2 iflag=skip_bytes status=none) \
      <(dd if=$w bs=4096 skip=$old count=2 iflag=skip_bytes status=none) || { echo "round $i: read at the old size $old"; exit 1; }
  [ "$(wc -c < $rd/f)" = $n ] || { echo "round $i: size $(wc -c < $rd/f), want $n"; exit 1; }
  cmp $rd/f $w || { echo "round $i: content"; exit 1; }
  cat $wr/f > /dev/null
  old=$n
done
echo ok
"#;

fn close_to_open(opts: &str, squash: Squash) {
    let _w = Watchdog::new(Duration::from_secs(120));
    let rig = Rig::with(opts, squash);
    let other = rig.second_mount("mnt2", opts);
    let (a, _) = workdir(&rig, squash);
    let b = match squash {
        Squash::None => other.path(""),
        Squash::Root => other.path(USER_DIR),
    };
    let local = local_dir(squash);
    let script = format!("A={}\nB={}\nWANT={}/want\n{CLOSE_TO_OPEN}", a.display(), b.display(), local.path().display());
    assert_eq!(run(squash, local.path(), &script), "ok\n");
}

#[test]
fn close_to_open_between_two_mounts() {
    close_to_open("", Squash::None);
}

/// Without notices every open asks the server (NFS's close-to-open): the first read
/// after another mount's close sees its data, with no wait at all.
#[test]
fn close_to_open_between_two_mounts_without_notices() {
    close_to_open("nonotify", Squash::None);
}

#[test]
fn close_to_open_between_two_mounts_with_actimeo() {
    close_to_open("actimeo=1", Squash::None);
}

/// Caches an hour long, kept current by change notices alone.
#[test]
fn two_mounts_caching_for_an_hour_are_never_stale() {
    close_to_open("actimeo=3600", Squash::None);
}

#[test]
fn close_to_open_between_two_mounts_under_root_squash() {
    close_to_open("", Squash::Root);
}

/// Within the attribute timeout a mount without change notices (`nonotify`, or an older
/// server) may serve the size it has (stale); after it, it asks again. `noac` asks every
/// time. (With notices the new size shows at once: `notices_e2e`.)
#[test]
fn attribute_timeouts_bound_staleness() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let rig = Rig::new("actimeo=2");
    let other = rig.second_mount("mnt2", "actimeo=2,nonotify");
    std::fs::write(rig.mnt("f"), b"1").unwrap();
    let size = || std::fs::metadata(other.path("f")).unwrap().len();
    // The stale value is only promised inside the timeout: if this machine was too slow
    // to stay inside it, try again.
    let mut seen_stale = false;
    for round in 0..5u64 {
        let before = 1 + round * 2;
        std::fs::write(rig.mnt("f"), vec![b'x'; before as usize]).unwrap();
        tests::wait_until(Duration::from_secs(10), "the first size seen", || size() == before);
        let cached_at = std::time::Instant::now();
        std::fs::write(rig.mnt("f"), vec![b'y'; before as usize + 1]).unwrap();
        let seen = size();
        if cached_at.elapsed() < Duration::from_millis(1500) {
            assert_eq!(seen, before, "inside the timeout the cached size is served");
            seen_stale = true;
            tests::wait_until(Duration::from_secs(3), "the new size after the timeout", || size() == before + 1);
            break;
        }
    }
    assert!(seen_stale, "never inside the attribute timeout in five tries");
    // noac: seen at once.
    let noac = rig.second_mount("mnt3", "noac");
    std::fs::write(rig.mnt("f"), b"12345").unwrap();
    assert_eq!(std::fs::metadata(noac.path("f")).unwrap().len(), 5);
    std::fs::write(rig.mnt("f"), b"1234567").unwrap();
    assert_eq!(std::fs::metadata(noac.path("f")).unwrap().len(), 7);
    std::fs::create_dir(rig.mnt("newdir")).unwrap();
    assert!(noac.path("newdir").is_dir());
}

fn unlinked_open_file(squash: Squash) {
    let _w = Watchdog::new(Duration::from_secs(60));
    let rig = Rig::with("", squash);
    let (mnt, export) = workdir(&rig, squash);
    let out = run(
        squash,
        &mnt,
        r#"
head -c 300000 /dev/zero | tr '\0' 'z' > f
exec 3< f
rm f
[ ! -e f ]
tr -d z <&3 | wc -c
exec 3<&-
"#,
    );
    assert_eq!(out.trim(), "0", "all 300000 bytes read back after the unlink");
    // The silly-renamed file goes at the last close (in the background).
    tests::wait_until(Duration::from_secs(10), "the silly-renamed file removed", || {
        std::fs::read_dir(&export).unwrap().count() == 0
    });
}

#[test]
fn unlinked_open_file_stays_readable() {
    unlinked_open_file(Squash::None);
}

#[test]
fn unlinked_open_file_stays_readable_under_root_squash() {
    unlinked_open_file(Squash::Root);
}

fn permissions(squash: Squash) {
    let _w = Watchdog::new(Duration::from_secs(60));
    let rig = Rig::with("", squash);
    match squash {
        Squash::None => {
            std::fs::write(rig.mnt("private"), b"secret").unwrap();
            sh(&rig.mnt(""), "chmod 600 private; chown 1000:1000 private; mkdir pub; chmod 777 pub");
        }
        Squash::Root => {
            // Root on the client is nobody: the administrator sets up on the server.
            sh(
                &rig.export(""),
                "echo -n secret > private; chmod 600 private; chown 1000:1000 private; mkdir pub; chmod 777 pub",
            );
            // ...and root on the client may not read a user's private file.
            assert!(std::fs::read(rig.mnt("private")).is_err(), "root squashed to nobody");
        }
    }
    let as_user = |uid: u32, script: &str| tests::as_user(uid, uid, &[], &rig.mnt(""), script);
    assert!(as_user(1000, "cat private").status.success());
    let denied = as_user(2000, "cat private");
    assert!(!denied.status.success());
    assert!(String::from_utf8_lossy(&denied.stderr).contains("Permission denied"));
    assert!(as_user(2000, "echo hi > pub/mine && cat pub/mine").status.success());
    assert_eq!(std::fs::metadata(rig.export("pub/mine")).unwrap().uid(), 2000);
}

#[test]
fn permissions_are_enforced_for_other_users() {
    permissions(Squash::None);
}

#[test]
fn permissions_are_enforced_for_other_users_under_root_squash() {
    permissions(Squash::Root);
}

#[test]
fn bad_input_gets_a_one_line_reason() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let rig = Rig::new("");
    let fresh = rig.dirs.path().join("fresh");
    std::fs::create_dir(&fresh).unwrap();
    let client = tests::bin_path("fs-client");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["mount".into(), rig.server.addr.clone(), fresh.display().to_string(), "-o".into(), "bogus".into()],
            "unknown mount option",
        ),
        (vec!["mount".into(), "nonsense".into(), fresh.display().to_string()], "bad address"),
        (vec!["mount".into(), "127.0.0.1:1".into(), fresh.display().to_string()], "cannot reach server"),
        (vec!["mount".into(), rig.server.addr.clone(), "/no/such/dir".into()], "does not exist"),
        (vec!["mount".into(), rig.server.addr.clone(), rig.mnt("").display().to_string()], "in use"),
        (vec!["unmount".into(), fresh.display().to_string()], "not a mount point"),
        (
            vec![
                "mount".into(),
                rig.server.addr.clone(),
                fresh.display().to_string(),
                "-o".into(),
                "clock_check=0".into(),
            ],
            "clock_check",
        ),
        (vec!["status".into(), fresh.display().to_string()], "is not an fs-client mount"),
        (vec!["status".into(), "/no/such/dir".into()], "is not an fs-client mount"),
    ];
    for (args, want) in cases {
        let (status, _, err) =
            tests::run_with_timeout(std::process::Command::new(&client).args(&args), Duration::from_secs(30));
        assert_eq!(status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err:?} lacks {want:?}");
    }
    assert!(!tests::is_mounted(&fresh));
}

fn hash_file(p: &Path) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::open(p).unwrap()).unwrap();
    h.finalize()
}

/// The server dies (SIGKILL) in the middle of writing a 200 MiB file and reading
/// another, and comes back: with a hard mount both programs finish without an error and
/// both files are exact (compared by BLAKE3).
///
/// Each program moves the first half through one open descriptor, says so, and waits at
/// a gate (a FIFO) before moving the second half through the same descriptor: the kill
/// comes when a known part has moved and a known part has not, and the test asserts
/// both. The programs are child processes (not threads of this test): the server is
/// restarted from this process, and a fork inherits open descriptors, whose close at
/// exec would wait (close-to-open flush) for the very server being started.
#[test]
fn server_crash_mid_transfer_loses_nothing() {
    let _w = Watchdog::new(Duration::from_secs(300));
    let mut rig = Rig::new("");
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    let pattern = l.join("pattern");
    sh(l, "head -c 209715200 /dev/urandom > pattern; mkfifo gate");
    std::fs::copy(&pattern, rig.export("source")).unwrap();
    let half = 100u64 << 20;
    let spawn = |script: String| {
        std::process::Command::new("bash")
            .arg("-c")
            .arg(format!("set -euo pipefail\n{script}"))
            .current_dir(l)
            .spawn()
            .unwrap()
    };
    let mut writer = spawn(format!(
        "exec 3> {dest}\n\
         dd if=pattern bs=1M count=100 status=none >&3\n\
         touch writer-half; read -r _ < gate\n\
         dd if=pattern bs=1M skip=100 conv=fsync status=none >&3\n\
         exec 3>&-",
        dest = rig.mnt("dest").display()
    ));
    let mut reader = spawn(format!(
        "exec 3< {src}\n\
         dd of=copy bs=1M count=100 iflag=fullblock status=none <&3\n\
         touch reader-half; read -r _ < gate\n\
         dd bs=1M status=none <&3 >> copy\n\
         exec 3<&-",
        src = rig.mnt("source").display()
    ));
    tests::wait_until(Duration::from_secs(120), "both halfway", || {
        l.join("writer-half").exists() && l.join("reader-half").exists()
    });
    let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    assert_eq!(len(&l.join("copy")), half, "the reader has read the first half, and no more");
    assert!(writer.try_wait().unwrap().is_none() && reader.try_wait().unwrap().is_none(), "both still running");
    rig.server.kill();
    // Open the gate: a line for each (read-write, so the open never blocks on a reader
    // that has not opened the FIFO yet). The second halves go while the server is down,
    // and wait for it.
    let mut gate = std::fs::OpenOptions::new().read(true).write(true).open(l.join("gate")).unwrap();
    std::io::Write::write_all(&mut gate, b"go\ngo\n").unwrap();
    assert!(len(&rig.export("dest")) <= half, "nothing of the second half reached the server before the kill");
    // The server comes back once both programs have passed the gate (the FIFO is
    // drained): their second halves are then under way against a dead server.
    tests::wait_until(Duration::from_secs(30), "both programs past the gate", || {
        let mut queued: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int through the pointer.
        let rc = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&gate), libc::FIONREAD, &mut queued) };
        rc == 0 && queued == 0
    });
    rig.start_server_again();
    assert!(writer.wait().unwrap().success(), "the writer saw no error");
    assert!(reader.wait().unwrap().success(), "the reader saw no error");
    drop(gate);
    let want = hash_file(&pattern);
    assert_eq!(hash_file(&l.join("copy")), want, "read back exactly");
    assert_eq!(hash_file(&rig.export("dest")), want, "written exactly");
}

#[test]
fn soft_mount_fails_with_eio_when_the_server_is_gone() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let mut rig = Rig::new("soft,timeo=5,retrans=1,noac");
    std::fs::write(rig.mnt("f"), b"data").unwrap();
    rig.server.kill();
    let err = std::fs::metadata(rig.mnt("f")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // A dead server never wedges the unmount.
    let status = rig.mount.unmount().expect("was running");
    assert!(status.code().is_some(), "fs-client exited by itself, not killed: {status:?}");
    assert!(!tests::is_mounted(&rig.mnt("")));
}

#[test]
fn sigterm_unmounts_even_with_the_server_gone() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let mut rig = Rig::new("");
    std::fs::write(rig.mnt("f"), b"data").unwrap();
    rig.server.kill();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(rig.mount.pid(), libc::SIGTERM) };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tests::is_mounted(&rig.mnt("")) {
        assert!(std::time::Instant::now() < deadline, "still mounted 10 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A tiny page cache (constant eviction), small blocks, and read-ahead on and off: the
/// data read is still exactly the data on the server, sequentially and at random.
#[test]
fn cache_and_readahead_options_keep_data_exact() {
    let _w = Watchdog::new(Duration::from_secs(120));
    for opts in ["cache_size=1M,block_size=64K,readahead=4", "readahead=0", "cache_size=0,block_size=4K"] {
        let rig = Rig::new(opts);
        let data: Vec<u8> = (0..(20u32 << 20)).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
        std::fs::write(rig.export("data"), &data).unwrap();
        assert!(std::fs::read(rig.mnt("data")).unwrap() == data, "{opts}: sequential read");
        let f = std::fs::File::open(rig.mnt("data")).unwrap();
        let mut x = 12345u64;
        for _ in 0..300 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let off = (x >> 20) as usize % data.len();
            let len = ((x >> 8) as usize % 200_000).min(data.len() - off);
            let mut buf = vec![0u8; len];
            std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, off as u64).unwrap();
            assert!(buf == data[off..off + len], "{opts}: read of {len} at {off}");
        }
    }
}

#[test]
fn sigint_unmounts() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let rig = Rig::new("");
    std::fs::write(rig.mnt("f"), b"x").unwrap();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(rig.mount.pid(), libc::SIGINT) };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tests::is_mounted(&rig.mnt("")) {
        assert!(std::time::Instant::now() < deadline, "still mounted 10 s after SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(std::fs::read(rig.export("f")).unwrap(), b"x");
}

/// Regression: the COMMIT that follows a close runs in the background; when another
/// client wrote the file before that COMMIT's reply came, the writer took the reply's
/// change attribute as its own, kept its cached (older) data on the next open, and read
/// it back (seen as 599 instead of 600 in the lease test). The slow mount goes through a
/// proxy adding 50 ms each way, so the other mount's write lands before its COMMIT.
#[test]
fn regression_background_commit_does_not_hide_another_clients_write() {
    let _w = Watchdog::new(Duration::from_secs(120));
    let rig = Rig::new("");
    let proxy = tests::DelayProxy::start(&rig.server.addr, 50, true);
    let mp = rig.dirs.path().join("slow");
    std::fs::create_dir(&mp).unwrap();
    // (noatime: otherwise the access time, due after the other's write, drops the cache
    // at the next open whatever the change attribute says, and hides the bug. nonotify:
    // the open's GETATTR is what is tested, and a subscribed slow mount would hold the
    // other's write until it applied its notice, 100 ms through the proxy, so that it
    // never lands before the COMMIT.)
    let mut slow = tests::MountProc::start(&proxy.addr, &mp, "noatime,nonotify");
    // The other mount's write must land between the slow mount's last WRITE and its
    // COMMIT; the proxy's trace shows when the COMMIT went on to the server. If this
    // machine was too slow to fit it in, try again.
    for round in 0..5 {
        {
            // Write, read back (so it is cached), close: the COMMIT goes out on close.
            use std::io::{Read, Seek, Write};
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(slow.path("f"))
                .unwrap();
            f.write_all(b"599\n").unwrap();
            f.rewind().unwrap();
            let mut s = String::new();
            f.read_to_string(&mut s).unwrap();
            assert_eq!(s, "599\n");
        }
        std::fs::write(rig.mnt("f"), "600\n").unwrap();
        let written = std::time::Instant::now();
        let sent = proxy
            .wait_for(Duration::from_secs(10), "COMMIT call", |l| l.starts_with("call ") && l.ends_with(" Commit"));
        proxy.wait_for(Duration::from_secs(10), "COMMIT reply", |l| l.starts_with("reply ") && l.ends_with(" Commit"));
        if sent < written {
            eprintln!("round {round}: the COMMIT went before the other write; again");
            continue;
        }
        // The COMMIT's reply has come: the next open must still see the other's write.
        assert_eq!(std::fs::read_to_string(slow.path("f")).unwrap(), "600\n");
        slow.unmount();
        return;
    }
    panic!("the other mount's write never landed before the COMMIT in five tries");
}

/// Nanoseconds from `S.NNNNNNNNN` (with a sign).
fn nanos(s: &str) -> i128 {
    let (neg, s) = s.strip_prefix('-').map_or((false, s), |r| (true, r));
    let (whole, frac) = s.split_once('.').unwrap_or((s, "0"));
    let n = whole.parse::<i128>().unwrap() * 1_000_000_000 + format!("{frac:0<9}")[..9].parse::<i128>().unwrap();
    if neg {
        -n
    } else {
        n
    }
}

/// From a mount's status: the line starting `key` and its first number (nanoseconds),
/// and for `clock offset X ± B` the bound too.
fn status_number(status: &str, key: &str) -> Option<(i128, Option<i128>)> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    let mut words = line[key.len()..].split_whitespace();
    let x = nanos(words.next()?);
    let bound = (words.next() == Some("±")).then(|| words.next().map(nanos)).flatten();
    Some((x, bound))
}

/// Cristian's clock: with the server's clock an hour ahead or behind (and right, for
/// comparison), the mount's measured offset is within its error bound of the truth, and
/// attribute timeouts behave as on an unskewed pair: a file changed just now is asked
/// again after `acregmin` (behind by an hour, the ages came out an hour too long and it
/// was trusted for `acregmax`), and one unchanged for 20 minutes is trusted for longer
/// (ahead by an hour, every age came out as zero).
#[test]
fn the_mount_measures_the_server_clock_and_ages_files_by_it() {
    let _w = Watchdog::new(Duration::from_secs(120));
    for skew in [-3600i64, 3600, 0] {
        let arg = skew.to_string();
        // Files are changed in the export itself, behind the server's back, where no
        // notice can tell the mount: the attribute timeouts alone bound what it serves.
        let rig = Rig::with_server("acregmin=1,acregmax=30,nonotify", Squash::None, &["--test-clock-skew", &arg]);
        let status = tests::mount_status(&rig.mnt(""));
        let (offset, bound) = status_number(&status, "clock offset").expect("an offset line");
        let bound = bound.expect("a bound");
        assert!((offset - i128::from(skew) * 1_000_000_000).abs() <= bound, "skew {skew}: {status}");
        let size = |name: &str| std::fs::metadata(rig.mnt(name)).unwrap().len();

        // Changed just now: the new size is seen within a few seconds.
        std::fs::write(rig.mnt("fresh"), b"1").unwrap();
        assert_eq!(size("fresh"), 1);
        std::fs::write(rig.export("fresh"), b"12").unwrap();
        tests::wait_until(Duration::from_secs(10), &format!("skew {skew}: the fresh file's new size"), || {
            size("fresh") == 2
        });

        // Unchanged for 20 minutes: its attributes are trusted (acregmax) for the next
        // three seconds, even though the file changes under the mount's feet.
        std::fs::write(rig.export("old"), b"1").unwrap();
        sh(&rig.export(""), "touch -d '20 minutes ago' old");
        assert_eq!(size("old"), 1);
        let cached = std::time::Instant::now();
        std::fs::write(rig.export("old"), b"12").unwrap();
        sh(&rig.export(""), "touch -d '20 minutes ago' old");
        while cached.elapsed() < Duration::from_secs(3) {
            assert_eq!(size("old"), 1, "skew {skew}: a file unchanged for 20 minutes is trusted longer");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A backwards correction of the server's clock is slewed, never stepped: the server
/// comes back two seconds behind where it was; sampled every 10 ms, the mount's view of
/// server time never runs backwards, and the offset it applies moves toward the new
/// measurement by at most 1% of the time passed.
#[test]
fn a_backwards_clock_correction_is_slewed() {
    let _w = Watchdog::new(Duration::from_secs(120));
    let mut rig = Rig::with_server("clock_check=1", Squash::None, &["--test-clock-skew", "3600"]);
    let s = 1_000_000_000i128;
    let offset = |st: &str| status_number(st, "clock offset").unwrap().0;
    assert!((offset(&tests::mount_status(&rig.mnt(""))) - 3600 * s).abs() < s / 10);
    rig.restart_server_with(&["--test-clock-skew", "3598"]);
    let (mut last_view, mut last_applied) = (0i128, 3600 * s);
    let mut last_at = std::time::Instant::now();
    let mut measured_at = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut slewing_seen = 0;
    loop {
        let st = tests::mount_status(&rig.mnt(""));
        let now = std::time::Instant::now();
        let view = status_number(&st, "server time").unwrap().0;
        assert!(view >= last_view, "the view ran backwards by {} ns:\n{st}", last_view - view);
        let applied = status_number(&st, "clock slewing: applied offset").map_or(offset(&st), |(a, _)| a);
        let allowed = (now - last_at).as_nanos() as i128 / 100 + 1_000_000;
        assert!((last_applied - applied).abs() <= allowed, "stepped by {} ns:\n{st}", last_applied - applied);
        if st.contains("clock slewing") {
            slewing_seen += 1;
        }
        (last_view, last_applied, last_at) = (view, applied, now);
        if measured_at.is_none() && (offset(&st) - 3598 * s).abs() < s / 10 {
            measured_at = Some(now);
        }
        if measured_at.is_some_and(|t| t.elapsed() > Duration::from_secs(2)) {
            assert!(applied > 3598 * s && applied < 3600 * s, "slewing toward the new offset:\n{st}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the new offset was never measured:\n{st}");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(slewing_seen > 100, "the mount said it was slewing ({slewing_seen} samples)");
}

/// `fs-client status` counts the calls a test made: fifty `stat`s under `noac` are at
/// least fifty GETATTRs more, one new file is one CREATE more; the other vitals are there.
#[test]
fn status_counts_the_calls_a_test_made() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let rig = Rig::new("noac");
    let calls = |op: &str| -> u64 {
        let st = tests::mount_status(&rig.mnt(""));
        st.lines()
            .find_map(|l| l.strip_prefix(&format!("call {op} ")))
            .and_then(|r| r.split(' ').next())
            .map_or(0, |n| n.parse().unwrap())
    };
    let (getattrs, creates) = (calls("GETATTR"), calls("CREATE"));
    std::fs::create_dir(rig.mnt("d")).unwrap();
    for _ in 0..50 {
        std::fs::metadata(rig.mnt("d")).unwrap();
    }
    assert!(calls("GETATTR") >= getattrs + 50, "fifty stats, fifty GETATTRs at least");
    std::fs::write(rig.mnt("d/f"), b"x").unwrap();
    assert_eq!(calls("CREATE"), creates + 1);
    let st = tests::mount_status(&rig.mnt(""));
    for want in ["connected", "clock offset", "retransmitted calls 0", "page cache", "dirty bytes", "leases off"] {
        assert!(st.contains(want), "{want}: {st}");
    }
}

/// `mount -t fuse.fs` and `/etc/fstab`: mount(8) runs `mount.fuse.fs SOURCE DIR -o OPTS`
/// (a link to `fs-client`). The helper drops mount(8)'s own options, returns once the
/// mount is up, and leaves it served in the background; the mount shows as type
/// `fuse.fs` with the server as its source; `fs-client unmount` ends it. A bad option or
/// an unreachable server: exit 1 with one line, and nothing mounted.
#[test]
fn the_mount_helper_mounts_in_the_background() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let rig = Rig::new("");
    let bin = tempfile::tempdir().unwrap();
    let helper = bin.path().join("mount.fuse.fs");
    std::os::unix::fs::symlink(tests::bin_path("fs-client"), &helper).unwrap();
    let mp = rig.dirs.path().join("helper");
    std::fs::create_dir(&mp).unwrap();
    let _guard = tests::MountGuard::new(&mp);
    let (st, _, err) = tests::run_with_timeout(
        tests::command(&helper)
            .arg(&rig.server.addr)
            .arg(&mp)
            .args(["-o", "rw,_netdev,noauto,nofail,actimeo=5,x-systemd.automount"]),
        Duration::from_secs(30),
    );
    assert!(st.success(), "{err}");
    assert!(tests::is_mounted(&mp), "mounted when the helper returned");
    let line = std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(mp.to_str().unwrap()))
        .map(String::from)
        .unwrap();
    let f: Vec<&str> = line.split(' ').collect();
    assert_eq!((f[0], f[2]), (rig.server.addr.as_str(), "fuse.fs"), "{line}");
    std::fs::write(mp.join("via-helper"), b"served").unwrap();
    assert_eq!(std::fs::read(rig.export("via-helper")).unwrap(), b"served");
    let (st, _, err) = tests::run_with_timeout(
        tests::command(&tests::bin_path("fs-client")).arg("unmount").arg(&mp),
        Duration::from_secs(20),
    );
    assert!(st.success(), "{err}");
    tests::wait_until(Duration::from_secs(10), "unmounted", || !tests::is_mounted(&mp));
    for (args, want) in [
        (vec![rig.server.addr.clone(), mp.display().to_string(), "-o".into(), "bogus".into()], "bogus"),
        (vec!["127.0.0.1:1".into(), mp.display().to_string()], "cannot reach server"),
    ] {
        let (st, _, err) = tests::run_with_timeout(tests::command(&helper).args(&args), Duration::from_secs(30));
        assert_eq!(st.code(), Some(1));
        assert!(err.contains(want) && err.trim().lines().count() == 1, "{err}");
        assert!(!tests::is_mounted(&mp));
    }
}

/// `ls -l`: a listing brings every name's handle and attributes into the kernel
/// (READDIRPLUS on every page: `rdirplus=all`, the default), so an `lstat` of each
/// listed name makes no LOOKUP request at all, and the attributes are the server's.
/// Under `rdirplus=auto` the kernel takes them for the first page only and looks up
/// the rest.
#[test]
fn a_listing_brings_every_name_into_the_kernel() {
    let _w = Watchdog::new(Duration::from_secs(120));
    let rig = Rig::new("");
    std::fs::create_dir(rig.export("d")).unwrap();
    for i in 0..2000 {
        std::fs::write(rig.export(&format!("d/f{i:04}")), vec![b'x'; i % 7]).unwrap();
    }
    for (name, opts, looked_up_most) in [("all", "", false), ("auto", "rdirplus=auto", true)] {
        let m = rig.second_mount(name, opts);
        // Listed once subscribed: a page answered while the first subscription drops
        // what the mount holds is given with no lifetime, and its names looked up again.
        tests::wait_until(Duration::from_secs(10), "subscribed", || {
            tests::mount_status(&m.mountpoint).contains("notices subscribed")
        });
        let lookups = || tests::metric(&tests::mount_status(&m.mountpoint), "kernel lookups");
        let names: Vec<_> = std::fs::read_dir(m.path("d")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2000);
        let before = lookups();
        for n in &names {
            let i: usize = n.to_str().unwrap()[1..].parse().unwrap();
            assert_eq!(std::fs::symlink_metadata(m.path("d").join(n)).unwrap().len(), (i % 7) as u64);
        }
        let asked = lookups() - before;
        if looked_up_most {
            assert!(asked > 1000.0, "{name}: the kernel looked up only {asked} of 2000 names");
        } else {
            assert_eq!(asked, 0.0, "{name}: the kernel looked up names the listing brought");
        }
    }
}

/// `tar`'s order for each file: the data, then its time through the open file. The time
/// goes right behind the file's last WRITE, without waiting for its reply, and every
/// file keeps both, as seen from another mount and on the server's disk.
#[test]
fn a_time_set_right_after_the_data_stays() {
    use std::io::Write;
    let _w = Watchdog::new(Duration::from_secs(120));
    let rig = Rig::new("");
    let when = |i: u64| std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000 + i);
    for i in 0..100u64 {
        let mut f = std::fs::File::create(rig.mnt(&format!("f{i}"))).unwrap();
        f.write_all(&vec![i as u8; 3000 + i as usize]).unwrap();
        f.set_modified(when(i)).unwrap();
    }
    let b = rig.second_mount("b", "");
    for i in 0..100u64 {
        for p in [b.path(&format!("f{i}")), rig.export(&format!("f{i}"))] {
            let m = std::fs::metadata(&p).unwrap();
            assert_eq!(m.modified().unwrap(), when(i), "{}: the time", p.display());
            assert_eq!(std::fs::read(&p).unwrap(), vec![i as u8; 3000 + i as usize], "{}: the data", p.display());
        }
    }
}
