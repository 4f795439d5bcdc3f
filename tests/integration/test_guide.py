"""doc/writing-consumers.md runs as written, so it cannot rot.

The guide marks what the test uses with HTML comments before fenced code
blocks:

  <!-- file: NAME -->   the block is the content of file NAME
  <!-- run -->          a console block: lines "$ command", each followed by
                        the output it prints (stdout and stderr together)

Everything lives in /srv/consumers in the guide; here, in a temporary
directory that stands for it (the path is replaced in files, commands and
output).  Blocks are taken in the guide's order: files are written (a
pools.d/NAME.json also into the daemon's pools directory), commands run
in the directory with `consumers` from this build on PATH, a
consumers-plugin.pc that points at this source tree's headers, and $CC
for cc.  The daemon starts first, with the pools a default install has
(conf/pools.d); the guide reloads it after adding pools, as a user would."""
import json
import os
import pwd
import re
import shlex
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Daemon, CLI, TOP_SRCDIR, TOP_BUILDDIR, SLOWDOWN,  # noqa
                     main)

GUIDE = os.path.join(TOP_SRCDIR, "doc", "writing-consumers.md")
PLACE = "/srv/consumers"

BLOCK = re.compile(r"^<!-- (file: (?P<file>\S+)|(?P<run>run)) -->\n"
                   r"```[^\n]*\n(?P<body>.*?)^```$", re.M | re.S)


def parse(text):
    """[(kind, name or None, body)] in the guide's order."""
    return [("file" if m.group("file") else "run", m.group("file"),
             m.group("body")) for m in BLOCK.finditer(text)]


def commands(body):
    """[(command, expected output)] of a console block."""
    out = []
    for line in body.splitlines():
        if line.startswith("$ "):
            out.append([line[2:], []])
        elif out:
            out[-1][1].append(line)
        else:
            raise AssertionError("output before any command: " + line)
    return [(c, "\n".join(o)) for c, o in out]


class Guide(unittest.TestCase):

    def test_guide_examples(self):
        with open(GUIDE) as f:
            text = f.read()
        blocks = parse(text)
        # The lead fills this section in with the Python client.
        self.assertIn("\n## A Python client\n", text)
        files = [b for b in blocks if b[0] == "file"]
        runs = [c for b in blocks if b[0] == "run" for c in commands(b[2])]
        # What the guide promises: a C plugin, Python and sh programs,
        # their pool files, builds and submits.
        names = [b[1] for b in files]
        for want in ("wordcount.c", "wordfreq.py", "sum.sh"):
            self.assertIn(want, names)
        self.assertGreaterEqual(len([n for n in names
                                     if n.startswith("pools.d/")]), 3)
        self.assertTrue(any("pkg-config --cflags --libs consumers-plugin"
                            in c for c, _ in runs))
        self.assertGreaterEqual(len([c for c, _ in runs
                                     if "consumers submit" in c]), 5)

        work = tempfile.mkdtemp(prefix="cnsd-guide-")

        def here(s):
            return s.replace(PLACE, work)

        # consumers-plugin.pc for this source tree (the installed one
        # points at the install's include directory).
        pcdir = os.path.join(work, ".pkgconfig")
        os.mkdir(pcdir)
        with open(os.path.join(pcdir, "consumers-plugin.pc"), "w") as f:
            f.write("Name: consumers-plugin\nDescription: test\n"
                    "Version: 0\nRequires: jansson\nCflags: -I%s\n" %
                    os.path.join(TOP_SRCDIR, "src"))
        # The daemon runs the pools a default install has, as a user's
        # would; the guide's pools come on top.
        installed = {}
        for name in sorted(os.listdir(os.path.join(TOP_SRCDIR, "conf",
                                                   "pools.d"))):
            with open(os.path.join(TOP_SRCDIR, "conf", "pools.d",
                                   name)) as f:
                installed[name[:-5]] = json.load(f)
        # The bundled db pool (user consumersd-worker) keeps its database under
        # $STATE_DIRECTORY/db, as systemd gives it.
        state = os.path.join(work, "state")
        os.makedirs(os.path.join(state, "db"))
        if os.geteuid() == 0:
            worker = pwd.getpwnam("consumersd-worker")
            os.chown(os.path.join(state, "db"), worker.pw_uid,
                     worker.pw_gid)
            os.chmod(work, 0o755)
        d = Daemon(installed, env={"STATE_DIRECTORY": state})
        env = dict(os.environ,
                   PATH=os.path.dirname(CLI) + ":" + os.environ["PATH"],
                   CONSUMERS_SOCKET=d.socket,
                   PYTHONPATH=os.path.join(TOP_BUILDDIR, "client",
                                           "python"),
                   PKG_CONFIG_PATH=pcdir + ":" +
                   os.environ.get("PKG_CONFIG_PATH", ""))
        cc = os.environ.get("CC", "cc")
        started = False
        try:
            d.start()
            started = True
            for kind, name, body in blocks:
                if kind == "file":
                    targets = [os.path.join(work, name)]
                    if name.startswith("pools.d/"):
                        targets.append(os.path.join(d.dir, name))
                    for path in targets:
                        os.makedirs(os.path.dirname(path), exist_ok=True)
                        with open(path, "w") as f:
                            f.write(here(body))
                    continue
                for cmd, want in commands(body):
                    run = here(cmd)
                    if run.startswith("cc "):
                        run = " ".join(shlex.quote(a) for a in
                                       shlex.split(cc)) + run[2:]
                    p = subprocess.run(["/bin/sh", "-c", run + " 2>&1"],
                                       cwd=work, env=env,
                                       capture_output=True,
                                       timeout=120 * SLOWDOWN)
                    got = p.stdout.decode(errors="replace").rstrip("\n")
                    got = got.replace(work, PLACE)
                    self.assertEqual(p.returncode, 0,
                                     "%s\n%s" % (cmd, got))
                    self.assertEqual(got, want,
                                     "the guide's command: " + cmd)
        except BaseException:
            if started:
                print(d.log_text())
            raise
        finally:
            if started:
                d.__exit__(None, None, None)
        self.assertTrue(started)
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
