"""The Node.js example client, client/node/submit.js, against the real
daemon: its printed results and completion are those of the stream,
computed here from the items sent; refusals, errors and a missing socket
give its documented exit statuses."""
import json
import os
import random
import shutil
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (SLOWDOWN, TOP_SRCDIR, Daemon, main,  # noqa
                     test_plugin)

SUBMIT = os.path.join(TOP_SRCDIR, "client", "node", "submit.js")
NODE = shutil.which("node") or shutil.which("nodejs")


def run(*args, input=b"", env=None):
    """Run submit.js; returns (status, {"results":..., "completion":...},
    stderr)."""
    if NODE is None:
        raise AssertionError("node is not installed: install the Debian "
                             "package nodejs (./quickstart installs it)")
    p = subprocess.run([NODE, SUBMIT] + list(args), input=input,
                       capture_output=True, timeout=120 * SLOWDOWN,
                       env=env)
    out = {}
    for line in p.stdout.decode().splitlines():
        key, _, value = line.partition(": ")
        out[key] = json.loads(value)
    return p.returncode, out, p.stderr.decode()


class NodeClient(unittest.TestCase):

    def test_items_from_arguments(self):
        letters = ["a", "b", "c", "d"]
        with Daemon({"collect": {"plugin": "collect", "workers": 1},
                     "concat": {"plugin": "concat", "workers": 2}}) as d:
            texts = [json.dumps(v) for v in letters]
            rc, out, err = run("-s", d.socket, "collect", *texts)
            self.assertEqual(rc, 0, err)
            self.assertEqual(out, {"results": [letters], "completion": None})
            rc, out, err = run("-s", d.socket, "-w", "1", "-p",
                               json.dumps({"separator": "+"}), "concat",
                               *texts)
            self.assertEqual(rc, 0, err)
            self.assertEqual(out["results"], ["+".join(letters)])
            self.assertIn("stream ", err)

    def test_stdin_and_rejections(self):
        rng = random.Random(11)
        numbers = [rng.randint(-1000, 1000) for _ in range(100000)]
        body = "".join("%d\n" % n for n in numbers).encode()
        with Daemon({"sum": {"plugin": "sum", "workers": 2}}) as d:
            rc, out, err = run("-s", d.socket, "sum", input=body)
            self.assertEqual(rc, 0, err)
            self.assertEqual(out["completion"], sum(numbers))
            self.assertEqual(len(out["results"]), 2)
            self.assertEqual(sum(out["results"]), sum(numbers))
            # An invalid line is rejected by number and the stream goes
            # on; the exit status says so.
            lines = ["1", "2", "{x", "3", "", "[4"]
            rc, out, err = run("-s", d.socket, "sum",
                               input="\n".join(lines).encode() + b"\n")
            self.assertEqual(rc, 1, err)
            self.assertEqual(out["completion"], 6)
            self.assertIn("item 3 rejected: invalid JSON", err)
            self.assertIn("item 5 rejected: invalid JSON", err)

    def test_environment_socket(self):
        with Daemon({"sum": {"plugin": "sum", "workers": 1}}) as d:
            env = dict(os.environ, CONSUMERS_SOCKET=d.socket)
            rc, out, err = run("sum", "40", "2", env=env)
            self.assertEqual((rc, out["completion"]), (0, 42), err)

    def test_refusal_and_errors(self):
        with Daemon({"sum": {"plugin": "sum", "workers": 1},
                     "bc": {"plugin": test_plugin("badcomplete"),
                            "workers": 1}}) as d:
            rc, out, err = run("-s", d.socket, "nope", "1")
            self.assertEqual(rc, 1)
            self.assertEqual(out, {})
            self.assertIn('refused: no pool named "nope" (pools: bc, sum)',
                          err)
            rc, out, err = run("-s", d.socket, "-p",
                               '{"complete":"error"}', "bc", "5", "6")
            self.assertEqual(rc, 1)
            self.assertEqual(out, {"results": [11], "completion": None})
            self.assertIn("error (complete, worker 1): the completion "
                          "handler refused: on purpose", err)
            missing = d.socket + ".missing"
            rc, out, err = run("-s", missing, "sum", "1")
            self.assertEqual(rc, 2)
            self.assertIn("cannot talk to consumersd at %s" % missing, err)


if __name__ == "__main__":
    main()
