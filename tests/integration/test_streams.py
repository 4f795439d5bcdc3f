"""Streams end to end on the real daemon with the real CLI: the bundled
concat, sum and collect plugins, args/kwargs/params, several clients at
once, and the raw iterator."""
import os
import sys
import tempfile
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Daemon, lines, assert_invariant, test_plugin, main  # noqa


class Streams(unittest.TestCase):

    def test_concat_two_consumers(self):
        # The Python consumers README example: '-'.join(letters) per consumer.
        # How the items split between the two workers is up to the
        # credit; whatever the split, each result must be exactly
        # "-".join of the items that worker took, in input order, and
        # the two must take every item once.
        words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]
        with Daemon({"concat": {"plugin": "concat", "workers": 2,
                                "args": ["-"]}}) as d:
            rc, final, err = d.cli("submit", "concat", input=lines(words))
            self.assertEqual(rc, 0, err)
            self.assertTrue(final["ok"])
            self.assertEqual(len(final["results"]), 2)
            taken = []
            for r in final["results"]:
                mine = [w for w in r.split("-") if w] if r else []
                self.assertTrue(set(mine) <= set(words), final)
                # The expected concatenation, from the input: the words
                # this worker took, in the order they were sent.
                self.assertEqual(r, "-".join(w for w in words
                                             if w in mine), final)
                taken += mine
            self.assertEqual(sorted(taken), sorted(words), final)
            self.assertEqual(final["items"], 6)
            self.assertEqual(final["consumed"], 6)
            assert_invariant(self, final)
            # One worker: the whole input, joined in order.
            rc, final, err = d.cli("submit", "-w", "1", "concat",
                                   input=lines(words))
            self.assertEqual(rc, 0, err)
            self.assertEqual(final["results"],
                             ["alpha-bravo-charlie-delta-echo-foxtrot"])

    def test_collect_keeps_order(self):
        with Daemon({"collect": {"plugin": "collect", "workers": 1}}) as d:
            rc, final, err = d.cli("submit", "collect",
                                   input=b'null\n1\n["a","b"]\n')
            self.assertEqual(rc, 0, err)
            self.assertEqual(final["results"], [[None, 1, ["a", "b"]]])
            self.assertIsNone(final["completion"])

    def test_sum_completion(self):
        n = 100000
        with Daemon({"sum": {"plugin": "sum", "workers": 2}}) as d:
            body = "".join("%d\n" % i for i in range(1, n + 1)).encode()
            rc, final, err = d.cli("submit", "sum", input=body)
            self.assertEqual(rc, 0, err)
            self.assertEqual(final["completion"], n * (n + 1) // 2)
            self.assertEqual(sum(final["results"]), final["completion"])
            self.assertEqual(final["items"], n)
            self.assertEqual(final["consumed"], n)
            assert_invariant(self, final)

    def test_sum_field_from_kwargs(self):
        with Daemon({"sum": {"plugin": "sum", "workers": 2,
                             "kwargs": {"field": "n"}}}) as d:
            items = [{"n": i, "s": "x" * (i % 7)} for i in range(500)]
            rc, final, err = d.cli("submit", "sum", input=lines(items))
            self.assertEqual(rc, 0, err)
            self.assertEqual(final["completion"], sum(range(500)))

    def test_args_kwargs_params_reach_plugin(self):
        pool = {"plugin": test_plugin("echo"), "workers": 2,
                "args": ["one", 2], "kwargs": {"dsn": "test.db", "n": 3}}
        with Daemon({"echo": pool}) as d:
            rc, final, err = d.cli("submit", "-p", '{"tag":"t1"}', "echo",
                                   input=lines([1, 2, 3, 4]))
            self.assertEqual(rc, 0, err)
            self.assertEqual(len(final["results"]), 2)
            seen = []
            for r in final["results"]:
                self.assertEqual(r["init_args"], ["one", 2])
                self.assertEqual(r["init_kwargs"], {"dsn": "test.db", "n": 3})
                self.assertEqual(r["args"], ["one", 2])
                self.assertEqual(r["kwargs"], {"dsn": "test.db", "n": 3})
                self.assertEqual(r["params"], {"tag": "t1"})
                self.assertEqual(r["pool"], "echo")
                self.assertEqual(r["inits"], 1)
                seen += r["items"]
            self.assertEqual(sorted(seen), [1, 2, 3, 4])
            self.assertEqual(sorted(r["worker"] for r in final["results"]),
                             [1, 2])
            self.assertEqual(final["completion"],
                             {"results": 2, "params": {"tag": "t1"}})

    def test_state_lives_across_streams(self):
        # init runs once per process; the same process serves later streams.
        pool = {"plugin": test_plugin("echo"), "workers": 1}
        with Daemon({"echo": pool}) as d:
            pids, streams = set(), []
            for i in range(5):
                rc, final, err = d.cli("submit", "echo", input=lines([i]))
                self.assertEqual(rc, 0, err)
                r = final["results"][0]
                self.assertEqual(r["inits"], 1)
                pids.add(r["pid"])
                streams.append(r["streams"])
            self.assertEqual(len(pids), 1)
            self.assertEqual(streams, [1, 2, 3, 4, 5])

    def test_workers_option_limits_lease(self):
        pool = {"plugin": test_plugin("echo"), "workers": 3}
        with Daemon({"echo": pool}) as d:
            rc, final, err = d.cli("submit", "-w", "1", "echo",
                                   input=lines(list(range(10))))
            self.assertEqual(rc, 0, err)
            self.assertEqual(len(final["results"]), 1)
            self.assertEqual(final["results"][0]["items"], list(range(10)))
            # Asking for more than stream_workers is capped, not refused.
            rc, final, err = d.cli("submit", "-w", "50", "echo",
                                   input=lines(list(range(10))))
            self.assertEqual(rc, 0, err)
            self.assertEqual(len(final["results"]), 3)

    def test_files_are_joined_by_lines(self):
        with Daemon({"collect": {"plugin": "collect"}}) as d:
            tmp = tempfile.mkdtemp()
            a, b = os.path.join(tmp, "a.ndjson"), os.path.join(tmp, "b.ndjson")
            with open(a, "w") as f:
                f.write('1\n2')          # no trailing newline
            with open(b, "w") as f:
                f.write('3\n')
            rc, final, err = d.cli("submit", "collect", a, b)
            self.assertEqual(rc, 0, err)
            self.assertEqual(final["results"], [[1, 2, 3]])

    def test_raw_iterator(self):
        items = [{"k": i} for i in range(1000)]
        body = lines(items)
        with Daemon({"raw": {"plugin": test_plugin("raw"),
                             "workers": 2}}) as d:
            rc, final, err = d.cli("submit", "raw", input=body)
            self.assertEqual(rc, 0, err)
            self.assertEqual(sum(r["lines"] for r in final["results"]), 1000)
            self.assertEqual(sum(r["bytes"] for r in final["results"]),
                             len(body) - 1000)
            self.assertEqual(sum(r["seqsum"] for r in final["results"]),
                             1000 * 1001 // 2)

    def test_concurrent_clients_two_pools(self):
        pools = {"sum": {"plugin": "sum", "workers": 2, "stream_workers": 1},
                 "collect": {"plugin": "collect", "workers": 2}}
        with Daemon(pools) as d:
            results = {}

            def run(k):
                if k % 2 == 0:
                    lo = k * 10000
                    body = "".join("%d\n" % i
                                   for i in range(lo, lo + 20000)).encode()
                    results[k] = ("sum", sum(range(lo, lo + 20000)),
                                  d.cli("submit", "sum", input=body))
                else:
                    vals = [[k, i] for i in range(300)]
                    results[k] = ("collect", vals,
                                  d.cli("submit", "-w", "1", "collect",
                                        input=lines(vals)))

            threads = [threading.Thread(target=run, args=(k,))
                       for k in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            self.assertEqual(len(results), 8)
            for k, (pool, expect, (rc, final, err)) in results.items():
                self.assertEqual(rc, 0, err)
                if pool == "sum":
                    self.assertEqual(final["completion"], expect)
                else:
                    self.assertEqual(final["results"], [expect])


if __name__ == "__main__":
    main()
