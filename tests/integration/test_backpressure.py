"""Backpressure: 2,000,000 items into a pool whose consumers are slower
than the producer.  The master stops reading the client when the workers'
windows are full, so its peak RSS stays small, and every item is counted."""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Daemon, assert_invariant, test_plugin, main  # noqa

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


if __name__ == "__main__":
    main()
