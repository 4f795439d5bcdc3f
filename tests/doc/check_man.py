#!/usr/bin/env python3
"""check_man.py - the man pages know every key and are clean troff.

Every key src/conf.c accepts (its daemon_keys[] and pool_keys[] lists,
read from the source so keys added later are covered) must be documented
in doc/consumersd.conf.5 as a tagged paragraph (.TP then .B KEY or
.BR KEY1 ", " KEY2), and
`groff -z -ww -man` must report nothing for each page in doc/.
"""
import glob
import os
import re
import shlex
import shutil
import subprocess
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.environ.get("top_srcdir") or os.path.join(HERE, "..", "..")
CONF_C = os.path.join(TOP, "src", "conf.c")
DOC = os.path.join(TOP, "doc")


def conf_keys(table):
    with open(CONF_C, encoding="utf-8") as f:
        text = f.read()
    m = re.search(r"\b%s\[\]\s*=\s*\{(.*?)\}" % table, text, re.S)
    if not m:
        raise AssertionError("src/conf.c has no %s[] list" % table)
    keys = re.findall(r'"([^"\\]+)"', m.group(1))
    if not keys:
        raise AssertionError("src/conf.c's %s[] list is empty" % table)
    return keys


def documented_keys():
    with open(os.path.join(DOC, "consumersd.conf.5"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    keys = set()
    for i, line in enumerate(lines[:-1]):
        if line.strip() == ".TP":
            m = re.match(r"\.(B|BR)\s+(.*)", lines[i + 1])
            if not m:
                continue
            # .B KEY, or .BR KEY1 ", " KEY2 (bold are the even arguments)
            args = shlex.split(m.group(2).replace("\\-", "-"))
            keys.update(args if m.group(1) == "B" else args[::2])
    return keys


class ManPages(unittest.TestCase):
    def test_every_conf_key_in_conf5(self):
        doc = documented_keys()
        for table in ("daemon_keys", "pool_keys"):
            missing = [k for k in conf_keys(table) if k not in doc]
            self.assertEqual(missing, [], "keys of src/conf.c %s[] not "
                             "documented in doc/consumersd.conf.5 (add a "
                             ".TP/.B KEY paragraph)" % table)

    def test_groff_lint(self):
        groff = shutil.which("groff")
        if groff is None:
            self.skipTest("groff is not installed (apt-get install groff)")
        pages = sorted(glob.glob(os.path.join(DOC, "*.[1-8]")))
        self.assertTrue(pages, "no man pages found in doc/")
        for page in pages:
            r = subprocess.run([groff, "-z", "-ww", "-man", page],
                               stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT,
                               universal_newlines=True, timeout=120)
            self.assertEqual((r.returncode, r.stdout), (0, ""),
                             "groff -z -ww -man %s" % page)


if __name__ == "__main__":
    unittest.main()
