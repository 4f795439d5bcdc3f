"""Integration test harness: starts the real consumersd on a private socket
with real plugins, and talks to it through the real CLI or a plain socket.

Each test gets its own daemon, temporary directory and config, like tmux's
regress scripts; nothing is shared between tests.

In a sanitizer build (configure --enable-sanitizers) and under valgrind
(CNS_VALGRIND) the same tests also fail on what the tools report in the
daemon, its workers and the CLI; see "test modes" below.
"""
import atexit
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

# Out-of-tree builds: make check says where the source and the build are.
# Run by hand, a test looks for the build in build/ beside the sources
# (what ./quickstart makes), else in the source tree itself.
TOP_SRCDIR = os.environ.get(
    "top_srcdir",
    os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
TOP_BUILDDIR = os.environ.get("top_builddir")
if TOP_BUILDDIR is None:
    TOP_BUILDDIR = os.path.join(TOP_SRCDIR, "build")
    if not os.path.exists(os.path.join(TOP_BUILDDIR, "src", "consumersd")):
        TOP_BUILDDIR = TOP_SRCDIR
DAEMON = os.path.join(TOP_BUILDDIR, "src", "consumersd")
CLI = os.path.join(TOP_BUILDDIR, "client", "consumers")
PLUGIN_DIR = os.path.join(TOP_BUILDDIR, "src", "plugins", ".libs")
TEST_PLUGIN_DIR = os.path.join(TOP_BUILDDIR, "tests", "plugins", ".libs")


def test_plugin(name):
    """Path of a test plugin built under tests/plugins/."""
    return os.path.join(TEST_PLUGIN_DIR, name + ".so")


# ---- test modes: ASan+UBSan builds, valgrind ----
#
# TOOL_EXIT is the exit status of a process in which a sanitizer or
# valgrind found an error; the daemon, its workers and the CLI never use
# it themselves.
TOOL_EXIT = 99


def _built_with_sanitizers():
    """make check says (CNS_SANITIZERS, from configure --enable-sanitizers);
    run by hand, look for the ASan runtime in the daemon."""
    flag = os.environ.get("CNS_SANITIZERS")
    if flag is not None:
        return flag == "1"
    try:
        with open(DAEMON, "rb") as f:
            return b"__asan_init" in f.read()
    except OSError:
        return False


SANITIZERS = _built_with_sanitizers()

# CNS_VALGRIND: the valgrind command to run the daemon and the CLI under
# (./quickstart check --valgrind sets it), or 1 for this default.
VALGRIND = os.environ.get("CNS_VALGRIND", "")
if VALGRIND == "1":
    VALGRIND = ("valgrind --error-exitcode=%d --leak-check=full "
                "--errors-for-leak-kinds=definite --track-fds=no "
                "--child-silent-after-fork=no" % TOOL_EXIT)
VALGRIND = shlex.split(VALGRIND) if VALGRIND not in ("", "0") else []
# memcheck keeps 20 MB of freed blocks aside to catch their use after
# free; like ASan's quarantine below, 2 MB of them keeps the master's RSS
# near the daemon's own figure (see RSS_AS_GROWTH).
if VALGRIND and not any(a.startswith("--freelist-vol") for a in VALGRIND):
    VALGRIND.insert(1, "--freelist-vol=2000000")
if VALGRIND and SANITIZERS:
    raise SystemExit("valgrind cannot run a sanitizer build: use the "
                     "plain build (./quickstart check --valgrind)")

# Safety-net timeouts (start, stop, the CLI) stretch by this much under
# the tools; no test's assertion on behaviour depends on it.
SLOWDOWN = 20 if VALGRIND else 3 if SANITIZERS else 1

# RELAXED UNDER VALGRIND, here only: the master's peak RSS there is
# valgrind's, not the daemon's.  Memcheck's own code, translation cache
# and shadow memory put about 55 MiB under a daemon that natively peaks
# near 10 MiB, so a limit written for the real figure cannot hold.
# Under valgrind rss_peak_kib() therefore reports how much the peak grew
# after the daemon was ready: that still fails when the master buffers
# its input (72 MB in the backpressure test, more with shadow memory),
# but no longer counts the daemon's memory from before it was ready.
RSS_AS_GROWTH = bool(VALGRIND)

if SANITIZERS:
    # Everything a test runs from this build, the daemon, its forked
    # workers and the CLI, shares these.  Reports go to stderr (the
    # daemon's is daemon.log): log_path would have forked workers write
    # into their parent's file.  A small quarantine keeps the master's
    # RSS comparable to a plain build's (the backpressure test measures
    # it; ASan's default 256 MiB quarantine alone is above its limit).
    # include_if_exists=...-%b adds the options of one binary (%b is its
    # name), below.
    _OPTIONS_DIR = tempfile.mkdtemp(prefix="cnsd-sanitizer-options-")
    atexit.register(shutil.rmtree, _OPTIONS_DIR, True)
    os.environ["ASAN_OPTIONS"] = ":".join(filter(None, [
        "detect_leaks=1", "abort_on_error=0", "exitcode=%d" % TOOL_EXIT,
        "quarantine_size_mb=1", "halt_on_error=1", "color=never",
        os.environ.get("ASAN_OPTIONS"),
        "include_if_exists=" + os.path.join(_OPTIONS_DIR, "asan-%b")]))
    os.environ["UBSAN_OPTIONS"] = ":".join([
        "print_stacktrace=1", "halt_on_error=1", "exitcode=%d" % TOOL_EXIT,
        "color=never"])
    os.environ["LSAN_OPTIONS"] = ":".join([
        "exitcode=%d" % TOOL_EXIT,
        "include_if_exists=" + os.path.join(_OPTIONS_DIR, "lsan-%b")])


# What a sanitizer prints when it finds something (and valgrind, when a
# log is read without its process ids).
TOOL_REPORT = re.compile(
    r"ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|==ERROR"
    r"|ERROR SUMMARY: [1-9]|definitely lost: [1-9]")
VALGRIND_LINE = re.compile(r"^==(\d+)== ?(.*)$", re.M)
VALGRIND_CHATTER = re.compile(
    r"$|Memcheck, a memory error|Copyright \(C\)|Using Valgrind|Command: "
    r"|Reachable blocks|To see them|For lists of|For counts of")


def _sanitizer_reports(text):
    lines = text.splitlines()
    hits = [i for i, l in enumerate(lines) if TOOL_REPORT.search(l)]
    out, shown = [], -1
    for i in hits:
        lo, hi = max(i - 3, shown + 1), min(i + 60, len(lines))
        if lo < hi:
            out.append("\n".join(lines[lo:hi]))
        shown = hi - 1
    return out


def _valgrind_reports(text):
    """valgrind's reports, process by process (the master, each forked
    worker, the CLI).  A process killed by a signal (a test plugin's
    deliberate SIGSEGV) is cut off wherever it was: memcheck still checks
    it for leaks, and finds blocks whose only pointer was in a dead frame
    or register.  Leaks are not counted for such a process; its other
    errors (invalid reads and writes, uninitialised values...) are."""
    procs = {}
    for m in VALGRIND_LINE.finditer(text):
        procs.setdefault(m.group(1), []).append(m.group(2))
    out = []
    for pid, lines in procs.items():
        body = "\n".join(lines)
        errors = sum(int(n) for n in
                     re.findall(r"^ERROR SUMMARY: (\d+) errors", body, re.M))
        leaks = len(re.findall(r"are definitely lost in loss record", body))
        if re.search(r"^Process terminating with default action of signal",
                     body, re.M):
            errors -= leaks
        elif re.search(r"^ +definitely lost: [1-9]", body, re.M):
            errors = max(errors, 1)
        if errors > 0:
            lines = [l for l in lines if not VALGRIND_CHATTER.match(l)]
            out.append("valgrind, process %s:\n" % pid +
                       "\n".join(lines[:150]))
    return out


def tool_reports(text):
    """The sanitizer or valgrind reports in text, as one excerpt ("" when
    there are none)."""
    found = _valgrind_reports(text) if VALGRIND else _sanitizer_reports(text)
    return "\n...\n".join(found)


class Daemon:
    """A consumersd on a temporary socket, with the given pools.

    pools: {"name": {pool file keys...}}; settings: daemon config keys;
    env: variables added to the daemon's environment.
    """

    def __init__(self, pools, settings=None, wait_ready=True, env=None,
                 wrapper=None):
        self.dir = tempfile.mkdtemp(prefix="cnsd-test-")
        self.socket = os.path.join(self.dir, "consumersd.sock")
        self.conf = os.path.join(self.dir, "consumersd.conf")
        os.mkdir(os.path.join(self.dir, "pools.d"))
        conf = dict(settings or {})
        # Tests that run as root run most pools' workers as root too; the
        # ones about "user" set it.  (Without this a root daemon requires
        # "user" in every pool.)
        if os.geteuid() == 0:
            conf.setdefault("root_workers", True)
        # A test that fails with a stream open is not held up for the
        # default 30 s drain when its daemon is stopped.
        conf.setdefault("shutdown_timeout", 2)
        with open(self.conf, "w") as f:
            json.dump(conf, f)
        for name, pool in pools.items():
            with open(os.path.join(self.dir, "pools.d", name + ".json"),
                      "w") as f:
                json.dump(pool, f)
        self.log_path = os.path.join(self.dir, "daemon.log")
        self.proc = None
        self.log = None
        self.rss_base_kib = 0
        self.checked = False
        self.wait_ready = wait_ready
        self.env = dict(os.environ, **env) if env else None
        # A command the daemon runs under (nice, setpriv...).
        self.wrapper = list(wrapper or [])
        self.wrap = []      # set by a test after construction (unshare...)

    def start(self):
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            self.wrapper + self.wrap + VALGRIND + [
                DAEMON, "-d", "-c", self.conf, "-s", self.socket,
                "-P", PLUGIN_DIR],
            stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + 10 * SLOWDOWN
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("consumersd exited at start:\n" +
                                     self.log_text())
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                try:
                    s.connect(self.socket)
                except OSError:
                    time.sleep(0.02)
                    continue
            # It listens at once but accepts once the pools' first
            # workers are up: tests count workers from there.
            while (self.wait_ready and "ready: accepting clients" not in
                   self.log_text()):
                if self.proc.poll() is not None:
                    raise AssertionError("consumersd exited at start:\n" +
                                         self.log_text())
                if time.monotonic() > deadline:
                    raise AssertionError("consumersd did not get ready "
                                         "within %d s:\n%s" %
                                         (10 * SLOWDOWN, self.log_text()))
                time.sleep(0.02)
            if RSS_AS_GROWTH:
                self.rss_base_kib = self._vmhwm_kib()
            return self
        raise AssertionError("consumersd did not listen within %d s" %
                             (10 * SLOWDOWN))

    def log_text(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def pid(self):
        return self.proc.pid

    def _vmhwm_kib(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        raise AssertionError("no VmHWM in /proc")

    def rss_peak_kib(self):
        """The master's peak resident set size (VmHWM), in KiB; under
        valgrind, its growth since the daemon was ready (RSS_AS_GROWTH)."""
        return self._vmhwm_kib() - self.rss_base_kib

    def worker_pids(self):
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)],
                             capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def stop(self):
        """SIGTERM; the daemon must exit 0 with its workers gone.  Then
        what the sanitizers or valgrind reported in the daemon's log, in
        the master or in any worker, fails the test."""
        if self.proc is None:
            return None
        if self.proc.poll() is not None:
            self.check_tool_reports()
            return self.proc.returncode
        workers = self.worker_pids()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=15 * SLOWDOWN)
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
        self.check_tool_reports()
        return rc

    def check_tool_reports(self):
        """Fail on a sanitizer or valgrind report in the daemon's log (its
        workers write there too), once."""
        if self.checked or self.proc is None or not (SANITIZERS or
                                                     VALGRIND):
            return
        self.checked = True
        found = tool_reports(self.log_text())
        if found or self.proc.returncode == TOOL_EXIT:
            raise AssertionError(
                "%s reported errors in consumersd (exit status %s); "
                "log %s:\n%s" % ("valgrind" if VALGRIND else "a sanitizer",
                                 self.proc.returncode, self.log_path,
                                 found or self.log_text()[-4000:]))

    def __enter__(self):
        return self.start()

    def __exit__(self, exc_type, exc, tb):
        try:
            rc = self.stop()
        finally:
            if self.log is not None:
                self.log.close()
        if exc_type is None and rc != 0:
            raise AssertionError("consumersd exited with %s:\n%s" %
                                 (rc, self.log_text()))
        if exc_type is not None:
            # The test failed: keep the directory and its daemon.log.
            if os.environ.get("VERBOSE"):
                print(self.log_text())
            return False
        shutil.rmtree(self.dir, ignore_errors=True)
        return False

    # -- clients --

    def cli(self, *args, input=b"", timeout=120):
        """Run the consumers CLI; returns (exit status, final, stderr)."""
        p = subprocess.run(VALGRIND + [CLI, "-s", self.socket] +
                           list(args), input=input, capture_output=True,
                           timeout=timeout * SLOWDOWN)
        out = p.stdout.decode()
        err = p.stderr.decode(errors="replace")
        if SANITIZERS or VALGRIND:
            found = tool_reports(err)
            if found or p.returncode == TOOL_EXIT:
                raise AssertionError(
                    "%s reported errors in the CLI (consumers %s; exit "
                    "status %d):\n%s" % ("valgrind" if VALGRIND else
                                         "a sanitizer", " ".join(args),
                                         p.returncode, found or err))
            # What the tests see is the CLI's own stderr.
            err = re.sub(r"^==\d+==.*\n?", "", err, flags=re.M)
        final = json.loads(out) if out.strip() else None
        return p.returncode, final, err

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


