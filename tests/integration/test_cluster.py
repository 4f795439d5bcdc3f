"""Cluster pools on Redis Streams (doc/cluster.md): several daemons on one
machine, a private redis-server, one cluster pool served by all."""
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (CLI, Daemon, ask, assert_invariant, final_of,  # noqa
                     read_lines, read_reply, rejections, test_plugin,
                     wait_for, main)
from redisserver import RedisServer  # noqa


def instances(d, pool):
    """The instances daemon d knows serve its cluster pool."""
    st = ask(d, {"op": "status", "pool": pool})
    cl = st["pools"][0].get("cluster") or {}
    return sorted((cl.get("instances") or {}).keys())


def cli_text(d, *args):
    """The CLI's exit status and standard output, as text."""
    p = subprocess.run([CLI, "-s", d.socket] + list(args),
                       capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout, p.stderr


def numbers(n):
    """The items 1..n, one a line, and where the line after the middle
    starts (to send a stream in two halves)."""
    body = "".join("%d\n" % i for i in range(1, n + 1)).encode()
    return body, body.index(b"\n", len(body) // 2) + 1


def cluster(redis, name, claim_idle=2):
    return {"cluster": {"redis": redis.url, "instance": name,
                        "heartbeat": 0.1, "claim_idle": claim_idle}}


class Cluster(unittest.TestCase):

    def test_three_instances_one_stream(self):
        # Three instances with one worker each serve the cluster pool
        # "sum"; a stream with workers 3 submitted to A gets a lane on
        # each, and the completion (the sum of every item) and the counts
        # equal the same input through a pool on one machine.
        n = 300000
        body, _ = numbers(n)
        pool = {"plugin": "sum", "workers": 1, "cluster": True}
        local = {"plugin": "sum", "workers": 3}
        with contextlib.ExitStack() as st:
            r = st.enter_context(RedisServer())
            a = st.enter_context(Daemon({"sum": pool, "local": local},
                                        cluster(r, "a")))
            st.enter_context(Daemon({"sum": pool}, cluster(r, "b")))
            st.enter_context(Daemon({"sum": pool}, cluster(r, "c")))
            rc, single, err = a.cli("submit", "-w", "3", "local",
                                    input=body)
            self.assertEqual(rc, 0, err)
            self.assertEqual(single["completion"], n * (n + 1) // 2)
            # Every instance said it serves the pool (a heartbeat each)
            # before the stream asks for three lanes.
            wait_for(lambda: instances(a, "sum") == ["a", "b", "c"],
                     what="three instances in a's status")
            # consumers status: the cluster pool with every instance.
            rc, out, err = cli_text(a, "status", "sum")
            self.assertEqual(rc, 0, err)
            self.assertIn("cluster: instance a, redis %s: up" % r.url, out)
            for name in "abc":
                self.assertRegex(out, r"instance %s +workers 1, idle" % name)
            replies, final = a.submit_raw(
                {"op": "submit", "pool": "sum", "workers": 3}, body)
            lease = replies[0]
            self.assertTrue(lease["ok"], replies)
            self.assertEqual(lease["workers"], 3, lease)
            self.assertEqual(sorted(lease["instances"]), ["a", "b", "c"],
                             lease)
            self.assertEqual(lease["instances"][0], "a", lease)
            self.assertTrue(final["ok"], final)
            for k in ("items", "consumed", "rejected", "unconsumed",
                      "completion"):
                self.assertEqual(final[k], single[k], (k, final, single))
            self.assertEqual(sum(final["results"]), n * (n + 1) // 2)
            self.assertTrue(all(x > 0 for x in final["results"]), final)
            assert_invariant(self, final)

    def test_rejections_keep_their_seq(self):
        # Lines a remote worker rejects reach the client with the seq the
        # ingress gave them, as from a pool on one machine; a line over
        # max_item_bytes is rejected by the ingress itself.
        items = [b"%d\n" % i for i in range(1, 20001)]
        for seq in (7, 5000, 12345, 19999):
            items[seq - 1] = b"not json %d\n" % seq
        items[15000 - 1] = b"[" + b"1," * 40000 + b"1]\n"
        items.append(b"20001")      # no newline before the end
        body = b"".join(items)
        pool = {"plugin": "sum", "workers": 1, "cluster": True}
        settings = {"max_item_bytes": 65536}
        with contextlib.ExitStack() as st:
            r = st.enter_context(RedisServer())
            ds = [st.enter_context(Daemon(
                {"sum": pool, "local": {"plugin": "sum", "workers": 2}},
                dict(settings, **cluster(r, name)))) for name in "ab"]
            b = ds[1]
            wait_for(lambda: instances(b, "sum") == ["a", "b"],
                     what="two instances in b's status")
            lreplies, single = b.submit_raw(
                {"op": "submit", "pool": "local", "workers": 2}, body)
            replies, final = b.submit_raw(
                {"op": "submit", "pool": "sum", "workers": 2}, body)
            self.assertEqual(sorted(replies[0]["instances"]), ["a", "b"],
                             replies[0])
            got = rejections(replies)
            self.assertEqual(sorted(got), [7, 5000, 12345, 15000, 19999,
                                           20001], got)
            self.assertIn("truncated", got[20001])
            self.assertEqual(got, rejections(lreplies))
            for k in ("items", "consumed", "rejected", "unconsumed",
                      "completion"):
                self.assertEqual(final[k], single[k], (k, final, single))
            assert_invariant(self, final)

    def test_redis_down_local_pools_served(self):
        # A daemon whose Redis is not there serves its local pools, and
        # its cluster pool refuses with the reason; status says it too.
        with contextlib.ExitStack() as st:
            r = st.enter_context(RedisServer())
            url = r.url
            r.stop()
            d = st.enter_context(Daemon(
                {"sum": {"plugin": "sum", "workers": 1, "cluster": True},
                 "local": {"plugin": "sum", "workers": 1}},
                {"cluster": {"redis": url, "instance": "a"}}))
            rc, final, err = d.cli("submit", "local", input=b"1\n2\n")
            self.assertEqual(rc, 0, err)
            self.assertEqual(final["completion"], 3)
            rc, final, err = d.cli("submit", "sum", input=b"1\n2\n")
            self.assertNotEqual(rc, 0)
            self.assertFalse(final["ok"], final)
            self.assertEqual(final["code"], "cluster_unavailable", final)
            self.assertIn("cluster pool sum cannot take streams",
                          final["error"])
            self.assertIn(url, final["error"])
            self.assertIn("local pools are still served", final["error"])
            st_ = ask(d, {"op": "status", "pool": "sum"})
            self.assertIn("cannot connect",
                          st_["pools"][0]["cluster"]["unavailable"])
            rc, out, err = cli_text(d, "status", "sum")
            self.assertEqual(rc, 0, err)
            self.assertIn("redis %s: DOWN, cluster streams refused: "
                          "cannot connect" % url, out)

    def test_kill_instance_mid_stream_replay(self):
        # Instance b dies (SIGKILL, its worker too) holding a lane of a
        # stream submitted to a; after claim_idle another instance claims
        # the lane with a new token and runs it again from its first
        # batch (on_crash replay): the result is the no-kill result.
        n = 200000
        body, half = numbers(n)
        pool = {"plugin": "sum", "workers": 1, "cluster": True}
        with contextlib.ExitStack() as st:
            r = st.enter_context(RedisServer())
            a = st.enter_context(Daemon({"sum": pool}, cluster(r, "a")))
            c = st.enter_context(Daemon({"sum": pool}, cluster(r, "c")))
            b = Daemon({"sum": pool}, cluster(r, "b")).start()
            own(st, b)
            wait_for(lambda: instances(a, "sum") == ["a", "b", "c"],
                     what="three instances in a's status")
            s = a.connect()
            s.sendall(b'{"op":"submit","pool":"sum","workers":3}\n')
            lease = read_reply(s)
            self.assertEqual(sorted(lease["instances"]), ["a", "b", "c"],
                             lease)
            lane = lease["instances"].index("b")
            s.sendall(body[:half])

            def b_read():
                v = r.command("HGET", "cns:{%d}:prog" % lease["stream"],
                              str(lane))
                return v.startswith(b"$") and not v.startswith(b"$-1")
            wait_for(b_read, what="b reading its lane")
            kill_daemon(b)
            s.sendall(body[half:])
            s.shutdown(socket.SHUT_WR)
            s.settimeout(60)
            replies = read_lines(s)
            s.close()
            final = final_of(replies)
            self.assertTrue(final["ok"], final)
            self.assertEqual(final["items"], n, final)
            self.assertEqual(final["consumed"], n, final)
            self.assertEqual(final["completion"], n * (n + 1) // 2, final)
            self.assertGreaterEqual(final["crashes"], 1, final)
            self.assertNotIn("b", final["instances"], final)
            assert_invariant(self, final)
            self.assertIn("stopped heartbeating it for claim_idle",
                          a.log_text() + c.log_text())

    def test_kill_instance_mid_stream_redeliver(self):
        # Under on_crash redeliver a lane claimed from a dead instance
        # runs again too: every item's side effect (the record plugin
        # appends each item to a file) is seen at least once, and the
        # counts are those of the no-kill run.
        n = 60000
        body, half = numbers(n)
        with contextlib.ExitStack() as st:
            r = st.enter_context(RedisServer())
            path = os.path.join(r.dir, "effects")
            pool = {"plugin": test_plugin("record"), "workers": 1,
                    "cluster": True, "on_crash": "redeliver",
                    "kwargs": {"path": path}}
            a = st.enter_context(Daemon({"rec": pool}, cluster(r, "a")))
            st.enter_context(Daemon({"rec": pool}, cluster(r, "c")))
            b = Daemon({"rec": pool}, cluster(r, "b")).start()
            own(st, b)
            wait_for(lambda: instances(a, "rec") == ["a", "b", "c"],
                     what="three instances in a's status")
            s = a.connect()
            s.sendall(b'{"op":"submit","pool":"rec","workers":3}\n')
            lease = read_reply(s)
            lane = lease["instances"].index("b")
            s.sendall(body[:half])

            def b_read():
                v = r.command("HGET", "cns:{%d}:prog" % lease["stream"],
                              str(lane))
                return v.startswith(b"$") and not v.startswith(b"$-1")
            wait_for(b_read, what="b reading its lane")
            kill_daemon(b)
            s.sendall(body[half:])
            s.shutdown(socket.SHUT_WR)
            s.settimeout(60)
            final = final_of(read_lines(s))
            s.close()
            self.assertTrue(final["ok"], final)
            self.assertEqual(final["consumed"], n, final)
            self.assertEqual(final["completion"], n * (n + 1) // 2, final)
            assert_invariant(self, final)
            with open(path) as f:
                seen = {int(line.split()[1]) for line in f}
            self.assertEqual(seen, set(range(1, n + 1)))

    def test_reload_adds_the_cluster(self):
        # A daemon started without a "cluster" section gets one, and a
        # cluster pool, on a reload: it connects, and the pool serves.
        with contextlib.ExitStack() as st:
            r = st.enter_context(RedisServer())
            d = st.enter_context(Daemon({"local": {"plugin": "sum",
                                                   "workers": 1}}))
            with open(d.conf) as f:
                conf = json.load(f)
            conf.update(cluster(r, "a"))
            with open(d.conf, "w") as f:
                json.dump(conf, f)
            with open(os.path.join(d.dir, "pools.d", "sum.json"), "w") as f:
                json.dump({"plugin": "sum", "workers": 1, "cluster": True},
                          f)
            v = ask(d, {"op": "reload"})
            self.assertTrue(v["ok"], v)
            wait_for(lambda: instances(d, "sum") == ["a"],
                     what="the reloaded cluster pool in status")
            rc, final, err = d.cli("submit", "sum", input=b"1\n2\n3\n")
            self.assertEqual(rc, 0, err)
            self.assertEqual(final["completion"], 6, final)
            self.assertEqual(final["instances"], ["a"], final)

    def test_paused_owner_is_fenced(self):
        # b's master is stopped (SIGSTOP) past claim_idle holding a lane;
        # another instance claims the lane with a new token and runs it
        # again.  Resumed (SIGCONT), b learns from its heartbeat that the
        # lane is not its own any more, and what it says about it is
        # refused: the result counts every item once.
        n = 100000
        body, half = numbers(n)
        pool = {"plugin": "sum", "workers": 1, "cluster": True}
        with contextlib.ExitStack() as st:
            r = st.enter_context(RedisServer())
            a = st.enter_context(Daemon({"sum": pool}, cluster(r, "a")))
            b = st.enter_context(Daemon({"sum": pool}, cluster(r, "b")))
            c = st.enter_context(Daemon({"sum": pool}, cluster(r, "c")))
            wait_for(lambda: instances(a, "sum") == ["a", "b", "c"],
                     what="three instances in a's status")
            s = a.connect()
            s.sendall(b'{"op":"submit","pool":"sum","workers":3}\n')
            lease = read_reply(s)
            lane = lease["instances"].index("b")
            s.sendall(body[:half])

            def b_read():
                v = r.command("HGET", "cns:{%d}:prog" % lease["stream"],
                              str(lane))
                return v.startswith(b"$") and not v.startswith(b"$-1")
            wait_for(b_read, what="b reading its lane")
            os.kill(b.pid(), signal.SIGSTOP)
            try:
                s.sendall(body[half:])
                s.shutdown(socket.SHUT_WR)
                wait_for(lambda: "stopped heartbeating it" in
                         a.log_text() + c.log_text(), timeout=30,
                         what="another instance claiming b's lane")
            finally:
                os.kill(b.pid(), signal.SIGCONT)
            s.settimeout(60)
            replies = read_lines(s)
            s.close()
            final = final_of(replies)
            self.assertTrue(final["ok"], final)
            self.assertEqual(final["consumed"], n, final)
            self.assertEqual(final["completion"], n * (n + 1) // 2, final)
            self.assertNotIn("b", final["instances"], final)
            assert_invariant(self, final)
            wait_for(lambda: "another instance claimed the lane" in
                     b.log_text() or "is stale" in b.log_text(),
                     timeout=30, what="b told it lost the lane")

    def test_kill_ingress_result_by_id(self):
        # The ingress (a) dies mid-stream with its worker; another instance
        # closes the stream at the last batch Redis accepted, the lanes
        # finish (a's own lane run again elsewhere), the completion runs,
        # and the final line is fetched from c by the stream's id.
        n = 200000
        body, half = numbers(n)
        pool = {"plugin": "sum", "workers": 1, "cluster": True}
        with contextlib.ExitStack() as st:
            r = st.enter_context(RedisServer())
            b = st.enter_context(Daemon({"sum": pool}, cluster(r, "b")))
            c = st.enter_context(Daemon({"sum": pool}, cluster(r, "c")))
            a = Daemon({"sum": pool}, cluster(r, "a")).start()
            own(st, a)
            wait_for(lambda: instances(a, "sum") == ["a", "b", "c"],
                     what="three instances in a's status")
            s = a.connect()
            s.sendall(b'{"op":"submit","pool":"sum","workers":3}\n')
            lease = read_reply(s)
            sid = lease["stream"]
            self.assertEqual(sorted(lease["instances"]), ["a", "b", "c"])
            s.sendall(body[:half])

            def all_read():
                v = r.command("HLEN", "cns:{%d}:prog" % sid)
                return v == b":3\r\n"
            wait_for(all_read, what="every lane reading")
            kill_daemon(a)
            s.close()
            # Before then: no final line yet, and a clear answer.
            early = ask(c, {"op": "result", "stream": sid})
            if "items" not in early:
                self.assertEqual(early["code"], "not_found", early)
                self.assertIn("cluster stream %d" % sid, early["error"])
            final = wait_for(lambda: (lambda v: v if "items" in v else
                                      None)(ask(c, {"op": "result",
                                                    "stream": sid})),
                             timeout=60, what="the final line from c")
            self.assertFalse(final["ok"], final)
            self.assertEqual(final["stream"], sid)
            self.assertGreater(final["items"], 0, final)
            self.assertLessEqual(final["items"], n, final)
            self.assertEqual(final["consumed"], final["items"], final)
            m = final["items"]
            self.assertEqual(final["completion"], m * (m + 1) // 2, final)
            self.assertNotIn("a", final["instances"], final)
            self.assertTrue(any("closed the stream at the last batch Redis"
                                " accepted" in e["error"]
                                for e in final["errors"]), final)
            assert_invariant(self, final)
            # The same line from b, and from the CLI; a result of no
            # stream is not found.
            self.assertEqual(ask(b, {"op": "result", "stream": sid}), final)
            rc, cfinal, err = b.cli("result", str(sid))
            self.assertEqual(rc, 1, err)
            self.assertEqual(cfinal, final)
            missing = ask(b, {"op": "result", "stream": sid + 1000})
            self.assertEqual(missing["code"], "not_found", missing)

    def test_redis_killed_mid_stream(self):
        # redis-server dies (SIGKILL) mid-stream: the stream ends with a
        # clear error and counts that add up, never a wrong result; once
        # Redis is back (same AOF) the instances reconnect by themselves
        # and the next stream completes.
        n = 200000
        body, half = numbers(n)
        pool = {"plugin": "sum", "workers": 1, "cluster": True}
        with contextlib.ExitStack() as st:
            r = st.enter_context(RedisServer())
            # Nothing here is claimed: a claim_idle longer than a slow
            # (sanitizer) build's heartbeats may lag behind batches.
            a = st.enter_context(Daemon({"sum": pool},
                                        cluster(r, "a", claim_idle=10)))
            st.enter_context(Daemon({"sum": pool},
                                    cluster(r, "b", claim_idle=10)))
            wait_for(lambda: instances(a, "sum") == ["a", "b"],
                     what="two instances in a's status")
            s = a.connect()
            s.sendall(b'{"op":"submit","pool":"sum","workers":2}\n')
            lease = read_reply(s)
            sid = lease["stream"]
            s.sendall(body[:half])
            wait_for(lambda: r.command("HLEN", "cns:{%d}:prog" % sid) ==
                     b":2\r\n", what="both lanes reading")
            r.kill()
            try:
                s.sendall(body[half:])
                s.shutdown(socket.SHUT_WR)
            except (BrokenPipeError, ConnectionResetError):
                pass
            s.settimeout(60)
            final = final_of(read_lines(s))
            s.close()
            self.assertFalse(final["ok"], final)
            self.assertTrue(any("Redis" in e["error"]
                                for e in final["errors"]), final)
            assert_invariant(self, final)
            # A wrong result would be a completion of items not all
            # consumed.
            self.assertLess(final["consumed"], n, final)
            r.start()
            wait_for(lambda: ask(a, {"op": "status", "pool": "sum"})
                     ["pools"][0]["cluster"].get("unavailable") is None,
                     timeout=30, what="a reconnected to Redis")
            wait_for(lambda: instances(a, "sum") == ["a", "b"],
                     what="two instances again")
            replies, final = a.submit_raw(
                {"op": "submit", "pool": "sum", "workers": 2}, body)
            self.assertTrue(final["ok"], final)
            self.assertEqual(final["completion"], n * (n + 1) // 2, final)


def own(st, d):
    """A daemon the test kills itself: killed (by pid) at the end if it
    still runs, and its directory removed unless the test failed."""
    def done(exc_type, exc, tb):
        kill_daemon(d)
        if exc_type is None:
            shutil.rmtree(d.dir, ignore_errors=True)
        return False
    st.push(done)


def kill_daemon(d):
    """SIGKILL a daemon and its workers (by pid), once."""
    if d.proc.poll() is not None:
        if not d.log.closed:
            d.log.close()
        return
    for pid in [d.pid()] + d.worker_pids():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    d.proc.wait()
    d.log.close()


if __name__ == "__main__":
    main()
