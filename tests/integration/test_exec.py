"""The exec plugin: consumers that are programs in any language.  Each
consume call runs the program with the consumer's items as NDJSON on its
stdin; what it prints is the result.  Its failures (exit status, signal,
output that is not JSON, input it did not read) reach the client with its
stderr tail; a slow program slows the client without the daemon or the
worker buffering the stream; the programs never outlive their worker."""
import json
import os
import stat
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Daemon, assert_invariant, lines, main,  # noqa
                     wait_for, SANITIZERS)

PY = sys.executable

# Counts the items and adds up their "n"; says which worker and params.
COUNT_PY = r"""
import json, os, sys
n = total = 0
for line in sys.stdin:
    n += 1
    total += json.loads(line)["n"]
json.dump({"n": n, "sum": total,
           "pool": os.environ["CONSUMERS_POOL"],
           "worker": int(os.environ["CONSUMERS_WORKER"]),
           "params": json.loads(os.environ["CONSUMERS_PARAMS"])}, sys.stdout)
"""

# The completion: adds up the results it reads as one JSON line.
TOTAL_PY = r"""
import json, sys
results = json.loads(sys.stdin.readline())
assert sys.stdin.read() == ""
print(json.dumps({"n": sum(r["n"] for r in results),
                  "sum": sum(r["sum"] for r in results),
                  "consumers": len(results)}))
"""

# The same count in plain sh, items being bare integers.
COUNT_SH = r"""#!/bin/sh
n=0 s=0
while read -r x; do
    n=$((n + 1)); s=$((s + x))
done
printf '{"n":%d,"sum":%d}\n' "$n" "$s"
"""

# Reads slowly: a pause every 1000 lines; counts lines and bytes.
SLOW_PY = r"""
import sys, time
n = size = 0
for line in sys.stdin.buffer:
    n += 1
    size += len(line)
    if n % 1000 == 0:
        time.sleep(0.01)
print('{"n": %d, "bytes": %d}' % (n, size))
"""


def write_prog(d, name, text, mode=0o755):
    path = os.path.join(d.dir, name)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


