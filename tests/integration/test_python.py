"""The python plugin (consumers-python(3)) and the Python client as a
drop-in consumers.Pool, against the real daemon.

Upstream: the consumers package's own tests (its tests/test_consumers.py),
ported: each of its functions is a module function in a python pool, and
each test drives the pool through consumers_client.Pool the way the
original drives consumers.Pool.  Plugin: what the plugin adds (setup
state across streams, the consumersd module, errors and deaths,
conversions, chaining, consumersd -t).

The test modules live in a directory of their own that every user can
read: when the tests run as root, some pools run as nobody.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (DAEMON, PLUGIN_DIR, TOP_BUILDDIR, Daemon,  # noqa
                     assert_invariant, lines, main)

sys.path.insert(0, os.path.join(TOP_BUILDDIR, "client", "python"))
import consumers_client as cc  # noqa
from consumers_client import Pool  # noqa

PYTHON_SO = os.path.join(PLUGIN_DIR, "python.so")

# The functions of the consumers package's tests, and the plugin's own.
UPSTREAM = '''
import consumersd

def failer(items):
    raise ValueError

def identity(x):
    return x

def return_name(_):
    return "return_name-%d" % consumersd.worker()

def return_all(items):
    return tuple(items)

def concatenate(items):
    return ''.join(items)

def concatenate_args(items, a, b, c, d):
    data = [str(v) for v in (a, b, c, d)]
    data.extend(items)
    return ''.join(data)

def dummy(items):
    # consumers' dummy returns without reading: its queue is dropped.
    # consumersd reports items no consume call took, so this one reads.
    for _ in items:
        pass
'''

PLUGIN = '''
import os
import sys
import consumersd

SETUPS = []

def connect():
    SETUPS.append(os.getpid())
    return {"pid": os.getpid(), "streams": 0}

def count_streams(items, state):
    state["streams"] += 1
    return {"pid": os.getpid(), "streams": state["streams"],
            "setups": len(SETUPS), "items": list(items)}

def no_state(items):
    return sum(1 for _ in items)

def total(results, state):
    return {"streams": sum(r["streams"] for r in results),
            "setup_pid": state["pid"]}

def context(items):
    return {"params": consumersd.params(), "pool": consumersd.pool(),
            "worker": consumersd.worker(), "uid": os.getuid(),
            "n": sum(1 for _ in items)}

def deep_fail(items):
    for item in items:
        _check(item)

def _check(item):
    if item == "bad":
        raise KeyError("no such thing: %s" % item)

def returns_set(items):
    list(items)
    return {1, 2}

def exits(items):
    for item in items:
        if item == "exit":
            sys.exit(7)
        if item == "_exit":
            os._exit(9)

def echo(items):
    return list(items)

def square_sums(numbers, to):
    total = 0
    for n in numbers:
        total += n * n
    consumersd.put(to, total)
    return total

def sums(totals):
    return sum(totals)

def add(results):
    return sum(results)
'''


# A module that does not import consumersd (the items iterator's type
# must be ready all the same).
PLAIN = '''
def echo(items):
    return list(items)
'''


def write_modules():
    where = tempfile.mkdtemp(prefix="cnsd-python-")
    os.chmod(where, 0o755)
    for name, text in (("upstream_fns", UPSTREAM), ("plugin_fns", PLUGIN),
                       ("plain_fns", PLAIN)):
        with open(os.path.join(where, name + ".py"), "w") as f:
            f.write(text)
        os.chmod(os.path.join(where, name + ".py"), 0o644)
    return where


MODULES = write_modules()


def py_pool(function, workers=1, **keys):
    opts = {"function": function, "path": [MODULES]}
    for k in ("complete", "setup", "setup_as"):
        if k in keys:
            opts[k] = keys.pop(k)
    pool = {"plugin": "python", "workers": workers, "plugin_options": opts}
    pool.update(keys)
    return pool


@unittest.skipUnless(os.path.exists(PYTHON_SO),
                     "the python plugin was not built (no python3-embed)")
class Upstream(unittest.TestCase):
    """consumers' tests/test_consumers.py, test by test."""

    @classmethod
    def setUpClass(cls):
        f = "upstream_fns:"
        cls.d = Daemon({
            "failer": py_pool(f + "failer"),
            "identity": py_pool(f + "identity"),
            "return_name": py_pool(f + "return_name", workers=3),
            "return_all": py_pool(f + "return_all"),
            "concatenate": py_pool(f + "concatenate"),
            "concatenate_args": py_pool(f + "concatenate_args",
                                        args=[5, 6],
                                        kwargs={"c": 7, "d": 8},
                                        client_args=True),
            "dummy": py_pool(f + "dummy"),
        }).start()

    @classmethod
    def tearDownClass(cls):
        cls.d.__exit__(None, None, None)

    def pool(self, name, *args, **kwargs):
        return Pool(name, *args, socket=self.d.socket, **kwargs)

    def test_consumer_error(self):
        pool = self.pool("failer", 1)
        with self.assertRaises(cc.ConsumerError) as cm:
            pool.join()
        (err,) = cm.exception.errors
        self.assertEqual(err["stage"], "consume")
        self.assertTrue(err["error"].startswith("ValueError"), err)
        self.assertIn("upstream_fns.py:5 in failer", err["error"])

    def test_results_before_join(self):
        # identity returns its items iterator, which JSON cannot hold:
        # the join at the end of the block raises, naming the type.
        with self.assertRaises(cc.ConsumerError) as cm:
            with self.pool("identity", 1) as pool:
                with self.assertRaises(cc.PoolError):
                    print(pool.results)
        self.assertIn("a value of type 'consumersd.Items' cannot be "
                      "converted to JSON", cm.exception.errors[0]["error"])

    def test_process_name(self):
        pool = self.pool("return_name", 3)
        pool.join()
        self.assertEqual(sorted(pool.results), ["return_name-1",
                                                "return_name-2",
                                                "return_name-3"])

    def test_items_generator(self):
        with self.pool("return_all", 1) as pool:
            pool.put()
            pool.put(1)
            pool.put("a", "b")
        # JSON has no tuples: the tuple comes back as an array.
        self.assertEqual(pool.results[0], [None, 1, ["a", "b"]])

    def test_pool(self):
        with self.pool("concatenate", 1) as pool:
            for letter in "abcd":
                pool.put(letter)
        self.assertEqual(pool.results[0], "abcd")

    def test_pool_args_kwargs(self):
        args = (1, 2)
        kwargs = {"c": 3, "d": 4}
        with self.pool("concatenate_args", 1, args=args,
                       kwargs=kwargs) as pool:
            for letter in "abcd":
                pool.put(letter)
        self.assertEqual(pool.results[0], "1234abcd")
        # Without them, the pool file's.
        with self.pool("concatenate_args", 1) as pool:
            for letter in "abcd":
                pool.put(letter)
        self.assertEqual(pool.results[0], "5678abcd")
        # A pool without client_args refuses a stream that brings them.
        with self.assertRaises(cc.RefusedError) as cm:
            with self.pool("concatenate", 1, args=args) as pool:
                pool.put("a")
        self.assertIn("client_args", cm.exception.error)

    def test_pool_close(self):
        pool = self.pool("dummy", 1)
        pool.put(1)
        pool.close()
        with self.assertRaises(cc.PoolError):
            pool.put(1)
        pool.join()
        self.assertEqual(pool.results, [None])

    def test_pool_close_idempotent(self):
        pool = self.pool("dummy", 1)
        pool.put(1)
        pool.close()
        pool.close()
        pool.close()
        pool.join()
        self.assertEqual(pool.final["consumed"], 1)

    def test_pool_join_idempotent(self):
        pool = self.pool("dummy", 1)
        pool.put(1)
        pool.join()
        pool.join()
        pool.join()
        self.assertEqual(pool.results, [None])

    def test_pool_terminate_idempotent(self):
        pool = self.pool("dummy", 1)
        pool.put(1)
        pool.terminate()
        pool.terminate()
        pool.terminate()
        with self.assertRaises(cc.PoolError):
            pool.results
        with self.assertRaises(cc.PoolError):
            pool.put(2)


