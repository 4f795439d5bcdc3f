"""The status and pools ops, over a plain socket and through the CLI: the
counts follow what the test did (a stream on a slow pool, then its end),
the worker entries carry their stream, items and memory, and
`consumers status --watch` refreshes until SIGINT."""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (wait_for, ask, Daemon, CLI, VALGRIND, SLOWDOWN, test_plugin,  # noqa
                     read_lines, main)


def pools():
    return {
        "slow": {"plugin": test_plugin("slow"), "workers": 2,
                 "stream_workers": 1, "kwargs": {"usec": 20000}},
        "sum": {"plugin": "sum"},
    }




def pool_of(status, name):
    for p in status["pools"]:
        if p["name"] == name:
            return p
    raise AssertionError("no pool %s in %r" % (name, status))




class SlowStream:
    """A stream of n items on the slow pool, held open until end()."""

    def __init__(self, d, n):
        self.s = d.connect()
        self.s.settimeout(30 * SLOWDOWN)
        self.s.sendall(b'{"op":"submit","pool":"slow"}\n' +
                       b"".join(b"%d\n" % i for i in range(1, n + 1)))
        self.lease = json.loads(self.s.makefile("rb").readline())

    def end(self):
        self.s.shutdown(socket.SHUT_WR)
        replies = read_lines(self.s)
        self.s.close()
        return replies[-1]


