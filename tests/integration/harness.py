"""Integration test harness: starts the real consumersd on a private socket
with real plugins, and talks to it through the real CLI or a plain socket.

Each test gets its own daemon, temporary directory and config, like tmux's
regress scripts; nothing is shared between tests.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

TOP_BUILDDIR = os.environ.get(
    "top_builddir",
    os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
TOP_SRCDIR = os.environ.get("top_srcdir", TOP_BUILDDIR)
DAEMON = os.path.join(TOP_BUILDDIR, "src", "consumersd")
CLI = os.path.join(TOP_BUILDDIR, "client", "consumers")
PLUGIN_DIR = os.path.join(TOP_BUILDDIR, "src", "plugins", ".libs")
TEST_PLUGIN_DIR = os.path.join(TOP_BUILDDIR, "tests", "plugins", ".libs")


def test_plugin(name):
    """Path of a test plugin built under tests/plugins/."""
    return os.path.join(TEST_PLUGIN_DIR, name + ".so")


class Daemon:
    """A consumersd on a temporary socket, with the given pools.

    pools: {"name": {pool file keys...}}; settings: daemon config keys.
    """

    def __init__(self, pools, settings=None, wait_ready=True):
        self.dir = tempfile.mkdtemp(prefix="cnsd-test-")
        self.socket = os.path.join(self.dir, "consumersd.sock")
        self.conf = os.path.join(self.dir, "consumersd.conf")
        os.mkdir(os.path.join(self.dir, "pools.d"))
        with open(self.conf, "w") as f:
            json.dump(dict(settings or {}), f)
        for name, pool in pools.items():
            with open(os.path.join(self.dir, "pools.d", name + ".json"),
                      "w") as f:
                json.dump(pool, f)
        self.log_path = os.path.join(self.dir, "daemon.log")
        self.proc = None
        self.wait_ready = wait_ready

    def start(self):
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [DAEMON, "-d", "-c", self.conf, "-s", self.socket,
             "-P", PLUGIN_DIR],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("consumersd exited at start:\n" +
                                     self.log_text())
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                try:
                    s.connect(self.socket)
                    return self
                except OSError:
                    time.sleep(0.02)
        raise AssertionError("consumersd did not listen within 10 s")

    def log_text(self):
        with open(self.log_path) as f:
            return f.read()

    def pid(self):
        return self.proc.pid

    def rss_peak_kib(self):
        """The master's peak resident set size (VmHWM), in KiB."""
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        raise AssertionError("no VmHWM in /proc")

    def worker_pids(self):
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)],
                             capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def stop(self):
        """SIGTERM; the daemon must exit 0 with its workers gone."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        workers = self.worker_pids()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("consumersd did not stop on SIGTERM:\n" +
                                 self.log_text())
        for w in workers:
            try:
                os.kill(w, 0)
                raise AssertionError("worker %d outlived the daemon" % w)
            except ProcessLookupError:
                pass
        return rc

    def __enter__(self):
        return self.start()

    def __exit__(self, exc_type, exc, tb):
        rc = self.stop()
        self.log.close()
        if exc_type is None and rc != 0:
            raise AssertionError("consumersd exited with %s:\n%s" %
                                 (rc, self.log_text()))
        if exc_type is not None and os.environ.get("VERBOSE"):
            print(self.log_text())
        shutil.rmtree(self.dir, ignore_errors=True)
        return False

    # -- clients --

    def cli(self, *args, input=b"", timeout=120):
        """Run the consumers CLI; returns (exit status, final, stderr)."""
        p = subprocess.run([CLI, "-s", self.socket] + list(args),
                           input=input, capture_output=True,
                           timeout=timeout)
        out = p.stdout.decode()
        final = json.loads(out) if out.strip() else None
        return p.returncode, final, p.stderr.decode()

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.socket)
        return s

    def submit_raw(self, header, body, timeout=60):
        """Submit over a plain socket: header (dict or bytes), body bytes.
        Returns (list of reply objects, final object)."""
        s = self.connect()
        s.settimeout(timeout)
        if isinstance(header, dict):
            header = (json.dumps(header) + "\n").encode()
        try:
            s.sendall(header + body)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        replies = read_lines(s)
        s.close()
        return replies, final_of(replies)


def read_lines(s):
    buf = b""
    while True:
        chunk = s.recv(1 << 16)
        if not chunk:
            break
        buf += chunk
    return [json.loads(l) for l in buf.split(b"\n") if l.strip()]


def final_of(replies):
    for r in replies:
        if r.get("ok") is False or "items" in r:
            return r
    return None


def rejections(replies):
    """{seq: error} of the rejection lines among the replies."""
    return {r["rejected"]["seq"]: r["rejected"]["error"]
            for r in replies if isinstance(r.get("rejected"), dict)}


def lines(values):
    """NDJSON bytes for a list of JSON values."""
    return b"".join((json.dumps(v) + "\n").encode() for v in values)


def assert_invariant(tc, final):
    """Every item is consumed, rejected, quarantined, or reported lost."""
    tc.assertEqual(final["items"], final["consumed"] + final["rejected"] +
                   final["quarantined"] + final["unconsumed"], final)


def main():
    unittest.main(verbosity=2)
