"""Hostile clients next to a good one, on ONE daemon: while a well-behaved
client streams 50,000 integers, other connections send garbage headers,
a 64 MiB line, a 10,000-deep array, invalid UTF-8, NUL bytes and a cut
last line.  Each gets its precise error with the item's sequence number,
the good client gets its exact sum, and the daemon lives on."""
import json
import os
import re
import socket
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Daemon, lines, assert_invariant, final_of,  # noqa
                     rejections, main)

GOOD_ITEMS = 50000
POOLS = {"sum": {"plugin": "sum", "workers": 2},
         "collect": {"plugin": "collect", "workers": 4, "stream_workers": 1}}
NOT_OBJECT = ('the header is not a JSON object but %s: it must be like '
              '{"op":"submit","pool":"NAME"}')
HEADER_CASES = {
    "garbage": (b"\xff\xfe\xfd\x01garbage\x02\x03\n1\n",
                "the header is not a JSON object: unable to decode byte "
                "0xff at column 0"),
    "no such pool": (b'{"op":"submit","pool":"nope"}\n1\n',
                     'no pool named "nope" (pools: collect, sum)'),
    "array": (b'[{"op":"submit","pool":"sum"}]\n1\n', NOT_OBJECT % "an array"),
    "string": (b'"{\\"op\\":\\"submit\\"}"\n1\n', NOT_OBJECT % "a string"),
    "number": (b"42\n1\n", NOT_OBJECT % "a number"),
    "nul": (b'{"op":"submit","pool":"s\x00um"}\n1\n',
            "the header line contains a NUL byte at column 25"),
    "long": (b'{"op":"submit","pool":"' + b"s" * 70000 + b'"}\n1\n',
             "the header line is longer than 65536 bytes"),
}
COLLECT = b'{"op":"submit","pool":"collect"}\n'
DEEP = b"[" * 10000 + b"]" * 10000
# (body after the header, {seq: exact error or regex}, items consumed)
ITEM_CASES = {
    "64 MiB line": (b"1\n" + b"7" * (64 << 20) + b"\n2\n",
                    {2: re.compile(r"line of at least (\d+) bytes exceeds "
                                   r"max_item_bytes \(1048576\)")},
                    [1, 2]),
    "deep array": (b"1\n" + DEEP + b"\n3\n",
                   {2: "invalid JSON: maximum parsing depth reached near "
                       "'[' at column 2049"},
                   [1, 3]),
    "invalid UTF-8": (b'1\n"\xff\xfe"\n3\n',
                      {2: "invalid JSON: unable to decode byte 0xff near "
                          "'\"' at column 1"},
                      [1, 3]),
    "NUL in a string": (b'1\n"a\x00b"\n3\n',
                        {2: "invalid JSON: a NUL byte at column 3"},
                        [1, 3]),
    "unterminated last line": (b'1\n2\n"tail',
                               {3: "truncated: the last line has no newline "
                                   "before the end of the stream"},
                               [1, 2]),
}


def exchange(d, data, timeout=120):
    """Send data (then half-close) while reading every reply to EOF.
    data: bytes, or a list of bytes and threading.Events to wait for."""
    s = d.connect()
    s.settimeout(timeout)

    def send():
        try:
            for part in data if isinstance(data, list) else [data]:
                if isinstance(part, threading.Event):
                    part.wait(timeout)
                else:
                    s.sendall(part)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass            # refused: the daemon stopped reading
    t = threading.Thread(target=send)
    t.start()
    buf = b""
    try:
        while True:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            buf += chunk
    finally:
        t.join()
        s.close()
    return [json.loads(l) for l in buf.split(b"\n") if l.strip()]


def good_client(d, others_done):
    """Half the items, then (stream still open) the rest once every
    hostile connection is over, so they all ran during this stream."""
    half = GOOD_ITEMS // 2
    return exchange(d, [
        b'{"op":"submit","pool":"sum"}\n',
        b"".join(b"%d\n" % i for i in range(1, half + 1)),
        others_done,
        b"".join(b"%d\n" % i for i in range(half + 1, GOOD_ITEMS + 1))])


