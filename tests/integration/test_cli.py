"""The consumers CLI for people (issue 13): --help, "help COMMAND" and
--version on both programs; options anywhere on the line; -q; a summary
instead of the final line when stdout is a terminal (--json keeps the
line); and a progress line on a terminal's stderr during a long submit.
Terminals are pseudo-terminals from the pty module."""
import json
import os
import pty
import re
import select
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Daemon, CLI, DAEMON, test_plugin, SLOWDOWN,  # noqa
                     main)

SUM = {"sum": {"plugin": "sum"}}
COMMANDS = ("submit", "status", "pools", "reload", "help")


def run(*args, input=b"", timeout=120):
    return subprocess.run([CLI] + list(args), input=input,
                          capture_output=True, timeout=timeout * SLOWDOWN)


def run_tty(args, tty, input_path=None, timeout=120, feed=None):
    """Run the CLI with stdout or stderr (tty: "stdout"/"stderr") on a
    pseudo-terminal, the other on a pipe; stdin from input_path, or a
    pipe fed `feed`.  Returns (status, what the terminal showed, the
    pipe's bytes)."""
    master, slave = pty.openpty()
    stdin = subprocess.PIPE if feed is not None else \
        open(input_path or os.devnull, "rb")
    kw = {"stdout": slave, "stderr": subprocess.PIPE} if tty == "stdout" \
        else {"stdout": subprocess.PIPE, "stderr": slave}
    p = subprocess.Popen([CLI] + list(args), stdin=stdin, **kw)
    os.close(slave)
    if feed is not None:
        def write():
            try:
                p.stdin.write(feed)
                p.stdin.close()
            except BrokenPipeError:
                pass
        threading.Thread(target=write, daemon=True).start()
    else:
        stdin.close()
    pipe = p.stdout if tty == "stderr" else p.stderr
    shown, piped = b"", b""
    fds = [master, pipe.fileno()]
    deadline = time.monotonic() + timeout * SLOWDOWN
    try:
        while fds and time.monotonic() < deadline:
            for fd in select.select(fds, [], [], 1)[0]:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:     # EIO: the terminal's last writer left
                    chunk = b""
                if not chunk:
                    fds.remove(fd)
                elif fd == master:
                    shown += chunk
                else:
                    piped += chunk
        status = p.wait(timeout=60 * SLOWDOWN)
    finally:
        if p.poll() is None:
            os.kill(p.pid, 9)
            p.wait()
        os.close(master)
        pipe.close()
    return status, shown, piped


class Help(unittest.TestCase):
    def test_cli_help(self):
        for args in (["--help"], ["-h"], ["help"]):
            p = run(*args)
            self.assertEqual(p.returncode, 0, (args, p.stderr))
            out = p.stdout.decode()
            self.assertIn("usage: consumers", out)
            for c in COMMANDS:
                self.assertRegex(out, r"\n  %s +\S" % c, args)
            self.assertIn("--socket", out)

    def test_help_of_a_command(self):
        """help COMMAND, COMMAND --help and --help COMMAND say the same."""
        outs = []
        for args in (["help", "submit"], ["submit", "--help"],
                     ["--help", "submit"], ["submit", "-h"]):
            p = run(*args)
            self.assertEqual(p.returncode, 0, (args, p.stderr))
            outs.append(p.stdout)
        self.assertEqual(len(set(outs)), 1, outs)
        out = outs[0].decode()
        self.assertIn("usage: consumers [-q] [-s socket] submit", out)
        for opt in ("--workers", "--params", "--json", "--quiet"):
            self.assertIn(opt, out)
        for c in COMMANDS:
            p = run("help", c)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertIn(" %s" % c, p.stdout.decode().splitlines()[0])
        p = run("help", "frobnicate")
        self.assertEqual(p.returncode, 2)
        self.assertIn('unknown command "frobnicate"', p.stderr.decode())

    def test_version(self):
        for args in (["--version"], ["-V"], ["status", "--version"]):
            p = run(*args)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertRegex(p.stdout.decode(), r"^consumers \d+\.\d+")
        for args in (["--version"], ["-V"]):
            p = subprocess.run([DAEMON] + args, capture_output=True,
                               timeout=60)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertRegex(p.stdout.decode(),
                             r"^consumersd \d+\.\d+.*plugin ABI")

    def test_daemon_help(self):
        for args in (["--help"], ["-h"]):
            p = subprocess.run([DAEMON] + args, capture_output=True,
                               timeout=60)
            self.assertEqual(p.returncode, 0, p.stderr)
            out = p.stdout.decode()
            self.assertIn("usage: consumersd", out)
            for opt in ("--config", "--socket", "--plugin-dir", "--test",
                        "--debug", "--version"):
                self.assertIn(opt, out)
        p = subprocess.run([DAEMON, "--bogus"], capture_output=True,
                           timeout=60)
        self.assertEqual(p.returncode, 2)
        self.assertIn("consumersd --help", p.stderr.decode())


