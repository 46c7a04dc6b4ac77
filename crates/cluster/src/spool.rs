//! The spool watcher: users drop `in/NAME.job` into a shared folder; a watcher claims the
//! job, runs it through the broker as a source and a subscriber, and writes
//! `out/NAME.primes` and `out/NAME.summary`.
//!
//! Folder protocol (every step is one rename, atomic on the server, so it is safe between
//! watchers on different mounts of one export):
//! - claim: `in/NAME.job` -> `running/NAME.job@ID`. Only one rename of a name succeeds;
//!   the loser gets ENOENT and moves on.
//! - while running, the watcher touches its claim every `claim_timeout / 4`; the claim's
//!   ctime (set by the server's clock, changed by both the rename and the touch) shows it
//!   is alive. A claim older than `claim_timeout` by the server's clock is stolen by
//!   renaming it to the thief's id. A watcher restarted with the same id resumes its own.
//! - results are written to `out/.NAME.*.tmp@ID` and renamed into place, primes first,
//!   summary second; then the claim moves to `done/NAME.job`. A crash at any point leaves
//!   either no result or a whole one, and the claim, so the job is run again.
//! - a malformed job moves to `failed/NAME.job` with `failed/NAME.reason` naming the line.
//!
//! With leases (`--leases NODE_ADDR`), a watcher also holds the job's lease (key: the
//! spool's id from `.spool-id` and the job's name) from before the claiming rename until
//! the job is retired. A claim in `running/` whose lease can be taken is one whose watcher
//! died (its node released the lease when the watcher stopped beating): it is taken over
//! at once, without waiting for `claim_timeout`.

use crate::endpoint::Brokers;
use crate::job::Job;
use crate::sink;
use crate::source::{Source, SourceError};
use crate::util;
use crate::vote::Verdict;
use crate::wire::{job_prefix, tag, Msg};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    pub addr: Brokers,
    /// Names this watcher's claims; a restart with the same id resumes them at once.
    pub id: String,
    pub batch: usize,
    /// Batches submitted but not yet done, per job.
    pub window: usize,
    pub poll: Duration,
    pub claim_timeout: Duration,
    /// No batch of a running job finished for this long: submit the missing ones again
    /// (the broker restarted, or its publications were lost).
    pub stall: Duration,
    /// Workers that test each batch, the watcher voting (a job's `# replicas N` wins).
    pub replicas: u8,
    /// A job file changed more recently than this (by the server's clock) may still be
    /// being written: it is left for the next pass. Write `.NAME.job` and rename it to
    /// skip the wait.
    pub settle: Duration,
    pub progress: bool,
    /// A `cluster node` address: job claims also take the job's lease.
    pub leases: Option<String>,
}

impl SpoolConfig {
    pub fn new(dir: PathBuf, addr: impl Into<Brokers>) -> SpoolConfig {
        let addr = addr.into();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let abs = std::fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone());
        let tag = blake3::hash(abs.as_os_str().as_encoded_bytes()).to_hex();
        SpoolConfig {
            id: format!("{}-{}", host.trim(), &tag[..8]),
            dir,
            addr,
            batch: 4096,
            window: 32,
            poll: Duration::from_millis(500),
            claim_timeout: Duration::from_secs(30),
            stall: Duration::from_secs(15),
            replicas: 1,
            settle: Duration::from_millis(1000),
            progress: false,
            leases: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done {
        name: String,
        primes: u64,
    },
    Failed {
        name: String,
        reason: String,
    },
    /// Stopped or lost the claim: the job stays claimed and is run again later.
    Interrupted {
        name: String,
    },
}

pub struct Spool<'a> {
    ctx: &'a zmq::Context,
    cfg: SpoolConfig,
    lease: Option<crate::lease::LeaseClient>,
    /// Names this spool folder in lease keys (the same through every mount).
    spool_id: String,
}

/// A running job with no result for this long pings its broker (see `execute`).
const PROBE: Duration = Duration::from_secs(2);

const DIRS: [&str; 5] = ["in", "running", "out", "failed", "done"];

