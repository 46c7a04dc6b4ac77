//! Which mounts may hold a file: AFS's callback registrations, kept so that a change of a
//! file waits only for the mounts that may have it cached (see
//! [`crate::notices::Hub::await_applied`]), not for every subscribed mount.
//!
//! A mount can cache nothing of a file before it has its handle, and it gets a handle
//! only from a reply (LOOKUP, a create, READDIRPLUS, MOUNT) or uses one in a call. So a
//! client is registered as a holder of every handle its calls name, before the call runs,
//! and of every handle a reply hands it, before the reply leaves. A call that may hand
//! handles out counts as "handing" while it runs: its reply may carry attributes read
//! before a change it is not yet registered for, so a change waits for that mount too.
//!
//! Pure: no I/O, no clock. Bounded: the least recently named handles are forgotten when
//! room is needed, and from then on a handle not in the table may be held by anyone
//! (`incomplete`), as on a standby that took over (the mounts kept what they cached from
//! the primary, which registered them).

use fs_proto::{FileHandle, Request, Response};
use std::collections::HashMap;
use std::num::NonZeroUsize;

pub struct Holders {
    known: lru::LruCache<FileHandle, Vec<u64>>,
    handing: HashMap<u64, u32>,
    incomplete: bool,
}

/// Handles kept (about 100 bytes each with their holders).
pub const CAPACITY: usize = 1 << 18;

impl Holders {
    pub fn new(capacity: usize) -> Holders {
        Holders {
            known: lru::LruCache::new(NonZeroUsize::new(capacity.max(1)).expect("at least 1")),
            handing: HashMap::new(),
            incomplete: false,
        }
    }

    /// A call of `client` is about to run: it holds every handle it names, and if it may
    /// hand handles out, it is handing until [`Holders::end`]. Returns whether it is
    /// (for `end`).
    pub fn begin(&mut self, client: u64, req: &Request) -> bool {
        for fh in named(req) {
            self.register(client, fh);
        }
        let handing = hands_out(req);
        if handing {
            *self.handing.entry(client).or_default() += 1;
        }
        handing
    }

    /// That call (`handing`: what [`Holders::begin`] said) ended with `res`, before its
    /// reply leaves.
    pub fn end(&mut self, client: u64, handing: bool, res: &Result<Response, fs_proto::Errno>) {
        if let Ok(r) = res {
            for fh in handed(r) {
                self.register(client, fh);
            }
        }
        if handing {
            if let Some(n) = self.handing.get_mut(&client) {
                *n -= 1;
                if *n == 0 {
                    self.handing.remove(&client);
                }
            }
        }
    }

    /// Whether `client` may hold any of `fhs` (cached attributes or data).
    pub fn may_hold(&self, client: u64, fhs: &[&FileHandle]) -> bool {
        self.handing.contains_key(&client)
            || fhs.iter().any(|fh| match self.known.peek(*fh) {
                Some(clients) => clients.contains(&client),
                None => self.incomplete,
            })
    }

    /// This server took over from a primary: the mounts' caches predate the table.
    pub fn took_over(&mut self) {
        self.incomplete = true;
    }

    fn register(&mut self, client: u64, fh: &FileHandle) {
        if let Some(clients) = self.known.get_mut(fh) {
            if !clients.contains(&client) {
                clients.push(client);
            }
            return;
        }
        if let Some((old, _)) = self.known.push(fh.clone(), vec![client]) {
            if &old != fh {
                self.incomplete = true;
            }
        }
    }
}