class OptionsAnywhere(unittest.TestCase):
    def test_after_the_command_and_its_operands(self):
        with Daemon(SUM) as d:
            for args in (["submit", "sum", "-w", "1", "-s", d.socket],
                         ["submit", "-s", d.socket, "sum", "--workers=1"],
                         ["-s", d.socket, "submit", "sum", "-w1"],
                         ["submit", "sum", "--socket=" + d.socket, "-p",
                          '{"a":1}', "--json"]):
                p = run(*args, input=b"1\n2\n3\n")
                self.assertEqual(p.returncode, 0, (args, p.stderr))
                self.assertEqual(json.loads(p.stdout)["completion"], 6,
                                 args)
            p = run("status", "--json", "-s", d.socket, "sum")
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertTrue(json.loads(p.stdout)["ok"])
            # A file operand after an option.
            with tempfile.NamedTemporaryFile() as f:
                f.write(b"4\n5\n")
                f.flush()
                p = run("submit", "sum", "-w", "1", f.name, "-s", d.socket)
                self.assertEqual(p.returncode, 0, p.stderr)
                self.assertEqual(json.loads(p.stdout)["completion"], 9)

    def test_bad_options_say_so(self):
        p = run("submit", "sum", "-w", "zero", "-s", "/nonexistent")
        self.assertEqual(p.returncode, 2)
        self.assertIn("-w: workers must be a positive integer",
                      p.stderr.decode())
        p = run("submit", "sum", "-s")
        self.assertEqual(p.returncode, 2)
        self.assertIn("socket path is missing", p.stderr.decode())


class UsageErrors(unittest.TestCase):
    """A usage error exits 2 and says what is wrong and what to do, not
    only the synopsis of every command."""

    def test_each_says_what_is_wrong(self):
        env = dict(os.environ, CONSUMERS_SOCKET="/nonexistent/consumersd")
        for args, want in (
                ([], "the command is missing"),
                (["submit"], "submit: the pool is missing"),
                (["submit", "sum", "--nosuch"],
                 'submit: unknown option "--nosuch"'),
                (["submit", "sum", "-x"], 'submit: unknown option "-x"'),
                (["submit", "sum", "--workers"],
                 "submit: --workers needs a value"),
                (["status", "--nosuch"], 'status: unknown option "--nosuch"'),
                (["status", "a", "b"], 'status: one pool at most'),
                (["pools", "x"], 'pools: unknown argument "x"'),
                (["reload", "x"], 'reload: no arguments, not "x"'),
                (["metrics", "--x"], 'metrics: no arguments, not "--x"'),
                (["result"], "result: the stream id is missing"),
                (["result", "1", "2"], "result: one stream id, not 2 "
                 "arguments"),
                (["result", "x"], 'result: "x" is not a stream id'),
                (["help", "submit", "status"], "help: one command at most"),
                (["-s", "", "status"], "-s: the daemon's socket path is "
                 "empty"),
                (["status", "--socket="], "--socket=: the daemon's socket "
                 "path is empty")):
            p = subprocess.run([CLI] + args, capture_output=True, env=env,
                               stdin=subprocess.DEVNULL,
                               timeout=60 * SLOWDOWN)
            err = p.stderr.decode()
            self.assertEqual(p.returncode, 2, (args, err))
            self.assertIn(want, err, args)
            self.assertEqual(p.stdout, b"", args)
            if args and args[0] in COMMANDS + ("metrics", "result") and \
                    "socket" not in want and "not a stream id" not in want:
                # The command's own synopsis and where to read more.
                self.assertIn('help %s"' % args[0], err, args)

    @unittest.skipUnless(os.path.exists("/dev/full"), "no /dev/full")
    def test_output_that_cannot_be_written(self):
        for args in (["help"], ["--help"], ["-V"], ["help", "submit"]):
            with open("/dev/full", "wb") as full:
                p = subprocess.run([CLI] + args, stdout=full,
                                   stderr=subprocess.PIPE,
                                   timeout=60 * SLOWDOWN)
            self.assertEqual(p.returncode, 2, args)
            self.assertIn(b"cannot write to standard output", p.stderr)
        with Daemon(SUM) as d, open("/dev/full", "wb") as full:
            p = subprocess.run([CLI, "-s", d.socket, "submit", "sum"],
                               input=b"1\n2\n", stdout=full,
                               stderr=subprocess.PIPE,
                               timeout=120 * SLOWDOWN)
            self.assertEqual(p.returncode, 2, p.stderr)
            self.assertIn(b"cannot write to standard output", p.stderr)


