//! Credentials: FUSE passes a caller's uid, gid and pid; its supplementary groups come
//! from `/proc/PID/status`, cached a second per process.

use super::{Caller, Client};
use fs_proto::Cred;
use std::time::{Duration, Instant};

impl Client {
    /// The caller's credentials, with its supplementary groups from /proc (cached a
    /// second per process: FUSE passes only uid, gid and pid).
    pub fn cred(&self, c: Caller) -> Cred {
        let now = Instant::now();
        if let Some((at, groups)) = self.groups.lock().unwrap().get(&c.pid) {
            if now.duration_since(*at) < Duration::from_secs(1) {
                return Cred { uid: c.uid, gid: c.gid, groups: groups.clone() };
            }
        }
        let groups = proc_groups(c.pid).unwrap_or_default();
        self.groups.lock().unwrap().put(c.pid, (now, groups.clone()));
        Cred { uid: c.uid, gid: c.gid, groups }
    }
}

/// Supplementary groups of a process, from `/proc/PID/status`.
fn proc_groups(pid: u32) -> Option<Vec<u32>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("Groups:"))?;
    Some(line["Groups:".len()..].split_whitespace().filter_map(|g| g.parse().ok()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What /proc says of this process is what getgroups(2) says.
    #[test]
    fn groups_of_this_process() {
        let mut want = vec![0 as libc::gid_t; 65536];
        // SAFETY: the buffer has room for as many groups as we say.
        let n = unsafe { libc::getgroups(want.len() as i32, want.as_mut_ptr()) };
        assert!(n >= 0, "getgroups: {}", std::io::Error::last_os_error());
        want.truncate(n as usize);
        let mut got = proc_groups(std::process::id()).unwrap();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want);
        assert!(proc_groups(u32::MAX).is_none());
    }
}
