"""Races and lies around the failure model: a worker dead but not yet
reaped, a worker dead before it read BEGIN, a stream finishing while a lane
waits, a plugin that forges the shared progress page.  Each test failed
before its fix; the docstrings give the mechanism.

Some tests stop the master with SIGSTOP so that several things (a worker's
death, a client's header) are pending at once when it resumes; that only
orders events the master could see in the same loop turn anyway.  No test
waits a fixed time for its race: each polls (bounded) for its setting to
be in place (the client accepted, the master stopped, the worker a
zombie), and each checks in the daemon's log that the racy order really
happened, so a run that missed the race fails instead of passing.
"""
import contextlib
import json
import os
import re
import signal
import socket
import threading
import unittest

from harness import (wait_for, Daemon, assert_invariant, final_of, lines, main,
                     read_lines, rejections, test_plugin)


def quarantines(replies):
    return {r["quarantined"]["seq"]: r["quarantined"] for r in replies
            if isinstance(r.get("quarantined"), dict)}


def proc_state(pid):
    """The state letter of /proc/PID/stat (R, S, T, Z...)."""
    with open("/proc/%d/stat" % pid) as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def wchan(pid):
    with open("/proc/%d/wchan" % pid) as f:
        return f.read()


def connect_accepted(d):
    """A client connection the master has accepted (its descriptor count
    went up), so that stopping the master cannot hold back the accept."""
    fds = "/proc/%d/fd" % d.pid()
    before = len(os.listdir(fds))
    s = d.connect()
    s.settimeout(30)
    wait_for(lambda: len(os.listdir(fds)) > before,
             what="the master to accept the client")
    return s


def kill_to_zombie(pid):
    """SIGKILL pid, a worker of a stopped master: it is dead (a zombie,
    nobody reaps it yet) when this returns."""
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: proc_state(pid) == "Z", what="pid %d dead" % pid)


@contextlib.contextmanager
def master_stopped(d):
    """The master is stopped (SIGSTOP) inside the block, so what the block
    does is all pending at once when it resumes."""
    os.kill(d.pid(), signal.SIGSTOP)
    try:
        wait_for(lambda: proc_state(d.pid()) == "T",
                 what="the master to stop")
        yield
    finally:
        os.kill(d.pid(), signal.SIGCONT)



def record_pool(d, **extra):
    """Point a record pool's kwargs.path into the daemon's directory."""
    path = os.path.join(d.dir, "seen")
    pool = {"plugin": test_plugin("record"), "workers": 1,
            "kwargs": {"path": path}}
    pool.update(extra)
    with open(os.path.join(d.dir, "pools.d", "r.json"), "w") as f:
        json.dump(pool, f)
    return path


class StaleSharedPage(unittest.TestCase):
    """worker.c/stream.c: the shared page is zeroed by the child when it
    reads BEGIN (child_consume), never by the master.  A worker leased to
    a stream that dies before it reads BEGIN leaves the page of its
    previous stream, and lane_crashed() trusts it: under redeliver it
    takes last_done/ndone of the old stream as progress in the new one,
    counts those items consumed and never delivers them."""

    def test_redeliver_dead_before_begin(self):
        d = Daemon({"r": {"plugin": test_plugin("record"), "workers": 1}})
        path = record_pool(d, on_crash="redeliver")
        with d:
            # Stream 1 leaves the page at last_done=5, ndone=5, ended=1.
            rep, f1 = d.submit_raw({"op": "submit", "pool": "r"},
                                   lines([101, 102, 103, 104, 105]))
            self.assertEqual(f1["consumed"], 5, f1)
            w = d.worker_pids()[0]
            # Stream 2: its client is accepted, then the master stops; the
            # header and items arrive, then the worker dies.
            s = connect_accepted(d)
            with master_stopped(d):
                s.sendall(b'{"op":"submit","pool":"r"}\n' +
                          lines(list(range(1, 21))))
                s.shutdown(socket.SHUT_WR)
                kill_to_zombie(w)
            replies = read_lines(s)
            s.close()
            final = final_of(replies)
            assert_invariant(self, final)
            with open(path) as f:
                seen2 = sorted(int(l.split()[0]) for l in f
                               if int(l.split()[1]) <= 20)
            # The race happened: stream 2 leased w, already dead, and
            # only then did the master see it die, inside the stream.
            log = d.log_text()
            death = ("pool r: worker 1 (pid %d) killed by signal 9 "
                     "(Killed) during a stream\n" % w)
            self.assertIn(death, log)
            self.assertIn("stream 2: pool r, 1 worker\n", log)
            self.assertLess(log.index("stream 2: pool r, 1 worker\n"),
                            log.index(death), log)
            # Every item of stream 2 reached a consume call.
            self.assertEqual(final["crashes"], 1, final)
            self.assertEqual(sorted(set(seen2)), list(range(1, 21)),
                             "final line %s; log:\n%s" %
                             (final, d.log_text()[-1500:]))