impl<'a> Spool<'a> {
    pub fn new(ctx: &'a zmq::Context, cfg: SpoolConfig) -> anyhow::Result<Spool<'a>> {
        anyhow::ensure!(!cfg.id.contains(['/', '@']), "spool id {:?} must not contain '/' or '@'", cfg.id);
        anyhow::ensure!(cfg.batch > 0 && cfg.window > 0, "batch and window must be at least 1");
        for d in DIRS {
            let p = cfg.dir.join(d);
            std::fs::create_dir_all(&p).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", p.display()))?;
        }
        let id_file = cfg.dir.join(".spool-id");
        let fresh = format!("{:016x}\n", util::random_u64());
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&id_file) {
            Ok(mut f) => f.write_all(fresh.as_bytes())?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(anyhow::anyhow!("cannot create {}: {e}", id_file.display())),
        }
        let spool_id = std::fs::read_to_string(&id_file)?.trim().to_string();
        let lease = match &cfg.leases {
            Some(addr) => {
                let l = crate::lease::LeaseClient::connect(addr)?;
                anyhow::ensure!(
                    l.status(Duration::from_secs(10)).is_some(),
                    "the cluster node at {addr} does not answer"
                );
                Some(l)
            }
            None => None,
        };
        Ok(Spool { ctx, cfg, lease, spool_id })
    }

    fn lease_key(&self, job_file: &str) -> Vec<u8> {
        format!("spool:{}:{job_file}", self.spool_id).into_bytes()
    }

    /// Takes the job's lease without waiting (always true without leases).
    fn try_lease(&self, job_file: &str) -> bool {
        self.lease.as_ref().is_none_or(|l| l.acquire(&self.lease_key(job_file), false).is_some())
    }

    fn drop_lease(&self, job_file: &str) {
        if let Some(l) = &self.lease {
            l.release(&self.lease_key(job_file));
        }
    }

    fn path(&self, sub: &str, name: &str) -> PathBuf {
        self.cfg.dir.join(sub).join(name)
    }

    /// Watches until stopped, telling `report` of each job it finished with. Between
    /// scans it waits for the mount's next change notice (a dropped job is claimed as
    /// soon as its notice arrives), or, on a mount that does not follow notices (or
    /// another file system), for the scan interval.
    pub fn run(&self, mut report: impl FnMut(&Outcome)) -> anyhow::Result<()> {
        let mut seen = 0u64;
        let mut notices = true;
        while !util::stopping() {
            let outcomes = self.scan_once()?;
            outcomes.iter().for_each(&mut report);
            if outcomes.is_empty() {
                match notices.then(|| wait_for_notice(&self.cfg.dir.join("in"), seen)) {
                    Some(Some(Some(n))) => seen = n,
                    // Not following notices just now (reconnecting): the interval.
                    Some(Some(None)) => std::thread::sleep(self.cfg.poll),
                    // Not such a mount: the interval from now on.
                    Some(None) | None => {
                        notices = false;
                        std::thread::sleep(self.cfg.poll);
                    }
                }
            }
        }
        Ok(())
    }

    /// One pass: resumes our claims, steals stale ones, claims new jobs, and runs each.
    /// One job is claimed at a time, so watchers on other mounts share the work.
    pub fn scan_once(&self) -> anyhow::Result<Vec<Outcome>> {
        let mut out = Vec::new();
        while !util::stopping() {
            let Some(claim) = self.claim_next()? else { break };
            let o = self.run_claim(&claim);
            let file = claim.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            self.drop_lease(file.rsplit_once('@').map(|(j, _)| j).unwrap_or(file));
            let o = o?;
            tracing::info!(outcome = ?o, "job");
            out.push(o);
        }
        Ok(out)
    }