def read_reply(s, timeout=10):
    """The next reply line from socket s, read a byte at a time so that
    nothing after it is taken from the socket (the lease line, say, before
    the test goes on with the stream).  The socket's own timeout is left as
    it was."""
    before = s.gettimeout()
    s.settimeout(timeout * SLOWDOWN)
    buf = b""
    try:
        while not buf.endswith(b"\n"):
            chunk = s.recv(1)
            if not chunk:
                raise AssertionError("connection closed after %r" % buf)
            buf += chunk
    finally:
        s.settimeout(before)
    return json.loads(buf)


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


def wait_for(pred, timeout=10, what="condition"):
    """Poll pred() until it is true and return its value; fail after
    timeout seconds (longer under the tools)."""
    deadline = time.monotonic() + timeout * SLOWDOWN
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.01)


def ask(d, header):
    """Send one header to daemon d; return the one reply line."""
    s = d.connect()
    s.settimeout(10 * SLOWDOWN)
    s.sendall((json.dumps(header) + "\n").encode())
    s.shutdown(socket.SHUT_WR)
    replies = read_lines(s)
    s.close()
    assert len(replies) == 1, replies
    return replies[0]


def assert_invariant(tc, final):
    """Every item is consumed, rejected, quarantined, or reported lost."""
    tc.assertEqual(final["items"], final["consumed"] + final["rejected"] +
                   final["quarantined"] + final["unconsumed"], final)


def main():
    unittest.main(verbosity=2)
