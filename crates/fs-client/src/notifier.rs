//! The notifier threads: `fs-notify` subscribes to the server's change notices on every
//! connection, follows them in number order ([`crate::notices::Follower`]) and drops what
//! they make stale from our caches ([`Client::apply_notice`]); `fs-drop` then drops it
//! from the kernel's, through fuser's notifier, and acknowledges.
//!
//! One dedicated thread does every kernel invalidation, never a FUSE request handler and
//! never with a lock of the inode table held: an invalidation of pages waits for page
//! locks that a READ in progress holds, and that READ needs a FUSE thread to finish
//! (libfuse documents the deadlock). It is not the thread that applies notices to our
//! tables: a drop of a name waits for the lock of its directory, which a LOOKUP there
//! holds while it waits for our tables to catch up with the notices received before its
//! reply (`client::order`).

use crate::client::{Client, Inval};
use crate::notices::{Follower, Step};
use crate::rpc::Push;
use fs_proto::{Cred, Errno, Request, Response};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, OnceLock};

/// The notifier's calls are the mount's own, not a user's.
const MOUNT_CRED: Cred = Cred { uid: 0, gid: 0, groups: Vec::new() };

/// What `fs-drop` does for a batch of pushes: the kernel's drops, each with whether it
/// drops names, then the acknowledgement (of every notice up to the number) if due.
struct Drops {
    drops: Vec<(Vec<Inval>, bool)>,
    ack: Option<u64>,
}

pub fn start(client: Arc<Client>, rt: tokio::runtime::Handle, kernel: Arc<OnceLock<fuser::Notifier>>) {
    let (tx, rx) = std::sync::mpsc::channel();
    client.rpc().set_pushes(tx);
    let (drop_tx, drop_rx) = std::sync::mpsc::channel::<Drops>();
    let dropper = client.clone();
    if let Err(e) = std::thread::Builder::new().name("fs-drop".into()).spawn(move || {
        for d in drop_rx {
            kernel_drops(&dropper, &kernel, d.drops);
            if let Some(upto) = d.ack {
                // Our caches and the kernel's no longer hold what they changed: the
                // writer's COMMIT or SETATTR may return (see `NoticeAck`).
                dropper.rpc().send_oneway(&MOUNT_CRED, Request::NoticeAck { upto });
            }
        }
    }) {
        tracing::error!("no notifier thread ({e}): attribute timeouts only");
        return;
    }
    let spawned = std::thread::Builder::new().name("fs-notify".into()).spawn(move || {
        let mut f = Follower::default();
        let mut refused = false;
        let mut drops = Vec::new();
        subscribe(&client, &rt, &mut f, &mut refused, &mut drops);
        if drop_tx.send(Drops { drops: std::mem::take(&mut drops), ack: None }).is_err() {
            return;
        }
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
                        subscribe(&client, &rt, &mut f, &mut refused, &mut drops);
                        for q in more {
                            if let Push::Reply(r) = q {
                                ack |= pushed(&client, &mut f, r, &mut drops);
                            }
                        }
                    }
                    Push::Reply(r) => ack |= pushed(&client, &mut f, r, &mut drops),
                }
                next = rx.try_recv().ok();
            }
            let ack = (ack && f.live()).then(|| f.applied());
            if (!drops.is_empty() || ack.is_some())
                && drop_tx.send(Drops { drops: std::mem::take(&mut drops), ack }).is_err()
            {
                return;
            }
        }
    });
    if let Err(e) = spawned {
        tracing::error!("no notifier thread ({e}): attribute timeouts only");
    }
}

/// Follows one push; returns whether it applied another mount's change of objects
/// alone, which its writer waits for us to acknowledge.
fn pushed(client: &Client, f: &mut Follower, r: Box<fs_proto::Reply>, drops: &mut Vec<(Vec<Inval>, bool)>) -> bool {
    let Ok(Response::Notices { instance, next, notices, .. }) = r.res else {
        client.push_processed();
        return false;
    };
    let steps = f.pushed(instance, next, notices);
    let own = client.rpc().client_id();
    let awaited = steps
        .iter()
        .any(|s| matches!(s, Step::Apply(n) if n.client != own && fs_proto::Notice::of_objects_alone(&n.changes)));
    carry_out(client, f, steps, true, drops);
    awaited
}

fn subscribe(
    client: &Client,
    rt: &tokio::runtime::Handle,
    f: &mut Follower,
    refused: &mut bool,
    drops: &mut Vec<(Vec<Inval>, bool)>,
) {
    if *refused {
        return;
    }
    match rt.block_on(client.rpc().call(&MOUNT_CRED, Request::Subscribe { after: f.after() })) {
        Ok(Response::Notices { instance, next, complete, notices }) => {
            let steps = f.subscribed(instance, next, complete, notices);
            carry_out(client, f, steps, false, drops);
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

/// Applies `steps` to our tables (a push's, with `push`, is then counted as processed:
/// answers waiting for it may go, see `client::order`), and adds what the kernel must
/// drop to `drops`.
fn carry_out(client: &Client, f: &Follower, steps: Vec<Step>, push: bool, drops: &mut Vec<(Vec<Inval>, bool)>) {
    let mut reconnect = false;
    for s in steps {
        match s {
            Step::Apply(n) => {
                let invals = client.apply_notice(&n);
                let names = invals.iter().any(|i| matches!(i, Inval::Entry(..)));
                drops.push((invals, names));
            }
            Step::DropAll => drops.push((client.drop_all(), true)),
            Step::Reconnect => {
                reconnect = true;
                break;
            }
        }
    }
    if push {
        client.push_processed();
    }
    if reconnect {
        tracing::warn!("a change notice is missing; reconnecting to catch up");
        client.notices_lapsed();
        client.rpc().reset_connection();
        return;
    }
    if f.live() {
        if let Some(i) = f.instance() {
            client.notices_live(i, f.applied());
        }
    }
}

/// Drops from the kernel's caches what notices changed, in their order.
fn kernel_drops(client: &Client, kernel: &OnceLock<fuser::Notifier>, drops: Vec<(Vec<Inval>, bool)>) {
    for (invals, names) in drops {
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
        if names {
            client.names_dropped();
        }
    }
}