class ZeroWorkerLease(unittest.TestCase):
    """pool.c pool_lease / client.c client_submit / pool_dispatch: nidle
    still counts an idle worker whose socket hit EOF but that is not
    reaped yet (worker_eventcb sets closed, worker_gone runs on SIGCHLD).
    A header read in between passes "p->nidle > 0", pool_lease skips the
    closed worker and returns 0, and stream_leased() runs the stream with
    no worker at all: {"workers":0}, every item unconsumed, with an error
    "items 0 to N" (orphan_from is still 0).  pool_dispatch has the same
    hole and would run every queued stream that way.  The stream should
    wait for the replacement worker instead."""

    def test_idle_worker_dead_not_reaped(self):
        with Daemon({"sum": {"plugin": "sum", "workers": 1}}) as d:
            rc, f1, err = d.cli("submit", "sum", input=b"1\n2\n")
            self.assertEqual(f1["completion"], 3, err)
            w = d.worker_pids()[0]
            s = connect_accepted(d)
            with master_stopped(d):
                kill_to_zombie(w)
                s.sendall(b'{"op":"submit","pool":"sum"}\n' +
                          lines(list(range(1, 11))))
                s.shutdown(socket.SHUT_WR)
            replies = read_lines(s)
            s.close()
            final = final_of(replies)
            # The race happened: the header was read while the dead w
            # still counted as idle.  The stream then waits for the
            # replacement ("waiting for a sum worker") before w's death
            # is handled; had its death been handled first, that line
            # would come after the death; had its EOF not been seen, the
            # stream would have leased it and it would have died "during
            # a stream" (the death line would not end at "(Killed)").
            log = d.log_text()
            death = re.search(r"(?m)^\S+ consumersd\[\d+\]: pool sum: "
                              r"worker 1 \(pid %d\) killed by signal 9 "
                              r"\(Killed\)$" % w, log)
            self.assertIsNotNone(death, log)
            waiting = log.find("stream 2: waiting for a sum worker")
            self.assertNotEqual(waiting, -1, log)
            self.assertLess(waiting, death.start(), log)
            assert_invariant(self, final)
            self.assertEqual(replies[0].get("workers"), 1, replies)
            self.assertEqual(final["errors"], [], final)
            self.assertEqual(final["completion"], 55, final)


class FinishLeasesOwnLane(unittest.TestCase):
    """stream.c stream_finish: its first loop gives each returned worker
    back with pool_idle(), which runs pool_dispatch(), which leases that
    worker to the first lane waiting in p->lanes, and that can be a lane
    of the very stream being finished (it is unwaited only in the second
    loop).  stream_lane_leased() then binds the worker to the finished
    stream (s->w[i] = w, w->stream = s, BEGIN sent) behind the loop's
    back: the worker stays W_LEASED pointing at a stream that client_free
    frees next, and when it exits worker_gone() calls
    stream_worker_gone() on freed memory.  Reached at shutdown
    (stream_abort) with one lane returned and another waiting for a
    worker that cannot start."""

    def test_sigterm_with_returned_and_waiting_lanes(self):
        # shutdown_timeout 0: SIGTERM ends open streams at once, the
        # path where a finishing stream still has a waiting lane.
        d = Daemon({}, {"shutdown_timeout": 0})
        flag = os.path.join(d.dir, "fail")
        with open(os.path.join(d.dir, "pools.d", "f.json"), "w") as f:
            json.dump({"plugin": test_plugin("flaky"), "workers": 2,
                       "stream_workers": 2, "item_timeout": 0.3,
                       "max_init_failures": 100,
                       "kwargs": {"fail_if": flag}}, f)
        with d:
            s = d.connect()
            s.settimeout(30)
            # One write: lane 1 gets "hang", lane 2 gets 1 and returns.
            s.sendall(b'{"op":"submit","pool":"f"}\n"hang"\n1\n')
            s.shutdown(socket.SHUT_WR)
            wait_for(lambda: "item_timeout); killing it" in d.log_text(),
                     what="the item_timeout kill")
            open(flag, "w").close()     # the replacement cannot start
            wait_for(lambda: "failed to start" in d.log_text(),
                     what="a failed start")
            mark = len(d.log_text())
            d.proc.send_signal(signal.SIGTERM)
            replies = read_lines(s)
            s.close()
            rc = d.proc.wait(timeout=30)
            final = final_of(replies)
            assert_invariant(self, final)
            after = d.log_text()[mark:]
            self.assertNotIn("takes over lane", after)
            self.assertEqual(rc, 0, d.log_text()[-3000:])


