"""libconsumers from C: tests/client/libclient drives the library's API
(cns_stream_open, put, put_line, the reply callback, close, cns_ask)
against a real daemon and prints what the library returned.  Covers
rejections reported through the callback while streaming, the error
texts of an unknown pool and of a socket that does not exist, the socket
taken from $CONSUMERS_SOCKET, and a large stream of invalid items, every
one rejected while the client keeps writing, that must not deadlock."""
import json
import os
import re
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Daemon, SANITIZERS, SLOWDOWN, TOOL_EXIT,  # noqa
                     TOP_BUILDDIR, assert_invariant, main, tool_reports)

TOOL = os.path.join(TOP_BUILDDIR, "tests", "client", "libclient")


def run(socket, *args, env=None, timeout=60):
    p = subprocess.run([TOOL, socket] + [str(a) for a in args],
                       capture_output=True, timeout=timeout * SLOWDOWN,
                       env=dict(os.environ, **env) if env else None)
    err = p.stderr.decode(errors="replace")
    if SANITIZERS and (tool_reports(err) or p.returncode == TOOL_EXIT):
        raise AssertionError("a sanitizer reported errors in libclient:\n" +
                             err)
    if p.returncode != 0:
        raise AssertionError("libclient exited %d: %s" % (p.returncode, err))
    return json.loads(p.stdout)


def pools():
    return {"sum": {"plugin": "sum", "workers": 2}}


class Streams(unittest.TestCase):

    def test_put_put_line_and_rejection_callback(self):
        n, bad = 5000, 7
        with Daemon(pools()) as d:
            out = run(d.socket, "stream", "sum", n, bad)
            final = out["final"]
            self.assertTrue(final["ok"], out)
            assert_invariant(self, final)
            want_bad = [i for i in range(1, n + 1) if i % bad == 0]
            # Every rejection reached the callback, with its seq.
            self.assertEqual(sorted(out["rejected"]), want_bad)
            self.assertEqual(final["rejected"], len(want_bad))
            self.assertEqual(final["completion"],
                             sum(i for i in range(1, n + 1) if i % bad))
            # The lease reply was read: the stream's id and consumers.
            self.assertEqual(out["id"], final["stream"])
            self.assertEqual(out["workers"], 2)
            self.assertEqual(out["workers"], len(final["results"]))
            # A line with a newline was refused by put_line, not sent.
            self.assertNotIn("newline_accepted", out)
            self.assertEqual(final["items"], n)
            self.assertEqual(out["err"], "")

    def test_workers_asked(self):
        with Daemon(pools()) as d:
            out = run(d.socket, "stream", "sum", 10, 0, 1)
            self.assertEqual(out["final"]["results"], [55])
            self.assertEqual(out["workers"], 1)

    def test_unknown_pool(self):
        with Daemon(pools()) as d:
            # Many items: the refusal comes while the client writes.
            out = run(d.socket, "stream", "nope", 300000, 0)
            want = 'no pool named "nope" (pools: sum)'
            self.assertEqual(out["final"], {"ok": False, "error": want,
                                            "code": "unknown_pool"})
            self.assertEqual(out["err"], want)
            self.assertEqual(out["puts_failed"], 1)
            self.assertEqual(out["put_err"],
                             "the daemon ended the stream: " + want)
            self.assertEqual(out["id"], 0)

    def test_socket_that_does_not_exist(self):
        with Daemon(pools()) as d:
            path = os.path.join(d.dir, "absent.sock")
            out = run(path, "stream", "sum", 1, 0)
            self.assertEqual(
                out["open_err"], "cannot connect to consumersd at %s: No "
                "such file or directory (is the daemon running? use -s or "
                "$CONSUMERS_SOCKET to name its socket)" % path)
            self.assertEqual(out["errno"], 2)
            out = run(path, "ask", '{"op":"status"}')
            self.assertIsNone(out["answer"])
            self.assertTrue(out["err"].startswith(
                "cannot connect to consumersd at %s: No such file" % path))

    def test_socket_from_environment(self):
        with Daemon(pools()) as d:
            out = run("", "stream", "sum", 100, 0,
                      env={"CONSUMERS_SOCKET": d.socket})
            self.assertEqual(out["final"]["completion"], 5050)
            out = run("", "ask", '{"op":"pools"}',
                      env={"CONSUMERS_SOCKET": d.socket})
            self.assertEqual([p["name"] for p in out["answer"]["pools"]],
                             ["sum"])

    def test_many_rejections_while_writing_do_not_deadlock(self):
        # Every item is invalid: the daemon sends a rejection line for
        # each while the client is still writing.  A client that did not
        # read while it wrote would stall once the replies filled the
        # socket and the daemon stopped reading it.
        n = 500000
        with Daemon(pools()) as d:
            out = run(d.socket, "stream", "sum", n, 1, timeout=300)
            final = out["final"]
            self.assertTrue(final["ok"], out)
            assert_invariant(self, final)
            self.assertEqual((final["items"], final["rejected"],
                              final["consumed"]), (n, n, 0))
            self.assertEqual(len(out["rejected"]), n)
            self.assertEqual(set(out["rejected"]), set(range(1, n + 1)))
            self.assertEqual(out["puts_failed"], 0)


class Ask(unittest.TestCase):

    def test_status_pools_and_refusal(self):
        with Daemon(pools()) as d:
            out = run(d.socket, "ask", '{"op":"status"}')
            self.assertTrue(out["answer"]["ok"])
            self.assertEqual([p["name"] for p in out["answer"]["pools"]],
                             ["sum"])
            self.assertEqual(out["answer"]["daemon"]["pid"], d.pid())
            out = run(d.socket, "ask", '{"op":"nope"}')
            self.assertFalse(out["answer"]["ok"])
            self.assertTrue(re.match(r'unknown op "nope"',
                                     out["answer"]["error"]), out)


if __name__ == "__main__":
    main()
