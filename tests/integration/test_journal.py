"""Logs under the journal, without a real journald.  When stderr is the
journal ($JOURNAL_STREAM names its device and inode) the daemon sends each
entry through the journal's API with structured fields (POOL, STREAM,
WORKER_PID, CLIENT_UID), and a worker's multi-line message (a Python
traceback from an exec consumer) is one entry, logged once.  The API
writes to /run/systemd/journal/socket, so the daemon runs in a private
mount namespace (unshare -m, as root) where a directory of the test's is
bound over /run/systemd, holding a datagram socket the test reads and
parses (the journal's native protocol).  Where unshare is not permitted
the test is skipped, saying so.

Outside the journal ($JOURNAL_STREAM set but naming another stream, as a
shell's redirection leaves it) every line starts with its timestamp."""
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa
from harness import Daemon, main  # noqa

PY = sys.executable
JOURNAL_DIR = "/run/systemd/journal"

CONSUMER = """\
import sys
sys.stdin.read()
print("consumer starting", file=sys.stderr, flush=True)


def deep():
    raise ValueError("boom from the consumer")


deep()
"""


def _built_with_systemd():
    flag = os.environ.get("CNS_SYSTEMD")
    if flag is not None:
        return flag == "1"
    with open(harness.DAEMON, "rb") as f:
        return b"sd_journal_sendv" in f.read()