class Hostile(unittest.TestCase):

    def test_hostile_clients_beside_a_good_one(self):
        with Daemon(POOLS) as d:
            jobs = {}
            for name, (data, _) in HEADER_CASES.items():
                jobs[name] = lambda data=data: exchange(d, data)
            for name, (body, _, _) in ITEM_CASES.items():
                jobs[name] = lambda body=body: exchange(d, COLLECT + body)
            results, errors = {}, {}
            others_done = threading.Event()

            def run(name, job):
                try:
                    results[name] = job()
                except Exception as e:      # reported below, by name
                    errors[name] = e
            good = threading.Thread(target=run, args=(
                "good", lambda: good_client(d, others_done)))
            good.start()
            threads = [threading.Thread(target=run, args=(n, j))
                       for n, j in jobs.items()]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            others_done.set()
            good.join()
            self.assertEqual(errors, {})

            # The good client: every item consumed, the exact sum.
            final = final_of(results["good"])
            self.assertTrue(final["ok"], final)
            self.assertEqual(final["items"], GOOD_ITEMS)
            self.assertEqual(final["consumed"], GOOD_ITEMS)
            self.assertEqual(final["rejected"], 0)
            self.assertEqual(final["completion"],
                             GOOD_ITEMS * (GOOD_ITEMS + 1) // 2)
            assert_invariant(self, final)

            for name, (_, error) in HEADER_CASES.items():
                with self.subTest(header=name):
                    self.assertEqual(results[name],
                                     [{"ok": False, "error": error,
                                       "code": "unknown_pool"
                                       if name == "no such pool"
                                       else "bad_header"}])

            for name, (_, expect, consumed) in ITEM_CASES.items():
                with self.subTest(items=name):
                    replies = results[name]
                    final = final_of(replies)
                    got = rejections(replies)
                    self.assertEqual(sorted(got), sorted(expect))
                    for seq, want in expect.items():
                        if isinstance(want, str):
                            self.assertEqual(got[seq], want)
                        else:
                            m = want.fullmatch(got[seq])
                            self.assertIsNotNone(m, got[seq])
                            self.assertGreater(int(m.group(1)), 1 << 20)
                    self.assertTrue(final["ok"], final)
                    self.assertEqual(final["results"], [consumed])
                    self.assertEqual(final["consumed"], len(consumed))
                    self.assertEqual(final["rejected"], len(expect))
                    self.assertEqual(final["items"],
                                     len(consumed) + len(expect))
                    assert_invariant(self, final)

            # Still alive, still serving, and nothing went wrong inside.
            self.assertIsNone(d.proc.poll())
            rc, final, err = d.cli("submit", "sum", input=b"1\n2\n")
            self.assertEqual((rc, final["completion"]), (0, 3), err)
            log = d.log_text()
            for bad in ("fatal", "AddressSanitizer", "runtime error",
                        "killed by signal", "could not be encoded",
                        "protocol"):
                self.assertNotIn(bad, log)


class NulAfterAValue(unittest.TestCase):
    """jansson 2.14's json_loadb() stops at a NUL byte that follows a
    number, true, false or null, and returns what came before: the lines
    b'1\\x00' and b'[1\\x00]' would parse as 1 and [1].  The worker
    (src/child.c, cns_next) refuses a line with a NUL byte itself, so no
    item is consumed as something the client did not send."""

    def test_nul_after_a_value_is_rejected(self):
        with Daemon({"collect": {"plugin": "collect"}}) as d:
            replies = exchange(d, COLLECT + b'1\n2\x00\n[3\x00]\ntrue\x00\n5\n')
            got = rejections(replies)
            final = final_of(replies)
            self.assertEqual(sorted(got), [2, 3, 4], final)
            self.assertEqual(got, {
                2: "invalid JSON: a NUL byte at column 2",
                3: "invalid JSON: a NUL byte at column 3",
                4: "invalid JSON: a NUL byte at column 5"})
            self.assertEqual(final["results"], [[1, 5]])


if __name__ == "__main__":
    main()
