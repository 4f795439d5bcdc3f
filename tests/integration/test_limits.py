"""max_workers with static pools (after a death, after a reload), and a
stop while something else holds a worker's output pipe."""
import json
import os
import signal
import socket
import time
import unittest

import harness
from harness import wait_for, Daemon, lines, main, read_lines, final_of


class MaxWorkersStatic(unittest.TestCase):

    def test_static_pool_gets_its_worker_back(self):
        # max_workers 1: the static pool b holds the one worker slot.
        pools = {"a": {"plugin": "sum", "workers": 1, "mode": "ondemand",
                       "worker_idle_timeout": 0.2},
                 "b": {"plugin": "sum", "workers": 1, "queue_timeout": 3}}
        with Daemon(pools, {"max_workers": 1}) as d:
            wait_for(lambda: len(d.worker_pids()) == 1, what="b's worker")
            bpid = d.worker_pids()[0]
            # A stream for the ondemand pool waits for the cap.
            s = d.connect()
            s.settimeout(30)
            s.sendall(b'{"op":"submit","pool":"a"}\n' + lines(range(1, 4)))
            wait_for(lambda: "max_workers (1) reached" in d.log_text())
            # b's worker dies; a's stream takes the slot, finishes, and
            # a's worker is reaped after idle_timeout.
            os.kill(bpid, signal.SIGKILL)
            s.shutdown(socket.SHUT_WR)
            fa = final_of(read_lines(s))
            s.close()
            self.assertTrue(fa["ok"], fa)
            # The slot is free again (a's worker idle 0.2 s, then gone):
            # the static pool must get its worker back.
            time.sleep(2)
            rc, fb, err = d.cli("submit", "b", input=b"3\n")
            self.assertEqual(rc, 0, (fb, err, d.log_text()[-3000:]))
            self.assertEqual(fb["completion"], 3)


class ReloadUnderMaxWorkers(unittest.TestCase):

    def test_changed_static_pool_gets_workers(self):
        # max_workers equal to what the pools need: a change to a static
        # pool starts its new workers while the old ones still count.
        with Daemon({"p": {"plugin": "sum", "workers": 1,
                           "queue_timeout": 3}}, {"max_workers": 1}) as d:
            rc, f, err = d.cli("submit", "p", input=b"1\n")
            self.assertEqual(rc, 0, err)
            with open(os.path.join(d.dir, "pools.d", "p.json"), "w") as fp:
                json.dump({"plugin": "sum", "workers": 1,
                           "queue_timeout": 4}, fp)
            d.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: "reload: done" in d.log_text(), what="reload")
            time.sleep(1)
            rc, f, err = d.cli("submit", "p", input=b"2\n")
            self.assertEqual(rc, 0, (f, err, d.log_text()[-2000:]))
            self.assertEqual(f["completion"], 2)


class StopWithTap(unittest.TestCase):

    def test_stop_ends_with_workers_output_pipe_held(self):
        # A worker's stdout held open by another process (what a plugin's
        # background helper, started with system("... &"), inherits).
        with Daemon({"p": {"plugin": "sum", "workers": 1}}) as d:
            wait_for(lambda: len(d.worker_pids()) == 1, what="worker")
            wpid = d.worker_pids()[0]
            held = open("/proc/%d/fd/1" % wpid, "wb")
            try:
                d.proc.send_signal(signal.SIGTERM)
                wait_for(lambda: not d.worker_pids(), what="workers gone")
                try:
                    rc = d.proc.wait(timeout=10)
                except Exception:
                    rc = None
                self.assertIsNotNone(
                    rc, "consumersd still running 10 s after SIGTERM, its "
                    "workers all gone:\n" + d.log_text()[-2000:])
            finally:
                held.close()


if __name__ == "__main__":
    main()
