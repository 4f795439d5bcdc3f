"""Limits on what one client may hold: the header deadline (header_timeout),
the idle limit of a stream's client (idle_timeout), the connections of one
uid (max_connections_per_uid, counted per uid: another uid is served while
one is at its limit), and running out of file descriptors.

The timeouts are behaviour, so they are tested, with generous margins;
nothing here measures speed."""
import json
import os
import pwd
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (wait_for, Daemon, lines, assert_invariant, test_plugin,  # noqa
                     read_lines, read_reply, final_of, rejections, main)

SUM = {"sum": {"plugin": "sum"}}
HEADER = b'{"op":"submit","pool":"sum"}\n'
AS_ROOT = os.geteuid() == 0

# Run as another uid (through setpriv): connect argv[2] times to the
# socket argv[1], all held open at once, each submitting one item
# "otherI" to the echo pool; then close them in turn.  One JSON line per
# connection: its first reply (lease or refusal) and its final line.
AS_OTHER_UID = r"""
import json, socket, sys
def reply(s):
    buf = b""
    while not buf.endswith(b"\n"):
        c = s.recv(1)
        if not c:
            return None
        buf += c
    return json.loads(buf)
conns = []
for i in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(30)
    s.connect(sys.argv[1])
    s.sendall(b'{"op":"submit","pool":"echo"}\n"other%d"\n' % i)
    conns.append((s, reply(s)))
for s, lease in conns:
    final = None
    if lease.get("ok"):
        s.shutdown(socket.SHUT_WR)
        final = reply(s)
        while final is not None and "items" not in final:
            final = reply(s)
    s.close()
    print(json.dumps({"lease": lease, "final": final}))
"""


def read_all(s, timeout=15):
    """Every reply line up to the daemon's end of file."""
    s.settimeout(timeout)
    return read_lines(s)


