"""Issue 12's hardening, on the real daemon: what an attacker or an unlucky
administrator does to a running service (outside kills, leaked
grandchildren, a full spool, trickling or non-reading clients, bad frames)
must neither lose an item silently nor take a pool out of service.
"""
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest

from harness import (SANITIZERS, SLOWDOWN, VALGRIND, Daemon, assert_invariant, final_of,
                     lines, main, read_lines, read_reply, rejections, test_plugin,
                     wait_for)


def up_seconds(pid):
    """Seconds since process pid started (its /proc stat starttime), or
    None once it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")


class StartSeconds(unittest.TestCase):
    """Item 1: a worker that finished init and stayed up start_seconds has
    started; an outside kill of it later is not a failed start, and the
    pool never refuses streams for it."""

    def test_outside_kills_of_started_workers(self):
        pools = {"sum": {"plugin": "sum", "workers": 2,
                         "max_init_failures": 3}}
        with Daemon(pools) as d:
            killed = 0
            # Every 0.2 s for 5 s, SIGKILL each worker up for more than
            # 1.5 s (longer than the default start_seconds of 1): the OOM
            # killer, an administrator, another process of the same uid.
            for _ in range(25):
                for pid in d.worker_pids():
                    up = up_seconds(pid)
                    if up is not None and up > 1.5:
                        try:
                            os.kill(pid, signal.SIGKILL)
                            killed += 1
                        except ProcessLookupError:
                            pass
                time.sleep(0.2)
            self.assertGreaterEqual(killed, 4, "the test killed too few "
                                    "workers to mean anything")
            rc, final, err = d.cli("submit", "sum",
                                   input=lines(range(1, 101)))
            self.assertEqual(rc, 0, err + d.log_text()[-3000:])
            self.assertEqual(final["completion"], 5050, final)
            assert_invariant(self, final)
            self.assertNotIn("failed start", d.log_text())


class Unconsumed(unittest.TestCase):
    """Item 4: items a consumer took but never processed are counted
    unconsumed, with their seqs, not consumed."""

    def test_exec_program_reads_one_line(self):
        d = Daemon({})
        prog = os.path.join(d.dir, "first")
        with open(prog, "w") as f:
            f.write("#!/bin/sh\nread a\necho \"$a\"\n")
        os.chmod(prog, 0o755)
        with open(os.path.join(d.dir, "pools.d", "first.json"), "w") as f:
            json.dump({"plugin": "exec", "workers": 1, "args": [prog]}, f)
        n = 50000
        with d:
            rc, final, err = d.cli("submit", "first",
                                   input=lines(range(1, n + 1)))
            self.assertEqual(rc, 1, err)
            self.assertEqual(final["results"], [1], final)
            self.assertEqual(final["items"], n)
            self.assertEqual(final["consumed"], 1, final)
            self.assertEqual(final["unconsumed"], n - 1, final)
            assert_invariant(self, final)
            [e] = final["errors"]
            self.assertIn("49999 items not read, first: item 2",
                          e["error"])
            self.assertEqual(e["unconsumed"], n - 1)
            self.assertEqual(e["seqs"], [[2, n]])


def vm_kib(pid, field):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError("no %s in /proc/%d/status" % (field, pid))


def status(d):
    s = d.connect()
    s.settimeout(10 * SLOWDOWN)
    s.sendall(b'{"op":"status"}\n')
    s.shutdown(socket.SHUT_WR)
    reply = read_lines(s)[0]
    s.close()
    return reply


class ClientBuffer(unittest.TestCase):
    """Item 6: the replies queued for clients are capped as a whole
    (max_client_buffer), and given back once those clients leave."""

    def test_many_clients_that_do_not_read(self):
        cap = 4 << 20
        nclients = 16
        # Every line is invalid: each makes a rejection reply (~90 bytes).
        # A small window keeps what is in flight past the cap small.
        pools = {"sum": {"plugin": "sum", "workers": nclients,
                         "stream_workers": 1}}
        settings = {"max_client_buffer": cap, "window_items": 128}
        bad = b"{not json}\n" * 20000
        with Daemon(pools, settings) as d:
            base = vm_kib(d.pid(), "VmRSS")
            socks = []
            for _ in range(nclients):
                s = d.connect()
                s.sendall(b'{"op":"submit","pool":"sum"}\n')
                s.setblocking(False)
                socks.append([s, 0])
            # Each client writes until the daemon stops reading it (its
            # replies are unread), and the replies queued reach the cap;
            # bounded by a deadline.
            deadline = time.monotonic() + 30 * SLOWDOWN
            stuck = 0
            while time.monotonic() < deadline:
                moved = False
                for entry in socks:
                    try:
                        n = entry[0].send(bad[entry[1]:])
                        entry[1] = (entry[1] + n) % len(bad)
                        moved = True
                    except BlockingIOError:
                        pass
                stuck = 0 if moved else stuck + 1
                if stuck >= 50:
                    if status(d)["daemon"]["client_output"] >= cap:
                        break
                    stuck = 0
                time.sleep(0.02)
            # Still nothing read: it stays at the cap.
            time.sleep(0.5)
            queued = status(d)["daemon"]["client_output"]
            grown = vm_kib(d.pid(), "VmRSS") - base
            print("replies queued: %d bytes (cap %d); master RSS grew %d "
                  "KiB" % (queued, cap, grown))
            # Full to the cap, not past it by more than what was in
            # flight: without the cap each client alone holds 1 MiB.
            self.assertGreaterEqual(queued, cap)
            self.assertLess(queued, cap + (2 << 20))
            if not (SANITIZERS or VALGRIND):
                # (The tools' allocators add their own overhead.)
                self.assertLess(d.rss_peak_kib() - base, 3 * cap // 1024)
            held = vm_kib(d.pid(), "VmRSS")
            for s, _ in socks:
                s.close()
            wait_for(lambda: status(d)["daemon"]["client_output"] == 0,
                     what="the replies of the gone clients to be freed")
            if not (SANITIZERS or VALGRIND):
                # The sanitizers' and valgrind's allocators keep freed
                # memory by design; glibc's gives it back when asked
                # (malloc_trim): the master's RSS drops by nearly all the
                # replies it had queued (without the trim, by about 70%).
                wait_for(lambda: held - vm_kib(d.pid(), "VmRSS") >
                         0.85 * queued / 1024, what="the master's RSS to "
                         "come down (from %d KiB)" % held)


def trickle(s, chunks, every, deadline):
    """Send chunks to socket s one at a time, `every` seconds apart, until
    the daemon's final line comes (or the deadline passes, or the chunks
    run out, then the last one is sent again); return the replies read
    and whether the final line came."""
    buf = b""
    i = 0
    next_send = time.monotonic()
    s.settimeout(0.05)
    while time.monotonic() < deadline:
        if time.monotonic() >= next_send:
            try:
                s.sendall(chunks[min(i, len(chunks) - 1)])
            except OSError:
                pass        # the daemon closed its side after the end
            i += 1
            next_send += every
        try:
            chunk = s.recv(1 << 16)
        except socket.timeout:
            continue
        if not chunk:
            break
        buf += chunk
        replies = [json.loads(l) for l in buf.split(b"\n") if l.strip()]
        if final_of(replies) is not None:
            return replies, True
    replies = [json.loads(l) for l in buf.split(b"\n") if l.strip()]
    return replies, final_of(replies) is not None


class Trickle(unittest.TestCase):
    """Item 5: a client that trickles its input cannot hold its pool's
    workers: idle_timeout counts from its last complete item line, and
    min_item_rate ends a stream too slow while others wait."""

    def test_trickling_bytes_is_idle(self):
        # One byte a second, never a newline: before, every byte reset the
        # idle clock and the stream (and its only worker) was held for as
        # long as the client liked; the waiting client got "pool busy".
        pools = {"collect": {"plugin": "collect", "workers": 1,
                             "queue_timeout": 60}}
        with Daemon(pools, {"idle_timeout": 2}) as d:
            a = d.connect()
            a.sendall(b'{"op":"submit","pool":"collect"}\n1\n')
            lease = read_reply(a)
            self.assertTrue(lease["ok"], lease)
            b = d.connect()
            b.sendall(b'{"op":"submit","pool":"collect"}\n')
            # The bound is 5 s; polled, with room for slow hosts.
            deadline = time.monotonic() + 10 * SLOWDOWN
            replies, ended = trickle(a, [b"2", b"3", b"4", b"5", b"6", b"7",
                                         b"8", b"9"], 1, deadline)
            a.close()
            self.assertTrue(ended, "the trickling stream was not ended: "
                            "%r" % replies)
            final = final_of(replies)
            self.assertFalse(final["ok"], final)
            self.assertEqual(final["errors"], [{
                "stage": "stream", "error": "idle for 2 s without a "
                "complete item line (idle_timeout)"}])
            # The item sent is consumed, the partial line reported.
            self.assertEqual(final["results"], [[1]])
            self.assertEqual((final["items"], final["consumed"],
                              final["rejected"]), (2, 1, 1))
            self.assertEqual(list(rejections(replies).values()), [
                "truncated: the last line has no newline before the end "
                "of the stream"])
            assert_invariant(self, final)
            self.assertIn("client (pid %d, uid %d) sent no complete item "
                          "line for 2 s (idle_timeout)" %
                          (os.getpid(), os.getuid()), d.log_text())
            # The waiting client is served.
            self.assertTrue(read_reply(b, timeout=30)["ok"])
            b.sendall(b"7\n")
            b.shutdown(socket.SHUT_WR)
            final = final_of(read_lines(b))
            b.close()
            self.assertTrue(final["ok"], final)
            self.assertEqual(final["results"], [[7]])

    def test_min_item_rate_with_a_waiting_client(self):
        # A sends a complete line every 2 s (0.5 items/s): never idle.
        # Alone it keeps its worker; once B waits, it is ended for being
        # below min_item_rate, and B gets the worker.
        pools = {"collect": {"plugin": "collect", "workers": 1,
                             "queue_timeout": 60, "min_item_rate": 1}}
        with Daemon(pools, {"idle_timeout": 5}) as d:
            a = d.connect()
            a.sendall(b'{"op":"submit","pool":"collect"}\n')
            lease = read_reply(a)
            self.assertTrue(lease["ok"], lease)
            items = [b"%d\n" % i for i in range(1000)]
            # Alone past a whole window (10 s): not ended.
            replies, ended = trickle(a, items, 2, time.monotonic() + 12)
            self.assertFalse(ended, replies)
            b = d.connect()
            b.sendall(b'{"op":"submit","pool":"collect"}\n')
            more, ended = trickle(a, items[6:], 2,
                                  time.monotonic() + 30 * SLOWDOWN)
            a.close()
            self.assertTrue(ended, "the slow stream was not ended: %r" %
                            more)
            final = final_of(replies + more)
            self.assertFalse(final["ok"], final)
            self.assertEqual(len(final["errors"]), 1, final)
            error = final["errors"][0]
            self.assertEqual(error["stage"], "stream")
            self.assertIn("items/s over the last 10 s, below min_item_rate "
                          "(1), while other streams wait for pool collect",
                          error["error"])
            self.assertGreaterEqual(final["consumed"], 6)
            self.assertEqual(final["rejected"], 0)
            self.assertEqual(final["results"],
                             [list(range(final["consumed"]))])
            assert_invariant(self, final)
            self.assertTrue(read_reply(b, timeout=30)["ok"])
            b.sendall(b"7\n")
            b.shutdown(socket.SHUT_WR)
            final = final_of(read_lines(b))
            b.close()
            self.assertTrue(final["ok"], final)
            self.assertEqual(final["results"], [[7]])


def tmpfs(tc, size):
    """A tmpfs of `size` (mount's size=) mounted on a new temporary
    directory, unmounted and removed in the test's cleanup (also when it
    fails); the test is skipped when it cannot mount (not root)."""
    where = tempfile.mkdtemp(prefix="cnsd-spool-")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0700" %
                        size, "tmpfs", where], capture_output=True,
                       text=True)
    if r.returncode != 0:
        os.rmdir(where)
        tc.skipTest("cannot mount a %s tmpfs for the spool (%s); CI runs "
                    "this test as root" % (size, r.stderr.strip() or
                                           "mount failed"))

    def unmount():
        if subprocess.run(["umount", where]).returncode != 0:
            subprocess.run(["umount", "-l", where])
        os.rmdir(where)
    tc.addCleanup(unmount)
    return where


def spool_warnings(replies):
    return [r["warning"] for r in replies if isinstance(r.get("warning"),
                                                        dict)]


class SpoolFull(unittest.TestCase):
    """Item 3: a full spool is never silent.  The spool is a 1 MiB tmpfs;
    the client is told the moment a lane's items cannot be spooled, and
    nothing is lost uncounted: "pause" (the default) stops reading the
    client until the spool can be written, "continue" sends on, warned."""

    # 20 MB of items, 103 bytes a line
    N = 200000
    BODY = lines(["%0100d" % i for i in range(N)])

    def filled_spool(self):
        """A 1 MiB tmpfs spool, 600 KiB of it taken by a filler file:
        the spool dir and the filler's path."""
        spool = tmpfs(self, "1m")
        filler = os.path.join(spool, "filler")
        with open(filler, "wb") as f:
            f.write(b"x" * (600 << 10))
        return spool, filler

    def submit_in_thread(self, d, n, ended_early=False):
        """A stream to pool c, its n items sent by a thread (the daemon
        may stop reading them): the socket and the thread.  With
        ended_early, the daemon may end the stream before all are sent."""
        s = d.connect()
        s.settimeout(60 * SLOWDOWN)
        s.sendall(b'{"op":"submit","pool":"c"}\n')
        self.assertTrue(read_reply(s)["ok"])
        body = lines(["%0100d" % i for i in range(n)])

        def send():
            try:
                s.sendall(body)
            except OSError:
                if not ended_early:
                    raise
        sender = threading.Thread(target=send)
        sender.start()
        return s, sender

    def test_continue_is_warned_and_counted(self):
        spool = tmpfs(self, "1m")
        pools = {"c": {"plugin": test_plugin("crash"), "workers": 1,
                       "spool_full": "continue"}}
        with Daemon(pools, {"spool_dir": spool}) as d:
            # Before: the final line said ok:true and nothing else.
            rc, final, err = d.cli("submit", "c", input=self.BODY)
            self.assertEqual(rc, 1, err)
            self.assertIn("consumers: warning: spool (lane 1): cannot write "
                          "the spool file in %s: No space left on device; "
                          "the lane's items go on without a copy "
                          '(spool_full "continue")' % spool, err)
            self.assertFalse(final["ok"], final)
            self.assertEqual(final["errors"][0]["stage"], "spool")
            self.assertEqual(final["errors"][0]["lane"], 1)
            self.assertEqual((final["items"], final["consumed"],
                              final["unconsumed"]), (self.N, self.N, 0))
            self.assertEqual(final["results"], [self.N])
            # A crash after the spool filled: the lane cannot run again,
            # and every item it took is reported, with its seqs.
            body = self.BODY + lines(["segv"] + list(range(1000)))
            rc, final, err = d.cli("submit", "c", input=body)
            self.assertEqual(rc, 1, err)
            self.assertIn("consumers: warning: spool (lane 1)", err)
            self.assertEqual(final["items"], self.N + 1001, final)
            self.assertEqual(final["crashes"], 1, final)
            self.assertEqual(final["consumed"], 0, final)
            self.assertEqual(final["unconsumed"], self.N + 1001, final)
            assert_invariant(self, final)
            stages = [e["stage"] for e in final["errors"]]
            self.assertEqual(stages[0], "spool", final["errors"])
            lost = [e for e in final["errors"] if e["stage"] == "consume"]
            self.assertIn("its items could not be spooled", lost[0]["error"])
            # (the items after "segv" it had not taken are reported too)
            self.assertEqual(lost[0]["seqs"][0][0], 1)
            self.assertGreaterEqual(lost[0]["seqs"][-1][1], self.N + 1)

    def test_pause_ends_after_spool_wait(self):
        spool = tmpfs(self, "1m")
        pools = {"c": {"plugin": test_plugin("crash"), "workers": 1,
                       "spool_wait": 2}}
        with Daemon(pools, {"spool_dir": spool}) as d:
            rc, final, err = d.cli("submit", "c", input=self.BODY)
            self.assertEqual(rc, 1, err)
            self.assertIn("consumers: warning: spool (lane 1): cannot write "
                          "the spool file in %s: No space left on device; "
                          "reading the stream is paused" % spool, err)
            self.assertFalse(final["ok"], final)
            self.assertEqual([e["stage"] for e in final["errors"]],
                             ["spool", "spool"], final["errors"])
            end = final["errors"][1]["error"]
            self.assertIn("the replay spool in %s could not be written for "
                          % spool, end)
            self.assertIn("(spool_wait 2 s): lane 1: No space left on "
                          "device; the stream was ended after item %d, "
                          "and what the client sent after it was not read"
                          % final["items"], end)
            # Read up to the pause, every item read is consumed: none
            # went out without its copy, none is lost.
            self.assertLess(final["items"], self.N)
            self.assertGreater(final["items"], 0)
            self.assertEqual(final["consumed"], final["items"], final)
            self.assertEqual(final["results"], [final["items"]])
            assert_invariant(self, final)
            # The pool serves the next stream.
            rc, final, err = d.cli("submit", "c", input=lines(range(10)))
            self.assertEqual(rc, 0, err)
            self.assertEqual(final["results"], [10])

    def test_pause_goes_on_when_space_is_freed(self):
        spool, filler = self.filled_spool()
        n = 8000            # 824 KB: fits once the filler is gone
        pools = {"c": {"plugin": test_plugin("crash"), "workers": 1,
                       "spool_wait": 60}}
        with Daemon(pools, {"spool_dir": spool}) as d:
            s, sender = self.submit_in_thread(d, n)
            warning = read_reply(s, timeout=60)
            self.assertEqual(sorted(warning), ["warning"], warning)
            self.assertEqual((warning["warning"]["stage"],
                              warning["warning"]["lane"]), ("spool", 1))
            self.assertIn("No space left on device; reading the stream is "
                          "paused until the spool can be written "
                          '(spool_full "pause"), for at most spool_wait '
                          "(60 s)", warning["warning"]["error"])
            os.unlink(filler)
            sender.join(60 * SLOWDOWN)
            self.assertFalse(sender.is_alive())
            s.shutdown(socket.SHUT_WR)
            replies = read_lines(s)
            s.close()
            final = final_of(replies)
            self.assertEqual(spool_warnings(replies), [])   # told once
            # Nothing was lost: the stream completes exactly.
            self.assertEqual((final["items"], final["consumed"],
                              final["unconsumed"]), (n, n, 0))
            self.assertEqual(final["results"], [n])
            self.assertEqual(final["errors"], [warning["warning"]])
            self.assertRegex(d.log_text(), r"pool c: the spool is written "
                             r"again; reading goes on after [0-9.]+ s "
                             r"paused")

    def test_crash_while_paused_runs_again_once_written(self):
        # The worker dies while its lane's last lines wait in memory for
        # room in the spool: the lane waits for them to be written, then
        # runs again over all of its items.  (Before, it was lost.)
        spool, filler = self.filled_spool()
        n = 8000
        pools = {"c": {"plugin": test_plugin("crash"), "workers": 1,
                       "spool_wait": 60}}
        with Daemon(pools, {"spool_dir": spool}) as d:
            s, sender = self.submit_in_thread(d, n)
            warning = read_reply(s, timeout=60)
            self.assertEqual(warning["warning"]["stage"], "spool", warning)
            [pid] = d.worker_pids()
            os.kill(pid, signal.SIGKILL)
            # Its successor takes the lane over, and waits for the spool.
            wait_for(lambda: "worker 1 takes over lane 1" in d.log_text(),
                     timeout=30, what="a new worker for the lane")
            os.unlink(filler)
            sender.join(60 * SLOWDOWN)
            self.assertFalse(sender.is_alive())
            s.shutdown(socket.SHUT_WR)
            replies = read_lines(s)
            s.close()
            final = final_of(replies)
            self.assertEqual(final["crashes"], 1, final)
            self.assertEqual((final["items"], final["consumed"],
                              final["unconsumed"]), (n, n, 0), final)
            self.assertEqual(final["results"], [n])
            self.assertEqual(final["errors"], [warning["warning"]])

    def test_crash_while_paused_is_lost_after_spool_wait(self):
        # As above, but no room comes: after spool_wait the stream ends
        # and the lane that waited is reported lost, every item counted.
        spool, _ = self.filled_spool()
        pools = {"c": {"plugin": test_plugin("crash"), "workers": 1,
                       "spool_wait": 4}}
        with Daemon(pools, {"spool_dir": spool}) as d:
            # (the daemon may end the stream before all are sent)
            s, sender = self.submit_in_thread(d, 8000, ended_early=True)
            warning = read_reply(s, timeout=60)
            self.assertEqual(warning["warning"]["stage"], "spool", warning)
            [pid] = d.worker_pids()
            os.kill(pid, signal.SIGKILL)
            buf = b""
            while True:
                try:
                    chunk = s.recv(1 << 16)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                buf += chunk
            sender.join(60 * SLOWDOWN)
            s.close()
            final = final_of([json.loads(l) for l in buf.split(b"\n")
                              if l.strip()])
            self.assertEqual(final["crashes"], 1, final)
            self.assertEqual(final["consumed"], 0, final)
            self.assertEqual(final["unconsumed"], final["items"], final)
            assert_invariant(self, final)
            stages = [e["stage"] for e in final["errors"]]
            self.assertEqual(stages, ["spool", "spool", "consume"], final)
            self.assertIn("the stream was ended after item %d" %
                          final["items"], final["errors"][1]["error"])
            self.assertIn("its items could not be written to the replay "
                          "spool within spool_wait",
                          final["errors"][2]["error"])
            self.assertEqual(final["errors"][2]["seqs"][0][0], 1)