class Status(unittest.TestCase):

    def test_status_follows_a_stream(self):
        with Daemon(pools()) as d:
            st = SlowStream(d, 100)
            self.assertTrue(st.lease["ok"], st.lease)
            sid = st.lease["stream"]
            # The items reach the worker (sent, not yet consumed).
            v = wait_for(lambda: (lambda v: v if pool_of(v, "slow")
                                  ["items"]["in"] == 100 else None)(
                ask(d, {"op": "status"})), what="100 items in")
            self.assertTrue(v["ok"])
            self.assertEqual(v["daemon"]["pid"], d.pid())
            self.assertEqual(v["daemon"]["streams_open"], 1)
            self.assertEqual(v["daemon"]["workers"], 3)
            # The uptime is the daemon's own, and it goes on: a later
            # call reports more (polled; the clock ticks in 10 ms).
            up = v["daemon"]["uptime"]
            self.assertGreaterEqual(up, 0)
            wait_for(lambda: ask(d, {"op": "status"})["daemon"]["uptime"]
                     > up, what="the uptime to grow past %s" % up)
            p = pool_of(v, "slow")
            self.assertEqual(p["mode"], "static")
            self.assertEqual(p["capacity"], 2)
            self.assertEqual(p["workers"], {"total": 2, "idle": 1,
                                            "busy": 1, "starting": 0,
                                            "exiting": 0, "retiring": 0})
            self.assertEqual(p["streams"], {"open": 1, "queued": 0,
                                            "completed": 0})
            self.assertEqual((p["crashes"], p["failed"], p["last_error"]),
                             (0, False, None))
            busy = [w for w in p["processes"] if w["state"] == "busy"]
            idle = [w for w in p["processes"] if w["state"] == "idle"]
            self.assertEqual((len(busy), len(idle)), (1, 1), p)
            self.assertEqual(busy[0]["stream"], sid)
            self.assertEqual(busy[0]["items"], 100)
            self.assertIsNone(idle[0]["stream"])
            self.assertEqual(sorted(w["slot"] for w in p["processes"]),
                             [1, 2])
            self.assertEqual(sorted(w["pid"] for w in p["processes"] +
                                    pool_of(v, "sum")["processes"]),
                             sorted(d.worker_pids()))
            now = time.time()
            for w in p["processes"]:
                self.assertGreater(w["rss_kib"], 0)
                self.assertLessEqual(abs(w["start"] - now), 60)
            # One pool only.
            one = ask(d, {"op": "status", "pool": "sum"})
            self.assertEqual([q["name"] for q in one["pools"]], ["sum"])
            final = st.end()
            self.assertEqual(final["consumed"], 100, final)
            v = wait_for(lambda: (lambda v: v if pool_of(v, "slow")
                                  ["streams"]["completed"] == 1 else None)(
                ask(d, {"op": "status"})), what="the stream completed")
            p = pool_of(v, "slow")
            self.assertEqual(p["streams"]["open"], 0)
            self.assertEqual(p["workers"]["idle"], 2)
            # The finished stream still counts in the pool's items.
            self.assertEqual(p["items"]["in"], 100)
            self.assertEqual(p["items"]["consumed"], 100)
            served = sorted(w["streams_served"] for w in p["processes"])
            self.assertEqual(served, [0, 1])

    def test_queued_stream_and_its_wait(self):
        with Daemon(pools()) as d:
            a, b = SlowStream(d, 300), SlowStream(d, 300)
            c = d.connect()
            c.sendall(b'{"op":"submit","pool":"slow"}\n1\n')

            def slow():
                return ask(d, {"op": "status", "pool": "slow"})["pools"][0]
            p = wait_for(lambda: (lambda p: p if p["streams"]["queued"] == 1
                                  else None)(slow()), what="c queued")
            self.assertEqual(p["streams"]["open"], 2)
            self.assertEqual(p["workers"]["busy"], 2)
            # queue_wait is how long c has waited so far: it grows while
            # c waits (polled; no guess at how fast).
            first = p["queue_wait"]
            p = wait_for(lambda: (lambda p: p if p["queue_wait"] > first
                                  else None)(slow()),
                         what="queue_wait to grow past %s" % first)
            self.assertEqual(p["streams"]["queued"], 1)
            a.end()
            b.end()
            c.shutdown(socket.SHUT_WR)
            c.settimeout(30 * SLOWDOWN)
            self.assertEqual(read_lines(c)[-1]["consumed"], 1)
            c.close()

    def test_open_streams_and_rates(self):
        """status lists each open stream: its id, the client's pid and
        uid, its pool, its age, items in and done, its rate; and each pool
        says its items per second."""
        with Daemon(pools()) as d:
            st = SlowStream(d, 100)
            self.assertTrue(st.lease["ok"], st.lease)
            held = d.connect()
            held.settimeout(30 * SLOWDOWN)
            held.sendall(b'{"op":"submit","pool":"sum"}\n' +
                         b"".join(b"%d\n" % i for i in range(1, 11)))
            lease = json.loads(held.makefile("rb").readline())
            self.assertTrue(lease["ok"], lease)

            def streams():
                v = ask(d, {"op": "status"})
                return {s["id"]: s for s in v["streams"]}, v

            # The held sum stream: its 10 items are done while it is open;
            # the slow one has all 100 in and some done (polled).
            got, v = wait_for(lambda: (lambda g: g if g[0][lease["stream"]]
                                       ["items"] == {"in": 10, "done": 10}
                                       and g[0][st.lease["stream"]]["items"]
                                       ["in"] == 100 and
                                       g[0][st.lease["stream"]]["items"]
                                       ["done"] > 0 else None)(streams()),
                              what="10 items done and 100 in")
            self.assertEqual(sorted(got), sorted([st.lease["stream"],
                                                  lease["stream"]]))
            slow, summ = got[st.lease["stream"]], got[lease["stream"]]
            self.assertEqual((slow["pool"], summ["pool"]), ("slow", "sum"))
            for s in (slow, summ):
                self.assertEqual(s["client"], {"pid": os.getpid(),
                                               "uid": os.getuid()})
                self.assertEqual(s["state"], "running")
                self.assertEqual(s["workers"], 1)
                self.assertGreaterEqual(s["age"], 0)
                self.assertLessEqual(s["items"]["done"], s["items"]["in"])
                # Items went out within the last seconds: a rate above 0.
                self.assertGreater(s["rate"], 0)
            self.assertLessEqual(slow["items"]["done"], 100)
            self.assertGreater(pool_of(v, "slow")["items_per_second"], 0)
            self.assertGreater(pool_of(v, "sum")["items_per_second"], 0)
            # The age goes on (polled).
            wait_for(lambda: streams()[0][lease["stream"]]["age"] >
                     summ["age"], what="the age to grow")
            # One pool: its streams only.
            one = ask(d, {"op": "status", "pool": "sum"})
            self.assertEqual([s["id"] for s in one["streams"]],
                             [lease["stream"]])
            self.assertEqual(st.end()["consumed"], 100)
            held.shutdown(socket.SHUT_WR)
            self.assertEqual(read_lines(held)[-1]["completion"], 55)
            held.close()
            wait_for(lambda: ask(d, {"op": "status"})["streams"] == [],
                     what="no open stream left")

    def test_counters_survive_a_reload_and_old_workers_retire(self):
        """A reload that changes a pool keeps its counters (they belong to
        its name), and the old workers that finish its open stream are
        shown as retiring, in status, the CLI and the metrics."""
        with Daemon(pools()) as d:
            rc, f, err = d.cli("submit", "slow", input=b"".join(
                b"%d\n" % i for i in range(1, 11)))
            self.assertEqual((rc, f["consumed"]), (0, 10), err)
            st = SlowStream(d, 100)
            sid = st.lease["stream"]
            v = wait_for(lambda: (lambda v: v if pool_of(v, "slow")
                                  ["items"]["in"] == 110 else None)(
                ask(d, {"op": "status"})), what="100 items in")
            old = sorted(w["pid"] for w in pool_of(v, "slow")["processes"])
            busy = [w["pid"] for w in pool_of(v, "slow")["processes"]
                    if w["stream"] == sid]
            self.assertEqual(len(busy), 1, v)
            # Change the pool: new workers start; the open stream goes on
            # on its old one.
            with open(os.path.join(d.dir, "pools.d", "slow.json"),
                      "w") as f:
                json.dump(dict(pools()["slow"], kwargs={"usec": 20001}), f)
            r = ask(d, {"op": "reload"})
            self.assertTrue(r["ok"], r)
            self.assertIn("1 changed", r["reloaded"])
            p = pool_of(ask(d, {"op": "status"}), "slow")
            self.assertEqual(p["streams"], {"open": 1, "queued": 0,
                                            "completed": 1})
            self.assertEqual(p["items"]["in"], 110)
            self.assertGreaterEqual(p["items"]["consumed"], 10)
            self.assertEqual(p["crashes"], 0)
            retiring = [w for w in p["processes"]
                        if w["state"] == "retiring"]
            self.assertIn(busy[0], [w["pid"] for w in retiring], p)
            self.assertEqual(p["workers"]["retiring"], len(retiring))
            self.assertTrue({w["pid"] for w in retiring} <= set(old), p)
            self.assertEqual([w["stream"] for w in retiring
                              if w["pid"] == busy[0]], [sid])
            v = ask(d, {"op": "status"})
            self.assertEqual([(s["id"], s["pool"]) for s in v["streams"]],
                             [(sid, "slow")])
            out = subprocess.run(VALGRIND + [CLI, "-s", d.socket, "status"],
                                 capture_output=True, text=True,
                                 timeout=30 * SLOWDOWN).stdout
            self.assertRegex(out, r"(?m)^  worker \d+ +pid %d +retiring "
                                  r"+stream %d " % (busy[0], sid))
            fams = parse_openmetrics(ask(d, {"op": "metrics"})["metrics"])
            self.assertGreaterEqual(om_value(fams, "consumersd_workers",
                                             "consumersd_workers",
                                             pool="slow", state="retiring"),
                                    1)
            # The stream ends; the old workers go; the counts stay, the
            # stream's added: no respawn for the stopped old workers.
            self.assertEqual(st.end()["consumed"], 100)

            def settled():
                p = pool_of(ask(d, {"op": "status"}), "slow")
                return p if (p["workers"]["retiring"] == 0 and
                             p["streams"]["completed"] == 2 and not
                             set(old) & set(d.worker_pids())) else None
            p = wait_for(settled, what="the old workers gone")
            self.assertEqual(p["items"], {"in": 110, "consumed": 110,
                                          "rejected": 0, "quarantined": 0})
            self.assertEqual((p["crashes"], p["respawns"]), (0, 0))
            self.assertNotIn("retiring", [w["state"]
                                          for w in p["processes"]])
            fams = parse_openmetrics(ask(d, {"op": "metrics"})["metrics"])
            self.assertEqual(om_value(fams, "consumersd_items",
                                      "consumersd_items_total", pool="slow",
                                      outcome="consumed"), 110)
            self.assertEqual(om_value(
                fams, "consumersd_streams_completed",
                "consumersd_streams_completed_total", pool="slow"), 2)

    def test_pools(self):
        with Daemon(pools()) as d:
            v = ask(d, {"op": "pools"})
            self.assertTrue(v["ok"])
            got = {p["name"]: p for p in v["pools"]}
            self.assertEqual(sorted(got), ["slow", "sum"])
            self.assertEqual(got["slow"]["workers"], 2)
            self.assertEqual(got["slow"]["stream_workers"], 1)
            self.assertEqual(got["slow"]["mode"], "static")
            self.assertTrue(got["sum"]["plugin"].endswith("sum.so"))
            rc, _, err = d.cli("pools", "--json")
            self.assertEqual(rc, 0, err)
            p = subprocess.run(VALGRIND + [CLI, "-s", d.socket, "pools"],
                               capture_output=True, text=True,
                               timeout=30 * SLOWDOWN)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertRegex(p.stdout, r"(?m)^slow +static +2 +1 +/\S+"
                                       r"slow\.so$")

    def test_bad_requests(self):
        with Daemon(pools()) as d:
            v = ask(d, {"op": "status", "pool": "nope"})
            self.assertEqual(v, {"ok": False, "error": 'no pool named '
                                 '"nope" (pools: slow, sum)',
                                 "code": "unknown_pool"})
            v = ask(d, {"op": "status", "workers": 1})
            self.assertEqual(v["error"], 'unknown key "workers" in a '
                             '"status" header (known: op, pool)')
            p = subprocess.run(VALGRIND + [CLI, "-s", d.socket, "status",
                                           "nope"], capture_output=True,
                               text=True, timeout=30 * SLOWDOWN)
            self.assertEqual(p.returncode, 1)
            self.assertIn('no pool named "nope"', p.stderr)
        # No daemon: a local error.
        p = subprocess.run(VALGRIND + [CLI, "-s", "/nonexistent/sock",
                                       "status"], capture_output=True,
                           text=True, timeout=30 * SLOWDOWN)
        self.assertEqual(p.returncode, 2)


