//! `fs-server --export DIR --listen ADDR [--state-dir DIR] [--read-only] [--no-root-squash]
//! [--key FILE] [--metrics HOST:PORT]`, and `fs-server keygen FILE`.

use anyhow::Context;
use clap::Parser;
use fs_proto::Addr;
use fs_server::net::Listener;
use fs_server::{Config, Server};
use std::path::PathBuf;
use std::sync::Arc;

/// Export a directory to fs-client mounts.
#[derive(Parser, Debug)]
#[command(version, about, after_help = "`fs-server keygen FILE` makes a key file for --key and -o key=FILE.")]
struct Args {
    /// Directory to export.
    #[arg(long, value_name = "DIR")]
    export: PathBuf,
    /// HOST:PORT for TCP, or a path (containing '/') for a Unix socket.
    #[arg(long, value_name = "ADDR")]
    listen: String,
    /// Where the handle key lives; keep it to keep handles valid across restarts.
    /// Default: $XDG_STATE_HOME/fs-server or ~/.local/state/fs-server.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Refuse every change with EROFS.
    #[arg(long)]
    read_only: bool,
    /// Let root on the client act as root here (by default it is mapped to nobody).
    #[arg(long)]
    no_root_squash: bool,
    /// Serve only clients that prove they hold this key (made by `fs-server keygen`);
    /// see README, "Keys".
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Be a standby of the primary at ADDR (same export, same state folder or handle key):
    /// follow it, and when it is gone, fence it and serve on --listen.
    #[arg(long, value_name = "ADDR")]
    standby_of: Option<String>,
    /// How a standby fences the primary before serving (run with `sh -c`, must exit 0;
    /// FS_PRIMARY_PID and FS_PRIMARY_ADDR set). Default: SIGKILL the primary process
    /// recorded in the state folder (one machine).
    #[arg(long, value_name = "CMD", requires = "standby_of")]
    fence: Option<String>,
    /// Serve the server's counters in the Prometheus text format at http://ADDR/metrics.
    #[arg(long, value_name = "HOST:PORT")]
    metrics: Option<String>,
    /// For tests only: act as a server whose clock is off by SECS (every time it
    /// reports or is given is shifted), to test the mounts' clock comparison.
    #[arg(long, value_name = "SECS", hide = true, allow_hyphen_values = true)]
    test_clock_skew: Option<i64>,
    /// For tests only: push no notice numbered a multiple of K (numbered and kept in the
    /// history all the same), so mounts see gaps and catch up.
    #[arg(long, value_name = "K", hide = true)]
    test_drop_notices_every: Option<u64>,
    /// For tests only: every non-idempotent call takes MS milliseconds longer.
    #[arg(long, value_name = "MS", hide = true)]
    test_delay_changes_ms: Option<u64>,
}

/// Makes a key file for `--key` and `-o key=FILE` (32 random bytes, mode 0600; an
/// existing file is never overwritten).
#[derive(Parser, Debug)]
#[command(name = "fs-server keygen")]
struct Keygen {
    /// Where to write the key.
    file: PathBuf,
}

/// Turns raw arguments into a validated configuration (the one-line reasons live here).
fn config(args: Args) -> anyhow::Result<(Config, Addr)> {
    let addr: Addr = args.listen.parse()?;
    let export = &args.export;
    let meta = std::fs::metadata(export).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow::anyhow!("export {} does not exist", export.display()),
        _ => anyhow::anyhow!("export {}: {e}", export.display()),
    })?;
    anyhow::ensure!(meta.is_dir(), "export {} is not a directory", export.display());
    let state_dir = match args.state_dir {
        Some(d) => d,
        None => default_state_dir().context("no --state-dir given and neither XDG_STATE_HOME nor HOME is set")?,
    };
    let mut cfg = Config::new(export.clone(), state_dir);
    cfg.read_only = args.read_only;
    cfg.root_squash = !args.no_root_squash;
    if let Some(k) = &args.key {
        cfg.key = Some(fs_proto::secure::Key::load(k)?);
    }
    if let Some(s) = args.test_clock_skew {
        eprintln!("fs-server: TEST ONLY: acting as if this machine's clock were {s} s off");
        fs_server::ops::set_clock_skew(s);
    }
    if let Some(k) = args.test_drop_notices_every {
        anyhow::ensure!(k > 0, "--test-drop-notices-every must be at least 1");
        eprintln!("fs-server: TEST ONLY: every {k}th change notice is not pushed");
        cfg.test_drop_notices_every = Some(k);
    }
    if let Some(ms) = args.test_delay_changes_ms {
        eprintln!("fs-server: TEST ONLY: every non-idempotent call takes {ms} ms longer");
        cfg.test_delay_changes = std::time::Duration::from_millis(ms);
    }
    Ok((cfg, addr))
}

fn default_state_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))?;
    Some(base.join("fs-server"))
}

fn run(args: Args) -> anyhow::Result<()> {
    let metrics = match &args.metrics {
        Some(a) => Some(
            std::net::TcpListener::bind(a.as_str()).map_err(|e| anyhow::anyhow!("cannot serve metrics on {a}: {e}"))?,
        ),
        None => None,
    };
    let (standby_of, fence) = (args.standby_of.clone(), args.fence.clone());
    let (cfg, addr) = config(args)?;
    let server = Arc::new(Server::new(&cfg)?);
    if let Some(l) = metrics {
        eprintln!("fs-server: metrics on http://{}/metrics", l.local_addr()?);
        fs_server::metrics::serve(l, server.clone());
    }
    // A standby follows until the primary is gone and fenced; then it serves as primary.
    let standby = match standby_of {
        Some(primary) => {
            anyhow::ensure!(
                !matches!(&addr, Addr::Tcp { port: 0, .. }),
                "a standby needs a fixed --listen port (the mounts list it)"
            );
            let scfg = fs_server::standby::StandbyConfig {
                primary: primary.parse()?,
                state: cfg.state_dir.clone(),
                fence,
                key: cfg.key.clone(),
                listen: addr.to_string(),
            };
            let guard = fs_server::standby::run(&server, scfg, || {
                use std::io::Write;
                println!("standby of {primary}");
                let _ = std::io::stdout().flush();
            })?;
            server.took_over();
            eprintln!(
                "fs-server: took over from {primary}; serving on {addr}; notices go on from {} (instance {:016x})",
                server.notices.numbered() + 1,
                server.notices.instance()
            );
            Some(guard)
        }
        None => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = Listener::bind(&addr).await?;
        let _primary = match standby {
            Some(g) => g,
            None => {
                let g = fs_server::standby::become_primary(
                    &cfg.state_dir,
                    &listener.local_addr(),
                    std::time::Duration::ZERO,
                )?;
                println!("listening on {}", listener.local_addr());
                g
            }
        };
        tracing::info!(export = %cfg.export.display(), read_only = cfg.read_only, "serving");
        listener.serve(server, shutdown_signal()).await;
        tracing::info!("shutting down");
        anyhow::Ok(())
    })?;
    // Calls still on the blocking pool finish or are abandoned; every operation is
    // idempotent or answered again from a fresh cache, so clients simply retransmit.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == "keygen") {
        let k = Keygen::parse_from(&argv[1..]);
        if let Err(e) = fs_proto::secure::Key::create(&k.file) {
            eprintln!("fs-server keygen: {e}");
            std::process::exit(1);
        }
        eprintln!("fs-server keygen: key written to {} (mode 0600)", k.file.display());
        return;
    }
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("fs-server: {e:#}");
        std::process::exit(1);
    }
}
