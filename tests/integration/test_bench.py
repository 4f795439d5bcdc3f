"""make bench, at a tiny scale: the benchmark keeps working.

It runs every workload of tests/bench/bench.py (consumersd and each
baseline) at 1/1000 of the sizes of doc/performance.md.  bench.py checks
every run itself (all items counted, the same sum as the single-process
jansson parse) and fails on any loss; this test checks that it ran them
all.  Nothing here looks at times: the figures are make bench's to print.
"""
import json
import os
import subprocess
import sys
import tempfile
import unittest

import harness

BENCH = os.path.join(harness.TOP_SRCDIR, "tests", "bench", "bench.py")


class BenchSmoke(unittest.TestCase):
    def test_every_workload_runs_and_loses_nothing(self):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "bench.json")
            p = subprocess.run(
                [sys.executable, BENCH, "--scale", "0.001", "--repeat", "1",
                 "--json", out],
                capture_output=True, text=True, timeout=300 *
                harness.SLOWDOWN,
                env=dict(os.environ, top_srcdir=harness.TOP_SRCDIR,
                         top_builddir=harness.TOP_BUILDDIR))
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            with open(out) as f:
                r = json.load(f)
        w = r["workloads"]
        # W6 needs the python plugin, built when python3-embed is found.
        w6 = os.path.exists(os.path.join(harness.PLUGIN_DIR, "python.so"))
        # W7 needs hiredis and redis-server (both installed by quickstart).
        flag = os.environ.get("CNS_HIREDIS")
        if flag is None:
            with open(harness.DAEMON, "rb") as f:
                flag = "1" if b"redisAsyncConnect" in f.read() else "0"
        w7 = flag == "1"
        self.assertEqual(sorted(w), ["W1", "W2", "W3", "W4", "W5"] +
                         (["W6"] if w6 else []) + (["W7"] if w7 else []))
        if w7:
            self.assertEqual(w["W7"]["items"], 1000)
            self.assertEqual(w["W7"]["lanes"], 4)
        if w6:
            self.assertEqual(w["W6"]["items"], 1000)
            for k in ("consumersd_s", "consumers_s", "streams_per_s",
                      "batches_per_s"):
                self.assertGreater(w["W6"][k], 0, k)
        ntargets = (10 if w6 else 8) + (1 if w7 else 0)
        self.assertEqual(w["W1"]["items"], 1000)
        for k in ("consumersd_s", "a_s", "b_s", "c_s", "raw_s", "wc_s"):
            self.assertGreater(w["W1"][k], 0, k)
        for run in (w["W2"]["one_client"], w["W2"]["eight_clients"],
                    w["W4"], w["W5"]):
            self.assertEqual(run["failed"], 0)
            self.assertEqual(run["lost"], 0)
        self.assertEqual(w["W2"]["eight_clients"]["clients"], 8)
        self.assertEqual(w["W5"]["streams"], 4)
        self.assertEqual([x["items"] for x in w["W3"]], [1000, 10000])
        # Every target got a verdict, printed for the reader.
        self.assertEqual(len(r["targets"]), ntargets)
        self.assertEqual(p.stdout.count("  -> "), ntargets, p.stdout)
        self.assertIn("targets: %d of %d met" %
                      (sum(t["met"] for t in r["targets"]), ntargets),
                      p.stdout)


if __name__ == "__main__":
    harness.main()
