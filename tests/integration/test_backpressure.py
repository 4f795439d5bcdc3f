"""Backpressure: 2,000,000 items into a pool whose consumers are slower
than the producer.  The master stops reading the client when the workers'
windows are full, so its peak RSS stays small, and every item is counted.
And a client that never reads its replies cannot make the master buffer
them without bound."""
import os
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Daemon, assert_invariant, test_plugin, main,  # noqa
                     final_of, read_lines)

ITEMS = 2000000
RSS_LIMIT_KIB = 32 * 1024


class Backpressure(unittest.TestCase):

    def test_slow_pool_bounded_master(self):
        pool = {"plugin": test_plugin("slow"), "workers": 2,
                "kwargs": {"usec": 1000, "every": 250}}
        item = b'{"n":12345,"s":"xxxxxxxxxxxxxxxx"}\n'
        with Daemon({"slow": pool}) as d:
            before = d.rss_peak_kib()
            rc, final, err = d.cli("submit", "slow", input=item * ITEMS,
                                   timeout=600)
            peak = d.rss_peak_kib()
            self.assertEqual(rc, 0, err)
            self.assertEqual(final["items"], ITEMS)
            self.assertEqual(final["consumed"], ITEMS)
            self.assertEqual(final["completion"], ITEMS)
            assert_invariant(self, final)
            # The input was 72 MB; the master never held more than a
            # couple of windows of it.
            print("master peak RSS: %d KiB before, %d KiB after %d items "
                  "(%d MB streamed)" % (before, peak, ITEMS,
                                         len(item) * ITEMS // 1000000))
            self.assertLess(peak, RSS_LIMIT_KIB)

    def test_client_that_does_not_read(self):
        # Every line is invalid, so every line makes a reply (a rejection
        # of ~90 bytes).  The client writes for 3 s and reads nothing: the
        # master stops reading it once 1 MiB of replies wait, so neither
        # the replies nor the input pile up in the master.
        pool = {"plugin": "sum", "workers": 2}
        bad = b"{not json}\n" * 10000
        with Daemon({"sum": pool}) as d:
            before = d.rss_peak_kib()
            s = d.connect()
            s.sendall(b'{"op":"submit","pool":"sum"}\n')
            s.setblocking(False)
            sent = off = 0      # off: how much of `bad` is out
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                try:
                    n = s.send(bad[off:])
                except BlockingIOError:
                    time.sleep(0.01)
                    continue
                sent += n
                off = (off + n) % len(bad)
            peak = d.rss_peak_kib()
            # Now read: every line the master took is accounted for.
            s.setblocking(True)
            s.settimeout(60)
            s.shutdown(socket.SHUT_WR)
            replies = read_lines(s)
            s.close()
            final = final_of(replies)
            # Whole lines, and a piece of one the master rejects as
            # truncated at the end.
            nlines = -(-sent // len(b"{not json}\n"))
            print("non-reading client: %d bytes sent before the master "
                  "stopped reading; master peak RSS %d KiB before, %d KiB "
                  "after" % (sent, before, peak))
            self.assertEqual(final["rejected"], final["items"])
            self.assertEqual(final["items"], nlines)
            self.assertEqual(len([r for r in replies if "rejected" in r and
                                  isinstance(r["rejected"], dict)]),
                             final["rejected"])
            assert_invariant(self, final)
            # It stopped well before the 3 s could have sent ~GBs.
            self.assertLess(sent, 64 << 20)
            self.assertLess(peak, RSS_LIMIT_KIB)


if __name__ == "__main__":
    main()
