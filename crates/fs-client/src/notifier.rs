//! The notifier thread: subscribes to the server's change notices on every connection,
//! follows them in number order ([`crate::notices::Follower`]), drops what they make
//! stale from our caches ([`Client::apply_notice`]) and then from the kernel's, through
//! fuser's notifier.
//!
//! One dedicated thread does every kernel invalidation, never a FUSE request handler and
//! never with a lock of the inode table held: an invalidation of pages waits for page
//! locks that a READ in progress holds, and that READ needs a FUSE thread to finish
//! (libfuse documents the deadlock).

use crate::client::{Client, Inval};
use crate::notices::{Follower, Step};
use crate::rpc::Push;
use fs_proto::{Cred, Errno, Request, Response};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, OnceLock};

/// The notifier's calls are the mount's own, not a user's.
const MOUNT_CRED: Cred = Cred { uid: 0, gid: 0, groups: Vec::new() };

pub fn start(client: Arc<Client>, rt: tokio::runtime::Handle, kernel: Arc<OnceLock<fuser::Notifier>>) {
    let (tx, rx) = std::sync::mpsc::channel();
    client.rpc().set_pushes(tx);
    let spawned = std::thread::Builder::new().name("fs-notify".into()).spawn(move || {
        let mut f = Follower::default();
        let mut refused = false;
        subscribe(&client, &rt, &kernel, &mut f, &mut refused);
        while let Ok(first) = rx.recv() {
            // Whatever else came meanwhile is applied before acknowledging once.
            let mut ack = false;
            let mut next = Some(first);
            while let Some(p) = next.take() {
                match p {
                    Push::Connected => {
                        // Several reconnects queued: one subscription, on the latest.
                        let mut more = Vec::new();
                        while let Ok(q) = rx.try_recv() {
                            more.push(q);
                        }
                        f.disconnected();
                        client.notices_lapsed();
                        subscribe(&client, &rt, &kernel, &mut f, &mut refused);
                        for q in more {
                            if let Push::Reply(r) = q {
                                ack |= pushed(&client, &kernel, &mut f, r);
                            }
                        }
                    }
                    Push::Reply(r) => ack |= pushed(&client, &kernel, &mut f, r),
                }
                next = rx.try_recv().ok();
            }
            if ack && f.live() {
                // Our caches and the kernel's no longer hold what they changed: the
                // writer's COMMIT or SETATTR may return (see `NoticeAck`).
                client.rpc().send_oneway(&MOUNT_CRED, Request::NoticeAck { upto: f.applied() });
            }
        }
    });
    if let Err(e) = spawned {
        tracing::error!("no notifier thread ({e}): attribute timeouts only");
    }
}

/// Follows one push; returns whether it applied another mount's change of objects
/// alone, which its writer waits for us to acknowledge.
fn pushed(client: &Client, kernel: &OnceLock<fuser::Notifier>, f: &mut Follower, r: Box<fs_proto::Reply>) -> bool {
    let Ok(Response::Notices { instance, next, notices, .. }) = r.res else { return false };
    let steps = f.pushed(instance, next, notices);
    let own = client.rpc().client_id();
    let awaited = steps
        .iter()
        .any(|s| matches!(s, Step::Apply(n) if n.client != own && fs_proto::Notice::of_objects_alone(&n.changes)));
    carry_out(client, kernel, f, steps);
    awaited
}

fn subscribe(
    client: &Client,
    rt: &tokio::runtime::Handle,
    kernel: &OnceLock<fuser::Notifier>,
    f: &mut Follower,
    refused: &mut bool,
) {
    if *refused {
        return;
    }
    match rt.block_on(client.rpc().call(&MOUNT_CRED, Request::Subscribe { after: f.after() })) {
        Ok(Response::Notices { instance, next, complete, notices }) => {
            let steps = f.subscribed(instance, next, complete, notices);
            carry_out(client, kernel, f, steps);
        }
        Err(Errno::EINVAL) => {
            // Already subscribed on this connection by a call resent across a reconnect,
            // whose pushes went by unfollowed: start over on a new connection.
            client.rpc().reset_connection();
        }
        Ok(other) => {
            tracing::warn!("SUBSCRIBE answered {other:?}; attribute timeouts only");
            *refused = true;
        }
        Err(e) => {
            tracing::warn!("the server does not give change notices ({e}); attribute timeouts only");
            *refused = true;
        }
    }
}

fn carry_out(client: &Client, kernel: &OnceLock<fuser::Notifier>, f: &Follower, steps: Vec<Step>) {
    for s in steps {
        let invals = match s {
            Step::Apply(n) => client.apply_notice(&n),
            Step::DropAll => client.drop_all(),
            Step::Reconnect => {
                tracing::warn!("a change notice is missing; reconnecting to catch up");
                client.notices_lapsed();
                client.rpc().reset_connection();
                return;
            }
        };
        if let Some(k) = kernel.get() {
            for i in invals {
                // ENOENT: the kernel did not hold it. Nothing else can be done about
                // another error than to say so.
                let r = match &i {
                    Inval::Inode(ino) => k.inval_inode(fuser::INodeNo(*ino), 0, 0),
                    Inval::Entry(dir, name) => k.inval_entry(fuser::INodeNo(*dir), OsStr::from_bytes(name)),
                };
                if let Err(e) = r {
                    if e.raw_os_error() != Some(libc::ENOENT) {
                        tracing::debug!("kernel invalidation {i:?}: {e}");
                    }
                }
            }
        }
    }
    if f.live() {
        if let Some(i) = f.instance() {
            client.notices_live(i, f.applied());
        }
    }
}
