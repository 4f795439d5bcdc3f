"""The clients as standard packages: client/python/pyproject.toml is
installed by pip (no network, no build isolation) as the importable
module consumers_client, and client/node/package.json is an npm package
holding the example client submit.js.  Each test skips, saying what to
install, when its tool is absent."""
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import SLOWDOWN, TOP_SRCDIR, main  # noqa

PYDIR = os.path.join(TOP_SRCDIR, "client", "python")
NODEDIR = os.path.join(TOP_SRCDIR, "client", "node")


def python_with_pip():
    """A python3 with pip, setuptools and wheel, or None."""
    for py in (sys.executable, "/usr/bin/python3"):
        if py and os.access(py, os.X_OK) and subprocess.run(
                [py, "-c", "import setuptools, wheel"],
                capture_output=True).returncode == 0 and subprocess.run(
                [py, "-m", "pip", "--version"],
                capture_output=True).returncode == 0:
            return py
    return None


class Packaging(unittest.TestCase):

    def test_pip_installs_python_client(self):
        py = python_with_pip()
        if py is None:
            self.skipTest("no python3 with pip, setuptools and wheel: "
                          "install python3-pip and python3-wheel")
        with tempfile.TemporaryDirectory() as tmp:
            # pip builds in the tree it is given: build a copy, so that a
            # read-only source tree (distcheck) is not written to.
            src = os.path.join(tmp, "src")
            shutil.copytree(PYDIR, src)
            target = os.path.join(tmp, "site")
            p = subprocess.run(
                [py, "-m", "pip", "install", "--no-build-isolation",
                 "--no-deps", "--no-index", "--target", target, src],
                capture_output=True, timeout=300 * SLOWDOWN)
            self.assertEqual(p.returncode, 0,
                             p.stdout.decode() + p.stderr.decode())
            self.assertTrue(os.path.exists(
                os.path.join(target, "consumers_client.py")),
                os.listdir(target))
            env = dict(os.environ, PYTHONPATH=target)
            q = subprocess.run(
                [py, "-c", "import consumers_client as c; "
                 "print(c.__file__); print(c.DEFAULT_SOCKET); "
                 "print(c.Pool.__name__)"],
                capture_output=True, env=env, cwd=tmp)
            self.assertEqual(q.returncode, 0, q.stderr.decode())
            lines = q.stdout.decode().splitlines()
            self.assertTrue(lines[0].startswith(target), lines)
            self.assertEqual(lines[1], "/run/consumersd/consumersd.sock")
            self.assertEqual(lines[2], "Pool")

    def test_npm_pack_lists_node_client(self):
        npm = shutil.which("npm")
        if npm is None:
            self.skipTest("npm is not installed: install the Debian "
                          "package npm")
        with tempfile.TemporaryDirectory() as tmp:
            p = subprocess.run(
                [npm, "pack", "--dry-run", "--json", NODEDIR],
                capture_output=True, timeout=300 * SLOWDOWN, cwd=tmp,
                env=dict(os.environ, npm_config_cache=os.path.join(
                    tmp, "cache")))
            self.assertEqual(p.returncode, 0, p.stderr.decode())
            import json
            info = json.loads(p.stdout.decode())[0]
            files = sorted(f["path"] for f in info["files"])
            self.assertEqual(files, ["package.json", "submit.js"])
            self.assertEqual(info["name"], "consumersd-submit")


if __name__ == "__main__":
    main()
