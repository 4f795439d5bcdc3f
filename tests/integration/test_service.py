"""Stopping and reloading the real daemon: SIGTERM lets open streams finish
(up to shutdown_timeout) and refuses queued ones; SIGHUP reloads the
configuration without cutting an open stream (it ends on the very workers
it leased, with no crash, whether its pool changed or not), and a broken
configuration changes nothing."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import unittest

import harness
from harness import (wait_for, DAEMON, PLUGIN_DIR, Daemon, assert_invariant,
                     final_of, lines, main, read_lines, test_plugin)

SLOW = {"plugin": test_plugin("slow"), "workers": 1,
        "kwargs": {"usec": 1000, "every": 1}}



def open_stream(d, pool, first=b""):
    """A stream whose lease reply was read; the client keeps it open."""
    s = d.connect()
    s.settimeout(60)
    s.sendall(json.dumps({"op": "submit", "pool": pool}).encode() + b"\n" +
              first)
    buf = b""
    while b"\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            break
        buf += chunk
    line, _, rest = buf.partition(b"\n")
    return s, json.loads(line), rest


def finish(s, body=b"", rest=b""):
    s.sendall(body)
    s.shutdown(socket.SHUT_WR)
    replies = read_lines(s)
    s.close()
    if rest:
        replies = [json.loads(l) for l in rest.splitlines() if l] + replies
    return final_of(replies)


class Shutdown(unittest.TestCase):

    def test_open_stream_finishes(self):
        with Daemon({"s": SLOW}, {"shutdown_timeout": 30}) as d:
            s, lease, rest = open_stream(d, "s", lines(range(1, 101)))
            self.assertTrue(lease["ok"], lease)
            d.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: "may finish within 30 s" in d.log_text())
            # No new client gets in.
            with socket.socket(socket.AF_UNIX) as c:
                with self.assertRaises(OSError):
                    c.connect(d.socket)
            # The open one goes on, sends the rest, and completes.
            final = finish(s, lines(range(101, 301)), rest)
            self.assertTrue(final["ok"], final)
            self.assertEqual(final["consumed"], 300)
            self.assertEqual(final["completion"], 300)
            assert_invariant(self, final)
            self.assertEqual(d.proc.wait(timeout=30), 0)
            self.assertIn("every open stream has finished", d.log_text())

    def test_queued_stream_is_refused(self):
        with Daemon({"s": SLOW}, {"shutdown_timeout": 30}) as d:
            a, lease, rest = open_stream(d, "s", b"1\n")
            b = d.connect()
            b.settimeout(30)
            b.sendall(b'{"op":"submit","pool":"s"}\n')
            wait_for(lambda: "waiting for a s worker" in d.log_text())
            d.proc.send_signal(signal.SIGTERM)
            refused = final_of(read_lines(b))
            b.close()
            self.assertEqual(refused, {"ok": False,
                                       "error": "consumersd is shutting down",
                                       "code": "draining"})
            final = finish(a, b"2\n", rest)
            self.assertEqual(final["completion"], 2)
            self.assertEqual(d.proc.wait(timeout=30), 0)

    def test_shutdown_timeout_ends_what_is_left(self):
        with Daemon({"s": SLOW}, {"shutdown_timeout": 0.5}) as d:
            s, lease, rest = open_stream(d, "s", b"1\n2\n")
            t0 = time.monotonic()
            d.proc.send_signal(signal.SIGTERM)
            replies = read_lines(s)     # the client never closes its side
            s.close()
            final = final_of(replies)
            self.assertLess(time.monotonic() - t0, 10)
            self.assertEqual(final["items"], 2)
            assert_invariant(self, final)
            self.assertEqual(final["errors"][-1]["stage"], "daemon")
            self.assertIn("still open after shutdown_timeout (0.5 s)",
                          final["errors"][-1]["error"])
            self.assertEqual(d.proc.wait(timeout=30), 0)

    def test_stream_outlives_its_workers_in_a_stop(self):
        # A stream done with its workers (an ondemand pool's worker has
        # exited since) whose client has not read its final line yet: a
        # stop with no worker and no tap left must still wait for it.
        # The daemon once exited at once there, cutting the line short.
        pools = {"c": {"plugin": "collect", "workers": 1,
                       "mode": "ondemand", "worker_idle_timeout": 0.3}}
        with Daemon(pools, {"shutdown_timeout": 30}) as d:
            s = d.connect()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            items = [("x" * 200) + str(i) for i in range(20000)]
            s.sendall(b'{"op":"submit","pool":"c"}\n' +
                      lines(items))
            s.shutdown(socket.SHUT_WR)
            wait_for(lambda: "stream 1: pool c:" in d.log_text(),
                     what="the stream's end")
            wait_for(lambda: d.worker_pids() == [], what="no worker")
            d.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: "may finish within 30 s" in d.log_text())
            s.settimeout(30)
            final = final_of(read_lines(s))
            s.close()
            self.assertTrue(final["ok"], final)
            self.assertEqual(final["results"], [items])
            self.assertEqual(d.proc.wait(timeout=30), 0)
            log = d.log_text()
            self.assertLess(log.index("every open stream has finished"),
                            log.index("stopped"), log)

    def test_second_signal_ends_the_wait(self):
        with Daemon({"s": SLOW}, {"shutdown_timeout": 60}) as d:
            s, lease, rest = open_stream(d, "s", b"1\n")
            d.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: "may finish within 60 s" in d.log_text())
            d.proc.send_signal(signal.SIGINT)
            final = final_of(read_lines(s))
            s.close()
            self.assertEqual(final["errors"][-1]["error"],
                             "consumersd is shutting down")
            self.assertEqual(d.proc.wait(timeout=30), 0)


class Reload(unittest.TestCase):

    def write_pool(self, d, name, conf):
        path = os.path.join(d.dir, "pools.d", name + ".json")
        with open(path, "w") as f:
            json.dump(conf, f)

    def reload(self, d, expect):
        n = d.log_text().count("SIGHUP: reloading")
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: d.log_text().count("SIGHUP: reloading") > n and
                 expect in d.log_text().split("SIGHUP: reloading")[-1],
                 what=expect)

    def stream_workers(self, d, pool, sid, n):
        """The pids of the n workers of pool leased to stream sid, from
        the status op (polled: the lease reply may come first)."""
        def busy():
            v = harness.ask(d, {"op": "status", "pool": pool})
            pids = sorted(w["pid"] for w in v["pools"][0]["processes"]
                          if w["stream"] == sid and w["state"] == "busy")
            return pids if len(pids) == n else None
        return wait_for(busy, what="%d workers on stream %d" % (n, sid))

    def test_reload_with_open_streams(self):
        # echo's results name the process (pid) and the kwargs it ran
        # with: the open stream must finish on the very workers it
        # leased, with the old settings and no crash (a reload that
        # killed them would still give the right sum through replay).
        echo = {"plugin": test_plugin("echo"), "workers": 2,
                "stream_workers": 2, "kwargs": {"v": 1}}
        pools = {"e": echo, "gone": {"plugin": "sum"}}
        with Daemon(pools) as d:
            old = set(d.worker_pids())
            s, lease, rest = open_stream(d, "e", lines(range(1, 51)))
            self.assertEqual(lease["workers"], 2, lease)
            leased = self.stream_workers(d, "e", lease["stream"], 2)
            self.assertTrue(set(leased) <= old)
            # Change e, remove gone, add new.
            self.write_pool(d, "e", dict(echo, kwargs={"v": 2}))
            os.unlink(os.path.join(d.dir, "pools.d", "gone.json"))
            self.write_pool(d, "new", {"plugin": "sum", "workers": 2})
            self.reload(d, "reload: done: 1 pool added, 1 changed, "
                           "1 removed, 0 unchanged")
            # New workers start for e while the old ones still run the
            # open stream; a new stream of e runs on them, with v 2.
            # (2 for e, 2 for new)
            fresh = wait_for(lambda: (lambda f: f if len(f) >= 4 else None)(
                set(d.worker_pids()) - old), what="the new workers")
            rc, f, err = d.cli("submit", "e", input=lines([7, 8]))
            self.assertEqual(rc, 0, err)
            self.assertEqual(f["crashes"], 0, f)
            for r in f["results"]:
                self.assertNotIn(r["pid"], old, f)
                self.assertIn(r["pid"], fresh, f)
                self.assertEqual(r["kwargs"], {"v": 2})
            self.assertEqual(sorted(i for r in f["results"]
                                    for i in r["items"]), [7, 8])
            # The open stream finishes on its old workers, unhurt.
            final = finish(s, lines(range(51, 101)), rest)
            self.assertTrue(final["ok"], final)
            self.assertEqual(final["crashes"], 0, final)
            self.assertEqual(final["errors"], [])
            self.assertEqual(sorted(r["pid"] for r in final["results"]),
                             leased, final)
            for r in final["results"]:
                self.assertEqual(r["kwargs"], {"v": 1})
                self.assertEqual(r["items"], sorted(r["items"]))
            self.assertEqual(sorted(i for r in final["results"]
                                    for i in r["items"]),
                             list(range(1, 101)))
            # The added pool serves, the removed one is gone.
            rc, f, err = d.cli("submit", "new", input=lines(range(1, 11)))
            self.assertEqual((rc, f["completion"]), (0, 55), err)
            rc, f, err = d.cli("submit", "gone", input=b"1\n")
            self.assertEqual(rc, 1)
            self.assertIn('no pool named "gone"', f["error"])
            wait_for(lambda: not (old & set(d.worker_pids())),
                     what="the old workers to exit")

    def test_unchanged_pool_keeps_an_open_stream_s_workers(self):
        # A reload that leaves e as it was must not touch the workers of
        # its open stream: same pids at the end, no crash (replay would
        # hide one in the results, not in "crashes").
        echo = {"plugin": test_plugin("echo"), "workers": 2,
                "stream_workers": 2}
        with Daemon({"e": echo}) as d:
            s, lease, rest = open_stream(d, "e", lines(range(1, 51)))
            self.assertEqual(lease["workers"], 2, lease)
            leased = self.stream_workers(d, "e", lease["stream"], 2)
            self.write_pool(d, "other", {"plugin": "sum"})
            self.reload(d, "reload: done: 1 pool added, 0 changed, "
                           "0 removed, 1 unchanged")
            self.assertEqual(self.stream_workers(d, "e", lease["stream"],
                                                 2), leased)
            final = finish(s, lines(range(51, 101)), rest)
            self.assertTrue(final["ok"], final)
            self.assertEqual(final["crashes"], 0, final)
            self.assertEqual(final["errors"], [])
            self.assertEqual(sorted(r["pid"] for r in final["results"]),
                             leased, final)
            for r in final["results"]:
                self.assertEqual(r["streams"], 1, r)
            self.assertEqual(sorted(i for r in final["results"]
                                    for i in r["items"]),
                             list(range(1, 101)))
            self.assertTrue(set(leased) <= set(d.worker_pids()))

    def test_broken_config_changes_nothing(self):
        with Daemon({"sum": {"plugin": "sum", "workers": 2}}) as d:
            before = sorted(d.worker_pids())
            self.write_pool(d, "bad", {"plugin": "sum", "workers": "two"})
            self.reload(d, "still running the previous configuration")
            self.assertIn('"workers" must be an integer', d.log_text())
            self.assertEqual(sorted(d.worker_pids()), before)
            rc, f, err = d.cli("submit", "sum", input=b"1\n2\n")
            self.assertEqual((rc, f["completion"]), (0, 3), err)
            # A plugin that cannot load is caught too, before the swap.
            self.write_pool(d, "bad", {"plugin": test_plugin("badabi")})
            self.reload(d, "still running the previous configuration")
            self.assertIn("was built for plugin ABI 99", d.log_text())
            self.assertEqual(sorted(d.worker_pids()), before)

    def test_reload_prints_its_reasons(self):
        # consumers reload says why a reload was refused, in file order,
        # not "see the log"; the op's reply carries them as "reasons".
        with Daemon({"sum": {"plugin": "sum", "workers": 2}}) as d:
            before = sorted(d.worker_pids())
            self.write_pool(d, "bad", {"plugin": "sum", "workers": "two"})
            p = subprocess.run(harness.VALGRIND + [harness.CLI, "-s",
                                                   d.socket, "reload"],
                               capture_output=True,
                               timeout=120 * harness.SLOWDOWN)
            err = p.stderr.decode(errors="replace")
            self.assertNotEqual(p.returncode, 0, err)
            self.assertIn("is not valid", err)
            self.assertNotIn("log says why", err)
            self.assertIn('"workers" must be an integer', err)
            self.assertIn("bad.json", err)
            s = d.connect()
            s.settimeout(60 * harness.SLOWDOWN)
            s.sendall(b'{"op":"reload"}\n')
            reply = json.loads(s.makefile().readline())
            s.close()
            self.assertFalse(reply["ok"], reply)
            self.assertEqual(reply["code"], "reload_failed", reply)
            self.assertEqual(len(reply["reasons"]), 1, reply)
            self.assertIn('"workers" must be an integer',
                          reply["reasons"][0])
            self.assertEqual(sorted(d.worker_pids()), before)
            # A good reload after it has no reasons to give.
            os.unlink(os.path.join(d.dir, "pools.d", "bad.json"))
            p = subprocess.run(harness.VALGRIND + [harness.CLI, "-s",
                                                   d.socket, "reload"],
                               capture_output=True,
                               timeout=120 * harness.SLOWDOWN)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertIn(b"reloaded:", p.stdout)

    def test_unchanged_pools_keep_their_workers(self):
        with Daemon({"sum": {"plugin": "sum", "workers": 2}}) as d:
            before = sorted(d.worker_pids())
            self.reload(d, "0 pools added, 0 changed, 0 removed, 1 unchanged")
            self.assertEqual(sorted(d.worker_pids()), before)
            rc, f, err = d.cli("submit", "sum", input=b"4\n")
            self.assertEqual((rc, f["completion"]), (0, 4), err)


class ProcessManagers(unittest.TestCase):

    def test_max_streams_recycles(self):
        with Daemon({"s": {"plugin": "sum", "workers": 1,
                           "max_streams": 2}}) as d:
            first = d.worker_pids()
            for i in range(2):
                rc, f, err = d.cli("submit", "s", input=b"1\n")
                self.assertEqual(rc, 0, err)
            wait_for(lambda: d.worker_pids() and
                     d.worker_pids() != first, what="a new worker")
            self.assertNotIn(first[0], d.worker_pids())
            rc, f, err = d.cli("submit", "s", input=b"2\n")
            self.assertEqual((rc, f["completion"]), (0, 2), err)

    def test_ondemand(self):
        pool = {"plugin": "sum", "workers": 2, "mode": "ondemand",
                "worker_idle_timeout": 0.3}
        with Daemon({"o": pool}) as d:
            self.assertEqual(d.worker_pids(), [])
            rc, f, err = d.cli("submit", "o", input=lines(range(1, 101)))
            self.assertEqual((rc, f["completion"]), (0, 5050), err)
            # Started for it: the stream leases what is up when the
            # first worker is ready (one or two).
            self.assertIn(len(f["results"]), (1, 2))
            self.assertIn("pool o: worker 1 started", d.log_text())
            # Idle longer than idle_timeout: reaped, down to none.
            wait_for(lambda: d.worker_pids() == [], what="reaping")
            rc, f, err = d.cli("submit", "o", input=b"7\n")
            self.assertEqual((rc, f["completion"]), (0, 7), err)

    def test_dynamic_spares(self):
        pool = dict(SLOW, workers=4, mode="dynamic", min_spare=1,
                    max_spare=2)
        with Daemon({"d": pool}) as d:
            self.assertEqual(len(d.worker_pids()), 1)     # one spare
            a, lease, ra = open_stream(d, "d", b"1\n")
            # One busy: a new spare comes.
            wait_for(lambda: len(d.worker_pids()) == 2, what="a spare")
            b, lease, rb = open_stream(d, "d", b"2\n")
            wait_for(lambda: len(d.worker_pids()) == 3, what="a spare")
            # (slow's completion counts items)
            self.assertEqual(finish(a, b"", ra)["completion"], 1)
            self.assertEqual(finish(b, b"", rb)["completion"], 1)
            # Three idle, max_spare two: one goes.
            wait_for(lambda: len(d.worker_pids()) == 2, what="trimming")

    def test_max_workers_across_pools(self):
        pools = {"a": {"plugin": "sum", "workers": 2},
                 "b": {"plugin": "sum", "workers": 2}}
        with Daemon(pools, {"max_workers": 3}) as d:
            time.sleep(0.3)
            self.assertEqual(len(d.worker_pids()), 3)
            self.assertIn("max_workers (3) reached", d.log_text())
            for pool in ("a", "b"):
                rc, f, err = d.cli("submit", pool, input=b"3\n")
                self.assertEqual((rc, f["completion"]), (0, 3), err)


class ProcessTitles(unittest.TestCase):
    """ps shows each process's title in full even when argv is short, as
    when systemd starts "/usr/sbin/consumersd" with no arguments: the
    master is "consumersd: master", each worker "consumersd: pool NAME
    worker N" (the environment's storage is moved to make room)."""

    def test_titles_in_full_with_a_short_argv(self):
        name = "a_pool_whose_name_is_longer_than_argv"
        d = Daemon({name: dict(SLOW, workers=2)})
        with open(d.conf) as f:
            conf = json.load(f)
        conf.update(socket=d.socket, plugin_dir=PLUGIN_DIR,
                    pools_dir=os.path.join(d.dir, "pools.d"))
        with open(d.conf, "w") as f:
            json.dump(conf, f)
        os.symlink(d.conf, os.path.join(d.dir, "c"))
        log = open(d.log_path, "w")
        # argv "cnsd -c c": 10 bytes, fewer than any title.
        proc = subprocess.Popen(["cnsd", "-c", "c"], executable=DAEMON,
                                cwd=d.dir, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: "ready: accepting clients" in d.log_text() or
                     proc.poll() is not None, 30)
            self.assertIsNone(proc.poll(), d.log_text())

            def cmdline(pid):
                with open("/proc/%d/cmdline" % pid, "rb") as f:
                    return f.read().rstrip(b"\0").decode()

            def worker_titles():
                out = subprocess.run(["pgrep", "-P", str(proc.pid)],
                                     capture_output=True, text=True).stdout
                titles = []
                for pid in out.split():
                    try:
                        titles.append(cmdline(int(pid)))
                    except OSError:
                        pass
                return sorted(titles)

            self.assertEqual(cmdline(proc.pid), "consumersd: master")
            want = ["consumersd: pool %s worker %d" % (name, n)
                    for n in (1, 2)]
            try:
                wait_for(lambda: worker_titles() == want, 30)
            except AssertionError:
                self.assertEqual(worker_titles(), want)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
            shutil.rmtree(d.dir, ignore_errors=True)


