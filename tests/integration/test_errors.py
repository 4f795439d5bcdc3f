"""Bad input and failing plugins: every problem gets a precise error, the
stream or the daemon goes on, and no item is lost without a report."""
import json
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (wait_for, Daemon, lines, assert_invariant, test_plugin,  # noqa
                     read_lines, final_of, rejections, main)


class BadItems(unittest.TestCase):

    def test_bad_line_mid_stream(self):
        with Daemon({"sum": {"plugin": "sum", "workers": 2}}) as d:
            body = b"".join(b"{oops\n" if i == 500 else b"%d\n" % i
                            for i in range(1, 1001))
            rc, final, err = d.cli("submit", "sum", input=body)
            self.assertEqual(rc, 1)          # something was rejected
            self.assertTrue(final["ok"])
            self.assertEqual(final["items"], 1000)
            self.assertEqual(final["rejected"], 1)
            self.assertEqual(final["consumed"], 999)
            self.assertEqual(final["completion"], 1000 * 1001 // 2 - 500)
            self.assertIn("item 500 rejected: invalid JSON", err)
            assert_invariant(self, final)

    def test_rejections_reach_a_socket_client(self):
        with Daemon({"sum": {"plugin": "sum"}}) as d:
            body = b'1\n"\xff\xfe"\n2\n"a\x00b"\n[1,2\n3\n'
            replies, final = d.submit_raw({"op": "submit", "pool": "sum"},
                                          body)
            rejected = rejections(replies)
            self.assertEqual(sorted(rejected), [2, 4, 5])
            for e in rejected.values():
                self.assertTrue(e.startswith("invalid JSON"), e)
            self.assertEqual(final["completion"], 6)
            self.assertEqual(final["items"], 6)
            assert_invariant(self, final)

    def test_overlong_lines(self):
        pools = {"collect": {"plugin": "collect"}}
        with Daemon(pools, {"max_item_bytes": 1024}) as d:
            long_ok = "y" * 1000
            body = (lines([1, "x" * 3000, 3, long_ok]) +
                    b"[" * 5000 + b"\n" + lines([5]) + b"z" * 4000)
            replies, final = d.submit_raw({"op": "submit", "pool": "collect"},
                                          body)
            rejected = rejections(replies)
            self.assertEqual(sorted(rejected), [2, 5, 7])
            self.assertIn("3002 bytes exceeds max_item_bytes (1024)",
                          rejected[2])
            self.assertIn("exceeds max_item_bytes", rejected[5])
            self.assertIn("at least", rejected[7])
            self.assertEqual(final["results"], [[1, 3, long_ok, 5]])
            assert_invariant(self, final)

    def test_truncated_last_line_and_empty_lines(self):
        with Daemon({"collect": {"plugin": "collect"}}) as d:
            replies, final = d.submit_raw({"op": "submit", "pool": "collect"},
                                          b'1\n\n\n2\n\n"tail')
            rej = rejections(replies)
            self.assertEqual(list(rej), [3])
            self.assertIn("truncated", rej[3])
            self.assertEqual(final["results"], [[1, 2]])
            self.assertEqual(final["items"], 3)


class BadHeaders(unittest.TestCase):

    def test_header_errors(self):
        cases = [
            (b'{"op":"submit","pool":"nope"}\n',
             'no pool named "nope" (pools: sum)'),
            (b'not json\n', "the header is not a JSON object"),
            (b'[1,2]\n', "the header is not a JSON object"),
            (b'{"pool":"sum"}\n', 'needs "op": one of submit'),
            (b'{"op":"fly","pool":"sum"}\n', 'unknown op "fly"'),
            (b'{"op":"submit"}\n', 'needs "pool"'),
            (b'{"op":"submit","pool":"sum","color":1}\n',
             'unknown key "color"'),
            (b'{"op":"submit","pool":"sum","workers":0}\n',
             '"workers" must be a positive integer'),
            (b'{"op":"submit","pool":"sum","workers":"2"}\n',
             '"workers" must be a positive integer'),
            (b'{"op":"submit","pool":"sum","pool":"sum"}\n',
             "duplicate object key"),
        ]
        with Daemon({"sum": {"plugin": "sum"}}) as d:
            for header, expect in cases:
                replies, final = d.submit_raw(header, b"1\n")
                self.assertEqual(len(replies), 1, header)
                self.assertIs(final["ok"], False, header)
                self.assertIn(expect, final["error"], header)
            replies, final = d.submit_raw(b'{"op":"submit"', b"")
            self.assertIn("connection ended before a complete header",
                          final["error"])
            # A header longer than the limit.
            replies, final = d.submit_raw(b'{"op":"' + b"s" * 70000, b"")
            self.assertIn("longer than 65536", final["error"])
            # The daemon still serves a good client.
            rc, final, err = d.cli("submit", "sum", input=b"1\n2\n")
            self.assertEqual((rc, final["completion"]), (0, 3), err)

    def test_names_cut_inside_a_character(self):
        # Names are quoted up to 100 bytes in errors; a cut through a
        # multibyte character must not break the reply (it once killed
        # the master).
        with Daemon({"sum": {"plugin": "sum"}}) as d:
            header = ('{"op":"submit","pool":"' + "a" * 99 + '\u00e9"}\n')
            replies, final = d.submit_raw(header.encode(), b"")
            self.assertFalse(final["ok"])
            self.assertIn('no pool named "' + "a" * 99 + '?"',
                          final["error"])
            rc, final, err = d.cli("submit", "sum", input=b"4\n")
            self.assertEqual((rc, final["completion"]), (0, 4), err)

    def test_cli_reports_unknown_pool(self):
        with Daemon({"sum": {"plugin": "sum"}}) as d:
            rc, final, err = d.cli("submit", "nope", input=b"1\n")
            self.assertEqual(rc, 1)
            self.assertFalse(final["ok"])
            self.assertIn('no pool named "nope"', err)

    def test_cli_checks_files_and_options_first(self):
        with Daemon({"sum": {"plugin": "sum"}}) as d:
            good = os.path.join(d.dir, "good.ndjson")
            with open(good, "w") as f:
                f.write("1\n")
            rc, final, err = d.cli("submit", "sum", good,
                                   os.path.join(d.dir, "missing.ndjson"))
            self.assertEqual(rc, 2)
            self.assertIn("missing.ndjson: No such file", err)
            rc, final, err = d.cli("submit", "-w", "2x", "sum", good)
            self.assertEqual(rc, 2)
            self.assertIn('-w: workers must be a positive integer, not "2x"',
                          err)
            # Neither opened a stream.
            self.assertNotIn("stream 1:", d.log_text())

    def test_cli_without_daemon(self):
        with Daemon({"sum": {"plugin": "sum"}}) as d:
            sock = d.socket
        import subprocess
        from harness import CLI
        p = subprocess.run([CLI, "-s", sock, "submit", "sum"], input=b"1\n",
                           capture_output=True)
        self.assertEqual(p.returncode, 2)
        self.assertIn(b"cannot connect to consumersd", p.stderr)


class BadPlugins(unittest.TestCase):

    def expect_refused(self, plugin, text):
        pools = {"bad": {"plugin": test_plugin(plugin)},
                 "sum": {"plugin": "sum"}}
        with Daemon(pools) as d:
            rc, final, err = d.cli("submit", "bad", input=b"1\n")
            self.assertEqual(rc, 1, err)
            self.assertFalse(final["ok"])
            self.assertIn("pool bad cannot start its workers", final["error"])
            self.assertIn(text, final["error"])
            # Other pools keep working.
            rc, final, err = d.cli("submit", "sum", input=b"1\n2\n")
            self.assertEqual((rc, final["completion"]), (0, 3), err)
            self.assertIn("failed to start", d.log_text())

    def test_init_failure(self):
        self.expect_refused("failinit",
                            "init failed: cannot reach the test database "
                            "(pool bad)")

    def test_abi_mismatch(self):
        self.expect_refused("badabi", "was built for plugin ABI 99, this "
                            "consumersd speaks ABI 1")

    def test_missing_descriptor(self):
        self.expect_refused("nodesc", 'has no "consumers_plugin" descriptor')

    def test_not_a_shared_object(self):
        pools = {"bad": {"plugin": "./garbage.so"}}
        d = Daemon(pools)
        with open(os.path.join(d.dir, "pools.d", "garbage.so"), "w") as f:
            f.write("not an ELF file\n")
        with d:
            rc, final, err = d.cli("submit", "bad", input=b"1\n")
            self.assertEqual(rc, 1)
            self.assertIn("cannot load plugin", final["error"])


class DyingWorkers(unittest.TestCase):

    def test_worker_killed_mid_stream_is_reported(self):
        pools = {"crash": {"plugin": test_plugin("crash"), "workers": 2,
                           "on_crash": "fail"}}
        with Daemon(pools) as d:
            items = list(range(1, 2001))
            items[1499] = "segv"
            rc, final, err = d.cli("submit", "crash", input=lines(items))
            self.assertEqual(rc, 1)
            self.assertFalse(final["ok"])
            self.assertEqual(final["items"], 2000)
            errs = [e for e in final["errors"] if e["stage"] == "consume"]
            self.assertEqual(len(errs), 1, final["errors"])
            self.assertIn("killed by signal 11", errs[0]["error"])
            self.assertEqual(errs[0]["signal"], 11)
            self.assertEqual(final["crashes"], 1)
            # The dead consumer's items are named by sequence ranges.
            taken = sum(b - a + 1 for a, b in errs[0]["seqs"])
            self.assertTrue(any(a <= 1500 <= b for a, b in errs[0]["seqs"]))
            self.assertEqual(final["unconsumed"], taken)
            assert_invariant(self, final)
            # The survivor's result is there; the dead one's slot is null.
            self.assertEqual(sum(r for r in final["results"] if r),
                             final["consumed"])
            # The pool recovers: a new worker replaces the dead one.
            deadline = time.monotonic() + 10
            while len(d.worker_pids()) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            rc, final, err = d.cli("submit", "crash",
                                   input=lines(list(range(100))))
            self.assertEqual(rc, 0, err)
            self.assertEqual(final["consumed"], 100)

    def test_exit_in_plugin(self):
        pools = {"crash": {"plugin": test_plugin("crash"), "workers": 1,
                           "on_crash": "fail"}}
        with Daemon(pools) as d:
            rc, final, err = d.cli("submit", "crash",
                                   input=lines([1, {"exit": 3}, 4]))
            self.assertEqual(rc, 1)
            self.assertIn("exited with status 3", final["errors"][0]["error"])
            self.assertEqual(final["errors"][0]["exit"], 3)
            self.assertEqual(final["errors"][0]["seqs"], [[1, 3]])
            assert_invariant(self, final)

    def test_consume_dying_before_its_first_item_is_bounded(self):
        # A consume call that dies before it takes any item is run again
        # (replay), max_attempts times in all; then its lane is reported
        # lost, and no item is blamed or quarantined.
        pools = {"crash": {"plugin": test_plugin("crash"), "workers": 1,
                           "max_attempts": 2}}
        with Daemon(pools) as d:
            replies, final = d.submit_raw(
                {"op": "submit", "pool": "crash",
                 "params": {"start": "segv"}}, lines([1, 2, 3]))
            self.assertEqual(final["crashes"], 2)
            self.assertEqual(final["quarantined"], 0)
            self.assertEqual(final["unconsumed"], 3)
            [e] = final["errors"]
            self.assertIn("consume died 2 times before it took an item",
                          e["error"])
            self.assertEqual(e["seqs"], [[1, 3]])
            assert_invariant(self, final)
            # The pool goes on: its replacement worker serves.
            rc, final, err = d.cli("submit", "crash", input=b"1\n2\n")
            self.assertEqual((rc, final["consumed"]), (0, 2), err)

    def test_every_worker_dead_rest_is_reported(self):
        # The only worker dies early in a long stream: the daemon reads
        # the rest to the end and names it, so every item is accounted.
        pools = {"crash": {"plugin": test_plugin("crash"), "workers": 1,
                           "on_crash": "fail"}}
        with Daemon(pools) as d:
            n = 200000
            items = list(range(n))
            items[9] = "segv"
            rc, final, err = d.cli("submit", "crash", input=lines(items))
            self.assertEqual(rc, 1)
            self.assertEqual(final["items"], n)
            self.assertEqual(final["consumed"], 0)
            self.assertEqual(final["unconsumed"], n)
            assert_invariant(self, final)
            died, rest = final["errors"]
            self.assertIn("killed by signal 11", died["error"])
            self.assertEqual(died["seqs"][0][0], 1)
            self.assertEqual(rest["stage"], "stream")
            self.assertEqual(rest["seqs"], [[died["seqs"][-1][1] + 1, n]])
            self.assertIn("every worker of the stream died", err)

    def test_rejection_for_an_item_not_held(self):
        # A worker that reports a rejection for a seq it never took breaks
        # the protocol: it is killed, no bogus rejection reaches the
        # client, and the counts still add up.
        pools = {"liar": {"plugin": test_plugin("liar"), "workers": 1,
                          "on_crash": "fail"}}
        with Daemon(pools) as d:
            replies, final = d.submit_raw(
                {"op": "submit", "pool": "liar",
                 "params": {"stream": 1, "seq": 99}}, lines([1, 2]))
            self.assertEqual(rejections(replies), {})
            self.assertEqual(final["rejected"], 0)
            self.assertEqual(final["unconsumed"], 2)
            assert_invariant(self, final)
            self.assertIn("killed by signal 9", final["errors"][0]["error"])
            self.assertIn("a rejection for an item it does not hold",
                          d.log_text())

    def test_protocol_error_is_a_crash_on_the_item_held(self):
        # A worker killed for a protocol error while it holds an item has
        # crashed on that item: under replay the lane runs again, and the
        # item is quarantined after max_attempts; every other item is
        # consumed (not the whole lane reported unconsumed).  The plugin
        # holds the item until it is killed, so the item its progress
        # page names is the one it broke the protocol on; one that goes
        # on after writing garbage is blamed for the item it holds when
        # the master kills it.
        pools = {"liar": {"plugin": test_plugin("liar"), "workers": 1,
                          "on_crash": "replay", "max_attempts": 2}}
        items = [1, 2, 3, "bad", 5, 6, 7]
        with Daemon(pools) as d:
            replies, final = d.submit_raw(
                {"op": "submit", "pool": "liar",
                 "params": {"stream": 1, "seq": 99, "on": "bad",
                            "hold": True}}, lines(items))
            self.assertEqual(rejections(replies), {})
            self.assertEqual(final["quarantined"], 1, final)
            self.assertEqual(final["consumed"], 6, final)
            self.assertEqual(final["unconsumed"], 0, final)
            self.assertEqual(final["results"], [6], final)
            self.assertEqual(final["crashes"], 2, final)
            assert_invariant(self, final)
            q = [r for r in replies
                 if isinstance(r.get("quarantined"), dict)]
            self.assertEqual(len(q), 1, replies)
            self.assertEqual(q[0]["quarantined"]["seq"], 4, q)
            self.assertIn("a rejection for an item it does not hold",
                          d.log_text())

    def test_complete_crash_keeps_results(self):
        pools = {"crash": {"plugin": test_plugin("crash"), "workers": 2}}
        with Daemon(pools) as d:
            rc, final, err = d.cli("submit", "-p", '{"complete":"segv"}',
                                   "crash", input=lines(list(range(10))))
            self.assertEqual(rc, 1)
            self.assertEqual(sum(final["results"]), 10)
            self.assertEqual(final["consumed"], 10)
            self.assertEqual(final["errors"][0]["stage"], "complete")
            self.assertIn("signal 11", final["errors"][0]["error"])


class Clients(unittest.TestCase):

    def test_pool_busy_after_queue_timeout(self):
        pools = {"echo": {"plugin": test_plugin("echo"), "workers": 1,
                          "queue_timeout": 0.5}}
        with Daemon(pools) as d:
            a = d.connect()
            a.sendall(b'{"op":"submit","pool":"echo"}\n1\n')
            lease = json.loads(a.makefile().readline())
            self.assertEqual(lease["workers"], 1)
            t0 = time.monotonic()
            rc, final, err = d.cli("submit", "echo", input=b"2\n")
            self.assertGreaterEqual(time.monotonic() - t0, 0.4)
            self.assertEqual(rc, 1)
            self.assertIn("pool busy", final["error"])
            a.sendall(b"3\n")
            a.shutdown(1)
            final_a = final_of(read_lines(a))
            a.close()
            self.assertEqual(final_a["results"][0]["items"], [1, 3])

    def test_queued_stream_is_served_fifo(self):
        # One worker, held by a; b, c, d and e come in that order (each
        # seen waiting before the next connects), all closed already.
        # The worker must serve them in arrival order: echo's "streams"
        # counts the streams its process served, so b is its 2nd, c its
        # 3rd...  One waiting stream could not tell FIFO from LIFO.
        pools = {"echo": {"plugin": test_plugin("echo"), "workers": 1}}
        with Daemon(pools) as d:
            a = d.connect()
            a.sendall(b'{"op":"submit","pool":"echo"}\n"a"\n')
            json.loads(a.makefile().readline())
            waiting = []
            for name in "bcde":
                n = d.log_text().count("waiting for a echo worker")
                w = d.connect()
                w.settimeout(30)
                w.sendall(b'{"op":"submit","pool":"echo"}\n"%s"\n' %
                          name.encode())
                w.shutdown(1)
                wait_for(lambda: d.log_text().count(
                    "waiting for a echo worker") > n,
                    what="stream %s to wait" % name)
                waiting.append(w)
            a.shutdown(1)
            fa = final_of(read_lines(a))
            a.close()
            self.assertEqual(fa["results"][0]["items"], ["a"])
            for k, (name, w) in enumerate(zip("bcde", waiting)):
                f = final_of(read_lines(w))
                w.close()
                self.assertEqual(f["results"][0]["items"], [name], f)
                self.assertEqual(f["results"][0]["streams"], k + 2,
                                 "stream %s served out of order: %s" %
                                 (name, f))

    def test_vanished_client(self):
        with Daemon({"sum": {"plugin": "sum", "workers": 2}}) as d:
            s = d.connect()
            s.sendall(b'{"op":"submit","pool":"sum"}\n' +
                      b"".join(b"%d\n" % i for i in range(1000)))
            s.close()
            deadline = time.monotonic() + 10
            while ("client gone; final line" not in d.log_text() and
                   time.monotonic() < deadline):
                time.sleep(0.05)
            self.assertIn("1000 items, 1000 consumed", d.log_text())
            # The completion handler ran; its value is in the logged
            # final line, since no client is left to get it.
            self.assertRegex(d.log_text(), r'client gone; final line: .*'
                             r'"completion":499500')
            rc, final, err = d.cli("submit", "sum", input=b"5\n")
            self.assertEqual((rc, final["completion"]), (0, 5), err)

    def test_one_item_is_singular(self):
        # Counts in messages agree with their noun: "1 item", not "1 items".
        with Daemon({"sum": {"plugin": "sum", "workers": 1}}) as d:
            rc, final, err = d.cli("submit", "sum", input=b"7\n")
            self.assertEqual((rc, final["completion"]), (0, 7), err)
            deadline = time.monotonic() + 10
            while (": 1 item, 1 consumed" not in d.log_text() and
                   time.monotonic() < deadline):
                time.sleep(0.05)
            self.assertIn(": 1 item, 1 consumed", d.log_text())
            self.assertNotIn(" 1 items", d.log_text())


if __name__ == "__main__":
    main()
