//! `fs-client mount ADDR MOUNTPOINT [-o OPTS]` and `fs-client unmount MOUNTPOINT`.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Mount an fs-server export through FUSE.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Mount ADDR (HOST:PORT or a Unix socket path) at MOUNTPOINT; stays in the
    /// foreground until unmounted or sent SIGINT/SIGTERM.
    Mount {
        addr: String,
        mountpoint: PathBuf,
        /// Comma-separated options: noac, actimeo=N, acregmin/acregmax/acdirmin/acdirmax=N,
        /// cache_size=SIZE, block_size=SIZE, readahead=BLOCKS, hard, soft, retrans=N,
        /// timeo=DECISECONDS, ro, rw, allow_other, noallow_other.
        #[arg(short = 'o', value_name = "OPTS", default_value = "")]
        options: String,
    },
    /// What the mount at MOUNTPOINT is doing: its server and connection, and the server's
    /// clock as the mount sees it (offset, server minus client, ± its error bound).
    Status { mountpoint: PathBuf },
    /// Unmount MOUNTPOINT.
    Unmount {
        mountpoint: PathBuf,
        /// Detach now even if busy (the mount goes away when the last file closes).
        #[arg(long)]
        lazy: bool,
    },
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if fs_client::helper::invoked_as_helper(&argv[0]) {
        // mount(8) or /etc/fstab: parse its arguments, then mount in the background.
        let (source, dir, opts) = match fs_client::helper::parse(&argv[1..]) {
            Ok(x) => x,
            Err(e) => {
                eprintln!("mount.fuse.fs: {e:#}");
                std::process::exit(1);
            }
        };
        fs_client::helper::daemonize();
        init_logs();
        if let Err(e) = fs_client::mount::mount(&source, &dir, &opts) {
            eprintln!("mount.fuse.fs: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    init_logs();
    let args = Args::parse();
    let result = match args.cmd {
        Cmd::Mount { addr, mountpoint, options } => fs_client::mount::mount(&addr, &mountpoint, &options),
        Cmd::Unmount { mountpoint, lazy } => fs_client::mount::unmount(&mountpoint, lazy),
        Cmd::Status { mountpoint } => fs_client::mount::status(&mountpoint).map(|text| print!("{text}")),
    };
    if let Err(e) = result {
        eprintln!("fs-client: {e:#}");
        std::process::exit(1);
    }
}

fn init_logs() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,fuser=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}