class Quiet(unittest.TestCase):
    def test_quiet_prints_only_errors(self):
        with Daemon(SUM) as d:
            p = run("-q", "-s", d.socket, "submit", "sum", input=b"1\n2\n")
            self.assertEqual((p.returncode, p.stdout, p.stderr), (0, b"", b""))
            p = run("submit", "sum", "-q", "-s", d.socket,
                    input=b"1\n{bad\n")
            self.assertEqual(p.returncode, 1)
            self.assertEqual(p.stdout, b"")
            self.assertIn(b"item 2 rejected", p.stderr)
            p = run("status", "-q", "-s", d.socket)
            self.assertEqual((p.returncode, p.stdout), (0, b""))
            p = run("-q", "-s", d.socket, "submit", "nosuchpool",
                    input=b"1\n")
            self.assertEqual((p.returncode, p.stdout), (1, b""))
            self.assertIn(b"nosuchpool", p.stderr)


class Terminal(unittest.TestCase):
    def test_summary_on_a_terminal(self):
        with Daemon(SUM) as d, tempfile.NamedTemporaryFile() as f:
            f.write(b"1\n2\n3.5\n")
            f.flush()
            status, shown, err = run_tty(["-s", d.socket, "submit", "sum",
                                          f.name], "stdout")
            self.assertEqual(status, 0, err)
            text = shown.decode().replace("\r\n", "\n")
            self.assertRegex(text, r"^stream 1, pool sum: 3 items, "
                             r"3 consumed, in \d+\.\ds\ncompletion: 6.5\n$")
            # --json: the final line, as on a pipe.
            status, shown, err = run_tty(["submit", "sum", "--json", "-s",
                                          d.socket, f.name], "stdout")
            self.assertEqual(status, 0, err)
            final = json.loads(shown)
            self.assertEqual((final["ok"], final["completion"]), (True, 6.5))
            # -q: nothing at all.
            status, shown, err = run_tty(["submit", "sum", "-q", "-s",
                                          d.socket, f.name], "stdout")
            self.assertEqual((status, shown, err), (0, b"", b""))

    def test_summary_counts_what_went_wrong(self):
        with Daemon(SUM) as d, tempfile.NamedTemporaryFile() as f:
            f.write(b"1\n{bad\n2\n")
            f.flush()
            status, shown, err = run_tty(["-s", d.socket, "submit", "sum",
                                          f.name], "stdout")
            self.assertEqual(status, 1)
            self.assertIn(b"item 2 rejected", err)
            self.assertRegex(shown.decode(), r"^stream 1, pool sum: 3 items,"
                             r" 2 consumed, 1 rejected, in ")

    def test_progress_line(self):
        """A long submit from a file shows items sent, items/s and a
        percent on one line of stderr that rewrites itself, ending at
        100%; stdout (a pipe) still gets the final line alone."""
        pools = {"slow": {"plugin": test_plugin("slow"), "workers": 1,
                          "kwargs": {"usec": 2000, "every": 1}}}
        item = json.dumps({"pad": "x" * 1000}).encode() + b"\n"
        n = 3000
        with Daemon(pools) as d, tempfile.NamedTemporaryFile() as f:
            f.write(item * n)
            f.flush()
            status, shown, out = run_tty(["-s", d.socket, "submit", "slow",
                                          f.name], "stderr")
            self.assertEqual(status, 0, shown)
            self.assertEqual(json.loads(out)["consumed"], n)
            text = shown.decode()
            updates = re.findall(r"\r\x1b\[Kconsumers: (\d+) items sent, "
                                 r"(\d+) items/s, (\d+)%", text)
            self.assertGreaterEqual(len(updates), 2, text)
            self.assertEqual(updates[-1][0], str(n))
            self.assertEqual(updates[-1][2], "100")
            self.assertTrue(text.endswith("100%\r\n"), text[-200:])
            self.assertLess(int(updates[0][2]), 100, text)

    def test_progress_without_a_size(self):
        """From a pipe the size is not known: items and items/s, no
        percent."""
        pools = {"slow": {"plugin": test_plugin("slow"), "workers": 1,
                          "kwargs": {"usec": 2000, "every": 1}}}
        n = 3000
        feed = (json.dumps({"pad": "x" * 1000}).encode() + b"\n") * n
        with Daemon(pools) as d:
            status, shown, out = run_tty(["-s", d.socket, "submit", "slow"],
                                         "stderr", feed=feed)
            self.assertEqual(status, 0, shown)
            self.assertEqual(json.loads(out)["consumed"], n)
            text = shown.decode()
            updates = re.findall(r"\r\x1b\[Kconsumers: (\d+) items sent, "
                                 r"\d+ items/s(,)?", text)
            self.assertGreaterEqual(len(updates), 2, text)
            self.assertEqual(updates[-1], (str(n), ""), text)
            self.assertNotIn("%", text)

    def test_no_progress_for_a_short_submit(self):
        """A submit that is over at once shows no progress line."""
        with Daemon(SUM) as d:
            master, slave = pty.openpty()
            p = subprocess.run([CLI, "-s", d.socket, "submit", "sum"],
                               input=b"1\n", stdout=subprocess.PIPE,
                               stderr=slave, timeout=120 * SLOWDOWN)
            os.close(slave)
            os.set_blocking(master, False)
            try:
                shown = os.read(master, 65536)
            except (BlockingIOError, OSError):
                shown = b""
            os.close(master)
            self.assertEqual(p.returncode, 0)
            self.assertEqual(shown, b"")