class Cli(unittest.TestCase):

    def run_cli(self, d, *args):
        p = subprocess.run(VALGRIND + [CLI, "-s", d.socket] + list(args),
                           capture_output=True, text=True,
                           timeout=30 * SLOWDOWN)
        self.assertEqual(p.returncode, 0, p.stderr)
        return p.stdout

    def test_table_and_json(self):
        with Daemon(pools()) as d:
            st = SlowStream(d, 50)
            wait_for(lambda: pool_of(ask(d, {"op": "status"}), "slow")
                     ["workers"]["busy"] == 1, what="a busy worker")
            out = self.run_cli(d, "status")
            self.assertRegex(out, r"^consumersd \S+, pid %d, up " % d.pid())
            self.assertRegex(out, r"(?m)^POOL +MODE +WORKERS +BUSY +IDLE "
                                  r"+OPEN +QUEUED +ITEMS/S +CONSUMED "
                                  r"+CRASHES$")
            self.assertRegex(out, r"(?m)^slow +static +2/2 +1 +1 +1 +0 ")
            self.assertRegex(out, r"(?m)^sum +static +1/1 ")
            self.assertRegex(out, r"(?m)^  worker 1 +pid \d+ +(busy|idle) ")
            self.assertRegex(out, r"(?m)^  worker \d +pid \d+ +busy +stream "
                                  r"%d +items 50 " % st.lease["stream"])
            self.assertRegex(out, r"(?m)^%d +slow +running +%d +%d +\S+ +50 "
                             % (st.lease["stream"], os.getpid(),
                                os.getuid()))
            out = self.run_cli(d, "status", "--wide")
            self.assertRegex(out, r"(?m)^POOL +MODE +WORKERS +BUSY")
            self.assertRegex(out, r"(?m)^slow +static +2/2 +1 +1 +0 +1 +0 "
                                  r"+0 +50 ")
            self.assertRegex(out, r"(?m)^sum +static +1/1 ")
            self.assertRegex(out, r"(?m)^  worker 1 +pid \d+ +(busy|idle) ")
            self.assertRegex(out, r"(?m)^  worker \d +pid \d+ +busy +stream "
                                  r"%d +items 50 " % st.lease["stream"])
            v = json.loads(self.run_cli(d, "status", "--json"))
            self.assertEqual(pool_of(v, "slow")["workers"]["busy"], 1)
            v = json.loads(self.run_cli(d, "status", "--json", "sum"))
            self.assertEqual([p["name"] for p in v["pools"]], ["sum"])
            st.end()

    def test_narrow_fits_80_columns_and_wide_has_all(self):
        """The default table fits 80 columns, with a long pool name, a
        failed pool's long message and an open stream; --wide has every
        column and the names in full."""
        name = "a-pool-with-a-name-far-too-long-for-its-column"
        # Its workers' message names it: longer than a line.
        bad = "bad-pool-whose-name-makes-its-failure-message-long"
        with Daemon({name: {"plugin": "sum", "workers": 3},
                     bad: {"plugin": test_plugin("failinit"),
                           "max_init_failures": 1}}) as d:
            held = d.connect()
            held.settimeout(30 * SLOWDOWN)
            held.sendall(b'{"op":"submit","pool":"%s"}\n1\n2\n'
                         % name.encode())
            lease = json.loads(held.makefile("rb").readline())
            self.assertTrue(lease["ok"], lease)
            wait_for(lambda: pool_of(ask(d, {"op": "status"}), bad)
                     ["failed"], what="the bad pool failed")
            wait_for(lambda: ask(d, {"op": "status"})["streams"][0]
                     ["items"]["done"] == 2, what="2 items done")
            out = self.run_cli(d, "status")
            for line in out.splitlines():
                self.assertLessEqual(len(line), 80, "%r in\n%s"
                                     % (line, out))
            self.assertNotIn(name, out)
            self.assertRegex(out, r"(?m)^a-pool-with-a~ +static +3/3 +3 +0 "
                                  r"+1 +0 ")
            self.assertRegex(out, r"(?m)^  FAILED: .*\.\.\.$")
            self.assertRegex(out, r"(?m)^STREAM +POOL +STATE +PID +UID +AGE "
                                  r"+IN +DONE +ITEMS/S$")
            self.assertRegex(out, r"(?m)^%d +a-pool-with-a~ +running +%d +%d "
                                  r"+\S+ +2 +2 +[0-9.]+$"
                             % (lease["stream"], os.getpid(), os.getuid()))
            wide = self.run_cli(d, "status", "--wide")
            self.assertRegex(wide, r"(?m)^%s +static +3/3 " % name)
            self.assertRegex(wide, r"(?m)^POOL +MODE .* QUARANTINED +CRASHES "
                                   r"+RESPAWNS +WAIT +ITEMS/S$")
            self.assertRegex(wide, r"(?m)^%d +%s +running .* 3$"
                             % (lease["stream"], name))
            self.assertGreater(max(len(l) for l in wide.splitlines()), 80)
            held.shutdown(socket.SHUT_WR)
            self.assertEqual(read_lines(held)[-1]["completion"], 3)
            held.close()

    def test_watch_until_sigint(self):
        with Daemon(pools()) as d:
            p = subprocess.Popen(VALGRIND + [CLI, "-s", d.socket, "status",
                                             "--watch", "0.2"],
                                 stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
            out = []

            def reader():
                out.append(p.stdout.read())
            # Two snapshots are in once their daemon lines are.
            lines = []
            while sum(1 for l in lines if l.startswith("consumersd ")) < 2:
                line = p.stdout.readline()
                if not line:
                    break
                lines.append(line)
            t = threading.Thread(target=reader)
            t.start()
            p.send_signal(signal.SIGINT)
            rc = p.wait(timeout=10 * SLOWDOWN)
            t.join()
            err = p.stderr.read()
            p.stderr.close()
            p.stdout.close()
            text = "".join(lines) + "".join(out)
            self.assertEqual(rc, 0, err)
            self.assertGreaterEqual(text.count("\nconsumersd ") +
                                    text.startswith("consumersd "), 2)
            # Not a terminal: no escape codes, a blank line between.
            self.assertNotIn("\033", text)
            self.assertIn("\n\nconsumersd ", text)


    def test_floats_are_milliseconds_and_starts_are_recorded(self):
        """Every number with a fraction in a status reply has at most 3
        decimals (11.37, not 11.369999999999999); the start times are the
        ones the master recorded, the same in every reply."""
        import re
        before = int(time.time())
        with Daemon(pools()) as d:
            st = SlowStream(d, 50)
            starts = set()
            for _ in range(20):
                s = d.connect()
                s.settimeout(10 * SLOWDOWN)
                s.sendall(b'{"op":"status"}\n')
                s.shutdown(socket.SHUT_WR)
                raw = s.makefile("rb").read().decode()
                s.close()
                # Numbers outside strings: the reply has no strings with
                # digits and a dot other than the version.
                for m in re.finditer(r'":(-?[0-9]+\.([0-9]+)(?:[eE][-+]?'
                                     r'[0-9]+)?)', raw):
                    self.assertLessEqual(len(m.group(2)), 3,
                                         "%s in %s" % (m.group(1), raw))
                v = json.loads(raw)
                starts.add(v["daemon"]["start"])
                for p in v["pools"]:
                    for w in p["processes"]:
                        self.assertGreaterEqual(w["start"], before)
                        self.assertGreaterEqual(w["start"],
                                                v["daemon"]["start"])
                        self.assertLessEqual(w["start"], time.time() + 1)
                time.sleep(0.013)
            self.assertEqual(len(starts), 1, starts)
            self.assertGreaterEqual(starts.pop(), before)
            st.end()


# -- an OpenMetrics text parser, from the specification
# (OpenObservability/OpenMetrics, specification/OpenMetrics.md) --

import re  # noqa: E402

OM_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
OM_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
OM_TYPES = {"counter", "gauge", "stateset", "info", "histogram",
            "gaugehistogram", "summary", "unknown"}
OM_SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",),
               "unknown": ("",), "info": ("_info",), "stateset": ("",)}


