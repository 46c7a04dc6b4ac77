//! The server proper: configuration, the duplicate request cache in front of the
//! operations, and the dispatch from a [`Call`] to one operation.

use crate::creds::Identity;
use crate::drc::{Begin, Drc};
use crate::handles::{self, Handles};
use fs_proto::*;
use std::path::PathBuf;
use std::sync::Mutex;

/// Validated configuration: what `main` builds from the command line.
#[derive(Clone, Debug)]
pub struct Config {
    pub export: PathBuf,
    pub state_dir: PathBuf,
    pub read_only: bool,
    pub root_squash: bool,
    /// Entries in the duplicate request cache.
    pub drc_size: usize,
    /// Open descriptors kept by the handle cache.
    pub fd_cache: usize,
    /// Change notices kept for mounts that reconnect (the sequencer's history).
    pub notice_history: usize,
    /// Tests only: push no notice numbered a multiple of this.
    pub test_drop_notices_every: Option<u64>,
    /// Tests only: every call that goes through the duplicate request cache takes this
    /// much longer after it is done (so a retransmission can arrive while the first is
    /// still in progress, and a test can see that it is).
    pub test_delay_changes: std::time::Duration,
    /// With a key, only clients that prove they hold it are served (`--key`).
    pub key: Option<fs_proto::secure::Key>,
}

