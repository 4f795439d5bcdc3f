"""The same submits done by a client written with nothing but Python's
standard library (socket, json): other languages need nothing else."""
import json
import os
import socket
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Daemon, main  # noqa


def submit(path, pool, items, **options):
    """A complete consumersd client: header, items, half-close, replies.
    Items are written from a thread while replies are read, as the
    protocol asks of any client that streams more than a few items."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    header = dict(op="submit", pool=pool, **options)
    s.sendall((json.dumps(header) + "\n").encode())
    replies = s.makefile("rb")
    lease = json.loads(replies.readline())
    if not lease["ok"]:
        s.close()
        return lease, [], lease

    def send():
        for item in items:
            s.sendall((json.dumps(item) + "\n").encode())
        s.shutdown(socket.SHUT_WR)

    writer = threading.Thread(target=send)
    writer.start()
    events, final = [], None
    for line in replies:
        msg = json.loads(line)
        if "ok" in msg:
            final = msg
        else:
            events.append(msg)
    writer.join()
    s.close()
    return lease, events, final


class PythonClient(unittest.TestCase):

    def test_concat(self):
        with Daemon({"concat": {"plugin": "concat", "workers": 2}}) as d:
            lease, events, final = submit(d.socket, "concat", list("abcdef"))
            self.assertEqual(lease["workers"], 2)
            self.assertEqual(events, [])
            self.assertTrue(final["ok"])
            joined = "".join(r.replace("-", "") for r in final["results"])
            self.assertEqual(sorted(joined), list("abcdef"))

    def test_sum_with_params_and_rejection(self):
        with Daemon({"sum": {"plugin": "sum", "workers": 2}}) as d:
            items = list(range(1, 50001))
            lease, events, final = submit(d.socket, "sum", items, workers=1,
                                          params={"note": "py"})
            self.assertEqual(lease["workers"], 1)
            self.assertEqual(final["completion"], 50000 * 50001 // 2)
            self.assertEqual(final["results"], [final["completion"]])
            # A value JSON cannot carry arrives as a rejection.
            lease, events, final = submit(d.socket, "sum",
                                          [1, float("nan"), 2])
            self.assertEqual(events[0]["rejected"]["seq"], 2)
            self.assertEqual(final["completion"], 3)

    def test_unknown_pool(self):
        with Daemon({"sum": {"plugin": "sum"}}) as d:
            lease, events, final = submit(d.socket, "nope", [1])
            self.assertFalse(lease["ok"])
            self.assertIn('no pool named "nope"', lease["error"])


if __name__ == "__main__":
    main()