@unittest.skipUnless(os.path.exists(PYTHON_SO),
                     "the python plugin was not built (no python3-embed)")
class Plugin(unittest.TestCase):

    def test_setup_state_across_streams(self):
        # setup runs once per worker; its value reaches every call of
        # that worker, and complete, as "state"; a function that does not
        # take it is called without it.
        with Daemon({"s": py_pool("plugin_fns:count_streams", workers=2,
                                  setup="plugin_fns:connect",
                                  complete="plugin_fns:total"),
                     "n": py_pool("plugin_fns:no_state",
                                  setup="plugin_fns:connect")}) as d:
            for stream in range(1, 4):
                with Pool("s", 2, socket=d.socket) as pool:
                    for i in range(10):
                        pool.put(i)
                for r in pool.results:
                    self.assertEqual(r["streams"], stream)
                    self.assertEqual(r["setups"], 1)
                self.assertEqual(sorted(sum((r["items"]
                                             for r in pool.results), [])),
                                 list(range(10)))
                self.assertEqual(pool.completion["streams"], 2 * stream)
                self.assertIn(pool.completion["setup_pid"],
                              [r["pid"] for r in pool.results])
            with Pool("n", socket=d.socket) as pool:
                for i in range(5):
                    pool.put(i)
            self.assertEqual(pool.results, [5])

    def test_context_module(self):
        pool = py_pool("plugin_fns:context", workers=2)
        if os.geteuid() == 0:
            # As nobody, who must read the plugin and the module.
            where = tempfile.mkdtemp(prefix="cnsd-python-so-")
            self.addCleanup(shutil.rmtree, where, True)
            os.chmod(where, 0o755)
            pool["plugin"] = shutil.copy(PYTHON_SO, where)
            pool["user"] = "nobody"
        with Daemon({"ctx": pool}) as d:
            with Pool("ctx", 2, params={"run": [1, "x"]},
                      socket=d.socket) as p:
                for i in range(6):
                    p.put(i)
        self.assertEqual(sorted(r["worker"] for r in p.results), [1, 2])
        for r in p.results:
            self.assertEqual(r["params"], {"run": [1, "x"]})
            self.assertEqual(r["pool"], "ctx")
            self.assertEqual(r["uid"], 65534 if os.geteuid() == 0 else
                             os.getuid())
        self.assertEqual(sum(r["n"] for r in p.results), 6)

    def test_conversions(self):
        # Every JSON type there and back, converted in C both ways.
        items = [None, True, False, 0, -1, 2 ** 63 - 1, -2 ** 63, 1.5,
                 -0.25, 1e300, "", "a\u00e9\u4e2d\U0001f600",
                 [], {}, [1, [2, [3, {"k": [None]}]]],
                 {"a": 1, "b": {"c": [True, "d"]}, "\u00e9": ""}]
        with Daemon({"echo": py_pool("plain_fns:echo")}) as d:
            replies, final = d.submit_raw(
                {"op": "submit", "pool": "echo"}, lines(items))
        self.assertEqual(final["results"], [items])
        self.assertEqual(final["errors"], [])

    def test_errors(self):
        with Daemon({"deep": py_pool("plugin_fns:deep_fail"),
                     "set": py_pool("plugin_fns:returns_set")}) as d:
            with self.assertRaises(cc.ConsumerError) as cm:
                with Pool("deep", socket=d.socket) as pool:
                    for item in ("ok", "bad", "later"):
                        pool.put(item)
            err = cm.exception.errors[0]["error"]
            self.assertTrue(err.startswith(
                "KeyError: 'no such thing: bad'"), err)
            # The last frames, innermost last.
            self.assertRegex(err, r"plugin_fns\.py:\d+ in deep_fail; "
                             r".*plugin_fns\.py:\d+ in _check\)$")
            assert_invariant(self, cm.exception.final)
            self.assertEqual(cm.exception.final["consumed"], 2)
            with self.assertRaises(cc.ConsumerError) as cm:
                with Pool("set", socket=d.socket) as pool:
                    pool.put(1)
            self.assertIn("a value of type 'set' cannot be converted to "
                          "JSON", cm.exception.errors[0]["error"])
            # The worker lives on: the next stream works.
            with Pool("deep", socket=d.socket) as pool:
                pool.put("ok")
            self.assertEqual(pool.results, [None])

    def test_exit_is_a_death(self):
        with Daemon({"x": py_pool("plugin_fns:exits", on_crash="fail"),
                     "r": py_pool("plugin_fns:exits")}) as d:
            for item, code in (("exit", 7), ("_exit", 9)):
                with self.assertRaises(cc.ConsumerError) as cm:
                    with Pool("x", socket=d.socket) as pool:
                        pool.put(1)
                        seq = pool.put(item)
                (err,) = cm.exception.errors
                self.assertEqual(err.get("exit"), code, err)
                self.assertTrue(any(lo <= seq <= hi
                                    for lo, hi in err["seqs"]), err)
            # replay: the item it dies on every time is quarantined; the
            # others are consumed.
            with self.assertRaises(cc.RejectedError) as cm:
                with Pool("r", socket=d.socket) as pool:
                    pool.put(1)
                    bad = pool.put("exit")
                    pool.put(2)
            self.assertEqual(cm.exception.seqs, [bad])
            assert_invariant(self, cm.exception.final)

    def test_chaining(self):
        # consumers' cross-pool example: square_sums puts each consumer's
        # total into another pool, whose completion adds them.
        to = "totals"
        with Daemon({"squares": py_pool("plugin_fns:square_sums",
                                        workers=2, kwargs={"to": to}),
                     to: py_pool("plugin_fns:sums", workers=1,
                                 complete="plugin_fns:add")}) as d:
            with Pool("squares", 2, socket=d.socket) as pool:
                for i in range(500):
                    pool.put(i)
            self.assertEqual(sum(pool.results),
                             sum(i * i for i in range(500)))
            self.assertEqual(len(pool.results), 2)
            self.assertIn("stream 2: pool totals", d.log_text())
            self.assertRegex(d.log_text(), r"pool totals: 1 item, 1 "
                             r"consumed")

    def test_config_check(self):
        # consumersd -t imports each python pool's module in a child and
        # reports what is wrong as the pool file's file:line.
        where = tempfile.mkdtemp(prefix="cnsd-python-t-")
        self.addCleanup(shutil.rmtree, where, True)
        with open(os.path.join(where, "broken.py"), "w") as f:
            f.write("def f(items):\n    return 1\n\ndef g(items:\n")
        pools = os.path.join(where, "pools.d")
        os.mkdir(pools)
        cases = {
            "nomod": ("nosuchmodule:f", r"no module named nosuchmodule"),
            "nofn": ("plugin_fns:nosuch",
                     r"plugin_fns\.py: module plugin_fns has no "
                     r"\"nosuch\""),
            "syntax": ("broken:f",
                       r"broken\.py:4: SyntaxError: "),
        }
        for name, (fn, _) in cases.items():
            with open(os.path.join(pools, name + ".json"), "w") as f:
                json.dump({"plugin": "python", "plugin_options": {
                    "function": fn, "path": [where, MODULES]}}, f)
        conf = os.path.join(where, "consumersd.conf")
        with open(conf, "w") as f:
            json.dump({"pools_dir": "pools.d", "root_workers": True,
                       "spool_dir": where}, f)
        p = subprocess.run([DAEMON, "-t", "-c", conf, "-P", PLUGIN_DIR],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 1, p.stderr)
        for name, (_, want) in cases.items():
            self.assertRegex(p.stderr, r"(?m)^%s:\d+:\d+: python: .*%s" %
                             (os.path.join(pools, name + ".json"), want))
        # Fixed, the same configuration is valid.
        for name in cases:
            os.unlink(os.path.join(pools, name + ".json"))
        with open(os.path.join(pools, "ok.json"), "w") as f:
            json.dump(py_pool("plugin_fns:echo"), f)
        p = subprocess.run([DAEMON, "-t", "-c", conf, "-P", PLUGIN_DIR],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)


if __name__ == "__main__":
    try:
        main()
    finally:
        shutil.rmtree(MODULES, True)