def parse_openmetrics(text):
    """Returns {family: {"type", "help", "unit", "samples":
    {(name, ((label, value), ...)): float}}}; raises ValueError where the
    text breaks the specification."""
    if not text.endswith("# EOF\n") and not text.endswith("# EOF"):
        raise ValueError("the exposition does not end in # EOF")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    if lines.pop() != "# EOF":
        raise ValueError("# EOF is not the last line")
    families, done, cur = {}, set(), None

    def family(name):
        nonlocal cur
        if name != cur:
            if name in done or name in families and name != cur:
                raise ValueError("family %s is interleaved or repeated"
                                 % name)
            if cur is not None:
                done.add(cur)
            cur = name
            families[name] = {"type": "unknown", "help": None,
                              "unit": None, "samples": {}}
        return families[name]

    for n, line in enumerate(lines, 1):
        if line == "":
            raise ValueError("line %d is empty" % n)
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) < 4 or parts[0] != "#" or \
                    parts[1] not in ("TYPE", "HELP", "UNIT"):
                raise ValueError("line %d: bad metadata %r" % (n, line))
            name = parts[2]
            if not OM_NAME.match(name):
                raise ValueError("line %d: bad name %r" % (n, name))
            f = family(name)
            if f["samples"]:
                raise ValueError("line %d: metadata after samples" % n)
            key = parts[1].lower()
            if key == "type":
                if parts[3] not in OM_TYPES:
                    raise ValueError("line %d: bad type" % n)
                if name.endswith("_total") and parts[3] == "counter":
                    raise ValueError("line %d: counter family named "
                                     "_total" % n)
            if key == "unit" and not name.endswith("_" + parts[3]):
                raise ValueError("line %d: %s does not end in its unit"
                                 % (n, name))
            if key != "type" and key != "help" and f.get(key) is not None \
                    or key == "help" and f["help"] is not None:
                raise ValueError("line %d: %s given twice" % (n, key))
            f[key] = parts[3]
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})? (\S+)"
                     r"( \S+)?\Z", line)
        if m is None:
            raise ValueError("line %d: bad sample %r" % (n, line))
        name, labels, value = m.group(1), m.group(3) or "", m.group(4)
        fam = None
        if cur is not None:
            for suf in OM_SUFFIXES.get(families[cur]["type"], ("",)):
                if name == cur + suf:
                    fam = cur
        if fam is None:
            raise ValueError("line %d: sample %s outside its family (%s)"
                             % (n, name, cur))
        pairs, rest = [], labels
        while rest:
            lm = OM_LABEL.match(rest)
            if lm is None:
                raise ValueError("line %d: bad labels %r" % (n, labels))
            pairs.append((lm.group(1), lm.group(2)))
            rest = rest[lm.end():]
            if rest.startswith(","):
                rest = rest[1:]
                if not rest:
                    raise ValueError("line %d: trailing comma" % n)
            elif rest:
                raise ValueError("line %d: bad labels %r" % (n, labels))
        if len({k for k, _ in pairs}) != len(pairs):
            raise ValueError("line %d: a label given twice" % n)
        v = float(value)
        f = families[fam]
        if f["type"] == "counter" and name.endswith("_total") and \
                (v < 0 or v != v):
            raise ValueError("line %d: a counter below zero" % n)
        key = (name, tuple(sorted(pairs)))
        if key in f["samples"]:
            raise ValueError("line %d: sample repeated" % n)
        f["samples"][key] = v
    return families


