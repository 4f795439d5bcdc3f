#!/usr/bin/env python3
"""make bench: consumersd against what its users would otherwise use.

Every workload runs consumersd and its baselines in the same invocation,
on the same input, and prints both figures and their ratio.  Each run is
checked (all items counted, the same sum as the single-process parse), so
a fast wrong answer fails instead of winning.  Nothing here asserts on
time: the targets of doc/performance.md are printed as met or not.

    python3 tests/bench/bench.py [--scale S] [--repeat R] [--json FILE]
        [--only W1,W3,...] [--daemon-build DIR] [--redis-fsync MODE]

--scale multiplies every size (1.0: the sizes of doc/performance.md; the
smoke test in make check runs a tiny scale to keep this script working).
"""
import argparse
import json
import multiprocessing
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time

TOP_SRCDIR = os.environ.get(
    "top_srcdir",
    os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
TOP_BUILDDIR = os.environ.get("top_builddir")
if TOP_BUILDDIR is None:
    TOP_BUILDDIR = os.path.join(TOP_SRCDIR, "build")
DAEMON = os.path.join(TOP_BUILDDIR, "src", "consumersd")
CLI = os.path.join(TOP_BUILDDIR, "client", "consumers")
PLUGIN_DIR = os.path.join(TOP_BUILDDIR, "src", "plugins", ".libs")
RAWCOUNT = os.path.join(TOP_BUILDDIR, "tests", "bench", ".libs",
                        "rawcount.so")
SLOW = os.path.join(TOP_BUILDDIR, "tests", "plugins", ".libs", "slow.so")
JSONPARSE = os.path.join(TOP_BUILDDIR, "tests", "bench", "jsonparse")
LOADGEN = os.path.join(TOP_BUILDDIR, "tests", "bench", "loadgen")
PYTHON_SO = os.path.join(PLUGIN_DIR, "python.so")
TIME = "/usr/bin/time"		# GNU time (Debian package "time")

ITEM = '{"n":%d,"s":"xxxxxxxxxxxxxxxx"}\n'


class BenchError(Exception):
    pass


# ---- the daemon ----

class Daemon:
    """consumersd on a private socket, at its default log level (as a user
    runs it), with the given pools."""

    def __init__(self, tmp, pools, settings=None):
        self.dir = tempfile.mkdtemp(prefix="daemon-", dir=tmp)
        self.socket = os.path.join(self.dir, "consumersd.sock")
        os.mkdir(os.path.join(self.dir, "pools.d"))
        conf = {"shutdown_timeout": 5}
        if os.geteuid() == 0:
            conf["root_workers"] = True
        conf.update(settings or {})
        self.conf = os.path.join(self.dir, "consumersd.conf")
        with open(self.conf, "w") as f:
            json.dump(conf, f)
        for name, pool in pools.items():
            with open(os.path.join(self.dir, "pools.d", name + ".json"),
                      "w") as f:
                json.dump(pool, f)
        self.log_path = os.path.join(self.dir, "daemon.log")
        self.proc = None

    def __enter__(self):
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [DAEMON, "-c", self.conf, "-s", self.socket, "-P", PLUGIN_DIR],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while "ready: accepting clients" not in self.log_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError("consumersd did not start:\n" +
                                 self.log_text())
            time.sleep(0.02)
        return self

    def __exit__(self, exc_type, exc, tb):
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.log.close()
        if exc_type is None and rc != 0:
            raise BenchError("consumersd exited with status %s:\n%s" %
                             (rc, self.log_text()[-3000:]))
        return False

    def log_text(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def peak_rss_kib(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        raise BenchError("no VmHWM for the master")

    def submit(self, pool, path):
        """consumers submit POOL < path; (seconds, final line, client's
        peak RSS in KiB)."""
        # GNU time reports the CLI's own peak: a fork of this Python
        # process would count Python's pages in ru_maxrss.
        rss = os.path.join(self.dir, "client-rss")
        with open(path, "rb") as f:
            t0 = time.perf_counter()
            p = subprocess.run([TIME, "-f", "%M", "-o", rss, CLI, "-s",
                                self.socket, "submit", pool], stdin=f,
                               capture_output=True)
            t = time.perf_counter() - t0
        lines = p.stdout.decode().splitlines()
        if p.returncode != 0 or not lines:
            raise BenchError("consumers submit %s failed (%s): %s" %
                             (pool, p.returncode, p.stderr.decode()[-2000:]))
        with open(rss) as f:
            client_kib = int(f.read().split()[-1])
        return t, json.loads(lines[-1]), client_kib

    def loadgen(self, pool, clients, streams, items):
        p = subprocess.run([LOADGEN, "-s", self.socket, "-p", pool,
                            "-c", str(clients), "-n", str(streams),
                            "-i", str(items)], capture_output=True,
                           text=True)
        try:
            r = json.loads(p.stdout)
        except ValueError:
            raise BenchError("loadgen failed: %s %s" % (p.stdout, p.stderr))
        if p.returncode != 0:
            raise BenchError("loadgen: %d of %d streams failed (%d lost "
                             "items): %s" % (r["failed"], streams, r["lost"],
                                             r["first_error"]))
        return r


# ---- baselines in Python: the consumers package's model ----

def _queue_consumer(q, results):
    total = 0
    for line in iter(q.get, None):
        total += json.loads(line)["n"]
    results.put(total)


def baseline_queue(path):
    """(a) The Python consumers pattern: 2 multiprocessing.Process
    consumers reading one multiprocessing.Queue, a stop sentinel each,
    results gathered at the end.  Returns (seconds, sum)."""
    t0 = time.perf_counter()
    q, results = multiprocessing.Queue(), multiprocessing.Queue()
    procs = [multiprocessing.Process(target=_queue_consumer,
                                     args=(q, results)) for _ in range(2)]
    for p in procs:
        p.start()
    with open(path) as f:
        for line in f:
            q.put(line)
    for _ in procs:
        q.put(None)
    total = sum(results.get() for _ in procs)
    for p in procs:
        p.join()
    return time.perf_counter() - t0, total


def _parse_n(line):
    return json.loads(line)["n"]


def baseline_pool(path):
    """(b) multiprocessing.Pool(2).imap_unordered(parse, lines,
    chunksize=1000).  Returns (seconds, sum)."""
    t0 = time.perf_counter()
    with open(path) as f, multiprocessing.Pool(2) as pool:
        total = sum(pool.imap_unordered(_parse_n, f, chunksize=1000))
    return time.perf_counter() - t0, total


def baseline_batches(items, batches):
    """W2's baseline: a batch of one item the way consumers.Pool runs
    one use: a queue, 2 processes started, the item, the sentinels,
    results gathered, processes joined.  Returns batches per second."""
    t0 = time.perf_counter()
    for b in range(batches):
        q, results = multiprocessing.Queue(), multiprocessing.Queue()
        procs = [multiprocessing.Process(target=_queue_consumer,
                                         args=(q, results))
                 for _ in range(2)]
        for p in procs:
            p.start()
        q.put(items[b % len(items)])
        for _ in procs:
            q.put(None)
        sum(results.get() for _ in procs)
        for p in procs:
            p.join()
    return batches / (time.perf_counter() - t0)


def run_jsonparse(path):
    """(c) One C process reading the file and parsing every line with
    jansson.  Returns (seconds, sum)."""
    t0 = time.perf_counter()
    p = subprocess.run([JSONPARSE, path], capture_output=True, text=True)
    t = time.perf_counter() - t0
    if p.returncode != 0:
        raise BenchError("jsonparse failed: " + p.stdout + p.stderr)
    return t, json.loads(p.stdout)["sum"]


def timed(argv, stdin_path=None):
    with open(stdin_path or os.devnull, "rb") as f:
        t0 = time.perf_counter()
        p = subprocess.run(argv, stdin=f, capture_output=True)
        t = time.perf_counter() - t0
    if p.returncode != 0:
        raise BenchError("%s failed: %s" % (argv[0], p.stderr.decode()))
    return t, p.stdout.decode()


# ---- reporting ----

class Report:
    def __init__(self):
        self.rows = []
        self.targets = []
        self.data = {}

    def head(self, title):
        print("\n" + title)

    def row(self, label, value):
        print("  %-46s %s" % (label, value))

    def target(self, name, measured, op, goal, unit=""):
        met = measured >= goal if op == ">=" else measured < goal
        self.targets.append({"target": name, "measured": measured,
                             "goal": "%s %s%s" % (op, goal, unit),
                             "met": met})
        print("  %-46s %s (target %s %g%s)" %
              ("-> " + name, "MET" if met else "NOT MET", op, goal, unit))


def median_run(fn, repeat):
    runs = [fn() for _ in range(repeat)]
    runs.sort(key=lambda r: r[0])
    return runs[len(runs) // 2], [r[0] for r in runs]


def check_final(final, n, want_completion=None, what="stream"):
    if not final.get("ok") or final.get("items") != n or \
            final.get("consumed") != n or final.get("errors"):
        raise BenchError("%s lost items or failed: %s" %
                         (what, json.dumps(final)[:500]))
    if want_completion is not None and final.get("completion") != \
            want_completion:
        raise BenchError("%s: completion %r, the single-process parse "
                         "says %r" % (what, final.get("completion"),
                                      want_completion))


def machine():
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return "%s, %d cores, Linux %s, Python %s" % (
        model, os.cpu_count(), platform.release(),
        platform.python_version())


# ---- workloads ----

def w1(tmp, rep, n, repeat):
    path = os.path.join(tmp, "w1.ndjson")
    with open(path, "w") as f:
        for i in range(n):
            f.write(ITEM % ((i * 7919) % 100000))
    rep.head("W1 throughput: %d items like %s from a file, consumers "
             "submit to a 2-worker sum pool" % (n, ITEM.strip() % 12345))
    (tc, want), _ = median_run(lambda: run_jsonparse(path), repeat)
    pools = {"sum": {"plugin": "sum", "workers": 2, "stream_workers": 2,
                     "kwargs": {"field": "n"}},
             "count": {"plugin": RAWCOUNT, "workers": 2,
                       "stream_workers": 2}}
    with Daemon(tmp, pools) as d:
        (t, final, _), runs = median_run(lambda: d.submit("sum", path),
                                         repeat)
        check_final(final, n, want, "W1")
        (traw, fraw, _), raw_runs = median_run(
            lambda: d.submit("count", path), repeat)
        check_final(fraw, n, n, "W1-raw")
    rep.row("consumersd", "%.3f s  (%.2f M items/s; runs %s)" %
            (t, n / t / 1e6, ", ".join("%.3f" % r for r in runs)))
    ta, suma = baseline_queue(path)
    if suma != want:
        raise BenchError("baseline (a) summed %d, not %d" % (suma, want))
    (tb, sumb), _ = median_run(lambda: baseline_pool(path), repeat)
    if sumb != want:
        raise BenchError("baseline (b) summed %d, not %d" % (sumb, want))
    rep.row("(a) 2 Processes + multiprocessing.Queue", "%.3f s  (%.1fx)" %
            (ta, ta / t))
    rep.row("(b) Pool(2).imap_unordered chunksize=1000",
            "%.3f s  (%.2fx)" % (tb, tb / t))
    rep.row("(c) one C process parsing with jansson", "%.3f s  (%.2fx)" %
            (tc, tc / t))
    rep.target("W1 vs (a)", ta / t, ">=", 10, "x")
    rep.target("W1 vs (b)", tb / t, ">=", 1.5, "x")
    rep.target("W1 vs (c)", tc / t, ">=", 1.0, "x")
    rep.head("W1-raw: the same file through a raw-iterator counting plugin "
             "(routing alone)")
    (twc, out), _ = median_run(lambda: timed(["wc", "-l", path]), repeat)
    if int(out.split()[0]) != n:
        raise BenchError("wc -l counted %s" % out)
    rep.row("consumersd", "%.3f s  (%.2f M items/s; runs %s)" %
            (traw, n / traw / 1e6, ", ".join("%.3f" % r for r in raw_runs)))
    rep.row("wc -l", "%.4f s  (%.0f M lines/s; %.1fx consumersd's rate)" %
            (twc, n / twc / 1e6, traw / twc))
    rep.target("W1-raw items/s", n / traw, ">=", 5e6)
    rep.data["W1"] = {"items": n, "consumersd_s": t, "runs_s": runs,
                      "a_s": ta, "b_s": tb, "c_s": tc,
                      "raw_s": traw, "raw_runs_s": raw_runs, "wc_s": twc}
    os.unlink(path)


def w2_w4(tmp, rep, streams, batches, latency_streams):
    pools = {"sum": {"plugin": "sum", "workers": 2, "stream_workers": 2,
                     "kwargs": {"field": "n"}}}
    with Daemon(tmp, pools) as d:
        one = d.loadgen("sum", 1, streams, 1)
        eight = d.loadgen("sum", 8, streams, 1)
        lat = d.loadgen("sum", 1, latency_streams, 1)
    items = [ITEM % i for i in range(10)]
    base = baseline_batches(items, batches)
    rep.head("W2 stream rate: %d streams of one item to a 2-worker pool"
             % streams)
    rep.row("consumersd, 1 client", "%.0f streams/s" % one["streams_per_s"])
    rep.row("consumersd, 8 concurrent clients",
            "%.0f streams/s" % eight["streams_per_s"])
    rep.row("Python: 2 Processes + Queue per batch (%d)" % batches,
            "%.1f batches/s" % base)
    rep.row("ratio (1 client / 8 clients)", "%.0fx / %.0fx" %
            (one["streams_per_s"] / base, eight["streams_per_s"] / base))
    rep.target("W2 vs per-batch Python (1 client)",
               one["streams_per_s"] / base, ">=", 50, "x")
    rep.head("W4 latency: %d one-item streams, one client, connect to "
             "final line" % latency_streams)
    rep.row("p50 / p99 / max", "%.0f / %.0f / %.0f us" %
            (lat["p50_us"], lat["p99_us"], lat["max_us"]))
    rep.target("W4 p99", lat["p99_us"] / 1000, "<", 1, " ms")
    rep.data["W2"] = {"one_client": one, "eight_clients": eight,
                      "python_batches_per_s": base, "batches": batches}
    rep.data["W4"] = lat


def w3(tmp, rep, sizes):
    rep.head("W3 backpressure: items into a pool whose 2 consumers sleep "
             "(1 ms per 1000 items each)")
    pools = {"slow": {"plugin": SLOW, "workers": 2, "stream_workers": 2,
                      "kwargs": {"usec": 1000, "every": 1000}}}
    rep.data["W3"] = []
    for n in sizes:
        path = os.path.join(tmp, "w3.ndjson")
        with open(path, "w") as f:
            for i in range(n):
                f.write("%d\n" % i)
        with Daemon(tmp, pools) as d:
            t, final, client_kib = d.submit("slow", path)
            check_final(final, n, n, "W3")
            master_kib = d.peak_rss_kib()
        os.unlink(path)
        rep.row("%d items" % n, "master peak RSS %.1f MiB, client %.1f MiB "
                "(%.1f s)" % (master_kib / 1024, client_kib / 1024, t))
        rep.data["W3"].append({"items": n, "master_kib": master_kib,
                               "client_kib": client_kib, "seconds": t})
    rep.target("W3 master peak RSS (largest run)",
               max(r["master_kib"] for r in rep.data["W3"]) / 1024, "<",
               32, " MiB")


def w5(tmp, rep, clients, items):
    rep.head("W5 many clients: %d concurrent clients, %d items each, "
             "4-worker pool" % (clients, items))
    pools = {"sum": {"plugin": "sum", "workers": 4, "stream_workers": 4,
                     "queue_timeout": 600, "kwargs": {"field": "n"}}}
    with Daemon(tmp, pools, {"max_connections_per_uid": clients + 16}) as d:
        r = d.loadgen("sum", clients, clients, items)
        master_kib = d.peak_rss_kib()
    rep.row("total time", "%.2f s (%.0f items/s)" %
            (r["seconds"], clients * items / r["seconds"]))
    rep.row("streams complete, items lost", "%d of %d, %d" %
            (r["streams"] - r["failed"], r["streams"], r["lost"]))
    rep.row("master peak RSS", "%.1f MiB" % (master_kib / 1024))
    rep.target("W5 master peak RSS", master_kib / 1024, "<", 64, " MiB")
    rep.data["W5"] = dict(r, master_kib=master_kib)


# ---- W6: a Python function, in a python pool and under consumers.Pool ----

# The function both sides run, as its user writes it.
W6_SOURCE = """
def total(items):
    t = 0
    for item in items:
        t += item["n"]
    return t

def add(results):
    return sum(results)
"""
W6_NS = {}
exec(W6_SOURCE, W6_NS)


def _consumers_process(q, results):
    """One consumers.Pool process: the function over a generator of the
    queue's items ({'args': (item,)}, as consumers puts them) until its
    sentinel."""
    def items():
        for msg in iter(q.get, None):
            yield msg["args"][0]
    results.put(W6_NS["total"](items()))


def baseline_consumers(n, procs=2):
    """consumers.Pool(total, 2) fed n items {"n": i}: (seconds, sum)."""
    t0 = time.perf_counter()
    q, results = multiprocessing.Queue(), multiprocessing.Queue()
    ps = [multiprocessing.Process(target=_consumers_process,
                                  args=(q, results)) for _ in range(procs)]
    for p in ps:
        p.start()
    for i in range(n):
        q.put({"args": ({"n": i},)})
    for _ in ps:
        q.put(None)
    total = sum(results.get() for _ in ps)
    for p in ps:
        p.join()
    return time.perf_counter() - t0, total


def w6_client():
    sys.path.insert(0, os.path.join(TOP_BUILDDIR, "client", "python"))
    import consumers_client
    return consumers_client


def w6(tmp, rep, n, repeat, streams, batches):
    cc = w6_client()
    where = tempfile.mkdtemp(prefix="w6-", dir=tmp)
    os.chmod(tmp, 0o755)
    os.chmod(where, 0o755)
    with open(os.path.join(where, "w6fns.py"), "w") as f:
        f.write(W6_SOURCE)
    os.chmod(os.path.join(where, "w6fns.py"), 0o644)
    pools = {"w6": {"plugin": "python", "workers": 2, "stream_workers": 2,
                    "plugin_options": {"function": "w6fns:total",
                                       "complete": "w6fns:add",
                                       "path": [where]}},
             # The one-item streams' pool: the same function, no
             # completion round trip (each stream's result is its own).
             "w6one": {"plugin": "python", "workers": 2,
                       "stream_workers": 2,
                       "plugin_options": {"function": "w6fns:total",
                                          "path": [where]}}}
    want = n * (n - 1) // 2
    rep.head("W6 Python: %d items {\"n\": i} summed by a Python function "
             "over 2 workers, put from Python" % n)

    def one_stream(d):
        t0 = time.perf_counter()
        with cc.Pool("w6", 2, socket=d.socket) as pool:
            for i in range(n):
                pool.put({"n": i})
        t = time.perf_counter() - t0
        return t, pool.final

    def one_item_streams(d):
        t0 = time.perf_counter()
        for i in range(streams):
            with cc.Pool("w6one", 2, socket=d.socket) as pool:
                pool.put({"n": i})
            if sum(pool.results) != i:
                raise BenchError("W6 one-item stream: results %r, not "
                                 "%d" % (pool.results, i))
        return streams / (time.perf_counter() - t0)

    with Daemon(tmp, pools) as d:
        (t, final), runs = median_run(lambda: one_stream(d), repeat)
        check_final(final, n, want, "W6")
        rate = one_item_streams(d)
    (ta, suma), _ = median_run(lambda: baseline_consumers(n), 1)
    if suma != want:
        raise BenchError("W6 baseline summed %d, not %d" % (suma, want))
    rep.row("consumersd (python pool, consumers_client.Pool)",
            "%.3f s  (%.2f M items/s; runs %s)" %
            (t, n / t / 1e6, ", ".join("%.3f" % r for r in runs)))
    rep.row("consumers.Pool pattern (2 Processes + Queue)",
            "%.3f s  (%.2fx)" % (ta, ta / t))
    rep.target("W6 vs consumers.Pool", ta / t, ">=", 3, "x")
    t0 = time.perf_counter()
    for b in range(batches):
        tb, sumb = baseline_consumers(1)
        if sumb != 0:
            raise BenchError("W6 per-batch baseline summed %d" % sumb)
    brate = batches / (time.perf_counter() - t0)
    rep.head("W6 one-item streams: %d streams of one item to the python "
             "pool, one client, vs a consumers.Pool per batch" % streams)
    rep.row("consumersd", "%.0f streams/s" % rate)
    rep.row("consumers.Pool per batch (%d batches)" % batches,
            "%.1f batches/s  (%.0fx)" % (brate, rate / brate))
    rep.target("W6 one-item vs consumers.Pool per batch", rate / brate,
               ">=", 50, "x")
    rep.data["W6"] = {"items": n, "consumersd_s": t, "runs_s": runs,
                      "consumers_s": ta, "streams": streams,
                      "streams_per_s": rate, "batches": batches,
                      "batches_per_s": brate}


# ---- W7: a cluster pool on two instances, through Redis ----

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def cluster_built():
    """consumersd links hiredis, and redis-server is installed."""
    try:
        with open(DAEMON, "rb") as f:
            linked = b"redisAsyncConnect" in f.read()
    except OSError:
        return False
    return linked and os.path.exists(REDIS_SERVER)


class Redis:
    """A private redis-server: unix socket, AOF with appendfsync always
    (what doc/cluster.md asks for), stopped by pid."""

    def __init__(self, tmp, fsync):
        self.dir = tempfile.mkdtemp(prefix="redis-", dir=tmp)
        self.sock = os.path.join(self.dir, "r.sock")
        self.fsync = fsync

    def __enter__(self):
        self.log = open(os.path.join(self.dir, "redis.log"), "w")
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", "0", "--unixsocket", self.sock,
             "--dir", self.dir, "--appendonly", "yes", "--appendfsync",
             self.fsync, "--save", ""], stdout=self.log,
            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not os.path.exists(self.sock):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError("redis-server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait()
        self.log.close()
        return False


def w7(tmp, rep, n, repeat, fsync):
    path = os.path.join(tmp, "w7.ndjson")
    with open(path, "w") as f:
        for i in range(n):
            f.write(ITEM % ((i * 7919) % 100000))
    rep.head("W7 cluster: %d items into a sum pool of 2 workers on each of "
             "2 instances through Redis (appendfsync %s), against the same "
             "pool on one instance" % (n, fsync))
    want = sum((i * 7919) % 100000 for i in range(n))
    pool = {"plugin": "sum", "workers": 2, "stream_workers": 2,
            "queue_timeout": 600, "kwargs": {"field": "n"}}
    cpool = dict(pool, cluster=True)
    with Redis(tmp, fsync) as r:
        def cl(name):
            return {"cluster": {"redis": "unix:" + r.sock,
                                "instance": name, "heartbeat": 0.1,
                                "claim_idle": 2}}
        with Daemon(tmp, {"local": pool, "sum": cpool}, cl("a")) as a, \
                Daemon(tmp, {"sum": cpool}, cl("b")):
            deadline = time.monotonic() + 30
            while True:
                p = subprocess.run([CLI, "-s", a.socket, "status", "--json",
                                    "sum"], capture_output=True, text=True)
                insts = {}
                if p.returncode == 0:
                    v = json.loads(p.stdout)
                    insts = v["pools"][0]["cluster"].get("instances") or {}
                if sorted(insts) == ["a", "b"]:
                    break
                if time.monotonic() > deadline:
                    raise BenchError("W7: instance b never showed in a's "
                                     "status")
                time.sleep(0.05)
            (tl, fl, _), runs_l = median_run(lambda: a.submit("local", path),
                                             repeat)
            check_final(fl, n, want, "W7 local")
            (tc, fc, _), runs_c = median_run(lambda: a.submit("sum", path),
                                             repeat)
            check_final(fc, n, want, "W7 cluster")
            lanes = len(fc.get("instances") or [])
    rep.row("local pool, 2 workers", "%.3f s (%.0f items/s)" % (tl, n / tl))
    rep.row("cluster pool, %d lanes on 2 instances" % lanes,
            "%.3f s (%.0f items/s)" % (tc, n / tc))
    rep.row("cluster / local throughput", "%.2fx" % (tl / tc))
    rep.target("W7 cluster vs local throughput", tl / tc, ">=", 0.5, "x")
    rep.data["W7"] = {"items": n, "local_s": tl, "cluster_s": tc,
                      "appendfsync": fsync,
                      "lanes": lanes, "runs_local_s": runs_l,
                      "runs_cluster_s": runs_c}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", help="write every figure to this file")
    ap.add_argument("--only", default="W1,W2,W3,W4,W5,W6,W7")
    ap.add_argument("--redis-fsync", default="always",
                    choices=["always", "everysec", "no"],
                    help="W7: Redis's appendfsync (always: what "
                    "doc/cluster.md asks for \"nothing lost\")")
    ap.add_argument("--daemon-build", metavar="DIR",
                    help="take consumersd, consumers and the bundled "
                    "plugins from another build directory (an older "
                    "version, say); the benchmark's own programs still "
                    "come from this build")
    args = ap.parse_args()
    if args.daemon_build:
        global DAEMON, CLI, PLUGIN_DIR
        b = os.path.abspath(args.daemon_build)
        DAEMON = os.path.join(b, "src", "consumersd")
        CLI = os.path.join(b, "client", "consumers")
        PLUGIN_DIR = os.path.join(b, "src", "plugins", ".libs")
        global PYTHON_SO
        PYTHON_SO = os.path.join(PLUGIN_DIR, "python.so")
    only = set(args.only.upper().split(","))
    s = args.scale

    def sz(n, low=1):
        return max(low, int(n * s))

    for f in (DAEMON, CLI, RAWCOUNT, SLOW, JSONPARSE, LOADGEN):
        if not os.path.exists(f):
            raise SystemExit("bench: %s is missing: run make bench (it "
                             "builds what this script runs)" % f)
    if not os.access(TIME, os.X_OK):
        raise SystemExit("bench: %s is missing: install the Debian package "
                         "\"time\" (./quickstart installs it)" % TIME)
    multiprocessing.set_start_method("fork")
    rep = Report()
    print("consumersd benchmark, scale %g, on %s" % (s, machine()))
    print("consumersd: %s" % DAEMON)
    tmp = tempfile.mkdtemp(prefix="cnsd-bench-")
    ok = True
    try:
        if "W1" in only:
            w1(tmp, rep, sz(1000000, 100), args.repeat)
        if "W2" in only or "W4" in only:
            w2_w4(tmp, rep, sz(20000, 20), sz(200, 3), sz(10000, 20))
        if "W3" in only:
            w3(tmp, rep, [sz(500000, 1000), sz(5000000, 10000)])
        if "W5" in only:
            w5(tmp, rep, sz(500, 4), sz(2000, 20))
        if "W6" in only:
            if os.path.exists(PYTHON_SO):
                w6(tmp, rep, sz(1000000, 1000), args.repeat, sz(2000, 20),
                   sz(40, 3))
            else:
                print("\nW6 skipped: %s was not built (no python3-embed)"
                      % PYTHON_SO)
        if "W7" in only:
            if cluster_built():
                w7(tmp, rep, sz(1000000, 1000), args.repeat,
                   args.redis_fsync)
            else:
                print("\nW7 skipped: consumersd was built without hiredis, "
                      "or redis-server is not installed")
    except BenchError as e:
        print("\nbench: FAILED: %s" % e, file=sys.stderr)
        ok = False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if rep.targets:
        print("\ntargets: %d of %d met" %
              (sum(t["met"] for t in rep.targets), len(rep.targets)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"scale": s, "machine": machine(),
                       "workloads": rep.data, "targets": rep.targets}, f,
                      indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
