//! `cluster up`: a file server (with a key, made on first start; the ZeroMQ sockets get
//! a CURVE cluster key the same way), a lease node, a mount (locks through the node), the
//! broker, one worker per core, a sink and the spool watcher (claims under leases), all
//! on this machine, as child processes; Ctrl-C tears them down in the
//! reverse order (the mount is unmounted before its server stops).

use crate::util;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct UpConfig {
    pub dir: PathBuf,
    pub broker: String,
    pub workers: usize,
    /// A standby file server beside the primary (the mount lists both), and a backup
    /// broker beside the broker (every client lists both).
    pub standby: bool,
}

struct Proc {
    name: String,
    child: Child,
}

/// The children, stopped in reverse order on drop (every path, errors included).
struct Procs {
    list: Vec<Proc>,
    mount: Option<(PathBuf, PathBuf)>,
}

impl Procs {
    fn start(&mut self, name: &str, cmd: &mut Command) -> anyhow::Result<String> {
        // SAFETY: prctl and setpgid are async-signal-safe. Children die with us if we are
        // killed; in their own process group, a Ctrl-C on the terminal reaches only us, so
        // we stop them in order (the mount before its server).
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                libc::setpgid(0, 0);
                Ok(())
            });
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {name} ({:?}): {e}", cmd.get_program()))?;
        let line = first_line(&mut child, Duration::from_secs(30));
        self.list.push(Proc { name: name.to_string(), child });
        line.ok_or_else(|| anyhow::anyhow!("{name} did not start (see its message above)"))
    }

    /// The first child that exited, if any.
    fn exited(&mut self) -> Option<String> {
        self.list.iter_mut().find_map(|p| matches!(p.child.try_wait(), Ok(Some(_))).then(|| p.name.clone()))
    }

    /// Takes an exited child off the list (a server whose standby took its place).
    fn forget(&mut self, name: &str) {
        self.list.retain(|p| p.name != name);
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        while let Some(mut p) = self.list.pop() {
            if p.name == "mount" {
                if let Some((client, mnt)) = &self.mount {
                    let ok = Command::new(client).arg("unmount").arg(mnt).stderr(Stdio::null()).status();
                    if !ok.map(|s| s.success()).unwrap_or(false) {
                        let _ = Command::new(client).args(["unmount", "--lazy"]).arg(mnt).status();
                    }
                }
            }
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc::kill(p.child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && !matches!(p.child.try_wait(), Ok(Some(_))) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

fn first_line(child: &mut Child, timeout: Duration) -> Option<String> {
    let out = child.stdout.take()?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(out);
        let mut line = String::new();
        let _ = r.read_line(&mut line);
        let _ = tx.send(line);
        // Keep draining so the child never blocks on a full pipe.
        let _ = std::io::copy(&mut r, &mut std::io::sink());
    });
    rx.recv_timeout(timeout).ok().filter(|l| !l.is_empty()).map(|l| l.trim_end().to_string())
}

/// The backup broker's address beside `primary`: the four TCP ports after its four, or
/// the path with `-backup`.
fn backup_address(primary: &str) -> anyhow::Result<String> {
    use crate::endpoint::BrokerAddr;
    Ok(match BrokerAddr::parse(primary)? {
        BrokerAddr::Tcp { host, port } => {
            let p = port.checked_add(4).filter(|p| *p <= u16::MAX - 3);
            let p =
                p.ok_or_else(|| anyhow::anyhow!("--broker {primary}: no room for a backup's four ports after it"))?;
            BrokerAddr::Tcp { host, port: p }.to_string()
        }
        BrokerAddr::Ipc { path } => format!("{path}-backup"),
        BrokerAddr::Inproc { .. } => anyhow::bail!("--broker inproc:// reaches only one process"),
    })
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let p = exe.with_file_name(name);
    anyhow::ensure!(p.exists(), "{} is missing (build the workspace: cargo build --release)", p.display());
    Ok(p)
}

pub fn run(cfg: UpConfig) -> anyhow::Result<()> {
    let (server_bin, client_bin, me) = (sibling("fs-server")?, sibling("fs-client")?, std::env::current_exe()?);
    let root = std::path::absolute(&cfg.dir)?;
    let (export, state, mnt) = (root.join("export"), root.join("state"), root.join("mnt"));
    for d in [&export, &state, &mnt] {
        std::fs::create_dir_all(d).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", d.display()))?;
    }
    let sock = root.join("fs.sock");
    // The mount proves it holds the server's key (made on first start, kept after).
    let key = state.join("fs.key");
    if !key.exists() {
        let out = Command::new(&server_bin).arg("keygen").arg(&key).output()?;
        anyhow::ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    // Every ZeroMQ socket of the cluster uses CURVE with a cluster key made here once.
    let curve = state.join("curve");
    if !crate::curve::key_path(&curve).exists() {
        crate::curve::keygen(&curve)?;
    }
    let curve_s = curve.display().to_string();
    let cluster = || {
        let mut c = Command::new(&me);
        c.args(["--curve", &curve_s]);
        c
    };
    // A file server of the export on `listen` (the primary, or with `--standby-of` a
    // standby: same export and state folder, so the same handle key).
    let file_server = |listen: &Path| {
        let mut c = Command::new(&server_bin);
        c.arg("--export").arg(&export).arg("--state-dir").arg(&state).arg("--listen").arg(listen);
        c.arg("--key").arg(&key).arg("--no-root-squash");
        c
    };
    let mut procs = Procs { list: Vec::new(), mount: None };
    let say = |l: String| println!("  {l}");
    println!("starting the cluster in {}", root.display());
    say(procs.start("fs-server", &mut file_server(&sock))?);
    let mut source = sock.display().to_string();
    if cfg.standby {
        // Serves on its own socket once it has fenced the primary.
        let sock2 = root.join("fs-standby.sock");
        say(procs.start("fs-server standby", file_server(&sock2).arg("--standby-of").arg(&sock))?);
        source = format!("{source},{}", sock2.display());
    }
    // The lease tree: one node here; flock/fcntl on the mount and the spool's job claims
    // go through it. More machines join with `cluster node --parent 1@...`.
    let node = root.join("node.sock");
    let node_s = node.display().to_string();
    say(procs.start("node", cluster().args(["node", "--id", "1", "--listen", &node_s]))?);
    procs.mount = Some((client_bin.clone(), mnt.clone()));
    say(procs.start(
        "mount",
        Command::new(&client_bin)
            .arg("mount")
            .arg(&source)
            .arg(&mnt)
            .arg("-o")
            .arg(format!("leases={node_s},curve={curve_s},key={}", key.display())),
    )?);
    let mut broker = cfg.broker.replace("*", "127.0.0.1");
    if cfg.standby {
        // A Binary Star pair: the backup takes over when the primary is silent and a
        // client turns to it; every client lists both.
        let backup = backup_address(&cfg.broker)?;
        say(procs.start("broker", cluster().args(["broker", "--listen", &cfg.broker, "--backup", &backup]))?);
        say(procs.start("broker backup", cluster().args(["broker", "--listen", &backup, "--backup-of", &broker]))?);
        broker = format!("{broker},{}", backup.replace("*", "127.0.0.1"));
    } else {
        say(procs.start("broker", cluster().args(["broker", "--listen", &cfg.broker]))?);
    }
    for i in 0..cfg.workers {
        say(procs.start(&format!("worker {i}"), cluster().args(["worker", "--broker", &broker]))?);
    }
    let log = root.join("primes.log");
    say(procs.start("sink", cluster().args(["sink", "--broker", &broker, "--tag", "p", "--out"]).arg(&log))?);
    let spool = mnt.join("spool");
    std::fs::create_dir_all(&spool).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", spool.display()))?;
    say(procs.start(
        "spool",
        cluster().args(["spool", "--broker", &broker, "--progress", "--leases", &node_s, "--dir"]).arg(&spool),
    )?);
    let rel = |p: &Path| p.strip_prefix(std::env::current_dir().unwrap_or_default()).unwrap_or(p).display().to_string();
    println!(
        "\nThe cluster is up. Start a job by dropping a file into the spool:\n\
         \n  echo 1..1000000 > {in_}/first.job\n  cat {out}/first.summary ; head {out}/first.primes\n\
         \nFiles you put in {mnt} land in {export}; every prime found is also appended to {log}.\n\
         Ctrl-C stops everything and unmounts.",
        in_ = rel(&spool.join("in")),
        out = rel(&spool.join("out")),
        mnt = rel(&mnt),
        export = rel(&export),
        log = rel(&log),
    );
    while !util::stopping() {
        if let Some(name) = procs.exited() {
            // With a standby, one file server and one broker may go: the other of its
            // pair serves.
            let pairs = [["fs-server", "fs-server standby"], ["broker", "broker backup"]];
            if let Some(pair) = pairs.iter().find(|p| p.contains(&name.as_str())) {
                if procs.list.iter().filter(|p| pair.contains(&p.name.as_str())).count() > 1 {
                    eprintln!("{name} exited; the other of its pair serves");
                    procs.forget(&name);
                    continue;
                }
            }
            drop(procs);
            anyhow::bail!("{name} exited; stopped the rest");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("stopping");
    drop(procs);
    println!("stopped; your files are in {}", export.display());
    Ok(())
}
