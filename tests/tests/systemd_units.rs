//! The example systemd units in `contrib/systemd`: `systemd-analyze verify` accepts them
//! (with the binaries where this build put them), and every `ExecStart` they hold starts
//! and says it is ready, with the paths and ports of a temporary folder.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use tests::*;

fn units() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/systemd");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    assert!(v.len() >= 5, "the units are in {}", dir.display());
    v
}

#[test]
fn the_example_units_verify_and_their_commands_start() {
    let _w = Watchdog::new(Duration::from_secs(120));
    let analyze = Command::new("systemd-analyze").arg("--version").stdout(Stdio::null()).status();
    assert!(analyze.is_ok(), "systemd-analyze is missing (.ci/run installs systemd)");
    let tmp = tempfile::tempdir().unwrap();
    let bin = bin_path("fs-server").parent().unwrap().to_path_buf();
    let (export, state, key, run) =
        (tmp.path().join("export"), tmp.path().join("state"), tmp.path().join("fs.key"), tmp.path().join("run"));
    // (`run/cluster-node-1` is what the node unit's RuntimeDirectory= makes.)
    for d in [&export, &state, &run.join("cluster-node-1")] {
        std::fs::create_dir_all(d).unwrap();
    }
    let out = command(&bin_path("fs-server")).arg("keygen").arg(&key).output().unwrap();
    assert!(out.status.success());
    let curve = tmp.path().join("curve");
    let out = command(&bin_path("cluster")).arg("keygen").arg(&curve).output().unwrap();
    assert!(out.status.success());
    let broker = free_ports(4);
    let (server, standby) = (free_ports(1), free_ports(1));
    // What differs on this machine: where the binaries are, folders, ports.
    let local = |text: &str| {
        text.replace("/usr/local/bin/", &format!("{}/", bin.display()))
            .replace("/srv/share", export.to_str().unwrap())
            .replace("/var/lib/fs-server", state.to_str().unwrap())
            .replace("/etc/fs/fs.key", key.to_str().unwrap())
            .replace("/etc/fs/curve", curve.to_str().unwrap())
            .replace("${CREDENTIALS_DIRECTORY}", curve.to_str().unwrap())
            .replace("/run/", &format!("{}/", run.display()))
            .replace("0.0.0.0:7000", &format!("127.0.0.1:{server}"))
            .replace("127.0.0.1:7000", &format!("127.0.0.1:{server}"))
            .replace("0.0.0.0:7001", &format!("127.0.0.1:{standby}"))
            .replace("0.0.0.0:5555", &format!("127.0.0.1:{broker}"))
            .replace("127.0.0.1:5555", &format!("127.0.0.1:{broker}"))
            .replace(":9700", ":0")
            .replace(":9701", ":0")
    };
    let checked = tmp.path().join("units");
    std::fs::create_dir(&checked).unwrap();
    let mut execs = Vec::new();
    for u in units() {
        let name = u.file_name().unwrap().to_str().unwrap().replace("@.", "@1.");
        let text = local(&std::fs::read_to_string(&u).unwrap());
        std::fs::write(checked.join(&name), &text).unwrap();
        let out = Command::new("systemd-analyze").arg("verify").arg(checked.join(&name)).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && err.trim().is_empty(), "{name}: systemd-analyze verify:\n{err}");
        if let Some(line) = text.lines().find_map(|l| l.strip_prefix("ExecStart=")) {
            execs.push((name, line.replace("%i", "1")));
        }
    }
    // The commands, in the order a machine would start them (the broker before its
    // workers, the server before its standby); each must print its ready line.
    execs.sort_by_key(|(n, _)| (n.contains("worker") || n.contains("standby"), n.clone()));
    assert_eq!(execs.len(), 5, "{execs:?}");
    let mut running = Vec::new();
    for (name, line) in &execs {
        let words: Vec<&str> = line.split_whitespace().collect();
        let mut child = command(Path::new(words[0]))
            .args(&words[1..])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: {line}: {e}"));
        let ready = first_line(&mut child, Duration::from_secs(20));
        assert!(ready.as_deref().is_some_and(|l| !l.is_empty()), "{name}: `{line}` did not start: {ready:?}");
        running.push(child);
    }
    for mut c in running.into_iter().rev() {
        let _ = c.kill();
        let _ = c.wait();
    }
}
