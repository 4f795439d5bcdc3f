"""A private redis-server for the cluster tests: its own directory and
Unix socket, no TCP port, AOF with fsync on every write (what cluster.md
asks of a production Redis), stopped by pid."""
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    """with RedisServer() as r: r.url is "unix:/.../r.sock"."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="cnsd-redis-")
        self.sock = os.path.join(self.dir, "r.sock")
        self.url = "unix:" + self.sock
        self.proc = None

    def start(self):
        if not os.path.exists(REDIS_SERVER):
            raise AssertionError("redis-server is not installed: the "
                                 "cluster tests need it (./quickstart "
                                 "installs the Debian package "
                                 "redis-server)")
        self.log = open(os.path.join(self.dir, "redis.log"), "w")
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", "0", "--unixsocket", self.sock,
             "--unixsocketperm", "700", "--dir", self.dir,
             "--appendonly", "yes", "--appendfsync", "always",
             "--save", "", "--daemonize", "no"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("redis-server exited at start:\n" +
                                     self.log_text())
            if self.ping():
                return self
            time.sleep(0.02)
        raise AssertionError("redis-server did not answer within 20 s")

    def ping(self):
        try:
            return self.command("PING") == b"+PONG\r\n"
        except OSError:
            return False

    def command(self, *words):
        """One command, its raw RESP reply (enough for the tests)."""
        req = b"*%d\r\n" % len(words)
        for w in words:
            w = w.encode() if isinstance(w, str) else w
            req += b"$%d\r\n%s\r\n" % (len(w), w)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(self.sock)
            s.sendall(req)
            return s.recv(65536)

    def log_text(self):
        with open(os.path.join(self.dir, "redis.log"),
                  errors="replace") as f:
            return f.read()

    def kill(self):
        """SIGKILL, by pid: what it acknowledged is in its AOF."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None
        self.log.close()

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        if not self.log.closed:
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        return False