    /// The next claim to run: our own leftover, a stale one of another watcher (taken
    /// over), or a new job.
    fn claim_next(&self) -> anyhow::Result<Option<PathBuf>> {
        let now = self.server_now()?;
        for (name, path) in list(&self.cfg.dir.join("running"))? {
            let Some((job, owner)) = name.rsplit_once('@') else { continue };
            if !job.ends_with(".job") || name.starts_with('.') {
                continue;
            }
            if owner == self.cfg.id {
                if self.try_lease(job) {
                    return Ok(Some(path));
                }
                continue;
            }
            let stale = if self.lease.is_some() {
                // A live watcher holds the lease; one we can take belongs to a dead one.
                self.try_lease(job)
            } else {
                let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
                let age = now.saturating_sub(ctime_ns(&meta)) / 1_000_000_000;
                age > self.cfg.claim_timeout.as_secs() as i128
            };
            if stale {
                let mine = self.path("running", &format!("{job}@{}", self.cfg.id));
                if std::fs::rename(&path, &mine).is_ok() {
                    tracing::warn!(job, owner, "took over the claim of a watcher that stopped");
                    touch(&mine);
                    return Ok(Some(mine));
                } else {
                    self.drop_lease(job);
                }
            }
        }
        for (name, path) in list(&self.cfg.dir.join("in"))? {
            if !name.ends_with(".job") || name.starts_with('.') {
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
            if !meta.is_file() || now.saturating_sub(ctime_ns(&meta)) < self.cfg.settle.as_nanos() as i128 {
                continue;
            }
            if !self.try_lease(&name) {
                continue; // another watcher is claiming it
            }
            let mine = self.path("running", &format!("{name}@{}", self.cfg.id));
            match std::fs::rename(&path, &mine) {
                Ok(()) => return Ok(Some(mine)),
                Err(e) => {
                    self.drop_lease(&name);
                    if e.kind() != std::io::ErrorKind::NotFound {
                        return Err(anyhow::anyhow!("cannot claim {}: {e}", path.display()));
                    } // else another watcher won
                }
            }
        }
        Ok(None)
    }

    /// The server's clock (nanoseconds), read from the ctime of a file we just wrote.
    fn server_now(&self) -> anyhow::Result<i128> {
        let p = self.path("running", &format!(".alive@{}", self.cfg.id));
        std::fs::write(&p, b"")?;
        Ok(ctime_ns(&std::fs::metadata(&p)?))
    }

    fn run_claim(&self, claim: &Path) -> anyhow::Result<Outcome> {
        let file = claim.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let job_file = file.rsplit_once('@').map(|(j, _)| j).unwrap_or(file);
        let name = job_file.strip_suffix(".job").unwrap_or(job_file).to_string();
        let text = match std::fs::read(claim) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Outcome::Interrupted { name }),
            Err(e) => return Err(anyhow::anyhow!("cannot read {}: {e}", claim.display())),
        };
        let job = match Job::parse(&text) {
            Ok(j) => j,
            Err(e) => return self.fail(claim, &name, &e.to_string()),
        };
        if job.count() > (u32::MAX as u128) * self.cfg.batch as u128 {
            return self.fail(claim, &name, "the job has more numbers than one run can number in batches");
        }
        // Keep the claim fresh while the job runs; a vanished claim means another
        // watcher took it over and we stop.
        let lost = Arc::new(AtomicBool::new(false));
        let finished = Arc::new(AtomicBool::new(false));
        let toucher = {
            let (claim, lost, finished) = (claim.to_path_buf(), lost.clone(), finished.clone());
            let every = self.cfg.claim_timeout / 4;
            std::thread::spawn(move || {
                let mut last = Instant::now();
                while !finished.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(50));
                    if last.elapsed() >= every {
                        last = Instant::now();
                        if !touch(&claim) {
                            lost.store(true, Ordering::SeqCst);
                            return;
                        }
                    }
                }
            })
        };
        let result = self.execute(&name, &job, &lost);
        finished.store(true, Ordering::SeqCst);
        let _ = toucher.join();
        match result? {
            Some(summary) => {
                // Primes are in place (renamed) first, then the summary, then the claim
                // is retired: a crash in between just runs the job again.
                let s = self.path("out", &format!(".{name}.summary.tmp@{}", self.cfg.id));
                write_synced(&s, summary.text.as_bytes())?;
                std::fs::rename(&s, self.path("out", &format!("{name}.summary")))?;
                std::fs::rename(claim, self.path("done", job_file))?;
                Ok(Outcome::Done { name, primes: summary.primes })
            }
            None => Ok(Outcome::Interrupted { name }),
        }
    }

    fn fail(&self, claim: &Path, name: &str, reason: &str) -> anyhow::Result<Outcome> {
        tracing::warn!(job = name, "malformed job: {reason}");
        let r = self.path("failed", &format!(".{name}.reason.tmp@{}", self.cfg.id));
        std::fs::write(&r, format!("{reason}\n"))?;
        std::fs::rename(&r, self.path("failed", &format!("{name}.reason")))?;
        std::fs::rename(claim, self.path("failed", &format!("{name}.job")))?;
        Ok(Outcome::Failed { name: name.to_string(), reason: reason.to_string() })
    }

    /// Runs the job through the broker; writes and renames `out/NAME.primes`. Returns
    /// None if stopped or the claim was lost.
    fn execute(&self, name: &str, job: &Job, lost: &AtomicBool) -> anyhow::Result<Option<Summary>> {
        let started = Instant::now();
        let job_id = util::random_u64();
        let sub = sink::subscribe(
            self.ctx,
            &self.cfg.addr,
            &[&job_prefix(tag::PRIMES, job_id), &job_prefix(tag::DONE, job_id), &job_prefix(tag::HELLO, job_id)],
        )?;
        let mut src = Source::connect(self.ctx, &self.cfg.addr)?;
        src.retries = None;
        let replicas = job.replicas.unwrap_or(self.cfg.replicas).max(1);
        src.replicas = replicas;
        let mut votes = crate::vote::Votes::new(replicas);
        let interrupted = || util::stopping() || lost.load(Ordering::SeqCst);
        match src.wait_subscribed(&sub, job_id) {
            Ok(()) => {}
            Err(SourceError::Stopped) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let tmp = self.path("out", &format!(".{name}.primes.tmp@{}", self.cfg.id));
        let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        let bar = progress_bar(self.cfg.progress, job.count(), name);
        let mut batches = job.batches(self.cfg.batch).enumerate().peekable();
        let mut pending: BTreeMap<u32, Vec<i64>> = BTreeMap::new();
        let mut primes_of: HashMap<u32, Vec<i64>> = HashMap::new();
        let mut finished: BTreeMap<u32, Vec<i64>> = BTreeMap::new();
        let mut written_upto = 0u32;
        let (mut primes, mut resubmitted) = (0u64, 0u64);
        let mut workers = HashSet::new();
        let mut last_progress = Instant::now();
        let mut last_probe = Instant::now();
        let mut switches_seen = src.switches;
        while batches.peek().is_some() || !pending.is_empty() {
            if interrupted() {
                drop(out);
                let _ = std::fs::remove_file(&tmp);
                return Ok(None);
            }
            while pending.len() < self.cfg.window {
                let Some((i, values)) = batches.next() else { break };
                let i = i as u32;
                match src.submit(job_id, i, &values) {
                    Ok(()) => {}
                    Err(SourceError::Stopped) => return Ok(None),
                    Err(e) => return Err(e.into()),
                }
                pending.insert(i, values);
            }
            if sub.poll(zmq::POLLIN, 100).unwrap_or(0) > 0 {
                while let Ok(b) = sub.recv_bytes(zmq::DONTWAIT) {
                    match Msg::decode(&b) {
                        // Kept for the `d` that follows it, pending or not: a late replica's
                        // answer is still put to the vote.
                        Ok(Msg::Primes { batch, primes: p, .. }) => {
                            primes_of.insert(batch, p.to_vec());
                        }
                        Ok(Msg::Done { batch, primes: n, .. })
                            if pending.contains_key(&batch)
                                && n > 0
                                && primes_of.get(&batch).map_or(0, |p| p.len()) != n as usize =>
                        {
                            // Its primes were lost on the way (a subscriber that
                            // reconnected misses what was published meanwhile): never
                            // write the batch short; run it again.
                            tracing::warn!(
                                job = name,
                                batch,
                                "the primes of a finished batch never arrived; submitting it again"
                            );
                            primes_of.remove(&batch);
                            match src.submit(job_id, batch, &pending[&batch]) {
                                Ok(()) => resubmitted += 1,
                                Err(SourceError::Stopped) => return Ok(None),
                                Err(e) => return Err(e.into()),
                            }
                        }
                        Ok(Msg::Done { batch, count, worker, primes: n, .. }) => {
                            // A result's `p` comes just before its `d` (none when it found
                            // no primes): the pair is one worker's answer, put to the vote.
                            let answer = if n == 0 { Vec::new() } else { primes_of.remove(&batch).unwrap_or_default() };
                            let (verdict, wrong) = votes.vote(batch, worker, answer);
                            for w in wrong {
                                tracing::warn!(
                                    job = name,
                                    batch,
                                    worker = format!("{w:016x}"),
                                    "a worker answered wrongly (outvoted); the broker is told to give it no more work"
                                );
                                match src.ban(w) {
                                    Ok(()) => {}
                                    Err(SourceError::Stopped) => return Ok(None),
                                    Err(e) => return Err(e.into()),
                                }
                            }
                            match verdict {
                                Verdict::Accepted(p) if pending.remove(&batch).is_some() => {
                                    finished.insert(batch, p);
                                    workers.insert(worker);
                                    bar.inc(count as u64);
                                    last_progress = Instant::now();
                                }
                                Verdict::Rerun if pending.contains_key(&batch) => {
                                    tracing::warn!(
                                        job = name,
                                        batch,
                                        "no majority among the replicas' answers; running the batch again"
                                    );
                                    match src.submit(job_id, batch, &pending[&batch]) {
                                        Ok(()) => resubmitted += 1,
                                        Err(SourceError::Stopped) => return Ok(None),
                                        Err(e) => return Err(e.into()),
                                    }
                                    last_progress = Instant::now();
                                }
                                _ => {}
                            }
                        }
                        _ => {}
                    }
                }
            }
            while let Some(p) = finished.remove(&written_upto) {
                for n in &p {
                    writeln!(out, "{n}")?;
                }
                primes += p.len() as u64;
                written_upto += 1;
            }
            // Between results, ask the broker in use whether it is there (the ping's
            // answer is published under a nonce no one listens to); after a broker of a
            // pair stopped answering, the source turns to the other, and what was
            // pending there is submitted again at once instead of after `stall`.
            if !pending.is_empty() && last_progress.elapsed().min(last_probe.elapsed()) > PROBE {
                match src.ping(util::random_u64()) {
                    Ok(()) => last_probe = Instant::now(),
                    Err(SourceError::Stopped) => return Ok(None),
                    Err(e) => return Err(e.into()),
                }
            }
            if src.switches != switches_seen {
                switches_seen = src.switches;
                tracing::warn!(job = name, batches = pending.len(), "another broker took over; submitting again");
                match submit_all(&mut src, job_id, &pending) {
                    Ok(n) => resubmitted += n,
                    Err(SourceError::Stopped) => return Ok(None),
                    Err(e) => return Err(e.into()),
                }
                // Submitting may have turned round the list again: that is seen next time.
                last_progress = Instant::now();
            }
            if !pending.is_empty() && last_progress.elapsed() > self.cfg.stall {
                tracing::warn!(
                    job = name,
                    batches = pending.len(),
                    "no progress for {:?}; submitting again",
                    self.cfg.stall
                );
                match submit_all(&mut src, job_id, &pending) {
                    Ok(n) => resubmitted += n,
                    Err(SourceError::Stopped) => return Ok(None),
                    Err(e) => return Err(e.into()),
                }
                last_progress = Instant::now();
            }
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, self.path("out", &format!("{name}.primes")))?;
        bar.finish_and_clear();
        let secs = started.elapsed().as_secs_f64();
        let text = format!(
            "job: {name}\nnumbers: {}\nprimes: {primes}\nbatches: {written_upto} of up to {}\nseconds: {secs:.3}\nworkers: {}\nresubmitted batches: {resubmitted}\nwatcher: {}\n{}",
            job.count(),
            self.cfg.batch,
            workers.len(),
            self.cfg.id,
            votes.summary(),
        );
        Ok(Some(Summary { text, primes }))
    }
}