def alive(pid):
    """A process that exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def children(pid):
    """The pids whose parent is pid (zombies included)."""
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % p) as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(p))
        except (OSError, IndexError, ValueError):
            pass
    return out


def vmhwm_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM for %d" % pid)


class Consumers(unittest.TestCase):

    def test_python_and_shell_many_streams(self):
        d = Daemon({})
        count = write_prog(d, "count.py", COUNT_PY, 0o644)
        total = write_prog(d, "total.py", TOTAL_PY, 0o644)
        count_sh = write_prog(d, "count.sh", COUNT_SH)
        pools = {
            "py": {"plugin": "exec", "workers": 3,
                   "args": [PY, count], "kwargs": {"complete": [PY, total]}},
            "sh": {"plugin": "exec", "workers": 2, "args": [count_sh]},
        }
        for name, pool in pools.items():
            with open(os.path.join(d.dir, "pools.d", name + ".json"),
                      "w") as f:
                json.dump(pool, f)
        out = {}

        def submit(key, pool, items, params):
            out[key] = d.cli("submit", "-p", json.dumps(params), pool,
                             input=items)

        streams = []
        for k in range(4):
            vals = [{"n": (i * 7 + k) % 1000, "k": k}
                    for i in range(20000 + 1000 * k)]
            streams.append(("py%d" % k, "py", vals, {"stream": k}))
        for k in range(2):
            vals = list(range(k * 1000, k * 1000 + 1500 + k * 100))
            streams.append(("sh%d" % k, "sh", vals, None))
        with d:
            threads = [threading.Thread(target=submit, args=(
                key, pool, lines(vals), params))
                for key, pool, vals, params in streams]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for key, pool, vals, params in streams:
                rc, final, err = out[key]
                self.assertEqual(rc, 0, (key, err))
                self.assertEqual(final["items"], len(vals))
                self.assertEqual(final["consumed"], len(vals))
                assert_invariant(self, final)
                res = final["results"]
                nums = [v["n"] for v in vals] if pool == "py" else vals
                self.assertEqual(sum(r["n"] for r in res), len(vals), key)
                self.assertEqual(sum(r["sum"] for r in res), sum(nums), key)
                if pool == "py":
                    self.assertEqual(final["completion"], {
                        "n": len(vals), "sum": sum(nums),
                        "consumers": len(res)})
                    for r in res:
                        self.assertEqual(r["params"], params)
                        self.assertEqual(r["pool"], "py")
                        self.assertIn(r["worker"], (1, 2, 3))
                    # Different workers ran the consume calls.
                    self.assertEqual(len({r["worker"] for r in res}),
                                     len(res))
                else:
                    # No kwargs.complete: the completion is null.
                    self.assertIsNone(final["completion"])
            # Every program was waited for: no zombie under a worker (of
            # the five, 3 + 2).
            pids = d.worker_pids()
            self.assertEqual(len(pids), 5, pids)
            for w in pids:
                self.assertEqual(children(w), [], "worker %d" % w)

    def test_params_and_environment(self):
        d = Daemon({})
        prog = write_prog(d, "env.sh", "#!/bin/sh\ncat >/dev/null\n"
                          "printf '{\"params\":%s,\"pool\":\"%s\","
                          "\"mine\":\"%s\"}' \"$CONSUMERS_PARAMS\" "
                          "\"$CONSUMERS_POOL\" \"$MINE\"\n")
        with open(os.path.join(d.dir, "pools.d", "env.json"), "w") as f:
            json.dump({"plugin": "exec", "args": [prog],
                       "env": {"MINE": "from the pool"}}, f)
        params = {"table": "t1", "list": [1, "two", None], "u": "\u00e9"}
        with d:
            rc, final, err = d.cli("submit", "-p", json.dumps(params),
                                   "env", input=b"1\n")
            self.assertEqual(rc, 0, err)
            self.assertEqual(final["results"], [{
                "params": params, "pool": "env", "mine": "from the pool"}])
            # Without params, the program sees JSON null.
            rc, final, err = d.cli("submit", "env", input=b"1\n")
            self.assertEqual(final["results"][0]["params"], None)


class Failures(unittest.TestCase):

    def run_one(self, script, items, kwargs=None, workers=1):
        d = Daemon({})
        prog = write_prog(d, "prog", script)
        pool = {"plugin": "exec", "workers": workers, "args": [prog]}
        if kwargs:
            pool["kwargs"] = kwargs
        with open(os.path.join(d.dir, "pools.d", "p.json"), "w") as f:
            json.dump(pool, f)
        with d:
            before = sorted(d.worker_pids())
            self.assertEqual(len(before), workers, before)
            rc, final, err = d.cli("submit", "p", input=lines(items))
            log = d.log_text()
            # The program failed, not its worker: no crash, the same
            # workers, and they serve the next stream, where the program
            # fails again (it always does) and is reported the same way.
            self.assertEqual(final["crashes"], 0, final)
            rc2, final2, err2 = d.cli("submit", "p", input=lines(items[:1]))
            self.assertEqual(rc2, 1, err2)
            self.assertIsNotNone(final2, err2)
            self.assertFalse(final2["ok"])
            self.assertEqual(final2["items"], 1, final2)
            self.assertEqual(final2["crashes"], 0, final2)
            self.assertEqual(len(final2["results"]), 1, final2)
            assert_invariant(self, final2)
            self.assertEqual([e["stage"] for e in final2["errors"]],
                             ["consume"], final2)
            self.assertIn("program %s " % prog, final2["errors"][0]["error"])
            after = sorted(d.worker_pids())
            self.assertEqual(after, before)
            # Every program was waited for: no zombie under a worker.
            for w in after:
                self.assertEqual(children(w), [], "worker %d" % w)
        self.assertEqual(rc, 1, err)
        self.assertFalse(final["ok"])
        assert_invariant(self, final)
        self.assertEqual(len(final["errors"]), 1, final)
        self.assertEqual(final["errors"][0]["stage"], "consume")
        return prog, final["errors"][0]["error"], final, log

    def test_exit_status_and_stderr_tail(self):
        prog, error, final, log = self.run_one(
            "#!/bin/sh\ncat >/dev/null\n"
            "echo 'connecting to db' >&2\n"
            "echo 'fatal: table t1 does not exist' >&2\nexit 1\n",
            list(range(50)))
        self.assertEqual(error, "program %s exited with status 1: "
                         "connecting to db\nfatal: table t1 does not exist"
                         % prog)
        # Passed through to the daemon's log, tagged with the worker.
        self.assertRegex(log, r"pool p worker 1 \(pid \d+\): fatal: "
                         r"table t1 does not exist")
        self.assertEqual(final["results"], [None])

    def test_stderr_tail_is_bounded(self):
        prog, error, final, log = self.run_one(
            "#!/bin/sh\ncat >/dev/null\n"
            "i=0; while [ $i -lt 200 ]; do echo \"noise line $i\" >&2; "
            "i=$((i+1)); done\necho 'the last words' >&2\nexit 7\n",
            [1, 2, 3], kwargs={"stderr_tail": 40})
        head = "program %s exited with status 7: ..." % prog
        self.assertTrue(error.startswith(head), error)
        self.assertTrue(error.endswith("the last words"), error)
        self.assertLessEqual(len(error) - len(head), 40)

    def test_output_not_json(self):
        prog, error, final, log = self.run_one(
            "#!/bin/sh\ncat >/dev/null\necho 'count: 3'\n"
            "echo 'a warning' >&2\n", [1, 2, 3])
        self.assertIn("program %s exited with status 0 but its stdout "
                      "(9 bytes) is not one JSON value: " % prog, error)
        self.assertIn("line 1", error)
        self.assertTrue(error.endswith(": a warning"), error)

    def test_two_values_are_not_one(self):
        prog, error, final, log = self.run_one(
            "#!/bin/sh\ncat >/dev/null\necho 1\necho 2\n", [1])
        self.assertIn("is not one JSON value", error)

    def test_killed_by_signal(self):
        prog, error, final, log = self.run_one(
            "#!%s\nimport os, signal, sys\nsys.stdin.read()\n"
            "sys.stderr.write('about to die\\n'); sys.stderr.flush()\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n" % PY, [1, 2])
        self.assertEqual(error, "program %s was killed by signal 9 "
                         "(Killed): about to die" % prog)

    def test_exit_before_reading_everything(self):
        # sh's read takes one byte at a time from a pipe: the program
        # reads exactly three lines, and says it did.
        prog, error, final, log = self.run_one(
            "#!/bin/sh\nread a; read b; read c\necho \"[$a,$b,$c]\"\n",
            [{"v": i} for i in range(1000)])
        self.assertEqual(error, "program %s exited before reading all its "
                         "input: 997 items not read, first: item 4" % prog)
        # What it printed is still its result.
        self.assertEqual(final["results"],
                         [[{"v": 0}, {"v": 1}, {"v": 2}]])
        self.assertEqual(final["items"], 1000)

    def test_failure_and_unread_items(self):
        # It fails at once, without reading: items the client sends
        # after that still end the stream properly, counted.
        prog, error, final, log = self.run_one(
            "#!/bin/sh\necho 'no database' >&2\nexit 2\n",
            list(range(100000)))
        self.assertEqual(error, "program %s exited with status 2 (100000 "
                         "items not read, first: item 1): no database"
                         % prog)
        self.assertEqual(final["items"], 100000)

    def test_output_too_large(self):
        prog, error, final, log = self.run_one(
            "#!%s\nimport sys\nsys.stdin.read()\n"
            "sys.stdout.write('[' + '1,' * 100000 + '1]')\n" % PY,
            [1], kwargs={"max_output": 1000})
        self.assertEqual(error, "program %s wrote more than max_output "
                         "(1000 bytes) to stdout, and was killed" % prog)

    def test_empty_output_is_null(self):
        d = Daemon({})
        prog = write_prog(d, "quiet", "#!/bin/sh\ncat >/dev/null\n")
        with open(os.path.join(d.dir, "pools.d", "q.json"), "w") as f:
            json.dump({"plugin": "exec", "args": [prog]}, f)
        with d:
            rc, final, err = d.cli("submit", "q", input=b"1\n2\n")
            self.assertEqual(rc, 0, err)
            self.assertEqual(final["results"], [None])

    def test_completion_program_failure(self):
        d = Daemon({})
        count = write_prog(d, "count.py", COUNT_PY, 0o644)
        bad = write_prog(d, "bad", "#!/bin/sh\nread x\n"
                         "echo \"cannot store $x\" >&2\nexit 4\n")
        with open(os.path.join(d.dir, "pools.d", "c.json"), "w") as f:
            json.dump({"plugin": "exec", "workers": 1, "args": [PY, count],
                       "kwargs": {"complete": [bad]}}, f)
        with d:
            rc, final, err = d.cli("submit", "c", input=lines(
                [{"n": 5}]))
            self.assertEqual(rc, 1)
            self.assertEqual(final["results"][0]["n"], 1)
            self.assertIsNone(final["completion"])
            self.assertEqual(final["errors"][0]["stage"], "complete")
            self.assertEqual(final["errors"][0]["error"],
                             "program %s exited with status 4: cannot store "
                             "%s" % (bad, json.dumps(final["results"],
                                                     separators=(",", ":"))))


class NoDeadlock(unittest.TestCase):

    def test_program_writes_before_reading(self):
        # 1 MiB to stdout and 256 KiB to stderr before reading a line: far
        # more than a pipe holds.  A plugin that wrote all the input before
        # reading would hang here.
        d = Daemon({})
        prog = write_prog(d, "chatty", (
            "#!%s\nimport sys\n"
            "sys.stdout.write('[\"' + 'x' * (1 << 20) + '\", ')\n"
            "sys.stdout.flush()\n"
            "for i in range(2048):\n"
            "    sys.stderr.write('progress %%04d %%s\\n' %% (i, 'y' * 100))\n"
            "sys.stderr.flush()\n"
            "n = sum(1 for _ in sys.stdin)\n"
            "sys.stdout.write('%%d]' %% n)\n" % PY))
        with open(os.path.join(d.dir, "pools.d", "c.json"), "w") as f:
            json.dump({"plugin": "exec", "workers": 1, "args": [prog]}, f)
        item = {"pad": "z" * 200}
        with d:
            rc, final, err = d.cli("submit", "c", input=lines(
                [item] * 20000))
            self.assertEqual(rc, 0, err)
            self.assertEqual(final["results"], [["x" * (1 << 20), 20000]])
            self.assertIn("progress 2047", d.log_text())


class SlowProgram(unittest.TestCase):

    ITEMS = 400000

    def test_backpressure_bounds_memory(self):
        # 400,000 items of 160 bytes (64 MB) through a program that reads
        # slowly.  The master stops reading the client and the worker
        # pulls items only as the program takes them: neither holds more
        # than a few windows, and every item reaches the program.
        d = Daemon({})
        slow = write_prog(d, "slow.py", SLOW_PY, 0o644)
        with open(os.path.join(d.dir, "pools.d", "slow.json"), "w") as f:
            json.dump({"plugin": "exec", "workers": 2,
                       "args": [PY, slow]}, f)
        # Compact, as the program gets it.
        item = json.dumps({"n": 1, "pad": "p" * 143},
                          separators=(",", ":")) + "\n"
        item = item.encode()
        self.assertEqual(len(item), 160)
        with d:
            workers = d.worker_pids()
            base = {w: vmhwm_kib(w) for w in workers}
            t0 = time.monotonic()
            rc, final, err = d.cli("submit", "slow",
                                   input=item * self.ITEMS, timeout=600)
            elapsed = time.monotonic() - t0
            master = d.rss_peak_kib()
            peaks = {w: vmhwm_kib(w) for w in workers}
            self.assertEqual(rc, 0, err)
            self.assertEqual(final["items"], self.ITEMS)
            assert_invariant(self, final)
            # Every item reached a program, whole.
            self.assertEqual(sum(r["n"] for r in final["results"]),
                             self.ITEMS)
            self.assertEqual(sum(r["bytes"] for r in final["results"]),
                             len(item) * self.ITEMS)
            print("exec slow reader: %d items (%d MB) in %.1f s; master "
                  "peak RSS %d KiB; workers' peak RSS %s KiB (from %s)" % (
                      self.ITEMS, len(item) * self.ITEMS // 1000000,
                      elapsed, master, list(peaks.values()),
                      list(base.values())))
            # The stream is 64 MB, 32 MB per worker: holding it would
            # break both bounds.
            self.assertLess(master, 32 * 1024)
            for w in workers:
                self.assertLess(peaks[w] - base[w], 16 * 1024)


class Lifetimes(unittest.TestCase):

    def test_program_dies_with_its_worker(self):
        # The program hangs after its input; item_timeout kills the
        # worker; the program goes with it (PR_SET_PDEATHSIG).
        d = Daemon({})
        pidfile = os.path.join(d.dir, "pid")
        prog = write_prog(d, "hang", "#!/bin/sh\necho $$ > %s\n"
                          "cat >/dev/null\nexec sleep 1000\n" % pidfile)
        with open(os.path.join(d.dir, "pools.d", "h.json"), "w") as f:
            json.dump({"plugin": "exec", "workers": 1, "args": [prog],
                       "item_timeout": 1, "on_crash": "fail"}, f)
        with d:
            rc, final, err = d.cli("submit", "h", input=b"1\n2\n")
            self.assertEqual(rc, 1)
            self.assertIn("item_timeout", json.dumps(final["errors"]))
            with open(pidfile) as f:
                pid = int(f.read())
            wait_for(lambda: not alive(pid), 10, "the program to die")


class BadConfig(unittest.TestCase):

    def refused(self, pool, text, files=()):
        d = Daemon({})
        for name, mode in files:
            write_prog(d, name, "#!/bin/sh\necho 1\n", mode)
        pool = json.loads(json.dumps(pool).replace("@DIR@", d.dir))
        with open(os.path.join(d.dir, "pools.d", "bad.json"), "w") as f:
            json.dump(dict(pool, plugin="exec"), f)
        with d:
            rc, final, err = d.cli("submit", "bad", input=b"1\n")
            self.assertEqual(rc, 1, err)
            self.assertFalse(final["ok"])
            self.assertEqual(final["error"], "pool bad cannot start its "
                             "workers: init failed: " +
                             text.replace("@DIR@", d.dir))

    def test_not_found(self):
        self.refused({"args": ["@DIR@/nope.py"]},
                     "args: program @DIR@/nope.py: No such file or "
                     "directory")

    def test_not_executable(self):
        self.refused({"args": ["@DIR@/prog"]},
                     "args: program @DIR@/prog: not executable (Permission "
                     "denied)", files=[("prog", 0o644)])

    def test_directory(self):
        self.refused({"args": ["@DIR@"]},
                     "args: program @DIR@: not a regular file")

    def test_not_on_path(self):
        self.refused({"args": ["no-such-consumer-program"]},
                     "args: program \"no-such-consumer-program\" not found "
                     "on PATH (/usr/local/bin:/usr/bin:/bin): give its "
                     "absolute path, or set PATH in the pool's \"env\"")

    def test_relative(self):
        self.refused({"args": ["bin/count"]},
                     "args: program \"bin/count\" is a relative path: give "
                     "an absolute path, or a bare name to look up on PATH")

    def test_bad_args(self):
        self.refused({"args": []},
                     "args must be a non-empty array of strings: the program "
                     "and its arguments, e.g. [\"/usr/bin/python3\", "
                     "\"/srv/count.py\"]")
        self.refused({"args": ["/bin/sh", 3]},
                     "args[1] must be a string without NUL bytes")

    def test_bad_kwargs(self):
        self.refused({"args": ["/bin/cat"], "kwargs": {"complet": ["x"]}},
                     "unknown key kwargs.complet (the exec plugin knows "
                     "complete, stderr_tail and max_output)")
        self.refused({"args": ["/bin/cat"], "kwargs": {"stderr_tail": "1k"}},
                     "kwargs.stderr_tail must be an integer from 0 to "
                     "1048576 (bytes)")
        self.refused({"args": ["/bin/cat"], "kwargs": {"max_output": 0}},
                     "kwargs.max_output must be an integer from 1 to "
                     "268435456 (bytes)")
        self.refused({"args": ["/bin/cat"],
                      "kwargs": {"complete": ["@DIR@/nope"]}},
                     "kwargs.complete: program @DIR@/nope: No such file or "
                     "directory")

    def test_bare_name_found_on_path(self):
        d = Daemon({"c": {"plugin": "exec", "args": ["sh", "-c",
                                                     "wc -l"]}})
        with d:
            rc, final, err = d.cli("submit", "c", input=b"1\n2\n3\n")
            self.assertEqual((rc, final["results"]), (0, [3]), err)


if __name__ == "__main__":
    main()
