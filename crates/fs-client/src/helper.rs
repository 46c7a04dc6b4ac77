//! `mount -t fuse.fs SERVER:PORT /mnt -o OPTS` and `/etc/fstab` lines: mount(8) runs
//! `/sbin/mount.fuse.fs SOURCE DIR [-o OPTS] [-n] [-s] [-f] [-v]` (install it as a link
//! to `fs-client`). The helper drops the options that are mount(8)'s own (`_netdev`,
//! `noauto`, `nofail`, `defaults`, `x-*`...), then runs the mount in the background: a
//! child process in a session of its own mounts and serves, and the helper returns once
//! the mount is up (exit 0), or prints the child's one-line reason (exit 1).

use std::io::{BufRead, BufReader};
use std::os::fd::{FromRawFd, OwnedFd};

/// Whether this process was started as the mount helper (its name `mount.fuse.fs`).
pub fn invoked_as_helper(argv0: &str) -> bool {
    std::path::Path::new(argv0).file_name().is_some_and(|n| n == "mount.fuse.fs" || n == "mount.fs")
}

/// mount(8)'s options, and the kernel's generic ones the mount sets itself or ignores.
fn is_mount8_option(o: &str) -> bool {
    matches!(
        o,
        "_netdev"
            | "noauto"
            | "auto"
            | "nofail"
            | "defaults"
            | "user"
            | "users"
            | "nouser"
            | "owner"
            | "group"
            | "exec"
            | "noexec"
            | "suid"
            | "nosuid"
            | "dev"
            | "nodev"
            | "async"
            | "sync"
            | "silent"
            | "loud"
    ) || o.starts_with("x-")
        || o.starts_with("comment=")
}

/// SOURCE, DIR and the options the mount understands, from mount(8)'s arguments.
pub fn parse(args: &[String]) -> anyhow::Result<(String, std::path::PathBuf, String)> {
    let mut positional = Vec::new();
    let mut opts: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-o" => {
                let v = it.next().ok_or_else(|| anyhow::anyhow!("-o needs a value"))?;
                opts.extend(v.split(',').filter(|o| !o.is_empty() && !is_mount8_option(o)).map(String::from));
            }
            // No mtab, sloppy, fake, verbose: nothing to do for any of them.
            "-n" | "-s" | "-f" | "-v" => {}
            s if s.starts_with('-') => anyhow::bail!("unknown argument {s}"),
            s => positional.push(s.to_string()),
        }
    }
    let [source, dir] = <[String; 2]>::try_from(positional)
        .map_err(|p| anyhow::anyhow!("want SOURCE and MOUNTPOINT, got {} arguments", p.len()))?;
    Ok((source, dir.into(), opts.join(",")))
}

/// Forks before anything else runs (no threads yet): the child returns and mounts, with
/// stdout and stderr into a pipe; the parent reads the child's first line and exits
/// (it never returns).
pub fn daemonize() {
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills two descriptors; nothing else runs in this process yet.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        eprintln!("mount.fuse.fs: pipe: {}", std::io::Error::last_os_error());
        std::process::exit(1);
    }
    // SAFETY: a single-threaded process (called first thing in main); the child only
    // calls async-signal-safe functions until it returns to run the mount.
    match unsafe { libc::fork() } {
        -1 => {
            eprintln!("mount.fuse.fs: fork: {}", std::io::Error::last_os_error());
            std::process::exit(1);
        }
        0 => {
            // SAFETY: plain descriptor calls on descriptors we own.
            unsafe {
                libc::setsid();
                libc::close(fds[0]);
                libc::dup2(fds[1], 1);
                libc::dup2(fds[1], 2);
                libc::close(fds[1]);
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                if null >= 0 {
                    libc::dup2(null, 0);
                    libc::close(null);
                }
            }
            crate::mount::set_daemon();
        }
        _ => {
            // SAFETY: fds[1] is ours; fds[0] becomes the reader's.
            unsafe { libc::close(fds[1]) };
            let r = unsafe { OwnedFd::from_raw_fd(fds[0]) };
            // Up to the `mounted` line (log lines may come first); at the end of the
            // pipe without it, the child's last line is the reason.
            let mut last = String::new();
            for line in BufReader::new(std::fs::File::from(r)).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("mounted ") {
                    std::process::exit(0);
                }
                if !line.trim().is_empty() {
                    last = line;
                }
            }
            let why = last.trim();
            eprintln!("{}", if why.is_empty() { "mount.fuse.fs: the mount process ended without a word" } else { why });
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount8_arguments_become_ours() {
        let a: Vec<String> = ["srv:7000", "/mnt/x", "-o", "rw,_netdev,noauto,actimeo=5,x-systemd.automount", "-n"]
            .map(String::from)
            .into();
        let (src, dir, opts) = parse(&a).unwrap();
        assert_eq!((src.as_str(), dir.to_str().unwrap(), opts.as_str()), ("srv:7000", "/mnt/x", "rw,actimeo=5"));
        assert!(parse(&["only".to_string()]).is_err());
        assert!(parse(&["a".into(), "b".into(), "--bogus".into()]).unwrap_err().to_string().contains("--bogus"));
        assert!(invoked_as_helper("/sbin/mount.fuse.fs") && !invoked_as_helper("fs-client"));
    }
}
