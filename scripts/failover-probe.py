#!/usr/bin/env python3
"""The pauses a reader and a writer see on a mount while servers fail over.

  failover-probe.py DIR SECONDS OUT
writes 4 KiB and fsyncs (a COMMIT) in DIR/probe-w, and stats DIR/probe-r on a noac
mount (a GETATTR each), for SECONDS, in two threads; writes one line per operation to
OUT: "w|r <completion time, CLOCK_MONOTONIC seconds>". scripts/bench-failover reads the
gaps around each kill from it.
"""
import os, sys, threading, time

d, secs, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
stop = time.monotonic() + secs
rec = []
lock = threading.Lock()


def writer():
    fd = os.open(os.path.join(d, "probe-w"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    buf = b"x" * 4096
    while time.monotonic() < stop:
        os.pwrite(fd, buf, 0)
        os.fsync(fd)
        with lock:
            rec.append(("w", time.monotonic()))
    os.close(fd)


def reader():
    p = os.path.join(d, "probe-r")
    while time.monotonic() < stop:
        os.stat(p)
        with lock:
            rec.append(("r", time.monotonic()))
        time.sleep(0.001)


threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
for t in threads:
    t.start()
for t in threads:
    t.join()
with open(out, "w") as f:
    for k, t in rec:
        f.write(f"{k} {t:.6f}\n")