def _unshare_problem():
    """Why the daemon cannot run in its own mount namespace, or None."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is missing"
    p = subprocess.run(["unshare", "-m", "true"], capture_output=True,
                       text=True)
    if p.returncode != 0:
        return "unshare -m is not permitted here (%s)" % p.stderr.strip()
    return None


def parse_entry(data):
    """One datagram of the journal's native protocol: KEY=value lines, or
    KEY, a newline, a little-endian 64-bit size, the value, a newline."""
    fields, i = {}, 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            k, v = line.split(b"=", 1)
            i = nl + 1
        else:
            k = line
            (n,) = struct.unpack("<Q", data[nl + 1:nl + 9])
            v = data[nl + 9:nl + 9 + n]
            if data[nl + 9 + n:nl + 10 + n] != b"\n":
                raise AssertionError("bad binary field %r in %r" % (k, data))
            i = nl + 10 + n
        fields[k.decode()] = v.decode(errors="replace")
    return fields


class FakeJournal:
    """A datagram socket seen at /run/systemd/journal/socket by a daemon
    run under self.wrap()."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="cnsd-journal-")
        # Bind over the deepest directory that exists on the way to
        # /run/systemd/journal; the rest of the way is made here.
        target, rest = JOURNAL_DIR, ""
        while not os.path.isdir(target):
            target, base = os.path.split(target)
            rest = os.path.join(base, rest) if rest else base
        self.target = target
        sockdir = os.path.join(self.dir, rest) if rest else self.dir
        os.makedirs(sockdir, exist_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(os.path.join(sockdir, "socket"))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        self.entries = []

    def wrap(self):
        # In the namespace: the bind mount, then JOURNAL_STREAM naming the
        # daemon's stderr as systemd does ("DEV:INODE"), then the daemon
        # itself, same pid (unshare and sh exec it).
        script = ('mount --bind "$1" "$2" && shift 2 && '
                  'JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) && '
                  'export JOURNAL_STREAM && exec "$@"')
        return ["unshare", "-m", "--propagation", "private", "sh", "-c",
                script, "sh", self.dir, self.target]

    def wait_for(self, pred, what, timeout=30):
        """Read entries until one satisfies pred; return it."""
        deadline = time.monotonic() + timeout * harness.SLOWDOWN
        for e in self.entries:
            if pred(e):
                return e
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(1 << 20)
            except socket.timeout:
                break
            e = parse_entry(data)
            self.entries.append(e)
            if pred(e):
                return e
        raise AssertionError("no journal entry %s within %d s; entries:\n%s"
                             % (what, timeout, "\n".join(
                                 json.dumps(e) for e in self.entries)))

    def drain(self):
        self.sock.setblocking(False)
        try:
            while True:
                self.entries.append(parse_entry(self.sock.recv(1 << 20)))
        except BlockingIOError:
            pass
        self.sock.setblocking(True)

    def close(self):
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def message(e):
    return e.get("MESSAGE", "")


@unittest.skipUnless(_built_with_systemd(), "SKIPPED LOUDLY: consumersd "
                     "was built --without-systemd: no journal API")
class Journal(unittest.TestCase):

    def setUp(self):
        why = _unshare_problem()
        if why is not None:
            self.skipTest("SKIPPED LOUDLY: %s; the journal test runs the "
                          "daemon in its own mount namespace (as root)" %
                          why)
        self.journal = FakeJournal()
        self.addCleanup(self.journal.close)

    def test_fields_and_one_entry_per_traceback(self):
        j = self.journal
        d = Daemon({}, wait_ready=False)
        prog = os.path.join(d.dir, "consumer.py")
        with open(prog, "w") as f:
            f.write(CONSUMER)
        with open(os.path.join(d.dir, "pools.d", "py.json"), "w") as f:
            json.dump({"plugin": "exec", "workers": 1, "args": [PY, prog]},
                      f)
        d.wrap = j.wrap()
        with d:
            j.wait_for(lambda e: "ready: accepting clients" in message(e),
                       "saying it is ready")
            rc, final, err = d.cli("submit", "py", input=b"1\n2\n")
            self.assertNotEqual(rc, 0, final)
            access = j.wait_for(
                lambda e: message(e).startswith("access:"), "access line")
            # The worker's output (the exec plugin passes its program's
            # stderr on) is tagged "pool py worker 1 (pid N): ".
            tb = j.wait_for(lambda e: tapped(e) and "Traceback" in
                            message(e), "with the worker's traceback")
            j.wait_for(lambda e: tapped(e) and "consumer starting" in
                       message(e), "with the consumer's first line")
            j.drain()
            stderr_text = d.log_text()

        # The access line: which pool, which stream, whose.
        self.assertEqual(access.get("POOL"), "py", access)
        self.assertRegex(access.get("STREAM", ""), r"^[1-9]\d*$", access)
        self.assertEqual(access.get("CLIENT_UID"), str(os.getuid()), access)
        self.assertEqual(access.get("PRIORITY"), "6", access)
        self.assertEqual(access.get("SYSLOG_IDENTIFIER"), "consumersd",
                         access)

        # The traceback: one entry, its first line to its last, from the
        # worker it names, in the pool.
        msg = message(tb)
        pid = int(tb.get("WORKER_PID", "0"))
        self.assertGreater(pid, 0, tb)
        self.assertNotEqual(pid, d.pid(), tb)
        self.assertEqual(tb.get("POOL"), "py", tb)
        self.assertTrue(msg.startswith("pool py worker 1 (pid %d): "
                                       "Traceback (most recent call "
                                       "last):\n" % pid), msg)
        self.assertIn('\n  File "%s"' % prog, msg)
        self.assertIn("\n    raise ValueError", msg)
        self.assertTrue(msg.endswith("\nValueError: boom from the "
                                     "consumer"), msg)

        # Once: no other line of the worker's has any of its lines; the
        # line before it is an entry of its own.
        for e in j.entries:
            if tapped(e) and e is not tb:
                self.assertNotIn("ValueError", message(e), e)
                self.assertNotIn("File ", message(e), e)
                self.assertNotIn("Traceback", message(e), e)
        first = [e for e in j.entries if tapped(e) and
                 "consumer starting" in message(e)]
        self.assertEqual(len(first), 1, first)
        self.assertNotIn("\n", message(first[0]))
        self.assertEqual(first[0].get("WORKER_PID"), str(pid), first[0])
        # Nothing went to stderr instead.
        self.assertNotIn("Traceback", stderr_text)

        # The stream's failure (quoting the program's last words) is one
        # entry too, and carries all four fields.
        failed = [e for e in j.entries if "exited with status 1" in
                  message(e) and not tapped(e)]
        self.assertEqual(len(failed), 1, failed)
        f = failed[0]
        self.assertIn("\nValueError: boom from the consumer", message(f))
        self.assertEqual((f.get("POOL"), f.get("STREAM"),
                          f.get("WORKER_PID"), f.get("CLIENT_UID"),
                          f.get("PRIORITY")),
                         ("py", access["STREAM"], str(pid),
                          str(os.getuid()), "4"), f)


def tapped(e):
    return message(e).startswith("pool py worker ")


ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d ")


class NotTheJournal(unittest.TestCase):

    def test_inherited_journal_stream_names_another_stream(self):
        # $JOURNAL_STREAM is inherited; stderr redirected elsewhere is not
        # the journal, and its lines start with their timestamps.
        d = Daemon({"sum": {"plugin": "sum", "workers": 1}},
                   env={"JOURNAL_STREAM": "1:1"})
        with d:
            rc, final, err = d.cli("submit", "sum", input=b"1\n2\n")
            self.assertEqual(rc, 0, err)
            text = d.log_text()
        self.assertIn("access: ", text)
        for ln in text.splitlines():
            self.assertRegex(ln, ISO)

    def test_every_line_of_a_traceback_has_its_timestamp(self):
        # The traceback comes twice: the worker's output, line by line,
        # and the stream's error quoting the program's last words.
        d = Daemon({})
        prog = os.path.join(d.dir, "consumer.py")
        with open(prog, "w") as f:
            f.write(CONSUMER)
        with open(os.path.join(d.dir, "pools.d", "py.json"), "w") as f:
            json.dump({"plugin": "exec", "workers": 1, "args": [PY, prog]},
                      f)
        env = dict(os.environ)
        env.pop("JOURNAL_STREAM", None)
        d.env = env
        with d:
            rc, final, err = d.cli("submit", "py", input=b"1\n")
            self.assertNotEqual(rc, 0, final)
            harness.wait_for(lambda: "access: " in d.log_text(), 10,
                             "the access line")
            text = d.log_text()
        quoted = [ln for ln in text.splitlines()
                  if "ValueError: boom" in ln]
        self.assertEqual(len(quoted), 2, text)
        for ln in text.splitlines():
            self.assertRegex(ln, ISO)


if __name__ == "__main__":
    main()
