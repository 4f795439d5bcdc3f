"""Issue 12's hardening, on the real daemon: what an attacker or an unlucky
administrator does to a running service (outside kills, leaked
grandchildren, a full spool, trickling or non-reading clients, bad frames)
must neither lose an item silently nor take a pool out of service.
"""
import json
import os
import signal
import socket
import time
import unittest

from harness import (SLOWDOWN, Daemon, assert_invariant, lines, main,
                     read_lines, read_reply, test_plugin, wait_for)


def up_seconds(pid):
    """Seconds since process pid started (its /proc stat starttime), or
    None once it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")


class StartSeconds(unittest.TestCase):
    """Item 1: a worker that finished init and stayed up start_seconds has
    started; an outside kill of it later is not a failed start, and the
    pool never refuses streams for it."""

    def test_outside_kills_of_started_workers(self):
        pools = {"sum": {"plugin": "sum", "workers": 2,
                         "max_init_failures": 3}}
        with Daemon(pools) as d:
            killed = 0
            # Every 0.2 s for 5 s, SIGKILL each worker up for more than
            # 1.5 s (longer than the default start_seconds of 1): the OOM
            # killer, an administrator, another process of the same uid.
            for _ in range(25):
                for pid in d.worker_pids():
                    up = up_seconds(pid)
                    if up is not None and up > 1.5:
                        try:
                            os.kill(pid, signal.SIGKILL)
                            killed += 1
                        except ProcessLookupError:
                            pass
                time.sleep(0.2)
            self.assertGreaterEqual(killed, 4, "the test killed too few "
                                    "workers to mean anything")
            rc, final, err = d.cli("submit", "sum",
                                   input=lines(range(1, 101)))
            self.assertEqual(rc, 0, err + d.log_text()[-3000:])
            self.assertEqual(final["completion"], 5050, final)
            assert_invariant(self, final)
            self.assertNotIn("failed start", d.log_text())


if __name__ == "__main__":
    main()
