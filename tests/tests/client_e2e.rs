//! `fs-client` on a real mount: ordinary tools give the same results as on a local
//! folder. Every test mounts on temporary folders and unmounts on every path (the
//! fixtures' `Drop`), with a watchdog as the last resort.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;
use tests::{manifest, sh, Rig, Watchdog};

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

#[test]
fn ordinary_tools_match_a_local_folder() {
    let _w = Watchdog::new(Duration::from_secs(120));
    let rig = Rig::new("");
    let local = tempfile::tempdir().unwrap();
    sh(local.path(), SCRIPT);
    sh(&rig.mnt(""), SCRIPT);
    assert_eq!(manifest(&rig.mnt("")), manifest(local.path()));
    // What the server stored is what the mount shows.
    assert_eq!(manifest(&rig.export("")), manifest(local.path()));
    let f1 = std::fs::metadata(rig.mnt("untar/a/f1")).unwrap();
    assert_eq!(f1.mtime(), std::fs::metadata(local.path().join("untar/a/f1")).unwrap().mtime());
    let out = sh(&rig.mnt(""), "getfattr --only-values -n user.color a/hard; df -P . | tail -1; ls -l a | wc -l");
    assert!(out.starts_with("blue"), "{out}");
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

#[test]
fn close_to_open_between_two_mounts() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let rig = Rig::new("");
    let other = rig.second_mount("mnt2", "");
    let (a, b) = (rig.mnt("shared"), other.path("shared"));
    std::fs::write(&a, b"version one").unwrap();
    assert_eq!(std::fs::read(&b).unwrap(), b"version one");
    // Rewritten in A and closed: the next open in B sees it, though B had it cached.
    for round in 0..5 {
        let text = format!("version {round} with a different length {}", "x".repeat(round * 1000));
        std::fs::write(&a, &text).unwrap();
        assert_eq!(std::fs::read_to_string(&b).unwrap(), text, "round {round}");
        std::fs::write(&b, format!("{text} from b")).unwrap();
        assert_eq!(std::fs::read_to_string(&a).unwrap(), format!("{text} from b"));
    }
}

#[test]
fn attribute_timeouts_bound_staleness() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let rig = Rig::new("actimeo=1");
    let other = rig.second_mount("mnt2", "actimeo=1");
    std::fs::write(rig.mnt("f"), b"1").unwrap();
    assert_eq!(std::fs::metadata(other.path("f")).unwrap().len(), 1);
    std::fs::write(rig.mnt("f"), b"12345").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(std::fs::metadata(other.path("f")).unwrap().len(), 5, "seen within the attribute timeout");
    // noac: seen at once.
    let noac = rig.second_mount("mnt3", "noac");
    assert_eq!(std::fs::metadata(noac.path("f")).unwrap().len(), 5);
    std::fs::write(rig.mnt("f"), b"1234567").unwrap();
    assert_eq!(std::fs::metadata(noac.path("f")).unwrap().len(), 7);
    std::fs::create_dir(rig.mnt("newdir")).unwrap();
    assert!(noac.path("newdir").is_dir());
}

#[test]
fn unlinked_open_file_stays_readable() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let rig = Rig::new("");
    std::fs::write(rig.mnt("f"), vec![7u8; 300_000]).unwrap();
    let mut f = std::fs::File::open(rig.mnt("f")).unwrap();
    std::fs::remove_file(rig.mnt("f")).unwrap();
    assert!(!rig.mnt("f").exists());
    let mut buf = Vec::new();
    std::io::Read::read_to_end(&mut f, &mut buf).unwrap();
    assert_eq!(buf, vec![7u8; 300_000]);
    drop(f);
    // The silly-renamed file is gone after the last close.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(std::fs::read_dir(rig.export("")).unwrap().count(), 0);
}

#[test]
fn permissions_are_enforced_for_other_users() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let rig = Rig::new("");
    std::fs::write(rig.mnt("private"), b"secret").unwrap();
    sh(&rig.mnt(""), "chmod 600 private; chown 1000:1000 private; mkdir pub; chmod 777 pub");
    let as_user = |uid: u32, script: &str| {
        std::process::Command::new("setpriv")
            .args([format!("--reuid={uid}"), format!("--regid={uid}"), "--clear-groups".into()])
            .args(["bash", "-c", script])
            .current_dir(rig.mnt(""))
            .output()
            .unwrap()
    };
    assert!(as_user(1000, "cat private").status.success());
    let denied = as_user(2000, "cat private");
    assert!(!denied.status.success());
    assert!(String::from_utf8_lossy(&denied.stderr).contains("Permission denied"));
    assert!(as_user(2000, "echo hi > pub/mine && cat pub/mine").status.success());
    assert_eq!(std::fs::metadata(rig.export("pub/mine")).unwrap().uid(), 2000);
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
/// The writer and reader are child processes (`dd`), not threads of this test: the
/// server is restarted from this process, and a fork inherits open descriptors, whose
/// close at exec would wait (close-to-open flush) for the very server being started.
#[test]
fn server_crash_mid_transfer_loses_nothing() {
    let _w = Watchdog::new(Duration::from_secs(300));
    let mut rig = Rig::new("");
    let local = tempfile::tempdir().unwrap();
    let pattern = local.path().join("pattern");
    sh(local.path(), "head -c 209715200 /dev/urandom > pattern");
    std::fs::copy(&pattern, rig.export("source")).unwrap();
    let dd = |from: &Path, to: &Path, extra: &str| {
        std::process::Command::new("dd")
            .arg(format!("if={}", from.display()))
            .arg(format!("of={}", to.display()))
            .args(["bs=1M", "status=none"])
            .args(extra.split_whitespace())
            .spawn()
            .unwrap()
    };
    let mut writer = dd(&pattern, &rig.mnt("dest"), "conv=fsync");
    let mut reader = dd(&rig.mnt("source"), &local.path().join("copy"), "");
    // Let both get going, then crash the server mid-transfer.
    std::thread::sleep(Duration::from_millis(400));
    rig.server.kill();
    std::thread::sleep(Duration::from_millis(1500));
    rig.start_server_again();
    assert!(writer.wait().unwrap().success(), "the writer saw no error");
    assert!(reader.wait().unwrap().success(), "the reader saw no error");
    let want = hash_file(&pattern);
    assert_eq!(hash_file(&local.path().join("copy")), want, "read back exactly");
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
    let _w = Watchdog::new(Duration::from_secs(60));
    let rig = Rig::new("");
    let mut proxy = tests::command(&tests::bin_path("delay-proxy"))
        .args(["--listen", "127.0.0.1:0", "--to", &rig.server.addr, "--delay-ms", "50"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let line = tests::first_line(&mut proxy, Duration::from_secs(10)).unwrap();
    let slow_addr = line.strip_prefix("listening on ").unwrap().to_string();
    let mp = rig.dirs.path().join("slow");
    std::fs::create_dir(&mp).unwrap();
    let mut slow = tests::MountProc::start(&slow_addr, &mp, "");
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
    std::fs::write(rig.mnt("f"), "600\n").unwrap(); // lands before that COMMIT
    std::thread::sleep(Duration::from_millis(500)); // the COMMIT's reply has come
    assert_eq!(std::fs::read_to_string(slow.path("f")).unwrap(), "600\n");
    slow.unmount();
    let _ = proxy.kill();
    let _ = proxy.wait();
}