class Logs(unittest.TestCase):
    """Outside the journal every line the daemon logs (master and workers)
    starts with an ISO 8601 timestamp."""

    STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}"
                       r"[+-]\d\d:\d\d consumersd\[\d+\]: ")

    def test_every_line_starts_with_a_timestamp(self):
        env = dict(os.environ)
        env.pop("JOURNAL_STREAM", None)
        d = Daemon({"concat": {"plugin": "concat", "workers": 2,
                               "args": ["-"]}})
        d.env = env
        with d:
            rc, final, err = d.cli("submit", "concat",
                                   input=lines(list("abc")))
            self.assertEqual(rc, 0, err)
            self.assertEqual(d.stop(), 0, d.log_text())
            text = d.log_text()
        self.assertIn("ready: accepting clients", text)
        for line in text.splitlines():
            self.assertRegex(line, self.STAMP)


    def test_one_access_line_per_stream(self):
        import pwd
        d = Daemon({"concat": {"plugin": "concat", "workers": 1,
                               "args": ["-"]}})
        with d:
            s, lease, rest = open_stream(d, "concat")
            final = finish(s, lines(list("abcd")), rest)
            self.assertTrue(final["ok"], final)
            wait_for(lambda: "access: " in d.log_text(), 10)
            text = d.log_text()
            self.assertEqual(d.stop(), 0, text)
        me = "pid %d uid %d user %s" % (os.getpid(), os.getuid(),
                                        pwd.getpwuid(os.getuid()).pw_name)
        got = re.findall(r"access: (.*)$", text, re.M)
        self.assertEqual(len(got), 1, text)
        self.assertRegex(got[0], r"^%s pool concat stream %d: 4 items in "
                         r"\d+\.\d{3} s \(\d+ items/s\): ok$" %
                         (re.escape(me), final["stream"]))


    def test_slow_stream_logs_its_lanes(self):
        # A stream open longer than the pool's slow_stream is logged once,
        # while it runs, with what each of its lanes is doing.
        d = Daemon({"s": dict(SLOW, slow_stream=0.2)})
        with d:
            s, lease, rest = open_stream(d, "s", b'"a"\n"b"\n')
            wait_for(lambda: "slow stream" in d.log_text(), 30)
            final = finish(s, b'"c"\n', rest)
            self.assertTrue(final["ok"], final)
            text = d.log_text()
            self.assertEqual(d.stop(), 0, text)
        got = re.findall(r"slow stream (\d+): (.*)$", text, re.M)
        self.assertEqual(len(got), 1, text)
        self.assertEqual(int(got[0][0]), final["stream"])
        self.assertRegex(got[0][1], r"^pool s: open \d+\.\d{3} s "
                         r"\(slow_stream 0\.2 s\), \d+ items read; lane 1: "
                         r"live, worker 1 pid \d+, \d+ items$")


