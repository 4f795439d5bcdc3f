"""The Python client module, client/python/consumers_client.py, against the
real daemon: every documented example of the Python consumers package
(its README and docs/examples.rst, examples/consumer_config.py, and its
tests' error case), then what the daemon adds (rejections, refusals, the
socket), and a large stream that must not deadlock.

Expected results are computed here from the items sent, not written out.
"""
import os
import random
import itertools
import re
import signal
import subprocess
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (CLI, SLOWDOWN, TOP_BUILDDIR, Daemon, ask,  # noqa
                     assert_invariant, main, test_plugin, wait_for)

sys.path.insert(0, os.path.join(TOP_BUILDDIR, "client", "python"))
import consumers_client as cc  # noqa
from consumers_client import Pool  # noqa


def is_subsequence(part, whole):
    it = iter(whole)
    return all(x in it for x in part)


def idle_workers(d, pool):
    st = ask(d, {"op": "status", "pool": pool})
    return st["pools"][0]["workers"]["idle"]


class Examples(unittest.TestCase):
    """The consumers package's examples, with a pool for the function."""

    def test_concatenate(self):
        # README: def concatenate(letters): return '-'.join(letters);
        # Pool(concatenate, 2); put each of 'abcdef'; print(pool.results)
        letters = "abcdef"
        with Daemon({"concat": {"plugin": "concat", "workers": 2}}) as d:
            with Pool("concat", workers=2, socket=d.socket) as pool:
                for letter in letters:
                    pool.put(letter)
            self.assertEqual(pool.workers, 2)
            self.assertEqual(len(pool.results), 2)
            parts = [r.split("-") for r in pool.results]
            self.assertEqual(sorted(sum(parts, [])), sorted(letters))
            for p in parts:     # each consumer sees its items in order
                self.assertTrue(is_subsequence(p, letters), pool.results)
            self.assertIsNone(pool.completion)  # concat has no complete
            self.assertEqual(pool.rejected, [])
            self.assertEqual(pool.final["items"], len(letters))
            # One consumer sees everything, in order; params override
            # the separator for one stream.
            with Pool("concat", workers=1, params={"separator": "+"},
                      socket=d.socket) as pool:
                for letter in letters:
                    pool.put(letter)
            self.assertEqual(pool.results, ["+".join(letters)])

    def test_multiple_processes(self):
        # docs: "Consumers run in separate processes" (print pid, number).
        with Daemon({"echo": {"plugin": test_plugin("echo"),
                              "workers": 2}}) as d:
            with Pool("echo", socket=d.socket) as pool:
                for n in range(5):
                    pool.put(n)
            pids = [r["pid"] for r in pool.results]
            self.assertEqual(len(set(pids)), 2)
            self.assertTrue(set(pids) <= set(d.worker_pids()))
            self.assertNotIn(os.getpid(), pids)
            seen = sorted(sum((r["items"] for r in pool.results), []))
            self.assertEqual(seen, list(range(5)))

    def test_multiple_data(self):
        # docs: pool.put(i, v) for i, v in enumerate('abcdef'); the
        # consumer gets (index, letter) tuples: here [index, letter].
        letters = "abcdef"
        with Daemon({"pairs": {"plugin": test_plugin("pairs"),
                               "workers": 2},
                     "collect": {"plugin": "collect",
                                 "workers": 1}}) as d:
            with Pool("pairs", socket=d.socket) as pool:
                for i, v in enumerate(letters):
                    pool.put(i, v)
            lines = sorted(sum(pool.results, []))
            self.assertEqual(lines, sorted("%s is at index %d" % (v, i)
                                           for i, v in enumerate(letters)))
            # The package's tests: put() is None, put(1) is 1, put('a',
            # 'b') is ('a', 'b').
            items = [(), (1,), ("a", "b"), ({"k": [1, 2]}, None, 2.5)]
            with Pool("collect", socket=d.socket) as pool:
                for args in items:
                    pool.put(*args)
            expect = [None if not a else a[0] if len(a) == 1 else list(a)
                      for a in items]
            self.assertEqual(pool.results, [expect])

    def test_args_and_kwargs(self):
        # examples/consumer_config.py: def print_host(numbers, host,
        # port=80); Pool(print_host, 1, args=('remote',)) and
        # Pool(print_host, 1, args=('local',), kwargs={'port': 8123}).
        # Here args and kwargs are the pool's; params are the stream's.
        host = test_plugin("host")
        with Daemon({"remote": {"plugin": host, "workers": 1,
                                "args": ["remote"]},
                     "local": {"plugin": host, "workers": 1,
                               "args": ["local"],
                               "kwargs": {"port": 8123}}}) as d:
            for name, port, params in (("remote", 80, None),
                                       ("local", 8123, None),
                                       ("local", 9000, {"port": 9000})):
                with Pool(name, params=params, socket=d.socket) as pool:
                    for i in range(3):
                        pool.put(i)
                self.assertEqual(pool.results, [["%s:%d %d" % (name, port, i)
                                                 for i in range(3)]])

    def test_consumer_classes(self):
        # docs: a callable class built with a tag (functools.partial):
        # the per-process state comes from init, with the pool's args.
        echo = test_plugin("echo")
        with Daemon({"first": {"plugin": echo, "workers": 1,
                               "args": ["first"]},
                     "second": {"plugin": echo, "workers": 1,
                                "args": ["second"]}}) as d:
            for tag in ("first", "second"):
                with Pool(tag, socket=d.socket) as pool:
                    for i in range(3):
                        pool.put(i)
                (r,) = pool.results
                self.assertEqual(r["init_args"], [tag])
                self.assertEqual(r["items"], [0, 1, 2])

    def test_completion(self):
        # consumersd's addition: the pool's completion handler runs with
        # every result; sum's is the total.
        rng = random.Random(7)
        items = [rng.randint(-10 ** 6, 10 ** 6) for _ in range(20000)]
        with Daemon({"sum": {"plugin": "sum", "workers": 2}}) as d:
            with Pool("sum", socket=d.socket) as pool:
                for n in items:
                    pool.put(n)
            self.assertEqual(pool.completion, sum(items))
            self.assertEqual(sum(pool.results), sum(items))
            self.assertEqual(len(pool.results), pool.workers)
            self.assertEqual(pool.final["consumed"], len(items))
            self.assertIsInstance(pool.stream, int)
            assert_invariant(self, pool.final)

    def test_consumer_error(self):
        # The package's test: a consumer that raises makes the pool raise
        # ConsumerError when it is joined.  Here the error's details come
        # along, and the results too.
        items = list(range(1, 101))
        with Daemon({"bc": {"plugin": test_plugin("badcomplete"),
                            "workers": 2},
                     "crash": {"plugin": test_plugin("crash"),
                               "workers": 2, "on_crash": "fail"},
                     "sum": {"plugin": "sum", "workers": 1}}) as d:
            pool = Pool("bc", params={"complete": "error"}, socket=d.socket)
            with self.assertRaises(cc.ConsumerError) as cm:
                with pool:
                    for n in items:
                        pool.put(n)
            e = cm.exception
            self.assertIsInstance(e, cc.ConsumersError)
            self.assertEqual([x["stage"] for x in e.errors], ["complete"])
            self.assertIn("on purpose", e.errors[0]["error"])
            self.assertIn("on purpose", str(e))
            self.assertEqual(sum(e.results), sum(items))
            self.assertEqual(pool.results, e.results)
            self.assertIsNone(e.completion)

            # A consumer whose worker dies on an item (on_crash fail).
            pool = Pool("crash", workers=1, socket=d.socket)
            with self.assertRaises(cc.ConsumerError) as cm:
                with pool:
                    pool.put("a")
                    seq = pool.put("segv")
                    pool.put("b")
            (err,) = cm.exception.errors
            self.assertEqual(err["stage"], "consume")
            self.assertEqual(err["signal"], 11)
            self.assertTrue(any(lo <= seq <= hi for lo, hi in err["seqs"]))
            self.assertIn("worker %d" % err["worker"], str(cm.exception))
            assert_invariant(self, cm.exception.final)

            # A consume call that reports an error (cns_fail) names the
            # item by the number put() returned.
            with self.assertRaises(cc.ConsumerError) as cm:
                with Pool("sum", socket=d.socket) as pool:
                    pool.put(5)
                    seq = pool.put("five")
                    pool.put(6)
            self.assertIn("(first: item %d)" % seq,
                          cm.exception.errors[0]["error"])
            self.assertEqual(cm.exception.results, [11])