COMPLETION = os.path.join(os.environ.get("top_srcdir", os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..")),
    "client", "bash-completion", "consumers")


def complete(cword, *words):
    """What bash completes for the words, the cword-th being typed."""
    p = subprocess.run(
        ["bash", "-c", 'source "$1"; shift; COMP_CWORD=$1; shift; '
         'COMP_WORDS=("$@"); _consumers; printf "%s\\n" "${COMPREPLY[@]}"',
         "sh", COMPLETION, str(cword), CLI] + list(words),
        capture_output=True, timeout=60 * SLOWDOWN)
    if p.returncode != 0:
        raise AssertionError(p.stderr.decode())
    return sorted(w for w in p.stdout.decode().split("\n") if w)


class Completion(unittest.TestCase):
    def test_commands_and_options(self):
        self.assertEqual(complete(1, "sub"), ["submit"])
        self.assertEqual(complete(1, "s"), ["status", "submit"])
        self.assertEqual(complete(1, ""), sorted(COMMANDS))
        self.assertEqual(complete(2, "help", "re"), ["reload"])
        self.assertIn("--workers", complete(3, "submit", "x", "--w"))
        self.assertIn("--watch", complete(2, "status", "--"))
        self.assertIn("--socket", complete(1, "--s"))
        self.assertEqual(complete(3, "submit", "-w", ""), [])

    def test_pools_from_the_daemon(self):
        pools = dict(SUM, collect={"plugin": "collect"},
                     concat={"plugin": "concat"})
        with Daemon(pools) as d, tempfile.TemporaryDirectory() as t:
            self.assertEqual(complete(4, "-s", d.socket, "submit", "co"),
                             ["collect", "concat"])
            self.assertEqual(complete(2, "status", "s", "-s", d.socket),
                             ["sum"])
            self.assertEqual(complete(5, "submit", "--socket=" + d.socket,
                                      "-w", "1", ""),
                             ["collect", "concat", "sum"])
            # After the pool, files.
            open(os.path.join(t, "items.ndjson"), "w").close()
            self.assertEqual(
                complete(5, "-s", d.socket, "submit", "sum",
                         os.path.join(t, "it")),
                [os.path.join(t, "items.ndjson")])
        # No daemon: no pools, and no error.
        self.assertEqual(complete(4, "-s", "/nonexistent", "submit", ""),
                         [])


if __name__ == "__main__":
    main()