def alive(pid):
    """Whether pid is a process that has not ended (a zombie has)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def pid_in(path):
    """The pid a whole line of file path holds, or None."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    return int(text) if text.endswith("\n") else None


class Descendants(unittest.TestCase):
    """Item 2: what a worker starts dies with it (kill -9, item_timeout,
    stop), whether it stays in the worker's process group or leaves it."""

    def start_children(self, d, params, n=1):
        """Submits a forker stream whose worker starts n children; returns
        (socket, child pids), the children to be killed by pid at the end
        whatever the test found."""
        paths = [os.path.join(d.dir, "child%d.pid" % i) for i in range(n)]
        s = d.connect()
        self.addCleanup(s.close)
        s.sendall(lines([{"op": "submit", "pool": "forker",
                          "params": params}] + paths))
        s.shutdown(socket.SHUT_WR)
        pids = []
        for path in paths:
            pid = wait_for(lambda: pid_in(path),
                           what="the plugin's child to write " + path)
            pids.append(pid)
            self.addCleanup(self.kill_quietly, pid)
        return s, pids

    @staticmethod
    def kill_quietly(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def assert_gone(self, pids, d, when):
        deadline = time.monotonic() + 2 * SLOWDOWN
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.02)
        left = [p for p in pids if alive(p)]
        if left:
            try:
                log = d.log_text()[-2000:]
            except OSError:
                log = "(the daemon's directory is gone)"
            self.fail("the worker's children %s outlived it %s\n%s"
                      % (left, when, log))

    def test_kill_9_and_item_timeout(self):
        for escape in (False, True):
            for how in ("kill -9", "item_timeout"):
                with self.subTest(escape=escape, how=how):
                    pool = {"plugin": test_plugin("forker"), "workers": 1,
                            "max_attempts": 1}
                    if how == "item_timeout":
                        pool["item_timeout"] = 0.5
                    with Daemon({"forker": pool}) as d:
                        s, pids = self.start_children(
                            d, {"hang": True, "escape": escape}, n=2)
                        if how == "kill -9":
                            [worker] = d.worker_pids()
                            os.kill(worker, signal.SIGKILL)
                        self.assert_gone(pids, d, "after " + how)
                        wait_for(lambda: "killed 2 descendants" in
                                 d.log_text(), what="the log line")

    def test_orphan_of_a_live_worker_lives_on(self):
        """An orphan left in a live worker's group (its plugin forked
        twice) is that worker's: another pool's worker dying must not
        kill it."""
        pools = {"forker": {"plugin": test_plugin("forker"), "workers": 1},
                 "echo": {"plugin": test_plugin("echo"), "workers": 1}}
        with Daemon(pools) as d:
            s, [orphan] = self.start_children(d, {"orphan": True})
            final = [r for r in read_lines(s) if "items" in r]
            self.assertEqual(final[0]["results"], [1], final)

            def ppid(pid):
                with open("/proc/%d/stat" % pid) as f:
                    stat = f.read()
                return int(stat[stat.rindex(")") + 2:].split()[1])
            wait_for(lambda: ppid(orphan) == d.pid(),
                     what="the orphan to be the master's")
            owner = os.getpgid(orphan)
            self.assertIn(owner, d.worker_pids())
            [victim] = wait_for(lambda: [p for p in d.worker_pids()
                                         if p not in (owner, orphan)],
                                what="the echo pool's worker")
            os.kill(victim, signal.SIGKILL)
            # Reaped: its descendants were killed (and logged) before.
            wait_for(lambda: not os.path.exists("/proc/%d" % victim),
                     what="the master to reap the echo worker")
            self.assertNotIn("(pid %d) is gone; killed" % victim,
                             d.log_text())
            self.assertTrue(alive(orphan), "the live worker's orphan was "
                            "killed when another worker died")
            self.assertTrue(alive(owner))
            # The master reaps it (a stranger) before it stops.
            os.kill(orphan, signal.SIGKILL)
            wait_for(lambda: not os.path.exists("/proc/%d" % orphan),
                     what="the master to reap the orphan")

    def test_stop(self):
        for escape in (False, True):
            with self.subTest(escape=escape):
                pool = {"plugin": test_plugin("forker"), "workers": 1}
                with Daemon({"forker": pool}) as d:
                    s, pids = self.start_children(d, {"escape": escape})
                    final = [r for r in read_lines(s) if "items" in r]
                    self.assertEqual(final[0]["results"], [1], final)
                    self.assertTrue(alive(pids[0]))
                self.assert_gone(pids, d, "after the daemon stopped")


if __name__ == "__main__":
    main()