class Outcomes(unittest.TestCase):
    """What the daemon adds: rejections, refusals, the socket."""

    def test_rejections(self):
        rng = random.Random(3)
        with Daemon({"sum": {"plugin": "sum", "workers": 2}}) as d:
            pool = Pool("sum", socket=d.socket)
            bad, good = [], []
            with self.assertRaises(cc.RejectedError) as cm:
                with pool:
                    for i in range(3000):
                        if rng.random() < 0.05:
                            bad.append(pool.put_raw("{not json %d" % i))
                        else:
                            good.append(i)
                            pool.put(i)
                    # Not JSON at all: refused here, no number used.
                    with self.assertRaises(ValueError):
                        pool.put(float("nan"))
                    bad.append(pool.put_raw(b"\xff\xfe"))
            e = cm.exception
            self.assertEqual(e.seqs, bad)
            self.assertEqual(sorted(r["seq"] for r in pool.rejected), bad)
            for r in e.rejected:
                self.assertTrue(r["error"].startswith("invalid JSON"), r)
            self.assertEqual(e.completion, sum(good))
            self.assertEqual(pool.completion, sum(good))
            self.assertEqual(pool.final["rejected"], len(bad))
            self.assertEqual(pool.final["items"], len(bad) + len(good))
            self.assertIn("item %d: invalid JSON" % bad[0], str(e))

    def test_quarantine(self):
        # An item that kills its consumer max_attempts times is reported
        # like a rejection, with its content.
        with Daemon({"crash": {"plugin": test_plugin("crash"),
                               "workers": 1, "max_attempts": 2}}) as d:
            with self.assertRaises(cc.RejectedError) as cm:
                with Pool("crash", socket=d.socket) as pool:
                    pool.put("a")
                    seq = pool.put("segv")
                    pool.put("b")
            (q,) = cm.exception.quarantined
            self.assertEqual((q["seq"], q["item"]), (seq, "segv"))
            self.assertEqual(cm.exception.seqs, [seq])
            self.assertEqual(cm.exception.results, [2])

    def test_unknown_pool(self):
        with Daemon({"sum": {"plugin": "sum"}}) as d:
            with self.assertRaises(cc.RefusedError) as cm:
                with Pool("nope", socket=d.socket) as pool:
                    pool.put(1)
            self.assertIn('no pool named "nope"', cm.exception.error)
            self.assertIn("sum", cm.exception.error)
            self.assertIs(cm.exception.reply["ok"], False)
            self.assertIn('no pool named "nope"', str(cm.exception))
            # A refusal seen while items are still being put stops the
            # body at the next chunk instead of at the end.
            with self.assertRaises(cc.RefusedError):
                with Pool("nope", socket=d.socket) as pool:
                    for i in range(10 ** 7):
                        pool.put(i)
            self.assertLess(pool._seq, 10 ** 7)

    def test_missing_socket(self):
        path = os.path.join(os.path.dirname(CLI), "no-such-dir", "x.sock")
        with self.assertRaises(cc.ConnectError) as cm:
            with Pool("sum", socket=path) as pool:
                pool.put(1)
        e = cm.exception
        self.assertIsInstance(e, ConnectionError)
        self.assertEqual(e.path, path)
        self.assertIn(path, str(e))
        self.assertIn("No such file or directory", str(e))
        self.assertIn("CONSUMERS_SOCKET", str(e))

    def test_socket_resolution(self):
        saved = os.environ.pop("CONSUMERS_SOCKET", None)
        try:
            with Daemon({"sum": {"plugin": "sum", "workers": 1}}) as d:
                bogus = d.socket + ".nothing"
                # The argument first, whatever the environment says.
                os.environ["CONSUMERS_SOCKET"] = bogus
                with Pool("sum", socket=d.socket) as pool:
                    pool.put(2)
                self.assertEqual(pool.completion, 2)
                os.environ["CONSUMERS_SOCKET"] = d.socket
                with self.assertRaises(cc.ConnectError) as cm:
                    Pool("sum", socket=bogus).start()
                self.assertEqual(cm.exception.path, bogus)
                # Then $CONSUMERS_SOCKET.
                with Pool("sum") as pool:
                    pool.put(3)
                self.assertEqual(pool.completion, 3)
                # Then the default, the CLI's own.
                del os.environ["CONSUMERS_SOCKET"]
                self.assertEqual(cc.socket_path(), cc.DEFAULT_SOCKET)
                p = subprocess.run([CLI], capture_output=True, text=True)
                m = re.search(r"else \$CONSUMERS_SOCKET, else (\S+)\.\n",
                              p.stderr)
                self.assertIsNotNone(m, p.stderr)
                self.assertEqual(cc.DEFAULT_SOCKET, m.group(1))
                if not os.path.exists(cc.DEFAULT_SOCKET):
                    with self.assertRaises(cc.ConnectError) as cm:
                        Pool("sum").start()
                    self.assertIn(cc.DEFAULT_SOCKET, str(cm.exception))
        finally:
            os.environ.pop("CONSUMERS_SOCKET", None)
            if saved is not None:
                os.environ["CONSUMERS_SOCKET"] = saved

    def test_body_raises(self):
        # The stream is abandoned, the body's exception propagates, and
        # the daemon ends that stream as if the client had vanished.
        with Daemon({"sum": {"plugin": "sum", "workers": 2}}) as d:
            pool = Pool("sum", socket=d.socket)
            with self.assertRaises(KeyError):
                with pool:
                    for i in range(300000):
                        pool.put(i)
                    raise KeyError("in the body")
            self.assertIsNone(pool._sock)
            self.assertFalse(pool._reader.is_alive())
            with self.assertRaises(cc.PoolError):
                pool.results
            with self.assertRaises(cc.PoolError):
                pool.put(1)
            # The daemon read the chunks sent before the exception, and
            # consumed every one of them; the rest was never sent.
            m = wait_for(lambda: re.search(
                r"stream (\d+): pool sum: (\d+) items?, (\d+) consumed, "
                r"0 rejected, 0 quarantined, 0 unconsumed, 0 crashes, "
                r"0 errors", d.log_text()),
                what="the abandoned stream's end in the daemon's log")
            self.assertEqual(m.group(2), m.group(3))
            self.assertGreater(int(m.group(2)), 0)
            self.assertLess(int(m.group(2)), 300000)
            wait_for(lambda: idle_workers(d, "sum") == 2,
                     what="both sum workers idle again")
            with Pool("sum", socket=d.socket) as pool:
                for i in range(1000):
                    pool.put(i)
            self.assertEqual(pool.workers, 2)
            self.assertEqual(pool.completion, 999 * 1000 // 2)

    def test_daemon_ends_the_stream_while_writing(self):
        # A slow consumer holds the client's writes back (backpressure);
        # the daemon is then stopped: put() must raise with the final
        # line's error instead of hanging.
        slow = {"plugin": test_plugin("slow"), "workers": 1,
                "kwargs": {"usec": 1000, "every": 1}}
        with Daemon({"s": slow}, {"shutdown_timeout": 60}) as d:
            def stop():
                wait_for(lambda: "stream 1: pool s" in d.log_text(),
                         what="the stream's lease")
                d.proc.send_signal(signal.SIGTERM)
                wait_for(lambda: "may finish within 60 s" in d.log_text(),
                         what="the daemon to wait for the stream")
                d.proc.send_signal(signal.SIGINT)
            stopper = threading.Thread(target=stop)
            stopper.start()
            pool = Pool("s", socket=d.socket)
            with self.assertRaises(cc.ConsumerError) as cm:
                with pool:
                    for i in itertools.count():
                        pool.put(i)
            stopper.join()
            e = cm.exception
            self.assertEqual(e.errors[-1]["stage"], "daemon")
            self.assertEqual(e.errors[-1]["error"],
                             "consumersd is shutting down")
            assert_invariant(self, e.final)
            self.assertGreater(pool._seq, e.final["items"])
            self.assertIsNone(pool._sock)
            self.assertEqual(d.proc.wait(timeout=30 * SLOWDOWN), 0)

    def test_results_before_the_end(self):
        # As in consumers: results only once the pool is joined.
        with Daemon({"sum": {"plugin": "sum", "workers": 1}}) as d:
            with Pool("sum", socket=d.socket) as pool:
                pool.put(1)
                with self.assertRaises(cc.PoolError):
                    pool.results
            self.assertEqual(pool.results, [1])
            # Without with: start, put, join.
            pool = Pool("sum", socket=d.socket)
            pool.start()
            self.assertEqual([pool.put(n) for n in (4, 5)], [1, 2])
            pool.join()
            self.assertEqual(pool.completion, 9)


class Large(unittest.TestCase):

    def test_many_rejections_while_writing(self):
        # A third of 600000 items are invalid: the daemon sends 200000
        # rejection lines, far more than the 1 MiB of unread replies it
        # lets a client leave, while the client is still writing.  A
        # client that only wrote would stall; this one must finish.
        n = 600000
        with Daemon({"sum": {"plugin": "sum", "workers": 2}}) as d:
            bad, total = [], 0
            with self.assertRaises(cc.RejectedError) as cm:
                with Pool("sum", socket=d.socket, timeout=120 * SLOWDOWN) \
                        as pool:
                    for i in range(n):
                        if i % 3 == 1:
                            bad.append(pool.put_raw("[%d" % i))
                        else:
                            total += i
                            pool.put(i)
            e = cm.exception
            self.assertEqual(e.seqs, bad)
            self.assertEqual(e.completion, total)
            self.assertEqual(e.final["items"], n)
            self.assertEqual(e.final["consumed"], n - len(bad))
            replies = sum(len('{"rejected":{"seq":%d,"error":"%s"}}\n' %
                              (r["seq"], r["error"])) for r in e.rejected)
            self.assertGreater(replies, 4 << 20)


if __name__ == "__main__":
    main()
