"""The failure model on the real daemon: replay, redeliver and fail after a
worker dies, poison items, item_timeout, pools whose workers cannot start,
and completion handlers that fail.  Every final line keeps the invariant
items == consumed + rejected + quarantined + unconsumed.
"""
import json
import os
import re
import signal
import socket
import threading
import time
import unittest

from harness import (Daemon, ask, assert_invariant, final_of, lines, main,
                     read_lines, read_reply, rejections, test_plugin,
                     wait_for)


def half_sent(tc, d, pool, body, workers):
    """A stream to pool that got its lease (of `workers` workers) and the
    first half of body's lines: (socket, lease, the rest of body)."""
    half = body.index(b"\n", len(body) // 2) + 1
    s = d.connect()
    s.settimeout(60)
    s.sendall(json.dumps({"op": "submit", "pool": pool}).encode() + b"\n")
    lease = read_reply(s)
    tc.assertEqual(lease["workers"], workers, lease)
    s.sendall(body[:half])
    return s, lease, body[half:]


def busy_with_items(d, pool, stream):
    """The pids of pool's workers that serve stream and were sent items in
    it (the status op), or [] (false) while there are none."""
    for p in ask(d, {"op": "status"})["pools"]:
        if p["name"] == pool:
            return [w["pid"] for w in p["processes"]
                    if w["state"] == "busy" and w["stream"] == stream
                    and w["items"] > 0]
    raise AssertionError("no pool %s in the status" % pool)


def quarantines(replies):
    return {r["quarantined"]["seq"]: r["quarantined"] for r in replies
            if isinstance(r.get("quarantined"), dict)}


class Poison(unittest.TestCase):

    def check_poison(self, policy, bad, how):
        pools = {"p": {"plugin": test_plugin("crash"), "workers": 2,
                       "stream_workers": 1, "on_crash": policy,
                       "max_attempts": 3}}
        with Daemon(pools) as d:
            items = list(range(1, 1001))
            items[499] = bad
            replies, final = d.submit_raw({"op": "submit", "pool": "p"},
                                          lines(items))
            q = quarantines(replies)
            self.assertEqual(list(q), [500], replies[-3:])
            self.assertEqual(q[500]["item"], bad)
            self.assertIn("its consumer died on it 3 times", q[500]["reason"])
            self.assertIn(how, q[500]["reason"])
            self.assertEqual(final["quarantined"], 1)
            self.assertEqual(final["crashes"], 3)
            self.assertEqual(final["unconsumed"], 0)
            self.assertEqual(final["errors"], [])
            self.assertTrue(final["ok"])
            # replay: the one consume call that returned counted every
            # other item.  redeliver: it counted those after the poison;
            # the 499 before were finished by the workers that died.
            self.assertEqual(final["results"],
                             [999 if policy == "replay" else 500])
            self.assertEqual(final["consumed"], 999)
            assert_invariant(self, final)
            self.assertRegex(d.log_text(), r"died on item 500 \(3 of 3 "
                             r"attempts\)")
            # The CLI reports it and exits 1.
            rc, cfinal, err = d.cli("submit", "p", input=lines(items))
            self.assertEqual(rc, 1)
            self.assertIn("item 500 quarantined: its consumer died on it 3 "
                          "times", err)

    def test_segv_replay(self):
        self.check_poison("replay", "segv", "killed by signal 11")

    def test_exit_replay(self):
        self.check_poison("replay", {"exit": 3}, "exited with status 3")

    def test_segv_redeliver(self):
        self.check_poison("redeliver", "segv", "killed by signal 11")

    def test_unbounded_allocation(self):
        # A consumer that allocates until the system refuses dies; it is
        # a crash like any other, and its item becomes poison.
        pools = {"p": {"plugin": test_plugin("hog"), "workers": 1,
                       "max_attempts": 2, "kwargs": {"limit_mb": 16}}}
        with Daemon(pools) as d:
            items = [1, 2, "hog", 4]
            replies, final = d.submit_raw({"op": "submit", "pool": "p"},
                                          lines(items))
            q = quarantines(replies)
            self.assertEqual(list(q), [3])
            self.assertIn("killed by signal 6", q[3]["reason"])
            self.assertEqual(final["results"], [3])
            assert_invariant(self, final)


class Replay(unittest.TestCase):

    def test_kill_mid_stream_same_result(self):
        # The consumer is slow, so the kill lands while it holds items;
        # replay starts the call over and the sums match a clean run.
        pools = {"s": {"plugin": test_plugin("slow"), "workers": 2,
                       "kwargs": {"usec": 200, "every": 1}}}
        with Daemon(pools) as d:
            n = 6000
            body = lines(list(range(n)))
            clean = d.submit_raw({"op": "submit", "pool": "s"}, body)[1]
            self.assertEqual(clean["completion"], n)

            # Half the items, then the kill once the lease is there and a
            # worker of the stream holds items: the stream is still open
            # (the rest is not sent yet), so the kill lands inside it.
            s, lease, rest = half_sent(self, d, "s", body, 2)
            victim = wait_for(
                lambda: busy_with_items(d, "s", lease["stream"]),
                what="a worker of the stream holding items")[0]
            os.kill(victim, signal.SIGKILL)
            s.sendall(rest)
            s.shutdown(socket.SHUT_WR)
            final = final_of(read_lines(s))
            s.close()
            self.assertEqual(final["crashes"], 1, final)
            self.assertEqual(final["completion"], n)
            self.assertEqual(sum(final["results"]), n)
            self.assertEqual(final["consumed"], n)
            self.assertEqual(final["errors"], [])
            assert_invariant(self, final)
            self.assertIn("takes over lane", d.log_text())

    def test_rejections_are_not_repeated(self):
        # Invalid lines are rejected once, even though the replacement
        # worker parses them again.
        pools = {"p": {"plugin": test_plugin("crash"), "workers": 1,
                       "max_attempts": 2}}
        with Daemon(pools) as d:
            body = b'1\n{bad\n2\n"segv"\n3\n'
            replies, final = d.submit_raw({"op": "submit", "pool": "p"},
                                          body)
            self.assertEqual(list(rejections(replies)), [2])
            self.assertEqual(final["rejected"], 1)
            self.assertEqual(final["quarantined"], 1)
            self.assertEqual(final["consumed"], 3)
            assert_invariant(self, final)

    def test_crash_after_items_ended_is_bounded(self):
        # A consume that always dies after its last item cannot be saved
        # by replay: after max_attempts the lane is reported lost, no loop.
        pools = {"p": {"plugin": test_plugin("crash"), "workers": 1,
                       "max_attempts": 3}}
        with Daemon(pools) as d:
            replies, final = d.submit_raw(
                {"op": "submit", "pool": "p", "params": {"end": "segv"}},
                lines([1, 2, 3]))
            self.assertEqual(final["crashes"], 3)
            self.assertEqual(final["unconsumed"], 3)
            self.assertIn("consume died after its items ended 3 times",
                          final["errors"][0]["error"])
            self.assertEqual(final["errors"][0]["seqs"], [[1, 3]])
            assert_invariant(self, final)

    def test_spool_that_cannot_be_written(self):
        # The spool directory goes away under the daemon: a crash then
        # cannot be replayed, and the lane's items are reported lost with
        # the reason, not dropped.  (Under the default spool_full "pause"
        # the lane would wait spool_wait for the directory first.)
        pools = {"p": {"plugin": test_plugin("crash"), "workers": 1,
                       "spool_full": "continue"}}
        d = Daemon(pools, {"spool_dir": "spool"})
        spool = os.path.join(d.dir, "spool")
        os.mkdir(spool)
        with d:
            os.rmdir(spool)
            replies, final = d.submit_raw({"op": "submit", "pool": "p"},
                                          lines([1, 2, "segv", 4]))
            self.assertEqual(final["crashes"], 1)
            self.assertEqual(final["unconsumed"], 4)
            # The client is warned of the spool first, then of the loss.
            w, e = final["errors"]
            self.assertEqual((w["stage"], w["lane"]), ("spool", 1), w)
            self.assertIn("cannot create a spool file in %s: No such file "
                          "or directory" % spool, w["error"])
            self.assertIn(w, [r.get("warning") for r in replies])
            self.assertIn("killed by signal 11", e["error"])
            self.assertIn("its items could not be spooled, so they cannot "
                          "be sent again", e["error"])
            self.assertEqual(e["seqs"], [[1, 4]])
            assert_invariant(self, final)
            self.assertIn("cannot create a spool file in " + spool,
                          d.log_text())

    def test_spool_is_on_disk_not_ram(self):
        # While a long stream runs, its spool is a file (deleted, so only
        # the daemon's fd holds it) in spool_dir, once the lane has taken
        # more than the 64 KiB staged in memory (2 MB of items here).
        pools = {"s": {"plugin": test_plugin("slow"), "workers": 1,
                       "kwargs": {"usec": 1000, "every": 10}}}
        with Daemon(pools) as d:
            out = {}

            def run():
                out["final"] = d.submit_raw({"op": "submit", "pool": "s"},
                                            lines(["%0100d" % i for i in
                                                   range(20000)]))[1]

            def fd_targets():
                out = []
                fd_dir = "/proc/%d/fd" % d.pid()
                for f in os.listdir(fd_dir):
                    try:
                        out.append(os.readlink(os.path.join(fd_dir, f)))
                    except FileNotFoundError:
                        pass    # closed between listdir and readlink
                return out

            seen = {}

            def spools():
                seen["targets"] = fd_targets()
                return [x for x in seen["targets"] if x.startswith(d.dir)
                        and "(deleted)" in x]

            t = threading.Thread(target=run)
            t.start()
            try:
                found = wait_for(spools, what="a deleted spool file open "
                                 "in the daemon")
            finally:
                t.join()
            self.assertEqual(len(found), 1, seen["targets"])
            self.assertEqual(out["final"]["consumed"], 20000)


class Redeliver(unittest.TestCase):

    def test_only_unfinished_items_go_again(self):
        path_holder = {}
        pools = {"r": {"plugin": test_plugin("record"), "workers": 1,
                       "on_crash": "redeliver",
                       "kwargs": {"path": "PLACEHOLDER"}}}
        d = Daemon(pools)
        path = os.path.join(d.dir, "seen")
        pools["r"]["kwargs"]["path"] = path
        with open(os.path.join(d.dir, "pools.d", "r.json"), "w") as f:
            json.dump(pools["r"], f)
        with d:
            n = 50000
            body = lines(list(range(1, n + 1)))

            # Half the items; once the first of them are on record, the
            # kill, then the rest.  The stream is open until the rest is
            # sent, so the kill lands inside it, whatever the pace.
            s, lease, rest = half_sent(self, d, "r", body, 1)
            wait_for(lambda: os.path.exists(path) and
                     os.path.getsize(path) > 1000,
                     what="the first items on record")
            victim = wait_for(
                lambda: busy_with_items(d, "r", lease["stream"]),
                what="the stream's worker")
            self.assertEqual(len(victim), 1, victim)
            os.kill(victim[0], signal.SIGKILL)
            s.sendall(rest)
            s.shutdown(socket.SHUT_WR)
            final = final_of(read_lines(s))
            s.close()
            self.assertEqual(final["crashes"], 1, final)
            assert_invariant(self, final)
            self.assertEqual(final["unconsumed"], 0)
            self.assertEqual(final["consumed"], n)
            with open(path) as f:
                seen = [int(l.split()[0]) for l in f]
            # Every item seen at least once; the dead worker's finished
            # items were not sent again (at most the one it held).
            self.assertEqual(set(seen), set(range(1, n + 1)))
            self.assertLessEqual(len(seen) - n, 1)
            # The surviving call saw only what was left.
            self.assertLess(final["results"][0], n * (n + 1) // 2)
            path_holder["ok"] = True


class Fail(unittest.TestCase):

    def test_ranges_and_how(self):
        pools = {"p": {"plugin": test_plugin("crash"), "workers": 1,
                       "on_crash": "fail"}}
        with Daemon(pools) as d:
            replies, final = d.submit_raw({"op": "submit", "pool": "p"},
                                          lines([1, 2, {"exit": 7}, 4]))
            e = final["errors"][0]
            self.assertEqual(e["exit"], 7)
            self.assertIn("exited with status 7", e["error"])
            self.assertEqual(e["seqs"], [[1, 4]])
            self.assertEqual(final["quarantined"], 0)
            self.assertEqual(final["unconsumed"], 4)
            assert_invariant(self, final)


class ItemTimeout(unittest.TestCase):

    def test_stuck_item_is_killed_then_quarantined(self):
        pools = {"h": {"plugin": test_plugin("hang"), "workers": 1,
                       "item_timeout": 0.3, "max_attempts": 2}}
        with Daemon(pools) as d:
            items = [1, 2, 3, 4, "hang", 6, 7]
            replies, final = d.submit_raw({"op": "submit", "pool": "h"},
                                          lines(items))
            q = quarantines(replies)
            self.assertEqual(list(q), [5])
            self.assertIn("item_timeout (0.3 s) on item 5", q[5]["reason"])
            self.assertEqual(final["results"], [23])
            self.assertEqual(final["crashes"], 2)
            assert_invariant(self, final)
            self.assertRegex(d.log_text(), r"more than 0.3 s on item 5 of "
                             r"stream \d+ \(item_timeout\); killing it")


    def test_hang_after_items_ended(self):
        # A consume that never returns after its last item would hold the
        # stream forever; item_timeout ends it, and the call is run again
        # (it hangs again) until max_attempts says the lane is lost.
        pools = {"h": {"plugin": test_plugin("hang"), "workers": 1,
                       "item_timeout": 0.3, "max_attempts": 2}}
        with Daemon(pools) as d:
            replies, final = d.submit_raw(
                {"op": "submit", "pool": "h", "params": {"end": "hang"}},
                lines([1, 2, 3]))
            self.assertEqual(final["crashes"], 2)
            self.assertEqual(final["unconsumed"], 3)
            self.assertIn("consume did not return after its items ended",
                          final["errors"][0]["error"])
            assert_invariant(self, final)
            self.assertIn("in consume after its items ended", d.log_text())

    def test_hung_completion_handler(self):
        pools = {"h": {"plugin": test_plugin("hang"), "workers": 2,
                       "item_timeout": 0.3}}
        with Daemon(pools) as d:
            replies, final = d.submit_raw(
                {"op": "submit", "pool": "h",
                 "params": {"complete": "hang"}}, lines(range(1, 11)))
            self.assertEqual(sum(final["results"]), 55)
            self.assertIsNone(final["completion"])
            self.assertEqual(final["errors"][0]["stage"], "complete")
            self.assertIn("killed after item_timeout (0.3 s) in the "
                          "completion handler", final["errors"][0]["error"])
            assert_invariant(self, final)


class BrokenPools(unittest.TestCase):

    def test_broken_init_pool_fails_others_serve(self):
        pools = {"bad": {"plugin": test_plugin("failinit"),
                         "max_init_failures": 3},
                 "sum": {"plugin": "sum", "workers": 2}}
        with Daemon(pools) as d:
            deadline = time.monotonic() + 10
            while "pool bad failed" not in d.log_text():
                self.assertLess(time.monotonic(), deadline, d.log_text())
                rc, final, err = d.cli("submit", "sum",
                                       input=lines(range(1, 101)))
                self.assertEqual(rc, 0, err)
                self.assertEqual(final["completion"], 5050)
            rc, final, err = d.cli("submit", "bad", input=b"1\n")
            self.assertEqual(rc, 1)
            self.assertIn("pool bad cannot start its workers: init failed",
                          final["error"])
            self.assertIn("max_init_failures", d.log_text())
            # It does not fork in a loop: the backoff spaces the tries
            # (800 ms, then 1.6 s, ...).  A try started before the count
            # may report its failure inside the second, so two at most;
            # a loop would make dozens.
            n = d.log_text().count("failed start")
            time.sleep(1.0)
            self.assertLessEqual(d.log_text().count("failed start"), n + 2)
            rc, final, err = d.cli("submit", "sum", input=b"1\n2\n")
            self.assertEqual(rc, 0, err)


    def test_failed_slot_leaves_its_healthy_worker_serving(self):
        # Worker 2 can never start, so the pool is marked failed; worker 1
        # runs, and the pool keeps serving with it.
        pools = {"half": {"plugin": test_plugin("failinit"), "workers": 2,
                          "max_init_failures": 2,
                          "kwargs": {"fail_slots": [2]}}}
        with Daemon(pools) as d:
            wait_for(lambda: "pool half failed" in d.log_text(),
                     what="the pool to be marked failed")
            for n in (3, 5):
                rc, final, err = d.cli("submit", "half",
                                       input=lines(range(n)))
                self.assertEqual(rc, 0, err)
                self.assertTrue(final["ok"], final)
                self.assertEqual(final["consumed"], n)
                self.assertEqual(final["results"], [n])
                assert_invariant(self, final)


    def test_every_failed_start_says_why(self):
        # Workers whose init fails send INITFAIL and exit at once.  When
        # several die together the master may hear SIGCHLD before it has
        # read their sockets; it must still read what they said before
        # calling them gone, or the pool is refused with "its workers
        # keep dying while they start" instead of its init error (the
        # flaky test_pgsql.py InitFailures.test_bad_kwargs).  Many
        # workers failing at once make that order likely.
        names = ["p%d" % i for i in range(12)]
        pools = {n: {"plugin": test_plugin("failinit"), "workers": 4,
                     "max_init_failures": 8} for n in names}
        with Daemon(pools) as d:
            for n in names:
                wait_for(lambda: "pool %s failed:" % n in d.log_text(),
                         timeout=60, what="pool %s to be marked failed" % n)
            log = d.log_text()
            silent = re.findall(r"pool \S+: worker \d+ \(pid \d+\) exited "
                                r"with status \d+", log)
            self.assertEqual(silent, [], "workers whose INITFAIL the "
                             "master did not read:\n" + log)
            for n in names:
                rc, final, err = d.cli("submit", n, input=b"1\n")
                self.assertEqual(rc, 1, err)
                self.assertEqual(final["error"], "pool %s cannot start its "
                                 "workers: init failed: cannot reach the "
                                 "test database (pool %s)" % (n, n), log)


class CompleteFailure(unittest.TestCase):

    def check(self, how, text):
        pools = {"c": {"plugin": test_plugin("badcomplete"), "workers": 2}}
        with Daemon(pools) as d:
            replies, final = d.submit_raw(
                {"op": "submit", "pool": "c", "params": {"complete": how}},
                lines(range(1, 101)))
            self.assertFalse(final["ok"])
            self.assertEqual(sum(final["results"]), 5050)
            self.assertEqual(final["consumed"], 100)
            self.assertIsNone(final["completion"])
            e = final["errors"][0]
            self.assertEqual(e["stage"], "complete")
            self.assertIn(text, e["error"])
            assert_invariant(self, final)

    def test_error(self):
        self.check("error", "the completion handler refused: on purpose")

    def test_segv(self):
        self.check("segv", "worker died in the completion handler: killed "
                   "by signal 11")

    def test_exit(self):
        self.check("exit", "worker died in the completion handler: exited "
                   "with status 3")


if __name__ == "__main__":
    main()
