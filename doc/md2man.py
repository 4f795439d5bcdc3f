#!/usr/bin/env python3
"""md2man.py - turn one of our Markdown documents into a man page.

    md2man.py NAME SECTION VERSION DESCRIPTION < IN.md > OUT.SECTION

doc/protocol.md stays the one source of the protocol; the build makes
consumers-protocol(7) from it with this (python3 is needed to build
anyway).  It knows the Markdown those documents use, no more: "#" titles,
"##"/"###" sections, paragraphs, "-" and "1." lists, ``` blocks, pipe
tables, `code`, **bold**, *italic* and [links](url).  The "#" title is
dropped (NAME says it); "##" become .SH, "###" .SS.
"""
import re
import sys


def esc(text):
    """Escape a run of text for troff (not at a line's start); troff
    reads bytes, so other than ASCII is spelled by its code point."""
    return re.sub(r"[^\x00-\x7f]", lambda m: "\\[u%04X]" % ord(m.group()),
                  text.replace("\\", "\\e"))


def code(text):
    return esc(text).replace("-", "\\-").replace("'", "\\(aq")


def inline(text):
    """Inline Markdown to troff fonts."""
    out, pos = [], 0
    pat = re.compile(r"`([^`]+)`|\*\*(.+?)\*\*|(?<![\w*])\*(?!\s)(.+?)\*"
                     r"|\[([^\]]+)\]\(([^)]+)\)")
    for m in pat.finditer(text):
        out.append(esc(text[pos:m.start()]))
        if m.group(1) is not None:
            out.append("\\fB" + code(m.group(1)) + "\\fR")
        elif m.group(2) is not None:
            out.append("\\fB" + inline(m.group(2)) + "\\fR")
        elif m.group(3) is not None:
            out.append("\\fI" + inline(m.group(3)) + "\\fR")
        else:
            out.append(inline(m.group(4)) + " (" + code(m.group(5)) + ")")
        pos = m.end()
    out.append(esc(text[pos:]))
    return "".join(out)


def line(text):
    """A text line: one starting with . or ' would be a request."""
    return "\\&" + text if text[:1] in (".", "'") else text


def cells(row):
    row = row.strip()
    if row.startswith("|"):
        row = row[1:]
    if row.endswith("|") and not row.endswith("\\|"):
        row = row[:-1]
    return [c.strip().replace("\\|", "|")
            for c in re.split(r"(?<!\\)\|", row)]


def table(rows, out):
    head, body = cells(rows[0]), [cells(r) for r in rows[2:]]
    n = len(head)
    # Short columns as wide as their text; the long ones share the rest.
    wide = [max(len(re.sub(r"[`*]", "", (r + [""] * n)[k]))
                for r in [head] + body) > 24 for k in range(n)]
    out += [".ad l", ".nh", ".TS", "allbox;", " ".join(["lb"] * n),
            " ".join("lx" if w else "l" for w in wide) + "."]
    for r in [head] + body:
        r = (r + [""] * n)[:n]
        out.append("\t".join("T{\n" + line(inline(c)) + "\nT}" if w
                             else "\\&" + inline(c)
                             for c, w in zip(r, wide)))
    out += [".TE", ".hy", ".ad"]


def convert(md, name, section, version, description):
    out = ["'\\\" t", '.TH %s %s "" "consumersd %s" "consumersd"' % (
        name.upper(), section, version),
        ".SH NAME", "%s \\- %s" % (name, esc(description)),
        ".SH DESCRIPTION"]
    lines = md.split("\n")
    i, para = 0, []

    def flush():
        if para:
            out.append(".PP")
            out.append(line(inline(" ".join(para))))
            del para[:]

    while i < len(lines):
        ln = lines[i]
        s = ln.strip()
        if s.startswith("```"):
            flush()
            out += [".PP", ".RS 4", ".EX"]
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                out.append(line(code(lines[i])))
                i += 1
            out += [".EE", ".RE"]
        elif ln.startswith("# "):
            flush()
        elif ln.startswith("## "):
            flush()
            out.append('.SH "%s"' % inline(ln[3:].strip().upper()))
        elif ln.startswith("### "):
            flush()
            out.append('.SS "%s"' % inline(ln[4:].strip()))
        elif s.startswith("|") and i + 1 < len(lines) and \
                re.match(r"^\s*\|[\s:|-]+\|\s*$", lines[i + 1]):
            flush()
            rows = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(lines[i])
                i += 1
            table(rows, out)
            continue
        elif re.match(r"^(-|\*|\d+\.) ", ln):
            flush()
            m = re.match(r"^(-|\*|\d+\.) (.*)", ln)
            item = [m.group(2)]
            i += 1
            while i < len(lines) and lines[i].startswith("  ") and \
                    lines[i].strip():
                item.append(lines[i].strip())
                i += 1
            tag = "\\(bu" if m.group(1) in ("-", "*") else m.group(1)
            out.append(".IP %s 4" % tag)
            out.append(line(inline(" ".join(item))))
            continue
        elif not s:
            flush()
        else:
            para.append(s)
        i += 1
    flush()
    return "\n".join(out) + "\n"


def main():
    if len(sys.argv) != 5:
        sys.exit("usage: md2man.py NAME SECTION VERSION DESCRIPTION "
                 "< IN.md > OUT")
    sys.stdout.write(convert(sys.stdin.read(), *sys.argv[1:]))


if __name__ == "__main__":
    main()