/// Submits every pending batch again; returns how many.
fn submit_all(src: &mut Source<'_>, job: u64, pending: &BTreeMap<u32, Vec<i64>>) -> Result<u64, SourceError> {
    for (&i, values) in pending {
        src.submit(job, i, values)?;
    }
    Ok(pending.len() as u64)
}

struct Summary {
    text: String,
    primes: u64,
}

fn progress_bar(enabled: bool, count: u128, name: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !enabled || !std::io::stderr().is_terminal() || count < 100_000 {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(count.min(u64::MAX as u128) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} numbers ({per_sec}, {eta} left)")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(name.to_string());
    bar
}

fn ctime_ns(m: &std::fs::Metadata) -> i128 {
    m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128
}

/// Entries of a folder as (name, path), sorted by name; a missing folder is empty.
fn list(dir: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(anyhow::anyhow!("cannot list {}: {e}", dir.display())),
    };
    let mut v: Vec<(String, PathBuf)> =
        rd.filter_map(|e| e.ok()).filter_map(|e| Some((e.file_name().into_string().ok()?, e.path()))).collect();
    v.sort();
    Ok(v)
}

/// Sets the file's times to now (which also sets its ctime); false if it is gone.
fn touch(p: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: c is NUL-terminated; a null times pointer means "now" for both.
    unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), std::ptr::null(), 0) == 0 }
}

fn write_synced(p: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(p)?;
    f.write_all(data)?;
    f.sync_all()
}

/// Waits (up to a second) on the mount's `user.fs-client.wait.N` for a change notice
/// after `after`: the last notice number; `Some(None)` when the mount does not follow
/// notices just now; None when the folder is not on such a mount.
fn wait_for_notice(dir: &Path, after: u64) -> Option<Option<u64>> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let name = std::ffi::CString::new(format!("user.fs-client.wait.{after}")).ok()?;
    let mut buf = [0u8; 32];
    // SAFETY: both strings are NUL-terminated and outlive the call; `buf` is writable
    // for its whole length.
    let n = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return None;
    }
    Some(std::str::from_utf8(&buf[..n as usize]).ok()?.parse().ok())
}
