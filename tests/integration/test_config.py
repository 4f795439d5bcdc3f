"""Configuration checks through the real binary: consumersd -t, errors as
file:line:column, a daemon that refuses a bad config or a live socket."""
import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Daemon, DAEMON, PLUGIN_DIR, TOP_BUILDDIR,  # noqa
                     TOP_SRCDIR, main)


def run(*args):
    p = subprocess.run([DAEMON] + list(args), capture_output=True,
                       text=True, timeout=30)
    return p.returncode, p.stdout, p.stderr


class Config(unittest.TestCase):

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="cnsd-conf-")
        os.mkdir(os.path.join(self.dir, "pools.d"))
        self.conf = os.path.join(self.dir, "consumersd.conf")

    def write(self, name, text):
        path = os.path.join(self.dir, name)
        if (name == "consumersd.conf" and os.geteuid() == 0 and
                text.lstrip().startswith("{") and "root_workers" not in text):
            # As root, pools need "user" unless the daemon allows root
            # workers; added on line 1, so positions on later lines hold.
            i = text.index("{") + 1
            text = text[:i] + '"root_workers": true' + (
                ", " if text[i:].strip() != "}" else "") + text[i:]
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_bundled_config_is_valid(self):
        # The bundled pools load their plugins as nobody (when root), who
        # may not see the build tree: a copy where it can.
        plugins = os.path.join(self.dir, "plugins")
        os.mkdir(plugins)
        for so in glob.glob(os.path.join(PLUGIN_DIR, "*.so")):
            shutil.copy(so, plugins)
        os.chmod(self.dir, 0o755)
        rc, out, err = run("-t", "-c", os.path.join(TOP_SRCDIR, "conf",
                                                    "consumersd.conf"),
                           "-P", plugins)
        self.assertEqual(rc, 0, err)
        # Every bundled pool file counts (the sqlite branch added db.json).
        bundled = glob.glob(os.path.join(TOP_SRCDIR, "conf", "pools.d",
                                         "*.json"))
        self.assertGreaterEqual(len(bundled), 4)
        self.assertIn("configuration is valid (%d pools)" % len(bundled),
                      out)

    def test_bundled_pools_run_as_consumersd_worker(self):
        # Issue 12 item 7: the bundled pools name a dedicated system user
        # (not nobody, whose processes could signal them), quickstart
        # creates it, and the workers really run as it.
        if os.geteuid() != 0:
            self.skipTest("needs root to run workers as another user")
        try:
            worker = pwd.getpwnam("consumersd-worker")
        except KeyError:
            self.fail("no user consumersd-worker: ./quickstart demo|check "
                      "creates it (systemd-sysusers "
                      "systemd/sysusers.d/consumersd.conf)")
        pools = {}
        for path in glob.glob(os.path.join(TOP_SRCDIR, "conf", "pools.d",
                                           "*.json")):
            with open(path) as f:
                pool = json.load(f)
            self.assertEqual(pool.get("user"), "consumersd-worker", path)
            if pool["plugin"] != "sqlite":      # needs a state directory
                pools[os.path.basename(path)[:-5]] = pool
        self.assertTrue(pools)
        with Daemon(pools) as d:
            for pid in d.worker_pids():
                with open("/proc/%d/status" % pid) as f:
                    uids = [line.split()[1:] for line in f
                            if line.startswith("Uid:")][0]
                self.assertEqual({int(u) for u in uids}, {worker.pw_uid},
                                 "worker %d" % pid)
            self.assertTrue(d.worker_pids())

    def test_errors_carry_positions(self):
        self.write("consumersd.conf",
                   '{\n  "socket_mode": "0660",\n  "colour": 1,\n'
                   '  "max_item_bytes": "big"\n}\n')
        rc, out, err = run("-t", "-c", self.conf)
        self.assertEqual(rc, 1)
        self.assertIn(self.conf + ':3:3: unknown key "colour"', err)
        self.assertIn(self.conf + ':4:3: "max_item_bytes" must be an '
                      'integer', err)
        self.assertIn("configuration is not valid", err)

    def test_error_text_that_is_not_utf8(self):
        # jansson's message quotes the bytes it stopped at, cutting the
        # "é" in two: the error still reaches the user, cleaned.
        with open(self.conf, "wb") as f:
            f.write(b'{"a\\u\xc3\xa9": 1}\n')
        rc, out, err = run("-t", "-c", self.conf)
        self.assertEqual(rc, 1)
        self.assertIn(self.conf + ":1:", err)
        self.assertIn("invalid escape", err)

    def test_pool_errors(self):
        self.write("consumersd.conf", '{"plugin_dir": "%s"}' % PLUGIN_DIR)
        pool = self.write("pools.d/p.json",
                          '{"plugin": "sum",\n "workers": "two",\n'
                          ' "stream_workers": 3}\n')
        missing = self.write("pools.d/q.json", '{"plugin": "nothere"}')
        broken = self.write("pools.d/r.json", '{"plugin": "sum",\n  oops}')
        rc, out, err = run("-t", "-c", self.conf)
        self.assertEqual(rc, 1)
        self.assertIn(pool + ':2:2: "workers" must be an integer from 1 to '
                      '1024, not a string', err)
        self.assertIn(pool + ':3:2: "stream_workers" (3) cannot exceed '
                      '"workers" (1)', err)
        self.assertIn(missing + ':1:2: plugin "nothere" not found', err)
        self.assertIn(broken + ":2:", err)

    def test_messages_name_the_value_suggest_and_keep_file_order(self):
        """A bad number is quoted, a typo gets the nearest key, the
        errors of a file come in the order of its lines, and an empty
        file says so."""
        self.write("consumersd.conf", '{"plugin_dir": "%s"}' % PLUGIN_DIR)
        pool = self.write("pools.d/p.json",
                          '{"plugin": "sum",\n "wrokers": 2,\n'
                          ' "max_attempts": 0,\n "workers": 0,\n'
                          ' "colour": 1}\n')
        rc, out, err = run("-t", "-c", self.conf)
        self.assertEqual(rc, 1)
        lines = [l for l in err.splitlines() if l.startswith(pool + ":")]
        self.assertEqual(lines, [
            pool + ':2:2: unknown key "wrokers": did you mean "workers"?',
            pool + ':3:2: "max_attempts": 0 must be from 1 to 100',
            pool + ':4:2: "workers": 0 must be from 1 to 1024',
            pool + ':5:2: unknown key "colour" (known keys: ' +
            lines[-1].split("(known keys: ", 1)[-1]], err)
        self.write("consumersd.conf", " \n")
        rc, out, err = run("-t", "-c", self.conf)
        self.assertEqual(rc, 1)
        self.assertIn(self.conf + ":1:1: the file is empty", err)

    def test_pool_idle_timeout_is_worker_idle_timeout(self):
        """A pool's idle workers exit after worker_idle_timeout; the old
        name is refused with the new one in the message."""
        self.write("consumersd.conf", '{"plugin_dir": "%s"}' % PLUGIN_DIR)
        pool = self.write("pools.d/p.json",
                          '{"plugin": "sum", "mode": "dynamic",\n'
                          ' "idle_timeout": 5}\n')
        rc, out, err = run("-t", "-c", self.conf)
        self.assertEqual(rc, 1)
        self.assertIn(pool + ':2:2: "idle_timeout" is not a pool key: a '
                      'pool\'s idle workers exit after '
                      '"worker_idle_timeout" (rename it)', err)
        self.write("pools.d/p.json", '{"plugin": "sum", "mode": "dynamic",'
                   '\n "worker_idle_timeout": 5}\n')
        rc, out, err = run("-t", "-c", self.conf)
        self.assertEqual(rc, 0, err)

    def test_failure_model_keys(self):
        self.write("consumersd.conf", '{"plugin_dir": "%s",\n'
                   ' "idle_timeout": -1}' % PLUGIN_DIR)
        pool = self.write("pools.d/p.json",
                          '{"plugin": "sum",\n "on_crash": "retry",\n'
                          ' "max_attempts": 0,\n "item_timeout": "1s"}\n')
        rc, out, err = run("-t", "-c", self.conf)
        self.assertEqual(rc, 1)
        self.assertIn(self.conf + ':2:2: "idle_timeout": -1 must be a number '
                      'of seconds from 0 to 86400', err)
        # Pool files are read once the daemon's own file is right.
        self.write("consumersd.conf", '{"plugin_dir": "%s"}' % PLUGIN_DIR)
        rc, out, err = run("-t", "-c", self.conf)
        self.assertEqual(rc, 1)
        self.assertIn(pool + ':2:2: "on_crash" must be "replay", '
                      '"redeliver" or "fail"', err)
        self.assertIn(pool + ':3:2: "max_attempts": 0 must be from 1 to 100',
                      err)
        self.assertIn(pool + ':4:2: "item_timeout" must be a number of '
                      'seconds from 0 to 86400, not a string', err)

    def test_cluster_keys(self):
        """The daemon's "cluster" section and a pool's "cluster" key are
        read and range-checked; a build without hiredis names what to
        install; a cluster pool is refused, with why, not run locally."""
        with open(os.path.join(TOP_BUILDDIR, "config.h")) as f:
            hiredis = "#define HAVE_HIREDIS 1" in f.read()
        self.write("consumersd.conf", '{"plugin_dir": "%s",\n'
                   ' "cluster": {"redis": "unix:/tmp/r.sock",\n'
                   ' "instance": "a1", "heartbeat": 0.5, "claim_idle": 3}}'
                   % PLUGIN_DIR)
        self.write("pools.d/p.json", '{"plugin": "sum"}')
        rc, out, err = run("-t", "-c", self.conf)
        if not hiredis:
            self.assertEqual(rc, 1)
            self.assertIn(self.conf + ':2:2: "cluster": this consumersd '
                          'was built without cluster support (hiredis): '
                          'install libhiredis-dev', err)
            return
        self.assertEqual(rc, 0, err)
        # Defaults: the instance is the host name.
        self.write("consumersd.conf", '{"plugin_dir": "%s",\n'
                   ' "cluster": {"redis": "redis://127.0.0.1:6379/0"}}'
                   % PLUGIN_DIR)
        rc, out, err = run("-t", "-c", self.conf)
        self.assertEqual(rc, 0, err)
        for bad, msg in [
                ('"redis": "tcp://x"', '"redis" must be "unix:/path/to/'
                 'redis.sock" or "redis://host:port/db" (db 0 to 15)'),
                ('"redis": "redis://h:99999/0"', '"redis" must be'),
                ('"redis": "redis://h:6379/16"', '"redis" must be'),
                ('"instance": "a b"', '"redis" must be'),
                ('"redis": "unix:/r", "instance": "a b"',
                 '"instance" is 1 to 64 letters'),
                ('"redis": "unix:/r", "heartbeat": 0',
                 '"heartbeat" must be a number of seconds from 0.05 to 60'),
                ('"redis": "unix:/r", "claim_idle": "3s"',
                 '"claim_idle" must be a number of seconds from 0.1'),
                ('"redis": "unix:/r", "heartbeat": 2, "claim_idle": 3',
                 '"claim_idle" (3 s) must be at least twice "heartbeat"'),
                ('"redis": "unix:/r", "password_file": "nope"',
                 '"password_file" %s: No such file' %
                 os.path.join(self.dir, "nope")),
                ('"redis": "unix:/r", "colour": 1',
                 'unknown key "colour"')]:
            self.write("consumersd.conf", '{"plugin_dir": "%s",\n'
                       ' "cluster": {%s}}' % (PLUGIN_DIR, bad))
            rc, out, err = run("-t", "-c", self.conf)
            self.assertEqual(rc, 1, bad)
            self.assertIn(self.conf + ':2:2: "cluster": ' + msg, err, bad)
        self.write("consumersd.conf", '{"plugin_dir": "%s",\n'
                   ' "cluster": []}' % PLUGIN_DIR)
        rc, out, err = run("-t", "-c", self.conf)
        self.assertIn(':2:2: "cluster" must be an object', err)
        # A pool's "cluster": a boolean; true needs the daemon's section.
        self.write("consumersd.conf", '{"plugin_dir": "%s"}' % PLUGIN_DIR)
        pool = self.write("pools.d/p.json",
                          '{"plugin": "sum",\n "cluster": 1}')
        rc, out, err = run("-t", "-c", self.conf)
        self.assertEqual(rc, 1)
        self.assertIn(pool + ':2:2: "cluster" must be true or false, not '
                      'an integer', err)
        self.write("pools.d/p.json", '{"plugin": "sum",\n "cluster": true}')
        rc, out, err = run("-t", "-c", self.conf)
        self.assertEqual(rc, 1)
        self.assertIn(pool + ':2:2: "cluster": true needs a "cluster" '
                      'section', err)
        self.write("consumersd.conf", '{"plugin_dir": "%s",\n'
                   ' "cluster": {"redis": "unix:/tmp/r.sock"}}' % PLUGIN_DIR)
        rc, out, err = run("-t", "-c", self.conf)
        self.assertEqual(rc, 0, err)
        self.write("pools.d/p.json", '{"plugin": "sum",\n "cluster": false}')
        rc, out, err = run("-t", "-c", self.conf)
        self.assertEqual(rc, 0, err)

    def test_access_keys(self):
        self.write("consumersd.conf", '{"plugin_dir": "%s",\n'
                   ' "admin_group": "no-such-group-x",\n'
                   ' "shutdown_timeout": "soon"}' % PLUGIN_DIR)
        rc, out, err = run("-t", "-c", self.conf)
        self.assertEqual(rc, 1)
        self.assertIn(self.conf + ':2:2: "admin_group": no group named '
                      '"no-such-group-x" on this system', err)
        self.assertIn(self.conf + ':3:2: "shutdown_timeout" must be a '
                      'number of seconds', err)
        self.write("consumersd.conf", '{"plugin_dir": "%s"}' % PLUGIN_DIR)
        pool = self.write("pools.d/p.json", '{"plugin": "sum",\n'
                          ' "allow": {"users": ["root", "no-such-user-x"],'
                          ' "groups": ["root"]}}')
        rc, out, err = run("-t", "-c", self.conf)
        self.assertEqual(rc, 1)
        self.assertIn(pool + ':2:2: "allow": "no-such-user-x" is not a user '
                      'on this system', err)
        self.write("pools.d/p.json", '{"plugin": "sum", "allow": '
                   '{"users": ["root"], "groups": ["root"]}}')
        rc, out, err = run("-t", "-c", self.conf)
        self.assertEqual(rc, 0, err)
        self.write("pools.d/p.json", '{"plugin": "sum", "allow": '
                   '{"people": []}}')
        rc, out, err = run("-t", "-c", self.conf)
        self.assertEqual(rc, 1, err)
        self.assertIn('"allow" takes "users" and "groups", not "people"',
                      err)
        self.assertIn("configuration is not valid", err)
        self.assertNotIn("configuration is valid", out)

    def test_unusable_spool_dir(self):
        # Replay needs somewhere to spool: the daemon says where it
        # looked and what to do, and does not start.
        gone = os.path.join(self.dir, "no-such-dir")
        self.write("consumersd.conf", '{"plugin_dir": "%s", '
                   '"spool_dir": "%s"}' % (PLUGIN_DIR, gone))
        self.write("pools.d/p.json", '{"plugin": "sum"}')
        # consumersd -t fails too: the daemon would not start.
        rc, out, err = run("-t", "-c", self.conf)
        self.assertEqual(rc, 1, err)
        self.assertIn("consumersd: cannot create replay spool files in " +
                      gone, err)
        self.assertIn("configuration is not valid", err)
        rc, out, err = run("-c", self.conf, "-s",
                           os.path.join(self.dir, "s.sock"))
        self.assertEqual(rc, 1)
        self.assertIn("cannot create replay spool files in %s: No such "
                      "file or directory (set \"spool_dir\" to a writable "
                      "directory" % gone, err)
        # With on_crash fail nothing is spooled, so it is not needed.
        self.write("pools.d/p.json", '{"plugin": "sum", "on_crash": "fail"}')
        rc, out, err = run("-t", "-c", self.conf)
        self.assertEqual(rc, 0, err)
        self.assertIn("configuration is valid (1 pool)", out)
        self.assertNotIn("spool", err)

    def test_check_finds_what_stops_the_start(self):
        """-t fails on an exec program that does not exist or is not
        executable, and on a database that cannot be opened."""
        self.write("consumersd.conf", '{"plugin_dir": "%s"}' % PLUGIN_DIR)
        noexec = self.write("script", "#!/bin/sh\n")
        os.chmod(noexec, 0o644)
        missing = os.path.join(self.dir, "nothere")
        pool = self.write("pools.d/p.json", '{"plugin": "exec", "args": '
                          '["%s"]}' % missing)
        rc, out, err = run("-t", "-c", self.conf)
        self.assertEqual(rc, 1, err)
        self.assertIn(pool + ":1:2: args: program %s: No such file or "
                      "directory" % missing, err)
        self.write("pools.d/p.json", '{"plugin": "exec", "args": ["%s"]}'
                   % noexec)
        rc, out, err = run("-t", "-c", self.conf)
        self.assertEqual(rc, 1, err)
        self.assertIn("args: program %s: not executable" % noexec, err)
        self.write("pools.d/p.json", '{"plugin": "exec", "args": '
                   '["/bin/cat"]}')
        rc, out, err = run("-t", "-c", self.conf)
        self.assertEqual(rc, 0, err)
        if not os.path.exists(os.path.join(PLUGIN_DIR, "sqlite.so")):
            return
        db = os.path.join(self.dir, "no-such-dir", "items.db")
        self.write("pools.d/p.json", '{"plugin": "sqlite", "kwargs": '
                   '{"database": "%s", "table": "t"}}' % db)
        rc, out, err = run("-t", "-c", self.conf)
        self.assertEqual(rc, 1, err)
        self.assertIn("sqlite: cannot open database %s" % db, err)
        self.assertFalse(os.path.exists(db))

    def test_check_loads_plugins(self):
        # -t loads each plugin (in a child process) and checks its ABI.
        from harness import test_plugin
        self.write("consumersd.conf", '{"plugin_dir": "%s"}' % PLUGIN_DIR)
        bad = self.write("pools.d/old.json",
                         '{"workers": 1,\n "plugin": "%s"}'
                         % test_plugin("badabi"))
        nodesc = self.write("pools.d/x.json",
                            '{"plugin": "%s"}' % test_plugin("nodesc"))
        self.write("pools.d/good.json", '{"plugin": "sum"}')
        rc, out, err = run("-t", "-c", self.conf)
        self.assertEqual(rc, 1)
        self.assertIn(bad + ":2:2: plugin " + test_plugin("badabi") +
                      " was built for plugin ABI 99", err)
        self.assertIn(nodesc + ':1:2: plugin ' + test_plugin("nodesc") +
                      ' has no "consumers_plugin" descriptor', err)
        self.assertNotIn("good.json", err)

    def test_relative_paths_follow_the_file(self):
        os.mkdir(os.path.join(self.dir, "elsewhere"))
        self.write("consumersd.conf", '{"pools_dir": "elsewhere", '
                   '"plugin_dir": "%s"}' % PLUGIN_DIR)
        self.write("elsewhere/a.json", '{"plugin": "collect"}')
        rc, out, err = run("-t", "-c", self.conf)
        self.assertEqual(rc, 0, err)
        self.assertIn("(1 pool)", out)

    def test_daemon_refuses_bad_config(self):
        self.write("consumersd.conf", '{"log_level": "loud"}')
        rc, out, err = run("-c", self.conf, "-s",
                           os.path.join(self.dir, "s.sock"))
        self.assertEqual(rc, 1)
        self.assertIn('"log_level" must be one of', err)
        self.assertIn("not starting", err)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "s.sock")))

    def test_live_socket_is_not_stolen_stale_one_is_replaced(self):
        with Daemon({"sum": {"plugin": "sum"}}) as d:
            rc, out, err = run("-c", d.conf, "-s", d.socket,
                               "-P", PLUGIN_DIR)
            self.assertEqual(rc, 1)
            self.assertIn("another daemon is listening on " + d.socket, err)
            rc, final, err = d.cli("submit", "sum", input=b"1\n")
            self.assertEqual(rc, 0, err)
        # A socket file left behind by a dead process is replaced.
        d2 = Daemon({"sum": {"plugin": "sum"}})
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(d2.socket)
        stale.close()
        with d2:
            rc, final, err = d2.cli("submit", "sum", input=b"2\n")
            self.assertEqual((rc, final["completion"]), (0, 2), err)


if __name__ == "__main__":
    main()