class ForgedSharedPage(unittest.TestCase):
    """stream.c lane_crashed: the master "trusts nothing it reads without
    checking it against what it sent" (consumersd.h), but the checks on
    the shared page leave room for a plugin that writes it (the forger
    test plugin finds it in /proc/self/maps) to break the final line's
    arithmetic, not only its own results."""

    def forge(self, d, policy, **forged):
        once = os.path.join(d.dir, "once")
        with open(os.path.join(d.dir, "pools.d", "g.json"), "w") as f:
            json.dump({"plugin": test_plugin("forger"), "workers": 1,
                       "on_crash": policy, "max_attempts": 1}, f)
        params = {"once": once}
        params.update(forged)
        return params

    def test_redeliver_ndone_counted_twice(self):
        # ndone is checked against what the worker was sent, not against
        # the items before `from`: ndone=10 with last_done=1 counts ten
        # items consumed, and items 2..10 go again and are counted again.
        d = Daemon({})
        params = self.forge(d, "redeliver", cur=0, last_done=1,
                            ndone=10)
        with d:
            body = lines([1, 2, "forge"] + list(range(4, 11)))
            replies, final = d.submit_raw(
                {"op": "submit", "pool": "g", "params": params}, body)
            self.assertEqual(final["crashes"], 1, final)
            assert_invariant(self, final)

    def test_blame_on_a_rejected_item(self):
        # cur is checked to be one of the lane's seqs, not one the worker
        # took: a rejected item is then quarantined too, and counted twice.
        d = Daemon({})
        params = self.forge(d, "replay", cur=2, last_done=0, ndone=0)
        with d:
            replies, final = d.submit_raw(
                {"op": "submit", "pool": "g", "params": params},
                b'1\n{bad\n"forge"\n4\n')
            self.assertEqual(final["crashes"], 1, final)
            assert_invariant(self, final)


class CompleterDeadNotReaped(unittest.TestCase):
    """stream.c stream_consumed: the completion handler goes to the first
    non-NULL s->w[i], without looking whether that worker is still there.
    A worker that returned and then died (socket EOF, or not even seen
    yet) stays in s->w until SIGCHLD is handled; when the last RESULT is
    read in between, COMPLETE goes to the dead worker (or nowhere, its
    bev being NULL), the live worker is released, and the stream ends
    with "worker died in the completion handler" and completion null
    though a live worker could have run it."""

    def test_complete_goes_to_a_dead_worker(self):
        with Daemon({"f": {"plugin": test_plugin("flaky"), "workers": 2,
                           "stream_workers": 2}}) as d:
            s = d.connect()
            s.settimeout(30)
            # Lane 1 gets 1 and returns at once; lane 2 sleeps 1.5 s.
            s.sendall(b'{"op":"submit","pool":"f"}\n1\n{"sleep":1500}\n')
            s.shutdown(socket.SHUT_WR)
            pids = d.worker_pids()
            self.assertEqual(len(pids), 2, pids)
            sleeping = wait_for(lambda: [p for p in pids
                                         if "nanosleep" in wchan(p)],
                                what="a worker in its sleep")
            self.assertEqual(len(sleeping), 1, pids)
            sleeper = sleeping[0]
            done = [p for p in pids if p != sleeper][0]
            with master_stopped(d):
                kill_to_zombie(done)
                # The sleeper wakes, sends its RESULT and waits for the
                # next frame: its RESULT is queued for the master.
                # Once it blocks reading its socket again, the RESULT was
                # written (merely leaving the sleep is not enough).
                wait_for(lambda: wchan(sleeper) == "unix_stream_read_generic",
                         what="the sleeper's RESULT")
            replies = read_lines(s)
            s.close()
            final = final_of(replies)
            assert_invariant(self, final)
            # The race happened: the last RESULT was read before the
            # master handled done's death (else done would have died
            # "during a stream", still the stream's), and before the
            # stream ended.
            log = d.log_text()
            death = re.search(r"(?m)^\S+ consumersd\[\d+\]: pool f: worker \d "
                              r"\(pid %d\) killed by signal 9 \(Killed\)$"
                              % done, log)
            self.assertIsNotNone(death, log)
            self.assertLess(death.start(), log.index("stream 1: pool f: 2 "
                                                     "items"), log)
            self.assertEqual(final["errors"], [], final)
            self.assertEqual(final["completion"], 1, final)


if __name__ == "__main__":
    main()
