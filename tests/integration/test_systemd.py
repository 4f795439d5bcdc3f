"""consumersd under systemd, without systemd as PID 1: the generated units
pass systemd-analyze verify (it runs offline), the daemon serves a socket
passed by systemd-socket-activate, and a datagram socket given as
NOTIFY_SOCKET receives READY=1, STATUS=, WATCHDOG=1, RELOADING=1 and
STOPPING=1 from the master, and from nobody else."""
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa
from harness import Daemon, lines, assert_invariant, main, wait_for  # noqa

UNIT_DIR = os.path.join(harness.TOP_BUILDDIR, "systemd")
UNITS = ("consumersd.service", "consumersd.socket")

STATUS = re.compile(
    r"^STATUS=(\w+): streams (\d+) open \((\d+) queued\), workers (\d+) "
    r"busy, (\d+) idle, (\d+) total, (\d+) items/s")


def _built_with_systemd():
    """make check says (CNS_SYSTEMD: configure found libsystemd); run by
    hand, look for sd_notify in the daemon."""
    flag = os.environ.get("CNS_SYSTEMD")
    if flag is not None:
        return flag == "1"
    with open(harness.DAEMON, "rb") as f:
        return b"sd_notify" in f.read()


# A daemon built --without-systemd neither notifies nor takes a socket from
# systemd: those tests are skipped, saying so.  The units are still checked.
NEEDS_LIBSYSTEMD = unittest.skipUnless(
    _built_with_systemd(), "SKIPPED LOUDLY: consumersd was built "
    "--without-systemd (no sd_notify, no socket activation)")


def tool(name):
    """A systemd tool, or a failure saying how to get it: these tests are
    not skipped."""
    path = shutil.which(name)
    if path is None:
        raise AssertionError("%s is missing: install the Debian package "
                             "\"systemd\" (./quickstart does)" % name)
    return path