class Identity(unittest.TestCase):

    def test_user_limits_nice_env(self):
        if os.geteuid() != 0:
            self.skipTest("switching workers to another user needs the "
                          "tests to run as root")
        pool = {"plugin": "./whoami.so", "workers": 1,
                "user": "nobody", "nice": 5,
                "env": {"FOO": "bar"}, "env_keep": ["CNS_TEST_KEEP"]}
        # An address space limit and the tools do not mix: ASan reserves
        # terabytes of shadow, valgrind its own heap.
        limit_as = not harness.SANITIZERS and not harness.VALGRIND
        if limit_as:
            pool["rlimit_as"] = 1 << 30
        # valgrind keeps fds of its own above the program's limit, and
        # refuses a lower one.
        limit_fds = not harness.VALGRIND
        if limit_fds:
            pool["rlimit_nofile"] = 256
        os.environ["CNS_TEST_KEEP"] = "kept"
        os.environ["CNS_TEST_DROP"] = "dropped"
        self.addCleanup(os.environ.pop, "CNS_TEST_KEEP")
        self.addCleanup(os.environ.pop, "CNS_TEST_DROP")
        # "nice" is absolute (systemd's Nice=): the workers get 5 whatever
        # the daemon's own niceness, here 3 above the runner's.
        d = Daemon({"p": pool}, {"root_workers": False},
                   wrapper=["nice", "-n", "3"])
        # nobody must be able to read the plugin: the build tree may be
        # where it cannot (a clone under /root).
        shutil.copy(test_plugin("whoami"), os.path.join(d.dir, "pools.d"))
        os.chmod(d.dir, 0o711)
        os.chmod(os.path.join(d.dir, "pools.d"), 0o755)
        with d:
            rc, f, err = d.cli("submit", "p", input=b"1\n")
            self.assertEqual(rc, 0, err)
            me = f["results"][0]
            self.assertEqual((me["uid"], me["gid"]), (65534, 65534))
            env = me["env"]
            self.assertEqual(env["FOO"], "bar")
            self.assertEqual(env["CNS_TEST_KEEP"], "kept")
            self.assertEqual(env["USER"], "nobody")
            self.assertNotIn("CNS_TEST_DROP", env)
            self.assertNotIn("HOME", env)
            w = d.worker_pids()[0]
            with open("/proc/%d/status" % w) as fh:
                status = fh.read()
            uid = re.search(r"^Uid:\s+(\d+)\s+(\d+)", status, re.M)
            self.assertEqual(uid.groups(), ("65534", "65534"))
            with open("/proc/%d/limits" % w) as fh:
                limits = fh.read()
            if limit_fds:
                self.assertRegex(limits, r"Max open files\s+256\s+256")
            if limit_as:
                self.assertRegex(limits, r"Max address space\s+1073741824")
            with open("/proc/%d/stat" % w) as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            self.assertEqual(int(fields[16]), 5)       # nice

    def test_nice_below_the_daemons_needs_privilege(self):
        # Without CAP_SYS_NICE a worker may raise its niceness but not go
        # below the daemon's: that start fails and says why; "nice": 0 is
        # a value (0), not "unchanged".
        if os.geteuid() != 0 or shutil.which("setpriv") is None:
            self.skipTest("needs root and setpriv to drop CAP_SYS_NICE")
        pools = {"low": {"plugin": "sum", "nice": 0,
                         "max_init_failures": 1},
                 "high": {"plugin": "sum", "nice": 19}}
        with Daemon(pools, wrapper=["nice", "-n", "5", "setpriv",
                                    "--bounding-set=-sys_nice"]) as d:
            with open("/proc/%d/stat" % d.pid()) as fh:
                own = int(fh.read().rsplit(")", 1)[1].split()[16])
            self.assertGreater(own, 0)
            rc, f, err = d.cli("submit", "low", input=b"1\n")
            self.assertEqual(rc, 1, err + d.log_text())
            self.assertEqual(
                f["error"], "pool low cannot start its workers: nice 0: "
                "cannot set the workers' niceness (Permission denied): "
                "going below consumersd's own niceness (%d) needs "
                "CAP_SYS_NICE or a large enough RLIMIT_NICE; set \"nice\" "
                "to %d or more, or start consumersd with that privilege" %
                (own, own), d.log_text())
            rc, f, err = d.cli("submit", "high", input=b"1\n2\n")
            self.assertEqual(rc, 0, err + d.log_text())
            self.assertEqual(f["completion"], 3)
            high = []
            for w in d.worker_pids():
                try:
                    with open("/proc/%d/cmdline" % w) as fh:
                        if "pool high" not in fh.read():
                            continue    # a retry of "low"
                    with open("/proc/%d/stat" % w) as fh:
                        high.append(int(fh.read().rsplit(")", 1)[1]
                                        .split()[16]))
                except FileNotFoundError:
                    continue
            self.assertEqual(high, [19])

    def test_root_needs_user(self):
        if os.geteuid() != 0:
            self.skipTest("the rule is for a daemon running as root")
        d = Daemon({"p": {"plugin": "sum"}}, {"root_workers": False})
        with open(d.conf) as fh:
            self.assertFalse(json.load(fh)["root_workers"])
        p = subprocess.run([DAEMON, "-t", "-c", d.conf, "-P", PLUGIN_DIR],
                           capture_output=True, text=True)
        self.assertEqual(p.returncode, 1)
        self.assertIn('pool "p" needs a "user" (and maybe "group") for its '
                      'workers, since consumersd runs as root', p.stderr)

    def test_user_that_cannot_load_the_plugin(self):
        # The plugin is loaded after the switch: a file the user cannot
        # read is a failed start with the reason.
        if os.geteuid() != 0:
            self.skipTest("switching workers to another user needs root")
        d = Daemon({}, {"root_workers": False})
        private = os.path.join(d.dir, "private.so")
        with open(test_plugin("echo"), "rb") as src, \
                open(private, "wb") as dst:
            dst.write(src.read())
        os.chmod(private, 0o600)
        os.chmod(d.dir, 0o711)
        with open(os.path.join(d.dir, "pools.d", "p.json"), "w") as fh:
            json.dump({"plugin": private, "user": "nobody"}, fh)
        with d:
            rc, f, err = d.cli("submit", "p", input=b"1\n")
            self.assertEqual(rc, 1)
            self.assertIn("pool p cannot start its workers: cannot load "
                          "plugin", f["error"])
            self.assertIn("Permission denied", f["error"])


if __name__ == "__main__":
    main()
