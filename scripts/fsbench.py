#!/usr/bin/env python3
"""One file-system workload in one folder; prints the figure (and its unit) on stdout.

Used by scripts/bench-fs, which runs each workload on the mount, a local folder, sshfs
and bindfs in one run. Workloads:
  seqwrite DIR MIB     write MIB MiB in 1 MiB writes, close          -> MiB/s
  seqread DIR          read the seqwrite file in 1 MiB reads          -> MiB/s
  randread DIR SECS    4 KiB preads at random offsets of that file    -> IOPS
  create DIR N         create N empty files (open O_CREAT, close)     -> files/s
  stat DIR N           stat them                                      -> stats/s
  lsstat DIR           list them, then lstat each (ls -l)             -> stats/s
  readdir DIR          list them                                      -> entries/s
  delete DIR N         unlink them                                    -> files/s
  untar DIR TARBALL    tar xf                                         -> seconds
  tarback DIR          tar cf of the untarred tree, into a pipe       -> seconds
  rmrf DIR             rm -rf of the untarred tree                    -> seconds
  appends DIR N        N writes of 32 bytes to one open file (a log)  -> writes/s
  statloop DIR SECS    stat one file again and again                  -> us per stat
"""
import os, random, subprocess, sys, time

MIB = 1 << 20


def main():
    what, d = sys.argv[1], sys.argv[2]
    big = os.path.join(d, "big")
    if what == "seqwrite":
        n = int(sys.argv[3])
        buf = os.urandom(MIB)
        t = time.perf_counter()
        fd = os.open(big, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        for _ in range(n):
            os.write(fd, buf)
        os.close(fd)
        print(f"{n / (time.perf_counter() - t):.0f} MiB/s")
    elif what == "seqread":
        t = time.perf_counter()
        fd = os.open(big, os.O_RDONLY)
        total = 0
        while True:
            b = os.read(fd, MIB)
            if not b:
                break
            total += len(b)
        os.close(fd)
        print(f"{total / MIB / (time.perf_counter() - t):.0f} MiB/s")
    elif what == "randread":
        secs = float(sys.argv[3])
        fd = os.open(big, os.O_RDONLY)
        blocks = os.fstat(fd).st_size // 4096
        rnd = random.Random(42)
        n, t = 0, time.perf_counter()
        while time.perf_counter() - t < secs:
            for _ in range(64):
                os.pread(fd, 4096, rnd.randrange(blocks) * 4096)
            n += 64
        os.close(fd)
        print(f"{n / (time.perf_counter() - t):.0f} IOPS")
    elif what in ("create", "stat", "delete"):
        n = int(sys.argv[3])
        sub = os.path.join(d, "many")
        if what == "create":
            os.makedirs(sub, exist_ok=True)
        names = [os.path.join(sub, f"f{i:05}") for i in range(n)]
        t = time.perf_counter()
        for p in names:
            if what == "create":
                os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            elif what == "stat":
                os.stat(p)
            else:
                os.unlink(p)
        print(f"{n / (time.perf_counter() - t):.0f} {'stats' if what == 'stat' else 'files'}/s")
        if what == "delete":
            os.rmdir(sub)
    elif what == "lsstat":
        sub = os.path.join(d, "many")
        t = time.perf_counter()
        names = os.listdir(sub)
        for name in names:
            os.lstat(os.path.join(sub, name))
        print(f"{len(names) / (time.perf_counter() - t):.0f} stats/s")
    elif what == "readdir":
        sub = os.path.join(d, "many")
        t = time.perf_counter()
        n = sum(1 for _ in os.scandir(sub))
        print(f"{n / (time.perf_counter() - t):.0f} entries/s")
    elif what == "appends":
        n = int(sys.argv[3])
        b = b"x" * 32
        fd = os.open(os.path.join(d, "log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        t = time.perf_counter()
        for _ in range(n):
            os.write(fd, b)
        dt = time.perf_counter() - t
        os.close(fd)
        os.unlink(os.path.join(d, "log"))
        print(f"{n / dt:.0f} writes/s")
    elif what == "statloop":
        secs = float(sys.argv[3])
        p = os.path.join(d, "statme")
        with open(p, "w"):
            pass
        n, t = 0, time.perf_counter()
        while time.perf_counter() - t < secs:
            for _ in range(100):
                os.stat(p)
            n += 100
        dt = time.perf_counter() - t
        os.unlink(p)
        print(f"{dt / n * 1e6:.1f} us")
    elif what == "untar":
        tarball = sys.argv[3]
        dest = os.path.join(d, "untar")
        os.makedirs(dest, exist_ok=True)
        t = time.perf_counter()
        subprocess.run(["tar", "xf", tarball, "-C", dest], check=True)
        print(f"{time.perf_counter() - t:.2f} s")
    elif what == "tarback":
        # Into a pipe: GNU tar reads nothing when its archive is /dev/null.
        t = time.perf_counter()
        tar = subprocess.Popen(["tar", "cf", "-", "-C", d, "untar"], stdout=subprocess.PIPE)
        while tar.stdout.read(MIB):
            pass
        if tar.wait() != 0:
            sys.exit("tar failed")
        print(f"{time.perf_counter() - t:.3f} s")
    elif what == "rmrf":
        t = time.perf_counter()
        subprocess.run(["rm", "-rf", os.path.join(d, "untar")], check=True)
        print(f"{time.perf_counter() - t:.3f} s")
    else:
        sys.exit(f"unknown workload {what}")


if __name__ == "__main__":
    main()
