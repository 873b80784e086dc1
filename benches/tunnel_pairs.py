#!/usr/bin/env python3
"""Paired measurement of two tollgate binaries (docs/BENCHMARKS.md, "Tunnels: splice after the first 512 KiB"): c (1 GiB through one tunnel), b (CONNECT + GET + close), d (idle RSS).
Origin and client in this process on core 0; the proxy alone on core 1. Loopback only, every loop bounded."""
import os, socket, subprocess, sys, tempfile, threading, time

# usage: tunnel_pairs.py BEFORE_BINARY AFTER_BINARY [ROUNDS] [SCENARIOS: any of b, c, d]


os.sched_setaffinity(0, {0})
BULK = 1 << 30
SMALL = b"x" * 100
CHUNK = memoryview(b"b" * (1 << 20))


def origin_conn(conn):
    try:
        buf = b""
        while True:
            data = conn.recv(65536)
            if not data:
                return
            buf += data
            while b"\r\n\r\n" in buf:
                head, buf = buf.split(b"\r\n\r\n", 1)
                if head.split(b" ")[1].startswith(b"/bulk"):
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BULK)
                    left = BULK
                    while left:
                        n = min(left, len(CHUNK))
                        conn.sendall(CHUNK[:n])
                        left -= n
                else:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + SMALL)
    except OSError:
        pass
    finally:
        conn.close()


def origin():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(8192)

    def loop():
        while True:
            c, _ = s.accept()
            threading.Thread(target=origin_conn, args=(c,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return s.getsockname()[1]


ORIGIN = origin()


def start(binary):
    d = tempfile.mkdtemp()
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    s = socket.socket(); s.bind(("127.0.0.1", 0)); admin = s.getsockname()[1]; s.close()
    open(f"{d}/t.yaml", "w").write(
        f"listeners:\n  - {{name: proxy, bind: \"127.0.0.1:{port}\"}}\nadmin: {{bind: \"127.0.0.1:{admin}\"}}\n"
        f"auth: {{anonymous: bench}}\npolicy:\n  default: deny\n  allow:\n    - \"127.0.0.1\"\n"
        f"  allow_private: [\"127.0.0.0/8\"]\naudit: {{file: {{path: \"{d}/audit.jsonl\"}}}}\nstate: {{path: \"{d}/state\"}}\n")
    env = dict(os.environ, TOLLGATE_LOG="warn")
    p = subprocess.Popen(["taskset", "-c", "1", binary, "run", "-c", f"{d}/t.yaml"], env=env,
                         stdout=subprocess.DEVNULL, stderr=open(f"{d}/err", "w"))
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    return p, port


def tunnel(port, timeout=10):
    c = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.sendall(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (ORIGIN, ORIGIN))
    got = b""
    while b"\r\n\r\n" not in got:
        d = c.recv(4096)
        if not d:
            raise OSError("closed")
        got += d
    assert got.startswith(b"HTTP/1.1 200"), got
    return c


def read_response(c, buf):
    got = bytearray()
    while b"\r\n\r\n" not in got:
        n = c.recv_into(buf)
        if not n:
            raise OSError("closed")
        got += buf[:n]
    head, rest = bytes(got).split(b"\r\n\r\n", 1)
    length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0].split(b":")[1])
    left = length - len(rest)
    while left > 0:
        n = c.recv_into(buf, min(left, len(buf)))
        if not n:
            raise OSError("closed early")
        left -= n
    return length


def bulk(port, pid=None):
    before = cpu_ns(pid) if pid else 0
    buf = bytearray(256 * 1024)
    c = tunnel(port, 120) if port else socket.create_connection(("127.0.0.1", ORIGIN), timeout=120)
    t = time.perf_counter()
    c.sendall(b"GET /bulk HTTP/1.1\r\nHost: x\r\n\r\n")
    n = read_response(c, buf)
    e = time.perf_counter() - t
    c.close()
    if pid:
        return n / (1 << 20) / e, (cpu_ns(pid) - before) / 1e6 / (n / (1 << 30))
    return n / (1 << 20) / e


def cpu_ns(pid):
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            total += int(open(f"/proc/{pid}/task/{task}/schedstat").read().split()[0])
        except OSError:
            pass
    return total


def connect_get_close(pid, port, seconds=4.0, cap=200000):
    count = [0]
    lock = threading.Lock()
    deadline = time.time() + seconds

    def worker():
        buf = bytearray(4096)
        while time.time() < deadline:
            with lock:
                if count[0] >= cap:
                    return
            c = tunnel(port)
            c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            read_response(c, buf)
            c.close()
            with lock:
                count[0] += 1

    before = cpu_ns(pid)
    t = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(16)]
    [x.start() for x in threads]
    [x.join() for x in threads]
    e = time.perf_counter() - t
    time.sleep(0.3)
    return count[0] / e, (cpu_ns(pid) - before) / count[0] / 1000


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])


def idle(binary, tunnels):
    p, port = start(binary)
    try:
        for _ in range(20):
            c = tunnel(port); c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"); read_response(c, bytearray(4096)); c.close()
        time.sleep(0.5)
        before = rss_kib(p.pid)
        open_ = []
        deadline = time.time() + 90
        while len(open_) < tunnels and time.time() < deadline:
            open_.append(tunnel(port))
        time.sleep(1)
        after = rss_kib(p.pid)
        c = open_[-1]; c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"); read_response(c, bytearray(4096))
        n = len(open_)
        for c in open_:
            c.close()
        return (after - before) / n, n, before, after
    finally:
        p.kill(); p.wait()


def main():
    binaries = {"before": sys.argv[1], "after": sys.argv[2]}
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    what = sys.argv[4] if len(sys.argv) > 4 else "bcd"
    if "c" in what:
        for r in range(rounds):
            line = [f"c round {r+1}: direct {bulk(None):.0f} MiB/s"]
            for name, b in binaries.items():
                p, port = start(b)
                try:
                    rate, ms = bulk(port, p.pid)
                    line.append(f"{name} {rate:.0f} MiB/s {ms:.0f} ms CPU/GiB")
                finally:
                    p.kill(); p.wait()
            print(", ".join(line), flush=True)
    if "b" in what:
        for r in range(rounds):
            line = [f"b round {r+1}:"]
            for name, b in binaries.items():
                p, port = start(b)
                try:
                    rate, cpu = connect_get_close(p.pid, port)
                    line.append(f"{name} {rate:.0f} conn/s {cpu:.1f} us/conn")
                finally:
                    p.kill(); p.wait()
            print(" ".join(line), flush=True)
    if "d" in what:
        for r in range(rounds):
            line = [f"d round {r+1}:"]
            for name, b in binaries.items():
                k, n, before, after = idle(b, 5000)
                line.append(f"{name} {k:.2f} KiB/tunnel ({n} open, {before}->{after} KiB)")
            print(" ".join(line), flush=True)


main()
