//! `lock-counter FILE N flock|fcntl|none [--hold]`: N times, open FILE, lock it, read the
//! counter (a zero-padded number), write it back plus one, unlock, close. With `--hold`:
//! lock once, print "locked", wait for a line on stdin, then overwrite the counter and
//! fsync, print "write ok" or "write refused: ERROR", and hold the lock until killed.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

fn lock(f: &std::fs::File, mode: &str, on: bool) {
    let fd = f.as_raw_fd();
    let rc = match mode {
        // SAFETY: plain flock(2) / fcntl(2) on an open descriptor.
        "flock" => unsafe { libc::flock(fd, if on { libc::LOCK_EX } else { libc::LOCK_UN }) },
        "fcntl" => {
            // SAFETY: a zeroed flock struct is valid; fields set below.
            let mut l: libc::flock = unsafe { std::mem::zeroed() };
            l.l_type = if on { libc::F_WRLCK } else { libc::F_UNLCK } as i16;
            l.l_whence = libc::SEEK_SET as i16;
            // SAFETY: l is a valid struct flock.
            unsafe { libc::fcntl(fd, libc::F_SETLKW, &l) }
        }
        _ => 0,
    };
    assert_eq!(rc, 0, "{mode} failed: {}", std::io::Error::last_os_error());
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (path, n, mode) = (&args[1], args[2].parse::<u32>().expect("N"), args[3].as_str());
    if args.get(4).map(|s| s.as_str()) == Some("--hold") {
        let mut f = std::fs::OpenOptions::new().read(true).write(true).open(path).expect("open");
        lock(&f, mode, true);
        println!("locked");
        std::io::stdout().flush().unwrap();
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        let res = f.write_all_at(format!("{:020}\n", 999).as_bytes(), 0).and_then(|_| f.sync_all());
        match res {
            Ok(()) => println!("write ok"),
            Err(e) => println!("write refused: {e}"),
        }
        std::io::stdout().flush().unwrap();
        let _ = f.seek(SeekFrom::Start(0));
        std::thread::sleep(std::time::Duration::from_secs(3600));
        return;
    }
    for _ in 0..n {
        let mut f = std::fs::OpenOptions::new().read(true).write(true).open(path).expect("open");
        lock(&f, mode, true);
        let mut s = String::new();
        f.read_to_string(&mut s).expect("read");
        let v: u64 = s.trim().parse().unwrap_or_else(|_| panic!("counter {s:?}"));
        f.seek(SeekFrom::Start(0)).unwrap();
        writeln!(f, "{:020}", v + 1).expect("write");
        lock(&f, mode, false);
        drop(f);
    }
}