class Units(unittest.TestCase):
    """The units make install puts in the systemd unit directory."""

    def read_unit(self, name):
        path = os.path.join(UNIT_DIR, name)
        self.assertTrue(os.path.exists(path), "%s was not generated (make "
                        "check builds it from systemd/%s.in)" % (path, name))
        with open(path) as f:
            return f.read()

    def verify(self, directory):
        """systemd-analyze verify on the two units in directory: needs no
        running systemd (--man=no: the man pages may not be installed)."""
        p = subprocess.run(
            [tool("systemd-analyze"), "verify", "--man=no"] +
            [os.path.join(directory, u) for u in UNITS],
            capture_output=True, text=True, timeout=60)
        return p.returncode, (p.stdout + p.stderr).strip()

    def test_generated_with_configured_paths(self):
        service = self.read_unit("consumersd.service")
        sock = self.read_unit("consumersd.socket")
        for text in (service, sock):
            self.assertIsNone(re.search(r"@[a-z_]+@", text), text)
        m = re.search(r"^ExecStart=(\S+)$", service, re.M)
        self.assertIsNotNone(m, service)
        self.assertTrue(m.group(1).startswith("/") and
                        m.group(1).endswith("/sbin/consumersd"), m.group(1))
        for line in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID",
                     "WatchdogSec=30", "RuntimeDirectory=consumersd",
                     "KillMode=mixed", "Restart=on-failure",
                     "Sockets=consumersd.socket", "Also=consumersd.socket",
                     "ProtectSystem=strict", "NoNewPrivileges=yes",
                     "RestrictAddressFamilies=AF_UNIX"):
            self.assertIn("\n" + line + "\n", service)
        # Above shutdown_timeout's default of 30 s.
        stop = int(re.search(r"^TimeoutStopSec=(\d+)$", service,
                             re.M).group(1))
        self.assertGreater(stop, 30)
        # The socket the daemon, the CLI and the Python module default to
        # in this build, whatever its prefix.
        with open(os.path.join(harness.TOP_BUILDDIR, "client", "python",
                               "consumers_client.py")) as f:
            default = re.search(r'^DEFAULT_SOCKET = "(.*)"$', f.read(),
                                re.M).group(1)
        self.assertIn("\nListenStream=%s\n" % default, sock)
        self.assertIn("\nReadWritePaths=-%s\n" % os.path.dirname(default),
                      service)
        self.assertIn("\nSocketMode=0660\n", sock)

    def test_systemd_analyze_verify(self):
        # verify checks that ExecStart= names an executable file; the
        # installed path does not exist before make install, so the copy
        # verified here runs the daemon of this build instead.  Nothing
        # else is changed.
        tmp = tempfile.mkdtemp(prefix="cnsd-units-")
        try:
            for u in UNITS:
                text = self.read_unit(u)
                if u.endswith(".service"):
                    text = re.sub(r"^ExecStart=\S+", "ExecStart=" +
                                  os.path.abspath(harness.DAEMON), text,
                                  flags=re.M)
                with open(os.path.join(tmp, u), "w") as f:
                    f.write(text)
            rc, out = self.verify(tmp)
            self.assertEqual((rc, out), (0, ""), "systemd-analyze verify "
                             "on the generated units:\n" + out)

            # And it does look at them here: a misspelt key is reported.
            with open(os.path.join(tmp, "consumersd.service"), "a") as f:
                f.write("WatchdogSecs=30\n")
            rc, out = self.verify(tmp)
            self.assertIn("WatchdogSecs", out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


class Activated(Daemon):
    """A Daemon started by systemd-socket-activate, which binds the socket,
    waits for the first connection, then execs the daemon with the socket
    as fd 3 (LISTEN_FDS=1, LISTEN_PID its own pid, which the exec keeps).
    The configured socket is another path, that must stay unused."""

    def __init__(self, pools, configured_dir=None, env=None):
        super().__init__(pools)
        # systemd-socket-activate passes on only what -E names.
        self.setenv = ["-E%s=%s" % kv for kv in (env or {}).items()]
        self.unused_socket = os.path.join(configured_dir or self.dir,
                                          "configured.sock")
        conf = {"socket": self.unused_socket}
        if os.geteuid() == 0:
            conf["root_workers"] = True     # as Daemon does
        with open(self.conf, "w") as f:
            json.dump(conf, f)
        self.socket = os.path.join(self.dir, "activated.sock")

    def start(self):
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [tool("systemd-socket-activate"), "-l", self.socket] +
            self.setenv +
            harness.VALGRIND + [harness.DAEMON, "-d", "-c", self.conf,
                                "-P", harness.PLUGIN_DIR],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("systemd-socket-activate did not "
                                     "listen on %s:\n%s" %
                                     (self.socket, self.log_text()))
            time.sleep(0.02)
        return self


@NEEDS_LIBSYSTEMD
class SocketActivation(unittest.TestCase):

    CONCAT = {"concat": {"plugin": "concat", "workers": 1, "args": ["-"]}}

    def test_spool_beside_the_activated_socket(self):
        # The configured socket's directory does not exist (as with a
        # default-prefix install started by systemd): the replay spool
        # defaults to the activated socket's directory instead.
        with tempfile.TemporaryDirectory() as tmp:
            with Activated(self.CONCAT, os.path.join(tmp, "missing")) as d:
                rc, final, err = d.cli("submit", "concat",
                                       input=lines(list("abc")))
                self.assertEqual(rc, 0, err + d.log_text())
                self.assertEqual(final["consumed"], 3, final)
                self.assertEqual(d.stop(), 0, d.log_text())

    def test_spool_in_the_runtime_directory(self):
        # systemd's RuntimeDirectory= (RUNTIME_DIRECTORY) comes first: a
        # missing one is what the daemon reports, not the socket's.
        rt = os.path.join(tempfile.gettempdir(), "cnsd-no-such-runtime-dir")
        self.assertFalse(os.path.exists(rt))
        d = Activated(self.CONCAT, env={"RUNTIME_DIRECTORY": rt + ":/x"})
        try:
            d.start()
            # The first connection starts the daemon, which gives up.
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(d.socket)
            wait_for(lambda: "cannot create replay spool files in %s:" %
                     rt in d.log_text(), 30)
            wait_for(lambda: d.proc.poll() is not None, 30)
        finally:
            if d.proc.poll() is None:
                d.proc.kill()
            d.proc.wait()
            d.log.close()
            shutil.rmtree(d.dir, ignore_errors=True)

    def test_submit_through_activated_socket(self):
        with Activated({"concat": {"plugin": "concat", "workers": 2,
                                   "args": ["-"]}}) as d:
            # The first connection starts the daemon; it waits in the
            # backlog until the daemon accepts.
            rc, final, err = d.cli("submit", "concat",
                                   input=lines(list("abcdef")))
            self.assertEqual(rc, 0, err)
            self.assertTrue(final["ok"], final)
            self.assertEqual(final["consumed"], 6)
            assert_invariant(self, final)
            letters = "".join(r.replace("-", "") for r in final["results"])
            self.assertEqual(sorted(letters), list("abcdef"))
            # A second client, on the same daemon.
            rc, final, err = d.cli("submit", "-w", "1", "concat",
                                   input=b'"x"\n"y"\n')
            self.assertEqual((rc, final["results"]), (0, ["x-y"]), err)
            self.assertIn("listening on the socket from systemd",
                          d.log_text())
            self.assertFalse(os.path.exists(d.unused_socket),
                             "the daemon bound its configured socket too")
            self.assertEqual(d.stop(), 0, d.log_text())
            # systemd owns the socket file: the daemon leaves it in place.
            self.assertTrue(os.path.exists(d.socket),
                            "the daemon removed the socket systemd passed")


class Notifications:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET.  Every
    message is kept with the time it came and the sender's pid."""

    def __init__(self, directory):
        self.path = os.path.join(directory, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.got = []		# (monotonic time, sender pid, message)

    def close(self):
        self.sock.close()

    def poll(self, timeout):
        """Read what arrives within timeout seconds."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.sock.settimeout(left)
            try:
                data, anc, _, _ = self.sock.recvmsg(
                    4096, socket.CMSG_SPACE(struct.calcsize("3i")))
            except socket.timeout:
                return
            pid = None
            for level, kind, cdata in anc:
                if (level, kind) == (socket.SOL_SOCKET,
                                     socket.SCM_CREDENTIALS):
                    pid = struct.unpack("3i", cdata[:12])[0]
            self.got.append((time.monotonic(), pid, data.decode()))

    def wait_for(self, line, timeout, after=0):
        """The time of the first message at or after index after that has
        line among its lines, reading more until timeout."""
        deadline = time.monotonic() + timeout
        while True:
            for i, (t, _, msg) in enumerate(self.got):
                if i >= after and line in msg.split("\n"):
                    return i
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no %s within %.1f s; got:\n%s" %
                                     (line, timeout, self.dump()))
            self.poll(min(left, 0.1))

    def statuses(self, after=0):
        out = []
        for _, _, msg in self.got[after:]:
            for l in msg.split("\n"):
                m = STATUS.match(l)
                if m:
                    out.append((m.group(1),) + tuple(int(x) for x in
                                                     m.groups()[1:]))
                elif l.startswith("STATUS="):
                    out.append((l,))
        return out

    def dump(self):
        return "\n".join("%.3f pid %s: %r" % m for m in self.got)


@NEEDS_LIBSYSTEMD
class Notify(unittest.TestCase):

    def notified(self, pools, env=None):
        """A Daemon whose NOTIFY_SOCKET is a Notifications socket in its
        directory, and that socket."""
        d = Daemon(pools)
        n = Notifications(d.dir)
        self.addCleanup(n.close)
        d.env = dict(os.environ, NOTIFY_SOCKET=n.path, **(env or {}))
        return d, n

    def test_ready_status_watchdog_stopping(self):
        d, n = self.notified({"echo": {"plugin": harness.test_plugin("echo"),
                                       "workers": 3}},
                             env={"WATCHDOG_USEC": "200000"})
        with d:
            ready = n.wait_for("READY=1", 10 * harness.SLOWDOWN)
            # The first STATUS= line comes with READY=1: every worker is
            # up and idle, nothing is open.
            n.poll(0.05)
            st = n.statuses()
            self.assertIn(("running", 0, 0, 0, 3, 3, 0), st, n.dump())

            # WATCHDOG=1 every WATCHDOG_USEC/2 = 100 ms: at least 3 in a
            # second, whatever the machine's load (no exact timing).
            start = time.monotonic()
            n.poll(1.0)
            dogs = [t for t, _, m in n.got if "WATCHDOG=1" in m.split("\n")
                    and t >= start]
            self.assertGreaterEqual(len(dogs), 3, n.dump())
            self.assertLessEqual(len(dogs), 15, n.dump())
            stop_from = len(n.got)
            # READY=1 once, and nothing says "running" before it: the
            # first STATUS= line from READY=1 on is the one with every
            # worker up and idle.
            readies = [i for i, (_, _, m) in enumerate(n.got)
                       if "READY=1" in m.split("\n")]
            self.assertEqual(readies, [ready], n.dump())
            every, since = n.statuses(), n.statuses(ready)
            early = every[:len(every) - len(since)]
            self.assertNotIn("running", [x[0] for x in early], n.dump())
            self.assertEqual(n.statuses(ready)[0],
                             ("running", 0, 0, 0, 3, 3, 0), n.dump())
        # Harness stop: SIGTERM, the daemon exits 0.
        n.poll(0.2)
        i = n.wait_for("STOPPING=1", 1, after=stop_from)
        self.assertEqual(n.statuses(i)[0][0], "stopping", n.dump())
        # Only the master speaks to systemd (NotifyAccess=main).
        self.assertEqual({pid for _, pid, _ in n.got}, {d.pid()}, n.dump())

    def test_periodic_status_while_a_stream_is_open(self):
        # One STATUS= line every 5 s: wait for the first after READY=1
        # with a stream open on 2 of the 3 workers.
        d, n = self.notified({"slow": {"plugin": harness.test_plugin("slow"),
                                       "workers": 3, "stream_workers": 2,
                                       "kwargs": {"usec": 1000}}})
        with d:
            ready = n.wait_for("READY=1", 10 * harness.SLOWDOWN)
            s = d.connect()
            s.settimeout(30 * harness.SLOWDOWN)
            s.sendall(b'{"op":"submit","pool":"slow"}\n')
            s.sendall(lines(range(200)))
            n.poll(0.1)
            first = len(n.got)
            while not any(st[0] == "running" for st in n.statuses(first)):
                n.poll(0.5)
                self.assertLess(len(n.got) - first, 200, n.dump())
                if time.monotonic() - n.got[ready][0] > 8 * harness.SLOWDOWN:
                    self.fail("no periodic STATUS= line:\n" + n.dump())
            st = [x for x in n.statuses(first) if x[0] == "running"][0]
            _, opened, queued, busy, idle, total, rate = st
            self.assertEqual((opened, queued, busy, idle, total),
                             (1, 0, 2, 1, 3), n.dump())
            s.shutdown(socket.SHUT_WR)
            final = harness.final_of(harness.read_lines(s))
            s.close()
            self.assertEqual(final["consumed"], 200, final)
            with self.subTest("items/s: needs cns_items_in counted in "
                              "stream.c (stream_send_batch)"):
                self.assertGreater(rate, 0, n.dump())

    def test_watchdog_for_another_pid_is_not_ours(self):
        # WATCHDOG_PID names the process the watchdog is meant for: a
        # daemon started by a wrapper that set it for itself must not ping.
        d, n = self.notified({"echo": {"plugin": harness.test_plugin("echo"),
                                       "workers": 1}},
                             env={"WATCHDOG_USEC": "200000",
                                  "WATCHDOG_PID": "1"})
        with d:
            n.wait_for("READY=1", 10 * harness.SLOWDOWN)
            n.poll(0.5)
            self.assertFalse([m for _, _, m in n.got if "WATCHDOG=1" in m],
                             n.dump())

    def test_reload_sends_reloading_then_ready(self):
        """SIGHUP (src/reload.c) sends RELOADING=1 before it reads the
        configuration again and READY=1 after, valid or not."""
        d, n = self.notified({"echo": {"plugin": harness.test_plugin("echo"),
                                       "workers": 1}})
        with d:
            n.wait_for("READY=1", 10 * harness.SLOWDOWN)
            before = len(n.got)
            os.kill(d.pid(), signal.SIGHUP)
            i = n.wait_for("RELOADING=1", 5 * harness.SLOWDOWN, after=before)
            self.assertTrue(any(l.startswith("MONOTONIC_USEC=")
                                for l in n.got[i][2].split("\n")), n.dump())
            n.wait_for("READY=1", 10 * harness.SLOWDOWN, after=i + 1)
            # The daemon still serves after the reload.
            rc, final, err = d.cli("submit", "echo", input=b"1\n2\n")
            self.assertEqual(rc, 0, err)
            self.assertEqual(final["consumed"], 2)


if __name__ == "__main__":
    main()
