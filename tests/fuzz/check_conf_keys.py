#!/usr/bin/env python3
"""check_conf_keys.py - the config fuzzer knows every key conf.c accepts.

src/conf.c refuses any key missing from its daemon_keys[] (consumersd.conf)
and pool_keys[] (pools.d/NAME.json) lists.  tests/fuzz/fuzz_conf.c keeps
copies of both lists for conf_keypos() to look for, tests/fuzz/conf.dict
gives the fuzzer each key and the names conf.c takes as values, and the
seeds in tests/fuzz/corpus/conf show every key in the file it belongs in.
A key added to conf.c and to none of those would be fuzzed only by chance;
this test, run by `make check`, fails naming it.

It reads the C sources as text: when it cannot find conf.c's lists, or
conf.c reads a top-level key by some way this test does not see, it fails
too rather than pass on nothing.
"""
import os
import re
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.environ.get("top_srcdir") or os.path.join(HERE, "..", "..")
CONF_C = os.path.join(TOP, "src", "conf.c")
LOG_C = os.path.join(TOP, "src", "log.c")
HARNESS = os.path.join(TOP, "tests", "fuzz", "fuzz_conf.c")
DICT = os.path.join(TOP, "tests", "fuzz", "conf.dict")
CORPUS = os.path.join(TOP, "tests", "fuzz", "corpus", "conf")

C_STRING = re.compile(r'"((?:[^"\\\n]|\\.)*)"')


def c_source(path):
    """A C file's text without its comments (strings are left alone)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    out, i, n = [], 0, len(text)
    while i < n:
        if text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j == -1 else j + 2
            out.append(" ")
        elif text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j == -1 else j
        elif text[i] in "\"'":
            q, j = text[i], i + 1
            while j < n and text[j] != q:
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            i = j + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def string_arrays(src):
    """{name: [strings]} for each `static const char *[const] name[] =
    { "...", ... };` in src (designated initializers too)."""
    arrays = {}
    for m in re.finditer(r"static\s+const\s+char\s*\*\s*(?:const\s+)?"
                         r"(\w+)\s*\[\s*\]\s*=\s*\{(.*?)\};", src, re.S):
        arrays[m.group(1)] = [s for s in C_STRING.findall(m.group(2))]
    return arrays


def keys_read_from_root(src):
    """Keys conf.c reads from a file's top-level object."""
    pat = re.compile(r'\b(?:get_string|get_uint|get_seconds|get_rate)\(\s*&?\w+\s*,'
                     r'\s*root\s*,\s*"([^"]+)"'
                     r'|\bjson_object_get\(\s*root\s*,\s*"([^"]+)"\s*\)')
    return {a or b for a, b in pat.findall(src)}


def dict_tokens(path):
    """The byte strings a libFuzzer dictionary holds, decoded."""
    tokens = set()
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            m = re.fullmatch(r'(?:\w+=)?"(.*)"', line)
            if m is None:
                raise AssertionError("%s:%d: not a dictionary entry: %s" %
                                     (path, n, line))
            raw, out, i = m.group(1), bytearray(), 0
            while i < len(raw):
                if raw[i] == "\\" and raw[i + 1:i + 2] == "x":
                    out.append(int(raw[i + 2:i + 4], 16))
                    i += 4
                elif raw[i] == "\\":
                    out += raw[i + 1].encode()
                    i += 2
                else:
                    out += raw[i].encode()
                    i += 1
            tokens.add(bytes(out))
    return tokens


def corpus_keys():
    """Keys written in the seeds: (daemon part, pool part)."""
    daemon, pool = set(), set()
    for name in sorted(os.listdir(CORPUS)):
        with open(os.path.join(CORPUS, name), "rb") as f:
            data = f.read()
        head, nul, tail = data.partition(b"\0")
        daemon |= set(re.findall(rb'"(\w+)"\s*:', head))
        pool |= set(re.findall(rb'"(\w+)"\s*:', tail))
    return ({k.decode() for k in daemon}, {k.decode() for k in pool})


def quoted(s):
    return b'"' + s.encode() + b'"'


class ConfKeys(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        conf = c_source(CONF_C)
        cls.conf = string_arrays(conf)
        cls.read = keys_read_from_root(conf)
        cls.harness = string_arrays(c_source(HARNESS))
        cls.dict = dict_tokens(DICT)
        log = c_source(LOG_C)
        m = re.search(r"\blog_parse_level\s*\([^)]*\)\s*\{(.*?)\n\}", log,
                      re.S)
        cls.levels = C_STRING.findall(m.group(1)) if m else []

    def conf_list(self, name):
        keys = self.conf.get(name)
        self.assertTrue(keys, "src/conf.c: no %s[] list of strings found; "
                        "update %s to how conf.c lists its keys now" %
                        (name, os.path.basename(__file__)))
        return keys

    def test_conf_reads_only_listed_keys(self):
        # What conf.c reads at the top level and what it accepts are the
        # same keys: the lists are all there is to compare.
        listed = (set(self.conf_list("daemon_keys")) |
                  set(self.conf_list("pool_keys")))
        self.assertGreaterEqual(len(self.read), 10,
                                "src/conf.c: the keys it reads were not "
                                "found; update this test")
        self.assertEqual(sorted(self.read - listed), [],
                         "src/conf.c reads these keys but its lists "
                         "refuse them")
        self.assertEqual(sorted(listed - self.read), [],
                         "src/conf.c accepts these keys but reads them in "
                         "a way this test does not see")

    def test_harness_lists(self):
        for name in ("daemon_keys", "pool_keys"):
            conf = self.conf_list(name)
            mine = self.harness.get(name, [])
            self.assertEqual(sorted(set(conf) - set(mine)), [],
                             "tests/fuzz/fuzz_conf.c: %s[] misses keys "
                             "src/conf.c accepts" % name)
            self.assertEqual(sorted(set(mine) - set(conf)), [],
                             "tests/fuzz/fuzz_conf.c: %s[] has keys "
                             "src/conf.c no longer accepts" % name)

    def test_dict_keys(self):
        keys = (set(self.conf_list("daemon_keys")) |
                set(self.conf_list("pool_keys")))
        missing = sorted(k for k in keys if quoted(k) not in self.dict)
        self.assertEqual(missing, [], "tests/fuzz/conf.dict misses these "
                         "keys (as \"\\\"KEY\\\"\")")

    def test_dict_values(self):
        # Every other list of names in conf.c (modes, on_crash policies)
        # is values a key takes; log_level's names are in log.c.
        values = set(self.levels)
        self.assertEqual(len(self.levels), 4, "src/log.c: log_parse_level()"
                         "'s names not found; update this test")
        for name, strings in self.conf.items():
            if name not in ("daemon_keys", "pool_keys"):
                values |= set(strings)
        self.assertGreaterEqual(len(values), 10)
        missing = sorted(v for v in values if quoted(v) not in self.dict)
        self.assertEqual(missing, [], "tests/fuzz/conf.dict misses these "
                         "values")

    def test_corpus(self):
        daemon, pool = corpus_keys()
        self.assertEqual(sorted(set(self.conf_list("daemon_keys")) -
                                daemon), [],
                         "no seed in tests/fuzz/corpus/conf has these "
                         "keys before its NUL (consumersd.conf)")
        self.assertEqual(sorted(set(self.conf_list("pool_keys")) - pool),
                         [], "no seed in tests/fuzz/corpus/conf has these "
                         "keys after its NUL (the pool file)")


if __name__ == "__main__":
    unittest.main(verbosity=2)
