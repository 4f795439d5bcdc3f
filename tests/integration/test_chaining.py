"""Pool-to-pool chaining: the bundled squares plugin (the consumers
package's cross-pool example) squares numbers in one pool and streams the
squares into another pool through libconsumers, reaching the daemon at the
CONSUMERS_SOCKET it sets for every worker.  Results are checked against
sums computed here; a downstream pool that refuses (unknown, not allowed,
busy because it is the pool itself) is an error of the upstream stream,
reported, never a hang."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (CLI, Daemon, PLUGIN_DIR, SLOWDOWN, assert_invariant,  # noqa
                     lines, main, test_plugin)
import test_systemd  # noqa: E402  (Activated: a socket-activated daemon)


def pools(**extra):
    p = {"sum": {"plugin": "sum", "workers": 2},
         "squares": {"plugin": "squares", "workers": 3,
                     "kwargs": {"to": "sum"}}}
    p.update(extra)
    return p


def status_of(d, pool):
    rc, _, err = d.cli("status", "--json", pool)
    assert rc == 0, err
    p = subprocess.run([CLI, "-s", d.socket, "status", "--json", pool],
                       capture_output=True, timeout=30 * SLOWDOWN)
    return json.loads(p.stdout)["pools"][0]


class Chaining(unittest.TestCase):

    def check_squares(self, final, numbers):
        want = sum(n * n for n in numbers)
        self.assertTrue(final["ok"], final)
        assert_invariant(self, final)
        self.assertEqual(final["consumed"], len(numbers))
        c = final["completion"]
        self.assertEqual(c["count"], len(numbers))
        self.assertEqual(c["sum"], want)
        # Every consume call streamed its own squares into the sum pool:
        # that pool's completion for each is the call's own sum.
        sums = [r["sum"] for r in final["results"]]
        self.assertEqual(sum(sums), want)
        self.assertEqual([r["downstream"] for r in final["results"]], sums)
        self.assertEqual(sorted(c["downstream"]), sorted(sums))

    def test_squares_into_sum_several_streams(self):
        with Daemon(pools()) as d:
            sets = [list(range(1, 20001)), list(range(-500, 7000, 3)),
                    [7] * 999 + [3037000499]]
            outs = [None] * len(sets)

            def run(i):
                outs[i] = d.cli("submit", "squares", input=lines(sets[i]))
            ts = [threading.Thread(target=run, args=(i,))
                  for i in range(len(sets))]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            calls = 0
            for (rc, final, err), numbers in zip(outs, sets):
                self.assertEqual(rc, 0, err)
                self.check_squares(final, numbers)
                calls += len(final["results"])
            # The downstream pool's own counters show the work: one
            # stream per consume call, every square in it.
            st = status_of(d, "sum")
            self.assertEqual(st["streams"]["completed"], calls)
            self.assertEqual(st["items"]["consumed"],
                             sum(len(s) for s in sets))

    def test_unknown_downstream_pool_is_an_error(self):
        with Daemon(pools(squares={"plugin": "squares", "workers": 2,
                                   "kwargs": {"to": "nope"}})) as d:
            t = time.monotonic()
            rc, final, err = d.cli("submit", "squares",
                                   input=lines(range(1, 5001)))
            self.assertLess(time.monotonic() - t, 20 * SLOWDOWN)
            self.assertEqual(rc, 1, err)
            self.assertFalse(final["ok"])
            assert_invariant(self, final)
            self.assertEqual(final["consumed"], 5000)
            self.assertEqual(len(final["errors"]), len(final["results"]))
            for e in final["errors"]:
                self.assertEqual(e["stage"], "consume")
                self.assertTrue(e["error"].startswith(
                    'pool nope: no pool named "nope" (pools: '), e)
            # The numbers were still squared and counted upstream.
            self.assertEqual(final["completion"]["sum"],
                             sum(n * n for n in range(1, 5001)))
            self.assertIn('no pool named "nope"', err)

    def test_downstream_that_does_not_allow_the_worker(self):
        # The upstream workers run as nobody (root runs the tests; not
        # root, they run as this user): the socket must let them connect
        # (socket_mode, and a directory they can enter), and the target
        # pool's allow list names only root.
        upstream = {"plugin": "squares", "workers": 1,
                    "kwargs": {"to": "closed"}}
        if os.geteuid() == 0:
            upstream["user"] = "nobody"
            # nobody must be able to read the plugin: the build tree may
            # be where it cannot (a clone under /root).
            where = tempfile.mkdtemp(prefix="cnsd-squares-")
            self.addCleanup(shutil.rmtree, where, True)
            os.chmod(where, 0o755)
            upstream["plugin"] = shutil.copy(
                os.path.join(PLUGIN_DIR, "squares.so"), where)
        d = Daemon(pools(squares=upstream,
                         closed={"plugin": "sum",
                                 "allow": {"users": ["root"]}}),
                   settings={"socket_mode": "0666"})
        os.chmod(d.dir, 0o755)
        with d:
            rc, final, err = d.cli("submit", "squares",
                                   input=lines([1, 2, 3]))
            self.assertEqual(rc, 1, err)
            self.assertFalse(final["ok"])
            assert_invariant(self, final)
            [e] = final["errors"]
            self.assertIn("pool closed: permission denied: uid %d" %
                          (65534 if os.geteuid() == 0 else os.getuid()),
                          e["error"])
            self.assertIn("may not submit to pool closed", e["error"])
            self.assertEqual(final["completion"]["count"], 3)

    def test_stream_into_itself_ends_at_queue_timeout(self):
        # Its only worker streams into its own pool: the downstream
        # stream waits for a worker that cannot free up, until the pool's
        # queue_timeout refuses it.  No hang.
        with Daemon({"loop": {"plugin": "squares", "workers": 1,
                              "queue_timeout": 1,
                              "kwargs": {"to": "loop"}}}) as d:
            t = time.monotonic()
            rc, final, err = d.cli("submit", "loop",
                                   input=lines(range(1, 100001)),
                                   timeout=60)
            took = time.monotonic() - t
            self.assertEqual(rc, 1, err)
            self.assertLess(took, 30 * SLOWDOWN)
            assert_invariant(self, final)
            self.assertEqual(final["consumed"], 100000)
            [e] = final["errors"]
            self.assertEqual(
                e["error"], "pool loop: pool busy: no loop worker became "
                "free within queue_timeout (1 s)")

    def test_downstream_quarantine_is_an_error(self):
        # The downstream consumer sleeps on its second item past
        # item_timeout: that square is quarantined, the first consumed.
        # Not every square was consumed, so the upstream call failed.
        with Daemon(pools(
                squares={"plugin": "squares", "workers": 1,
                         "kwargs": {"to": "stuck"}},
                stuck={"plugin": test_plugin("slow"), "workers": 1,
                       "item_timeout": 0.3, "max_attempts": 1,
                       "kwargs": {"every": 2, "usec": 5000000}})) as d:
            rc, final, err = d.cli("submit", "squares", input=lines([3, 4]))
            self.assertEqual(rc, 1, err)
            assert_invariant(self, final)
            self.assertEqual(final["consumed"], 2)
            [e] = final["errors"]
            self.assertEqual(e["error"], "pool stuck consumed 1 of 2 "
                             "squares (0 rejected, 1 quarantined)")
            self.assertEqual(final["completion"]["sum"], 25)
            st = status_of(d, "stuck")
            self.assertEqual(st["items"]["quarantined"], 1)

    def test_pool_env_overrides_consumers_socket(self):
        with Daemon(pools(squares={
                "plugin": "squares", "workers": 1, "kwargs": {"to": "sum"},
                "env": {"CONSUMERS_SOCKET": "/nonexistent/c.sock"}})) as d:
            rc, final, err = d.cli("submit", "squares", input=b"2\n")
            self.assertEqual(rc, 1, err)
            [e] = final["errors"]
            self.assertTrue(e["error"].startswith(
                "pool sum: cannot connect to consumersd at "
                "/nonexistent/c.sock: No such file or directory"), e)


@test_systemd.NEEDS_LIBSYSTEMD
class ChainingActivated(unittest.TestCase):

    def test_workers_get_the_activated_socket(self):
        # The configured socket is unused: CONSUMERS_SOCKET must be the
        # one systemd passed.
        with test_systemd.Activated(pools()) as d:
            numbers = list(range(1, 3001))
            rc, final, err = d.cli("submit", "squares",
                                   input=lines(numbers))
            self.assertEqual(rc, 0, err)
            Chaining.check_squares(self, final, numbers)
            self.assertFalse(os.path.exists(d.unused_socket))


if __name__ == "__main__":
    main()