impl Config {
    pub fn new(export: PathBuf, state_dir: PathBuf) -> Config {
        Config {
            export,
            state_dir,
            read_only: false,
            root_squash: true,
            drc_size: 4096,
            fd_cache: 4096,
            notice_history: 65536,
            test_drop_notices_every: None,
            test_delay_changes: std::time::Duration::ZERO,
            key: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("export {0} does not exist")]
    Missing(String),
    #[error(transparent)]
    Handles(#[from] handles::HandleSetupError),
    #[error("state folder {0}: {1}")]
    State(String, std::io::Error),
}

/// How long a retransmission waits for the first of its kind to finish.
const DUPLICATE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

pub struct Server {
    pub(crate) handles: Handles,
    pub(crate) ident: Identity,
    drc: Mutex<Drc<Reply>>,
    /// Signalled whenever a call is finished in the duplicate request cache.
    drc_done: std::sync::Condvar,
    test_delay_changes: std::time::Duration,
    /// Changes on every start: a client that sees a new one resends uncommitted writes.
    pub(crate) verifier: u64,
    pub(crate) read_only: bool,
    /// Serialises the check-and-write of fenced writes, per file.
    pub(crate) fence_locks: crate::ops::FileLocks,
    panic_next: std::sync::atomic::AtomicBool,
    /// The sequencer: every change numbered and pushed to subscribed mounts.
    pub notices: crate::notices::Hub,
    pub metrics: crate::metrics::Metrics,
    /// The clients' key, if any (see [`fs_proto::secure`]).
    pub(crate) key: Option<fs_proto::secure::Key>,
    /// Standby servers following this one ([`crate::replica`]).
    pub standbys: crate::replica::Standbys,
    /// When this server, a standby, took over from its primary.
    took_over_at: Mutex<Option<std::time::Instant>>,
    /// Which mounts may hold which files (AFS's callback registrations).
    holders: Mutex<crate::holders::Holders>,
}

/// How long after a takeover failed calls announce their targets (see `handle_call`).
const TAKEOVER_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

impl Server {
    pub fn new(cfg: &Config) -> Result<Server, StartError> {
        if !cfg.export.exists() {
            return Err(StartError::Missing(cfg.export.display().to_string()));
        }
        let key = handles::load_or_create_key(&cfg.state_dir)
            .map_err(|e| StartError::State(cfg.state_dir.display().to_string(), e))?;
        let handles = Handles::new(&cfg.export, key, cfg.fd_cache)?;
        let ident = Identity::probe(cfg.root_squash);
        if !ident.switch {
            tracing::warn!("no CAP_SETUID/CAP_SETGID: every request runs as uid {}", ident.own_uid);
        }
        // Modes from clients arrive with their umask already applied.
        crate::sys::set_umask(0);
        crate::sys::raise_nofile();
        crate::sys::tune_malloc();
        Ok(Server {
            handles,
            ident,
            drc: Mutex::new(Drc::new(cfg.drc_size)),
            drc_done: std::sync::Condvar::new(),
            test_delay_changes: cfg.test_delay_changes,
            verifier: handles::random_u64(),
            read_only: cfg.read_only,
            fence_locks: Default::default(),
            panic_next: Default::default(),
            notices: crate::notices::Hub::new(handles::random_u64(), cfg.notice_history)
                .dropping_every(cfg.test_drop_notices_every),
            metrics: Default::default(),
            key: cfg.key.clone(),
            standbys: Default::default(),
            took_over_at: Mutex::new(None),
            holders: Mutex::new(crate::holders::Holders::new(crate::holders::CAPACITY)),
        })
    }

    pub fn root(&self) -> &FileHandle {
        self.handles.root()
    }

    pub fn write_verifier(&self) -> u64 {
        self.verifier
    }

    /// The objects a REMOVE, RMDIR or RENAME will unlink or move, found before it runs:
    /// their link counts and change times move, which the notice of the entries alone
    /// does not tell a mount that holds them by another name (a hard link) under the
    /// promise (see [`crate::notices::changes`]).
    fn relinked_by(&self, req: &Request) -> Vec<FileHandle> {
        let handle = |dir: &FileHandle, name: &[u8]| {
            let d = self.handles.resolve(dir).ok()?;
            let name = std::ffi::CString::new(name).ok()?;
            self.handles.make(d.raw(), &name).ok()
        };
        match req {
            Request::Remove { dir, name } | Request::Rmdir { dir, name } => handle(dir, name).into_iter().collect(),
            Request::Rename { from_dir, from, to_dir, to, .. } => {
                handle(from_dir, from).into_iter().chain(handle(to_dir, to)).collect()
            }
            _ => Vec::new(),
        }
    }

    /// Answers one call. `None` means "say nothing": the same call is already running
    /// and its reply will answer this retransmission too.
    pub fn handle_call(&self, call: Call) -> Option<Reply> {
        let Call { xid, client, cred, req } = call;
        if req.is_idempotent() {
            // WRITE and COMMIT change the export without needing the cache; their notice
            // is made from the request without its data.
            let shape = match &req {
                Request::Write { fh, offset, stable, fence, .. } => Some(Request::Write {
                    fh: fh.clone(),
                    offset: *offset,
                    stable: *stable,
                    fence: *fence,
                    data: Vec::new(),
                }),
                Request::Commit { .. } => Some(req.clone()),
                _ => None,
            };
            // COMMIT and a stable WRITE tell the client its data is safe: their notice
            // reaches the standbys first (a standby that takes over has it).
            let durable = matches!(
                &req,
                Request::Commit { .. } | Request::Write { stable: Stable::DataSync | Stable::FileSync, .. }
            );
            let reads_names = req.reads_names();
            let res = self.dispatch_tracked(client, &cred, req);
            if reads_names {
                // Its reply goes after the notice of any change of names it may show.
                self.notices.barrier();
            }
            if let (Some(shape), Ok(r)) = (&shape, &res) {
                let awaited = self.announce(client, crate::notices::changes(shape, r, Vec::new()), None, durable);
                self.await_mounts(client, awaited);
            }
            return Some(Reply { xid, res });
        }
        let mut drc = crate::lock(&self.drc);
        let waiting_since = std::time::Instant::now();
        loop {
            match drc.begin(client, xid, &req) {
                Begin::New => break,
                // The first of these is still running. Its reply may go to a connection
                // that is gone (the client reset it and resent the call on a new one, and
                // a hard mount waits for this answer forever): wait for it, and answer
                // here too. (Dropping the duplicate, as a UDP server may, hung a mount
                // whose notices made it reconnect while a CREATE ran.)
                Begin::InProgress => {
                    let left = DUPLICATE_WAIT.saturating_sub(waiting_since.elapsed());
                    if left.is_zero() {
                        return None;
                    }
                    drc = self.drc_done.wait_timeout(drc, left).unwrap_or_else(std::sync::PoisonError::into_inner).0;
                }
                Begin::Replay(r) => {
                    self.metrics.drc_replays.inc();
                    tracing::debug!(xid, client, "replaying {} from the duplicate request cache", req.name());
                    return Some(r);
                }
            }
        }
        drop(drc);
        // From before the change until its notice is pushed (see `Hub::barrier`).
        let changing = self.notices.changing();
        let relinked = self.relinked_by(&req);
        // The call is finished in the cache however it ends: a panic left it "in
        // progress" for good, and every retransmission went unanswered.
        let reply = Reply { xid, res: self.dispatch_tracked(client, &cred, req.clone()) };
        if !self.test_delay_changes.is_zero() {
            // Done, but not yet finished in the cache: a retransmission now finds it
            // in progress.
            std::thread::sleep(self.test_delay_changes);
        }
        let changes = match &reply.res {
            Ok(r) => crate::notices::changes(&req, r, relinked),
            // Soon after a takeover, a call that fails may be the retransmission of one
            // the old primary did and died before its notice reached us (a CREATE now
            // answered EEXIST): its targets are announced all the same.
            Err(_) if self.just_took_over() => crate::notices::targets(&req),
            Err(_) => Vec::new(),
        };
        let call = (!self.standbys.is_empty()).then(|| fs_proto::ReplicaCall {
            client,
            xid,
            req: fs_proto::encode_payload(&req),
            reply: fs_proto::encode_payload(&reply),
        });
        crate::lock(&self.drc).finish(client, xid, req, reply.clone());
        self.drc_done.notify_all();
        // Before the client sees it: a retransmission to a standby that took over gets
        // this same reply, and the standby has the notice.
        let awaited = self.announce(client, changes, call, true);
        drop(changing);
        self.await_mounts(client, awaited);
        Some(reply)
    }

    /// Numbers what a call changed, sends it (and `call`, for the standbys' duplicate
    /// request cache) to the standbys, and pushes the notice to mounts once they all have
    /// it; with `wait`, returns only then. A change of a file's data or attributes alone
    /// (WRITE, COMMIT, SETATTR...: what `open` revalidates) returns only once every other
    /// mount that may hold the file ([`crate::holders`]) applied its notice, so the
    /// WRITEs of a `close` have left no stale cache
    /// anywhere when it returns (close-to-open under the promise). Changes of names do
    /// not wait for mounts: a mount applying a notice about a name needs the kernel's
    /// lock of that directory, which the kernel holds while that mount's own change in
    /// the directory waits for its reply, so two mounts changing one directory would
    /// wait for each other.
    /// Returns the notice's number and the files whose holders [`Server::await_mounts`]
    /// must then wait for (outside [`crate::notices::Hub::changing`]: the mounts'
    /// acknowledgements come in on reader threads that a barrier may hold).
    fn announce(
        &self,
        client: u64,
        changes: Vec<Change>,
        call: Option<fs_proto::ReplicaCall>,
        wait: bool,
    ) -> Option<(u64, Vec<fs_proto::FileHandle>)> {
        let await_mounts = fs_proto::Notice::of_objects_alone(&changes);
        let objects: Vec<fs_proto::FileHandle> = match await_mounts {
            true => changes
                .iter()
                .filter_map(|c| match c {
                    Change::Object { fh, .. } => Some(fh.clone()),
                    Change::Entry { .. } => None,
                })
                .collect(),
            false => Vec::new(),
        };
        let mut sent = None;
        let n = self.notices.record(client, changes, |notice| {
            if call.is_some() || notice.is_some() {
                sent = self.standbys.send(call, notice.cloned());
            }
        });
        match sent {
            // No standbys: nothing to wait for.
            None => {
                if let Some(n) = n {
                    self.notices.release(n);
                }
            }
            Some(sent) if wait => self.notices.release(self.standbys.wait(sent)),
            // Pushed when the standbys acknowledge it (`follow_ack`).
            Some(_) => {}
        }
        n.filter(|_| await_mounts).map(|n| (n, objects))
    }

    /// The second half of [`Server::announce`]: waits for the mounts that may hold the
    /// changed files to apply the notice.
    fn await_mounts(&self, client: u64, awaited: Option<(u64, Vec<fs_proto::FileHandle>)>) {
        if let Some((n, objects)) = awaited {
            let holders = &self.holders;
            let fhs: Vec<&fs_proto::FileHandle> = objects.iter().collect();
            let a = self.notices.await_applied(n, client, crate::notices::APPLY_WAIT, |other| {
                crate::lock(holders).may_hold(other, &fhs)
            });
            self.metrics.notice_waits.inc_by(a.waited as u64);
            self.metrics.notice_drops.inc_by(a.dropped as u64);
        }
    }

    /// A standby follows on connection `conn` (its FOLLOW was call `xid`).
    pub fn follow_start(
        &self,
        conn: u64,
        peer: String,
        xid: u64,
        frames: std::sync::mpsc::SyncSender<crate::notices::Frame>,
    ) {
        self.notices.with_next(|instance, next| self.standbys.add(conn, peer, xid, frames, instance, next));
    }

    /// A standby acknowledged replicas up to `seq`: the notices it now has go out.
    pub fn follow_ack(&self, conn: u64, seq: u64) {
        self.notices.release(self.standbys.ack(conn, seq));
    }

    /// A standby's connection ended.
    pub fn follow_end(&self, conn: u64) {
        self.notices.release(self.standbys.remove(conn));
    }

    /// The standbys' beat (every 200 ms).
    pub fn beat_standbys(&self) {
        let w = self.notices.with_next(|instance, next| self.standbys.beat(instance, next));
        self.notices.release(w);
    }

    /// This server took over from a primary (see [`Server::just_took_over`]).
    pub fn took_over(&self) {
        crate::lock(&self.holders).took_over();
        *crate::lock(&self.took_over_at) = Some(std::time::Instant::now());
    }

    /// Within a minute of a takeover (the mounts' retransmissions arrive then).
    fn just_took_over(&self) -> bool {
        crate::lock(&self.took_over_at).is_some_and(|t| t.elapsed() < TAKEOVER_WINDOW)
    }

    /// A standby's side of replication: a call the primary answered, for our cache.
    pub fn remember(&self, client: u64, xid: u64, req: Request, reply: Reply) {
        crate::lock(&self.drc).finish(client, xid, req, reply);
        self.drc_done.notify_all();
    }

    /// [`Server::dispatch_caught`] for `client`, registering it as a holder of the
    /// handles the call names and of those its reply hands out ([`crate::holders`]).
    fn dispatch_tracked(&self, client: u64, cred: &Cred, req: Request) -> Result<Response, Errno> {
        let handing = crate::lock(&self.holders).begin(client, &req);
        let res = self.dispatch_caught(cred, req);
        crate::lock(&self.holders).end(client, handing, &res);
        res
    }

    /// [`Server::dispatch`], a panic costing this call a SERVERFAULT and nothing more.
    fn dispatch_caught(&self, cred: &Cred, req: Request) -> Result<Response, Errno> {
        let name = req.name();
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.dispatch(cred, req))).unwrap_or_else(|_| {
            tracing::error!("{name} panicked; answered SERVERFAULT");
            Err(Errno::SERVERFAULT)
        })
    }

