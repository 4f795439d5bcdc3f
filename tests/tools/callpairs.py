#!/usr/bin/env python3
"""callpairs.py - which of the master's source files call each other both ways.

A file "calls" another when it names a function the other defines with
external linkage.  Two files that call each other both ways are a circle:
a call chain can leave one and come back into it, so an object may be freed
under a caller that still holds it.  The master's .c files directly in
src/ count; the worker process (src/child/) and the plugins do not.

usage: callpairs.py [--max N] [SRCDIR]
Prints each pair with the names each side takes from the other, then the
count; exits 1 when the count is above N (default 4: make check runs it).
Calls through a function pointer (source.h's ops, worker.c's hooks,
cns_later) are not arrows: those are the interfaces that break circles.
"""
import os
import re
import sys

DEF = re.compile(r"^([A-Za-z_]\w*)\(", re.M)
STATIC_BEFORE = re.compile(r"(^|\n)static[^\n;{}]*\n?[^\n;{}]*$")
COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
STRING = re.compile(r'"(\\.|[^"\\\n])*"')


def master_files(top):
    for name in sorted(os.listdir(top)):
        path = os.path.join(top, name)
        if name.endswith(".c") and os.path.isfile(path):
            yield name, path


def strip(text):
    return STRING.sub('""', COMMENT.sub(" ", text))


def definitions(text):
    """Functions defined at column 0 whose definition is not static."""
    out = set()
    for m in DEF.finditer(text):
        # The return type stands on the line before, house style.
        start = text.rfind("\n", 0, m.start() - 1) + 1
        before = text[start:m.start()]
        if "static" in before or before.strip() == "":
            continue
        # A definition, not a call at column 0: a body follows the ')'.
        depth, i = 0, m.end() - 1
        while i < len(text):
            if text[i] == "(":
                depth += 1
            elif text[i] == ")":
                depth -= 1
                if depth == 0:
                    break
            i += 1
        rest = text[i + 1:i + 200].lstrip()
        if rest.startswith("{") or re.match(r"(\w|\s|\[|\]|\*|,)*{", rest):
            out.add(m.group(1))
    return out


def main(argv):
    limit = 4
    if argv[:1] == ["--max"]:
        limit = int(argv[1])
        argv = argv[2:]
    top = argv[0] if argv else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..", "src")
    texts = {n: strip(open(p).read()) for n, p in master_files(top)}
    defs = {n: definitions(t) for n, t in texts.items()}
    owner = {}
    for n, names in defs.items():
        for f in names:
            owner.setdefault(f, n)
    uses = {}
    for n, t in texts.items():
        called = set(re.findall(r"\b([A-Za-z_]\w*)\s*\(", t)) | \
            set(re.findall(r"\b([A-Za-z_]\w*)\b", t))
        for f in called:
            o = owner.get(f)
            if o is not None and o != n and f not in defs[n]:
                uses.setdefault((n, o), set()).add(f)
    pairs = sorted({tuple(sorted(k)) for k in uses
                    if (k[1], k[0]) in uses})
    for a, b in pairs:
        print("%s <-> %s: %s / %s" % (a, b,
              ", ".join(sorted(uses[(a, b)])),
              ", ".join(sorted(uses[(b, a)]))))
    print("%d pair%s of files call each other both ways" %
          (len(pairs), "" if len(pairs) == 1 else "s"))
    if len(pairs) > limit:
        print("more than %d: a room calls back into one that calls it; "
              "break the circle with an interface or a result" % limit,
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