/// The handles a request names.
fn named(req: &Request) -> Vec<&FileHandle> {
    match req {
        Request::GetAttr { fh }
        | Request::SetAttr { fh, .. }
        | Request::Access { fh, .. }
        | Request::ReadLink { fh }
        | Request::Read { fh, .. }
        | Request::Write { fh, .. }
        | Request::FsStat { fh }
        | Request::Commit { fh, .. }
        | Request::GetXattr { fh, .. }
        | Request::SetXattr { fh, .. }
        | Request::ListXattr { fh }
        | Request::RemoveXattr { fh, .. }
        | Request::Fallocate { fh, .. } => vec![fh],
        Request::Lookup { dir, .. }
        | Request::Create { dir, .. }
        | Request::Mkdir { dir, .. }
        | Request::Symlink { dir, .. }
        | Request::Mknod { dir, .. }
        | Request::Remove { dir, .. }
        | Request::Rmdir { dir, .. }
        | Request::ReadDir { dir, .. }
        | Request::ReadDirPlus { dir, .. } => vec![dir],
        Request::Rename { from_dir, to_dir, .. } => vec![from_dir, to_dir],
        Request::Link { fh, dir, .. } => vec![fh, dir],
        Request::Follow { root } => vec![root],
        Request::Null
        | Request::Mount { .. }
        | Request::Time
        | Request::Subscribe { .. }
        | Request::FollowAck { .. }
        | Request::NoticeAck { .. } => Vec::new(),
    }
}

/// Calls whose reply may carry a handle the request did not name.
fn hands_out(req: &Request) -> bool {
    matches!(
        req,
        Request::Mount { .. }
            | Request::Lookup { .. }
            | Request::Create { .. }
            | Request::Mkdir { .. }
            | Request::Symlink { .. }
            | Request::Mknod { .. }
            | Request::ReadDirPlus { .. }
    )
}

/// The handles a reply hands out.
fn handed(res: &Response) -> Vec<&FileHandle> {
    match res {
        Response::Mount { root, .. } => vec![root],
        Response::Lookup { fh, .. } | Response::Created { fh, .. } => vec![fh],
        Response::Dir { entries, .. } => entries.iter().filter_map(|e| e.plus.as_ref().map(|(fh, _)| fh)).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fh(i: u8) -> FileHandle {
        FileHandle(vec![i])
    }

    #[test]
    fn a_mount_holds_what_it_named_or_was_handed() {
        let mut h = Holders::new(100);
        let get = Request::GetAttr { fh: fh(1) };
        let handing = h.begin(7, &get);
        h.end(7, handing, &Err(fs_proto::Errno::ENOENT));
        assert!(h.may_hold(7, &[&fh(1)]), "named, even if the call failed");
        assert!(!h.may_hold(8, &[&fh(1)]));
        let lookup = Request::Lookup { dir: fh(1), name: b"a".to_vec() };
        let handing = h.begin(8, &lookup);
        assert!(h.may_hold(8, &[&fh(2)]), "a LOOKUP in progress may hand out anything");
        // SAFETY: a stat of zeros is a valid value of the plain C struct.
        let attr = crate::ops::attr_of(&unsafe { std::mem::zeroed() }, 0);
        h.end(8, handing, &Ok(Response::Lookup { fh: fh(2), attr, dir: None }));
        assert!(h.may_hold(8, &[&fh(2)]) && !h.may_hold(8, &[&fh(3)]), "handed 2, nothing else");
        assert!(!h.may_hold(7, &[&fh(2)]));
        assert!(h.may_hold(7, &[&fh(3), &fh(1)]), "any of them");
    }

    #[test]
    fn forgotten_handles_and_a_takeover_make_everyone_a_holder() {
        let mut h = Holders::new(2);
        let get = |h: &mut Holders, i| {
            let handing = h.begin(7, &Request::GetAttr { fh: fh(i) });
            h.end(7, handing, &Err(fs_proto::Errno::ENOENT));
        };
        get(&mut h, 1);
        get(&mut h, 2);
        assert!(!h.may_hold(8, &[&fh(9)]), "never handed out: nobody holds it");
        get(&mut h, 3);
        assert!(h.may_hold(8, &[&fh(1)]), "1 was forgotten for room: anyone may hold it");
        assert!(!h.may_hold(8, &[&fh(3)]), "3 is known");
        let mut t = Holders::new(10);
        t.took_over();
        assert!(t.may_hold(8, &[&fh(1)]));
    }
}