    /// Fault injection for tests: the next call's operation panics.
    #[doc(hidden)]
    pub fn panic_on_next_call(&self) {
        self.panic_next.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn dispatch(&self, cred: &Cred, req: Request) -> Result<Response, Errno> {
        if self.panic_next.swap(false, std::sync::atomic::Ordering::SeqCst) {
            panic!("injected fault");
        }
        if self.read_only && req.is_mutation() {
            return Err(Errno::EROFS);
        }
        match req {
            Request::Null => Ok(Response::Null),
            Request::Mount { path } => self.op_mount(&path),
            Request::GetAttr { fh } => self.op_getattr(&fh),
            Request::SetAttr { fh, attrs, guard } => self.op_setattr(cred, &fh, &attrs, guard),
            Request::Lookup { dir, name } => self.op_lookup(cred, &dir, &name),
            Request::Access { fh, mask } => self.op_access(cred, &fh, mask),
            Request::ReadLink { fh } => self.op_readlink(&fh),
            Request::Read { fh, offset, count } => self.op_read(cred, &fh, offset, count),
            Request::Write { fh, offset, stable, fence, data } => {
                self.op_write(cred, &fh, offset, stable, fence, &data)
            }
            Request::Create { dir, name, mode, how } => self.op_create(cred, &dir, &name, mode, how),
            Request::Mkdir { dir, name, mode } => self.op_mkdir(cred, &dir, &name, mode),
            Request::Symlink { dir, name, target } => self.op_symlink(cred, &dir, &name, &target),
            Request::Mknod { dir, name, mode, kind } => self.op_mknod(cred, &dir, &name, mode, kind),
            Request::Remove { dir, name } => self.op_remove(cred, &dir, &name, 0),
            Request::Rmdir { dir, name } => self.op_remove(cred, &dir, &name, libc::AT_REMOVEDIR),
            Request::Rename { from_dir, from, to_dir, to, flags } => {
                self.op_rename(cred, &from_dir, &from, &to_dir, &to, flags)
            }
            Request::Link { fh, dir, name } => self.op_link(cred, &fh, &dir, &name),
            Request::ReadDir { dir, cookie, verifier, count } => {
                self.op_readdir(cred, &dir, cookie, verifier, count, false)
            }
            Request::ReadDirPlus { dir, cookie, verifier, count } => {
                self.op_readdir(cred, &dir, cookie, verifier, count, true)
            }
            Request::FsStat { fh } => self.op_fsstat(&fh),
            Request::Commit { fh, .. } => self.op_commit(&fh),
            Request::GetXattr { fh, name } => self.op_getxattr(cred, &fh, &name),
            Request::SetXattr { fh, name, value, flags } => self.op_setxattr(cred, &fh, &name, &value, flags),
            Request::ListXattr { fh } => self.op_listxattr(cred, &fh),
            Request::RemoveXattr { fh, name } => self.op_removexattr(cred, &fh, &name),
            Request::Fallocate { fh, mode, offset, len } => self.op_fallocate(cred, &fh, mode, offset, len),
            Request::Time => self.op_time(),
            // A connection's business (`net`): never reaches here from a connection.
            Request::Subscribe { .. }
            | Request::Follow { .. }
            | Request::FollowAck { .. }
            | Request::NoticeAck { .. } => Err(Errno::EINVAL),
        }
    }
}