def om_value(families, family, sample, **labels):
    return families[family]["samples"][(sample,
                                         tuple(sorted(labels.items())))]


class Metrics(unittest.TestCase):

    def test_parser_refuses_broken_text(self):
        good = ("# TYPE a counter\n# HELP a A.\na_total{p=\"x\"} 1\n"
                "# TYPE b gauge\nb 2\n# EOF\n")
        self.assertEqual(om_value(parse_openmetrics(good), "a", "a_total",
                                  p="x"), 1)
        for bad in (good.replace("# EOF\n", ""),
                    good.replace("b 2\n", "b 2\na_total{p=\"y\"} 3\n"),
                    good.replace("a_total", "a"),
                    good.replace("b 2", "b{p=\"x\",p=\"y\"} 2"),
                    good + "b 3\n"):
            with self.assertRaises(ValueError, msg=bad):
                parse_openmetrics(bad)

    def test_metrics_after_a_stream(self):
        with Daemon({"sum": {"plugin": "sum", "workers": 2}}) as d:
            rc, f, err = d.cli("submit", "sum",
                               input=b"".join(b"%d\n" % i
                                              for i in range(1, 38)))
            self.assertEqual((rc, f["completion"]), (0, 703), err)
            p = subprocess.run(VALGRIND + [CLI, "-s", d.socket, "metrics"],
                               capture_output=True, timeout=120 * SLOWDOWN)
            self.assertEqual(p.returncode, 0, p.stderr)
            text = p.stdout.decode()
            fams = parse_openmetrics(text)
            self.assertTrue(ask(d, {"op": "metrics"})["metrics"]
                            .endswith("# EOF\n"))
            for name in fams:
                self.assertTrue(name.startswith("consumersd_"), name)
            self.assertEqual(om_value(fams, "consumersd_items",
                                      "consumersd_items_total",
                                      pool="sum", outcome="consumed"), 37)
            self.assertEqual(om_value(fams, "consumersd_items",
                                      "consumersd_items_total",
                                      pool="sum", outcome="in"), 37)
            self.assertEqual(om_value(
                fams, "consumersd_streams_completed",
                "consumersd_streams_completed_total", pool="sum"), 1)
            self.assertEqual(om_value(fams, "consumersd_crashes",
                                      "consumersd_crashes_total",
                                      pool="sum"), 0)
            self.assertEqual(fams["consumersd_queue_wait_seconds"]["unit"],
                             "seconds")
            self.assertEqual(fams["consumersd_workers"]["type"], "gauge")
            wait_for(lambda: om_value(parse_openmetrics(
                ask(d, {"op": "metrics"})["metrics"]), "consumersd_workers",
                "consumersd_workers", pool="sum", state="idle") == 2,
                what="two idle workers in the metrics")


if __name__ == "__main__":
    main()
