"""The protocol (issue 13): every refusal and error reply carries a stable
machine-readable "code" beside its sentence, and {"op":"hello"} answers the
daemon's version, the protocol's version and its capabilities."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Daemon, ask, read_lines, read_reply, test_plugin,  # noqa
                     wait_for, SLOWDOWN, main)

SUM = {"sum": {"plugin": "sum"}}


def raw(d, data):
    """Send raw bytes, half-close, return the reply lines."""
    s = d.connect()
    s.settimeout(30 * SLOWDOWN)
    try:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
    except (BrokenPipeError, ConnectionResetError):
        pass
    replies = read_lines(s)
    s.close()
    return replies


class Codes(unittest.TestCase):

    def assertCode(self, reply, code, words):
        self.assertIs(reply["ok"], False, reply)
        self.assertEqual(reply.get("code"), code, reply)
        self.assertIn(words, reply["error"])

    def test_header_refusals(self):
        with Daemon(SUM) as d:
            self.assertCode(ask(d, {"op": "submit", "pool": "nope"}),
                            "unknown_pool", "no pool named")
            self.assertCode(ask(d, {"op": "status", "pool": "nope"}),
                            "unknown_pool", "no pool named")
            self.assertCode(ask(d, {"op": "fly"}), "bad_header",
                            "unknown op")
            self.assertCode(raw(d, b"{oops\n")[0], "bad_header",
                            "not a JSON object")
            self.assertCode(raw(d, b'{"op":"pools"')[0], "bad_header",
                            "connection ended before")
            self.assertCode(raw(d, b"x" * 70000)[0], "bad_header",
                            "longer than 65536")
            self.assertCode(ask(d, {"op": "submit", "pool": "sum",
                                    "args": [1]}),
                            "args_not_allowed", "takes no args")

    def test_header_timeout(self):
        with Daemon(SUM, {"header_timeout": 1}) as d:
            s = d.connect()
            s.settimeout(30 * SLOWDOWN)
            self.assertCode(read_lines(s)[0], "header_timeout",
                            "no complete header line")
            s.close()

    def test_too_many_connections(self):
        with Daemon(SUM, {"max_connections_per_uid": 1}) as d:
            # The harness's own probe connections may not be closed in the
            # master yet: retry the first one until the limit is free.
            for _ in range(100):
                a = d.connect()
                a.sendall(b'{"op":"submit","pool":"sum"}\n')
                r = read_reply(a)
                if r["ok"]:
                    break
                a.close()
                time.sleep(0.05)
            self.assertTrue(r["ok"], r)
            b = d.connect()
            b.settimeout(30 * SLOWDOWN)
            self.assertCode(read_reply(b), "too_many_connections",
                            "max_connections_per_uid")
            b.close()
            a.close()

    def test_busy(self):
        pools = {"echo": {"plugin": test_plugin("echo"), "workers": 1,
                          "queue_timeout": 0.5}}
        with Daemon(pools) as d:
            a = d.connect()
            a.sendall(b'{"op":"submit","pool":"echo"}\n')
            self.assertTrue(read_reply(a)["ok"])
            self.assertCode(ask(d, {"op": "submit", "pool": "echo"}),
                            "busy", "pool busy")
            a.close()

    def test_pool_failed(self):
        pools = {"bad": {"plugin": test_plugin("failinit")}}
        with Daemon(pools) as d:
            rc, final, err = d.cli("submit", "bad", input=b"1\n")
            self.assertEqual(rc, 1, err)
            self.assertCode(final, "pool_failed", "cannot start its workers")

    def test_draining(self):
        pools = {"echo": {"plugin": test_plugin("echo"), "workers": 1,
                          "queue_timeout": 60}}
        with Daemon(pools, {"shutdown_timeout": 30}) as d:
            a = d.connect()
            a.sendall(b'{"op":"submit","pool":"echo"}\n')
            self.assertTrue(read_reply(a)["ok"])
            b = d.connect()
            b.sendall(b'{"op":"submit","pool":"echo"}\n')
            # The second stream waits for the only worker; a shutdown
            # refuses it at once.
            wait_for(lambda: '"queued": 1' in json.dumps(
                ask(d, {"op": "status", "pool": "echo"})),
                what="the second stream to be queued")
            os.kill(d.pid(), signal.SIGTERM)
            b.settimeout(30 * SLOWDOWN)
            self.assertCode(read_reply(b), "draining", "shutting down")
            b.close()
            a.shutdown(socket.SHUT_WR)
            read_lines(a)
            a.close()

    def test_denied(self):
        with Daemon(SUM) as d:
            if os.geteuid() != 0:
                reply = ask(d, {"op": "reload"})
            else:
                os.chmod(d.dir, 0o755)
                os.chmod(d.socket, 0o777)
                code = ("import json,socket,sys\n"
                        "s=socket.socket(socket.AF_UNIX)\n"
                        "s.connect(sys.argv[1])\n"
                        "s.sendall(b'{\"op\":\"reload\"}\\n')\n"
                        "print(s.makefile().readline(), end='')\n")
                p = subprocess.run(["setpriv", "--reuid", "nobody",
                                    "--regid", "nogroup", "--clear-groups",
                                    sys.executable, "-c", code, d.socket],
                                   capture_output=True, timeout=60)
                if p.returncode != 0:
                    self.skipTest("cannot connect as nobody: %s" % p.stderr)
                reply = json.loads(p.stdout)
            self.assertCode(reply, "denied", "permission denied")


class Hello(unittest.TestCase):

    def test_hello(self):
        with Daemon(SUM) as d:
            r = ask(d, {"op": "hello"})
            self.assertIs(r["ok"], True, r)
            self.assertRegex(r["version"], r"^\d+\.\d+")
            self.assertEqual(r["protocol"], 1)
            self.assertIn("submit", r["capabilities"])
            self.assertIn("codes", r["capabilities"])


if __name__ == "__main__":
    main()