def cpu_seconds(pid):
    """utime + stime of a process, in seconds (/proc/PID/stat)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])   # fields 14 and 15
    return ticks / os.sysconf("SC_CLK_TCK")




class HeaderTimeout(unittest.TestCase):

    def test_trickling_header_is_refused_at_the_deadline(self):
        # A byte every 0.3 s keeps a connection busy forever under an
        # inactivity timeout; header_timeout is a deadline from accept.
        with Daemon(SUM, {"header_timeout": 1}) as d:
            s = d.connect()
            stop = threading.Event()

            def trickle():
                for b in HEADER:
                    if stop.wait(0.3):
                        return
                    try:
                        s.send(bytes([b]))
                    except OSError:
                        return
            t = threading.Thread(target=trickle)
            t0 = time.monotonic()
            t.start()
            try:
                replies = read_all(s)
            finally:
                stop.set()
                t.join()
                s.close()
            elapsed = time.monotonic() - t0
            self.assertEqual(replies, [{
                "ok": False,
                "error": "no complete header line within 1 s "
                         "(header_timeout)",
                "code": "header_timeout"}])
            # The whole header would take 0.3 s * 29 bytes, about 9 s.
            self.assertGreater(elapsed, 0.8)
            self.assertLess(elapsed, 5)
            self.assertRegex(d.log_text(),
                             r"client \(pid %d, uid %d\) refused: no complete "
                             r"header line within 1 s" %
                             (os.getpid(), os.getuid()))
            # The daemon goes on.
            rc, final, err = d.cli("submit", "sum", input=b"1\n2\n")
            self.assertEqual((rc, final["completion"]), (0, 3), err)

    def test_slow_header_within_the_deadline(self):
        with Daemon(SUM, {"header_timeout": 3}) as d:
            s = d.connect()
            for part in (HEADER[:5], HEADER[5:17], HEADER[17:]):
                s.sendall(part)
                time.sleep(0.3)
            s.sendall(b"5\n")
            s.shutdown(socket.SHUT_WR)
            final = final_of(read_all(s))
            s.close()
            self.assertEqual(final["completion"], 5)

    def test_zero_disables_the_deadline(self):
        with Daemon(SUM, {"header_timeout": 0, "idle_timeout": 0}) as d:
            s = d.connect()
            time.sleep(1.5)
            s.sendall(HEADER + b"4\n")
            self.assertTrue(read_reply(s)["ok"])
            time.sleep(1.5)
            s.sendall(b"6\n")
            s.shutdown(socket.SHUT_WR)
            final = final_of(read_all(s))
            s.close()
            self.assertEqual(final["completion"], 10)


class IdleTimeout(unittest.TestCase):

    def test_silent_client_ends_its_stream(self):
        pools = {"collect": {"plugin": "collect"}}
        with Daemon(pools, {"idle_timeout": 1}) as d:
            s = d.connect()
            s.sendall(b'{"op":"submit","pool":"collect"}\n1\n2\n')
            lease = read_reply(s)
            self.assertTrue(lease["ok"])
            t0 = time.monotonic()
            replies = read_all(s)       # the socket stays open for writing
            elapsed = time.monotonic() - t0
            final = final_of(replies)
            self.assertFalse(final["ok"], final)
            self.assertEqual(final["items"], 2)
            self.assertEqual(final["consumed"], 2)
            self.assertEqual(final["results"], [[1, 2]])
            self.assertEqual(final["errors"], [{
                "stage": "stream", "error": "idle for 1 s without a "
                "complete item line (idle_timeout)"}])
            assert_invariant(self, final)
            self.assertGreater(elapsed, 0.8)
            self.assertLess(elapsed, 8)
            self.assertIn(
                "stream %d: client (pid %d, uid %d) sent no complete item "
                "line for 1 s (idle_timeout); closing the stream" %
                (lease["stream"], os.getpid(), os.getuid()), d.log_text())
            # After the final line the daemon closes its side; what the
            # client still writes is discarded, not an error for it.
            try:
                s.sendall(b"3\n")
            except OSError:
                pass
            s.close()

    def test_silent_client_with_a_partial_line(self):
        # As if the client had closed: its unterminated last line is
        # rejected as truncated, and reported.
        pools = {"collect": {"plugin": "collect"}}
        with Daemon(pools, {"idle_timeout": 1}) as d:
            s = d.connect()
            s.sendall(b'{"op":"submit","pool":"collect"}\n1\n2\n"thr')
            replies = read_all(s)
            s.close()
            final = final_of(replies)
            self.assertEqual(rejections(replies), {
                3: "truncated: the last line has no newline before the end "
                   "of the stream"})
            self.assertEqual((final["items"], final["consumed"],
                              final["rejected"]), (3, 2, 1))
            self.assertEqual(final["results"], [[1, 2]])
            assert_invariant(self, final)

    def test_input_keeps_a_client_alive(self):
        pools = {"collect": {"plugin": "collect"}}
        with Daemon(pools, {"idle_timeout": 1}) as d:
            s = d.connect()
            s.sendall(b'{"op":"submit","pool":"collect"}\n')
            self.assertTrue(read_reply(s)["ok"])
            for i in range(8):          # 2.4 s in all, 0.3 s apart
                s.sendall(b"%d\n" % i)
                time.sleep(0.3)
            s.shutdown(socket.SHUT_WR)
            final = final_of(read_all(s))
            s.close()
            self.assertEqual(final["results"], [list(range(8))])
            self.assertNotIn("idle_timeout", d.log_text())

    def test_queued_stream_is_not_idle(self):
        # B waits 2.5 s for the only worker: waiting is not idleness.
        pools = {"echo": {"plugin": test_plugin("echo"), "workers": 1,
                          "queue_timeout": 30}}
        with Daemon(pools, {"idle_timeout": 1}) as d:
            a = d.connect()
            a.sendall(b'{"op":"submit","pool":"echo"}\n"a0"\n')
            self.assertTrue(read_reply(a)["ok"])
            b = d.connect()
            b.sendall(b'{"op":"submit","pool":"echo"}\n"b"\n')
            for i in range(1, 9):       # A stays busy 2.4 s
                time.sleep(0.3)
                a.sendall(b'"a%d"\n' % i)
            a.shutdown(socket.SHUT_WR)
            fa = final_of(read_all(a))
            a.close()
            self.assertEqual(fa["results"][0]["items"],
                             ["a%d" % i for i in range(9)])
            lease = read_reply(b)
            self.assertTrue(lease["ok"], lease)
            b.shutdown(socket.SHUT_WR)
            fb = final_of(read_all(b))
            b.close()
            self.assertEqual(fb["results"][0]["items"], ["b"])
            self.assertNotIn("idle_timeout", d.log_text())

    def test_paused_client_is_not_idle(self):
        # The consumer sleeps 1.3 s every 1000 items, longer than
        # idle_timeout; meanwhile the windows are full and the daemon does
        # not read the client, which is then blocked in its writes: paused
        # by backpressure, not idle.  Everything must be consumed.
        pool = {"plugin": test_plugin("slow"), "workers": 1,
                "kwargs": {"usec": 1300000, "every": 1000}}
        settings = {"idle_timeout": 1, "window_bytes": 4096,
                    "window_items": 64, "max_item_bytes": 1024}
        item = b'{"n":1,"pad":"' + b"x" * 100 + b'"}\n'
        with Daemon({"slow": pool}, settings) as d:
            s = d.connect()
            # Little kernel buffering, so the pipe is full at once.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            s.sendall(b'{"op":"submit","pool":"slow"}\n')
            self.assertTrue(read_reply(s)["ok"])
            # Blocking writes of whole batches, for 3 s: each returns once
            # the daemon has read enough, so `sent` is exact.
            sent = 0
            t0 = time.monotonic()
            while time.monotonic() - t0 < 3:
                s.sendall(item * 16)
                sent += 16
            s.shutdown(socket.SHUT_WR)
            final = final_of(read_all(s, timeout=60))
            s.close()
            self.assertEqual(final["items"], sent, final)
            self.assertEqual(final["consumed"], sent)
            self.assertEqual(final["completion"], sent)
            self.assertEqual(final["errors"], [])
            self.assertGreater(sent, 2000)   # at least two long sleeps
            self.assertNotIn("idle_timeout", d.log_text())

    def test_zero_disables_idle(self):
        with Daemon(SUM, {"idle_timeout": 0}) as d:
            s = d.connect()
            s.sendall(HEADER + b"1\n")
            self.assertTrue(read_reply(s)["ok"])
            time.sleep(1.5)
            s.sendall(b"2\n")
            s.shutdown(socket.SHUT_WR)
            final = final_of(read_all(s))
            s.close()
            self.assertEqual(final["completion"], 3)


def settle(d, pool="sum", item=b"1\n"):
    """Wait until the harness's readiness probe (a connection closed at
    once) is gone from the daemon: until then it counts for our uid."""
    wait_for(lambda: "the connection ended before a complete header line"
             in d.log_text(), what="the probe connection to end")
    rc, final, err = d.cli("submit", pool, input=item)
    assert rc == 0, err


class PerUidLimit(unittest.TestCase):

    def test_limit(self):
        pools = {"echo": {"plugin": test_plugin("echo"), "workers": 3,
                          "stream_workers": 1}}
        with Daemon(pools, {"max_connections_per_uid": 3}) as d:
            settle(d, "echo")
            held = []
            for i in range(3):
                s = d.connect()
                s.sendall(b'{"op":"submit","pool":"echo"}\n"%d"\n' % i)
                self.assertTrue(read_reply(s)["ok"])
                held.append(s)
            extra = d.connect()
            extra.sendall(b'{"op":"submit","pool":"echo"}\n"x"\n')
            replies = read_all(extra)
            extra.close()
            msg = ("too many connections from uid %d: the limit is 3 "
                   "(max_connections_per_uid)" % os.getuid())
            self.assertEqual(replies, [{"ok": False, "error": msg,
                                          "code": "too_many_connections"}])
            self.assertIn("client (pid %d, uid %d) refused: %s" %
                          (os.getpid(), os.getuid(), msg), d.log_text())
            # Close one: its place is free again.
            held[0].shutdown(socket.SHUT_WR)
            final = final_of(read_all(held[0]))
            held[0].close()
            self.assertEqual(final["results"][0]["items"], ["0"])
            rc, final, err = d.cli("submit", "echo", input=b'"y"\n')
            self.assertEqual(rc, 0, err)
            self.assertEqual(final["results"][0]["items"], ["y"])
            # A connection refused at the limit held no place: with the
            # limit reached again, the next one is refused as well.
            s = d.connect()
            s.sendall(b'{"op":"submit","pool":"echo"}\n')
            self.assertTrue(read_reply(s)["ok"])
            extra = d.connect()
            self.assertEqual(read_all(extra), [{"ok": False, "error": msg,
                                          "code": "too_many_connections"}])
            extra.close()
            for c in held[1:] + [s]:
                c.shutdown(socket.SHUT_WR)
                self.assertIn("items", final_of(read_all(c)))
                c.close()

    @unittest.skipUnless(AS_ROOT and shutil.which("setpriv"),
                         "connecting as a second uid needs root and "
                         "setpriv: run the suite as root to cover it")
    def test_two_uids_count_apart(self):
        # The limit is per uid, not for everyone: root (this process)
        # holds its 2 and is refused a third, while nobody still gets 2
        # of its own at the same time, then is refused its third with
        # its own uid in the message.
        pools = {"echo": {"plugin": test_plugin("echo"), "workers": 4,
                          "stream_workers": 1}}
        d = Daemon(pools, {"max_connections_per_uid": 2,
                           "socket_mode": "0666"})
        os.chmod(d.dir, 0o755)          # nobody reaches the socket
        with d:
            settle(d, "echo")
            held = []
            for i in range(2):
                s = d.connect()
                s.sendall(b'{"op":"submit","pool":"echo"}\n"root%d"\n' % i)
                self.assertTrue(read_reply(s)["ok"])
                held.append(s)
            extra = d.connect()
            extra.sendall(b'{"op":"submit","pool":"echo"}\n')
            self.assertEqual(read_all(extra), [
                {"ok": False, "error": "too many connections from uid 0: "
                 "the limit is 2 (max_connections_per_uid)",
                 "code": "too_many_connections"}])
            extra.close()
            # Root is at its limit (both still open): nobody connects 3
            # times and streams through the first two.
            nobody = pwd.getpwnam("nobody")
            p = subprocess.Popen(
                ["setpriv", "--reuid", str(nobody.pw_uid), "--regid",
                 str(nobody.pw_gid), "--clear-groups", sys.executable,
                 "-c", AS_OTHER_UID, d.socket, "3"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True)
            try:
                out, err = p.communicate(timeout=60)
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            self.assertEqual(p.returncode, 0, err)
            got = [json.loads(l) for l in out.splitlines()]
            self.assertEqual(len(got), 3, out)
            for i in (0, 1):
                self.assertTrue(got[i]["lease"]["ok"], got[i])
                self.assertEqual(got[i]["final"]["results"][0]["items"],
                                 ["other%d" % i], got[i])
            msg = ("too many connections from uid %d: the limit is 2 "
                   "(max_connections_per_uid)" % nobody.pw_uid)
            self.assertEqual(got[2], {"lease": {"ok": False, "error": msg,
                                                "code": "too_many_connections"},
                                      "final": None})
            self.assertIn("uid %d) refused: %s" % (nobody.pw_uid, msg),
                          d.log_text())
            # Root's two were open all along, and finish.
            for i, s in enumerate(held):
                s.shutdown(socket.SHUT_WR)
                final = final_of(read_all(s))
                s.close()
                self.assertEqual(final["results"][0]["items"],
                                 ["root%d" % i])

    def test_refused_flood_holds_few_descriptors(self):
        # Refused connections hold no place; past 64 of them still open,
        # the daemon stops lingering on them, so a flood of refused
        # connections cannot pin its descriptors.
        with Daemon(SUM, {"max_connections_per_uid": 1}) as d:
            settle(d)
            pid = d.pid()
            held = d.connect()
            held.sendall(HEADER)
            self.assertTrue(read_reply(held)["ok"])
            base = len(os.listdir("/proc/%d/fd" % pid))
            flood = []
            for i in range(100):
                s = d.connect()
                if i % 2:
                    try:
                        s.sendall(HEADER + b"1\n")     # unread input, too
                    except BrokenPipeError:
                        pass    # already refused and closed: fine too
                flood.append(s)
            msg = ("too many connections from uid %d: the limit is 1 "
                   "(max_connections_per_uid)" % os.getuid())
            for s in flood:
                s.settimeout(10)
                buf = b""
                try:
                    while True:
                        chunk = s.recv(4096)
                        if not chunk:
                            break
                        buf += chunk
                        if buf.endswith(b"\n"):
                            break
                except ConnectionResetError:
                    pass        # closed at once with its header unread
                self.assertEqual(json.loads(buf), {"ok": False,
                                                   "error": msg,
                                                   "code":
                                                   "too_many_connections"})
            # Every refusal is out; at most 64 of them still linger (the
            # ones refused at once may take a loop turn to close).
            wait_for(lambda: len(os.listdir("/proc/%d/fd" % pid)) <=
                     base + 64, timeout=5, what="at most 64 lingering")
            self.assertIn("64 connections refused at the uid limit are "
                          "still open: refusing more at once, without "
                          "lingering (this one: pid %d, uid %d)" %
                          (os.getpid(), os.getuid()), d.log_text())
            for s in flood:
                s.close()
            held.sendall(b"2\n")
            held.shutdown(socket.SHUT_WR)
            self.assertEqual(final_of(read_all(held))["completion"], 2)
            held.close()
            rc, final, err = d.cli("submit", "sum", input=b"3\n")
            self.assertEqual((rc, final["completion"]), (0, 3), err)

    def test_zero_means_no_limit(self):
        with Daemon(SUM, {"max_connections_per_uid": 0,
                          "header_timeout": 0}) as d:
            conns = [d.connect() for _ in range(300)]
            rc, final, err = d.cli("submit", "sum", input=b"7\n")
            self.assertEqual((rc, final["completion"]), (0, 7), err)
            for c in conns:
                c.close()

    def test_default_limit(self):
        # 256 by default: the 257th is refused.
        with Daemon(SUM, {"header_timeout": 0}) as d:
            settle(d)
            conns = [d.connect() for _ in range(256)]
            rc, final, err = d.cli("submit", "sum", input=b"7\n")
            self.assertEqual(rc, 1)
            self.assertIn("the limit is 256 (max_connections_per_uid)",
                          final["error"])
            conns.pop().close()
            wait_for(lambda: d.cli("submit", "sum", input=b"7\n")[0] == 0,
                     what="a place to come free")
            for c in conns:
                c.close()


class OutOfDescriptors(unittest.TestCase):

    def test_emfile_pauses_accepting_without_spinning(self):
        with Daemon(SUM, {"header_timeout": 0,
                          "max_connections_per_uid": 0}) as d:
            rc, final, err = d.cli("submit", "sum", input=b"1\n")
            self.assertEqual(rc, 0, err)
            pid = d.pid()
            nfds = len(os.listdir("/proc/%d/fd" % pid))
            limit = nfds + 8
            soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
            try:
                resource.prlimit(pid, resource.RLIMIT_NOFILE,
                                 (limit, hard))
            except (PermissionError, OSError) as e:
                self.skipTest("cannot lower the daemon's RLIMIT_NOFILE: %s"
                              % e)
            conns = []
            for _ in range(40):     # the rest wait in the listen backlog
                conns.append(d.connect())
            wait_for(lambda: "accept: Too many open files" in d.log_text(),
                     what="the daemon to run out of descriptors")
            self.assertGreaterEqual(len(os.listdir("/proc/%d/fd" % pid)),
                                    limit - 1)
            # Out of descriptors, with connections waiting: the master
            # pauses accepting, it does not spin on accept.
            cpu0, t0 = cpu_seconds(pid), time.monotonic()
            time.sleep(2)
            cpu, wall = cpu_seconds(pid) - cpu0, time.monotonic() - t0
            print("master CPU while out of descriptors: %.2f s in %.2f s"
                  % (cpu, wall))
            self.assertLess(cpu, 0.25 * wall,
                            "the master used %.2f s of CPU in %.2f s while "
                            "out of descriptors" % (cpu, wall))
            self.assertIsNone(d.proc.poll())
            for c in conns:
                c.close()
            # Descriptors come back: a normal submit goes through.
            rc, final, err = d.cli("submit", "sum", input=b"2\n3\n",
                                   timeout=30)
            self.assertEqual((rc, final["completion"]), (0, 5), err)
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))


class TestCliFinalLine(unittest.TestCase):
    def test_final_line_byte_for_byte(self):
        """consumers submit prints the daemon's final line as sent, not a
        re-encoding of it."""
        from harness import CLI
        with Daemon(SUM) as d:
            p = subprocess.run([CLI, "-s", d.socket, "submit", "sum"],
                               input=b"0.1\n", capture_output=True,
                               timeout=120)
            self.assertEqual(p.returncode, 0, p.stderr)
            out = p.stdout.decode()
            self.assertEqual(json.loads(out)["completion"], 0.1)
            # The daemon writes a real in its fewest digits, not the
            # 0.10000000000000001 of 17 digits always.
            self.assertIn(b'"completion":0.1,', p.stdout)
            # The same bytes a plain socket client gets as its last line.
            s = d.connect()
            s.settimeout(60)
            s.sendall(HEADER + b"0.1\n")
            s.shutdown(socket.SHUT_WR)
            raw = b""
            while True:
                c = s.recv(65536)
                if not c:
                    break
                raw += c
            s.close()
            last = raw.rstrip(b"\n").split(b"\n")[-1]
            # The second stream of this daemon: only its id differs.
            last = last.replace(b'"stream":2,', b'"stream":1,', 1)
            self.assertEqual(p.stdout, last + b"\n")

    def test_real_keeps_the_digits_it_needs(self):
        """A real that needs 17 digits to read back keeps them all; one
        that needs fewer gets no more."""
        from harness import CLI
        with Daemon(SUM) as d:
            for items, want in ((b"0.1\n0.2\n", b"0.30000000000000004"),
                                (b"1e300\n", b"1e300"),
                                (b"-2.5\n", b"-2.5"),
                                (b"123456.789\n", b"123456.789")):
                p = subprocess.run([CLI, "-s", d.socket, "submit", "sum"],
                                   input=items, capture_output=True,
                                   timeout=120)
                self.assertEqual(p.returncode, 0, p.stderr)
                self.assertIn(b'"completion":' + want + b",", p.stdout)
                self.assertEqual(json.loads(p.stdout)["completion"],
                                 float(want))

    def test_strings_and_integers_untouched(self):
        """Only reals are shortened: digits inside strings (escaped quotes
        too) and integers come back as they went in."""
        from harness import CLI
        items = [r'"a\"0.10000000000000001"', "12345678901234567",
                 "-0.0", '{"k\\"1.50":[1.5e-7,2]}']
        with Daemon({"c": {"plugin": "collect", "workers": 1}}) as d:
            p = subprocess.run([CLI, "-s", d.socket, "submit", "c"],
                               input="\n".join(items).encode() + b"\n",
                               capture_output=True, timeout=120)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertIn(b'"results":[[' + ",".join(
                [items[0], items[1], "-0.0", '{"k\\"1.50":[1.5e-7,2]}']
            ).encode() + b"]", p.stdout)


if __name__ == "__main__":
    main()
