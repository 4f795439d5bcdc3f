"""A private PostgreSQL server for tests: initdb in a temporary directory,
postgres on a Unix socket in that directory only (listen_addresses=''),
trust authentication, stopped and removed at the end, whatever happens.

It never uses the machine's own cluster.  initdb and postgres refuse to run
as root: under root they run as the "postgres" user (Debian's postgresql
package creates it), which owns the directory; the tests' own clients
(psql, and the daemon's workers, as root) connect as the database user
"postgres" over the socket.

    server = PgServer().start()
    server.psql("SELECT 1")           # -> "1"
    server.conninfo("test")           # for a pool's kwargs
    server.stop()
"""
import atexit
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time

START_TIMEOUT = 120     # a first start on a slow, busy machine


class PgServerError(Exception):
    pass


def _version_key(path):
    try:
        return int(path.split(os.sep)[-3])
    except (ValueError, IndexError):
        return 0


def find_bindir():
    """Where initdb, pg_ctl, postgres and psql are: pg_config --bindir
    (Debian's points into /usr/lib/postgresql/V/bin), else the newest
    /usr/lib/postgresql/*/bin, else $PATH."""
    candidates = []
    if os.environ.get("PG_BINDIR"):
        candidates.append(os.environ["PG_BINDIR"])
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True,
                             text=True, timeout=30)
        if out.returncode == 0:
            candidates.append(out.stdout.strip())
    except (OSError, subprocess.TimeoutExpired):
        pass
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                         key=_version_key, reverse=True)
    for d in candidates:
        if all(os.access(os.path.join(d, p), os.X_OK)
               for p in ("initdb", "pg_ctl", "postgres", "psql")):
            return d
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl") and shutil.which("psql"):
        return os.path.dirname(found)
    raise PgServerError(
        "no PostgreSQL server binaries (initdb, pg_ctl, postgres, psql) "
        "found in %s, /usr/lib/postgresql/*/bin or $PATH: install the "
        "Debian package \"postgresql\" (./quickstart does), or set "
        "PG_BINDIR" % (candidates[:1] or ["pg_config --bindir"]))


def free_port():
    """A port number no local TCP server uses.  The server listens on no
    TCP port at all (listen_addresses=''); the number only names its
    socket file, but a free one keeps it from resembling another server's
    in logs and pg_stat_activity."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:

    def __init__(self, prefix="cnsd-pg-"):
        self.bindir = find_bindir()
        self.dir = tempfile.mkdtemp(prefix=prefix)
        self.data = os.path.join(self.dir, "data")
        self.sockdir = os.path.join(self.dir, "sock")
        self.logfile = os.path.join(self.dir, "postgres.log")
        self.port = free_port()
        self.user = "postgres"          # the database superuser
        self.running = False
        self._as = None
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise PgServerError(
                    "running as root, and there is no \"postgres\" user to "
                    "run initdb and postgres as (they refuse root): install "
                    "the Debian package \"postgresql\", which creates it")
            self._as = pw
        os.mkdir(self.sockdir)
        if self._as is not None:
            for p in (self.dir, self.sockdir):
                os.chown(p, self._as.pw_uid, self._as.pw_gid)
        atexit.register(self.stop)

    def _drop(self):
        os.setgroups([])
        os.setgid(self._as.pw_gid)
        os.setuid(self._as.pw_uid)

    def _run_server_tool(self, args, timeout):
        env = dict(os.environ, LC_ALL="C", LANG="C")
        if self._as is not None:
            env.update(HOME=self._as.pw_dir, USER="postgres",
                       LOGNAME="postgres")
        return subprocess.run(
            args, capture_output=True, text=True, timeout=timeout, env=env,
            cwd=self.dir, preexec_fn=self._drop if self._as else None)

    def start(self):
        p = self._run_server_tool(
            [os.path.join(self.bindir, "initdb"), "-D", self.data, "-U",
             self.user, "-A", "trust", "-E", "UTF8", "--locale=C",
             "--no-sync"], timeout=START_TIMEOUT)
        if p.returncode != 0:
            raise PgServerError("initdb failed (%d):\n%s%s" % (
                p.returncode, p.stdout, p.stderr))
        self.opts = opts = ("-k %s -p %d -c listen_addresses='' -c fsync=off "
                "-c full_page_writes=off -c synchronous_commit=off "
                "-c max_connections=60" % (self.sockdir, self.port))
        p = self._run_server_tool(
            [os.path.join(self.bindir, "pg_ctl"), "start", "-D", self.data,
             "-l", self.logfile, "-w", "-t", str(START_TIMEOUT), "-o",
             opts], timeout=START_TIMEOUT + 30)
        self.running = True
        if p.returncode != 0:
            raise PgServerError("pg_ctl start failed (%d):\n%s%s\n%s" % (
                p.returncode, p.stdout, p.stderr, self.log_text()))
        # pg_ctl -w waits for it; still make sure a client gets in.
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            p = subprocess.run(self._psql_args("postgres") +
                               ["-c", "SELECT 1"], capture_output=True,
                               text=True, timeout=60)
            if p.returncode == 0:
                return self
            if time.monotonic() > deadline:
                raise PgServerError(
                    "PostgreSQL did not accept connections within %d s: "
                    "%s\n%s" % (START_TIMEOUT, p.stderr, self.log_text()))
            time.sleep(0.1)

    def pg_ctl(self, *args, timeout=START_TIMEOUT + 30):
        """Run pg_ctl on this server's data directory (as its owner)."""
        p = self._run_server_tool(
            [os.path.join(self.bindir, "pg_ctl")] + list(args[:1]) +
            ["-D", self.data] + list(args[1:]), timeout=timeout)
        if p.returncode != 0:
            raise PgServerError("pg_ctl %s failed (%d):\n%s%s" % (
                " ".join(args), p.returncode, p.stdout, p.stderr))

    def pause(self):
        """Stop the server (fast: its sessions are terminated), keeping
        its data for resume()."""
        self.pg_ctl("stop", "-m", "fast", "-w", "-t", "60")

    def resume(self):
        self.pg_ctl("start", "-l", self.logfile, "-w", "-t",
                    str(START_TIMEOUT), "-o", self.opts)

    def log_text(self):
        try:
            with open(self.logfile, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def conninfo(self, dbname="postgres"):
        return "host=%s port=%d user=%s dbname=%s" % (
            self.sockdir, self.port, self.user, dbname)

    def _psql_args(self, dbname):
        return [os.path.join(self.bindir, "psql"), "-X", "-q", "-A", "-t",
                "-v", "ON_ERROR_STOP=1", "-h", self.sockdir, "-p",
                str(self.port), "-U", self.user, "-d", dbname]

    def psql(self, sql, dbname="postgres", timeout=120):
        """Run SQL; return its output (unaligned, tuples only) stripped.
        Raises with psql's message on an error."""
        p = subprocess.run(self._psql_args(dbname) + ["-c", sql],
                           capture_output=True, text=True, timeout=timeout)
        if p.returncode != 0:
            raise PgServerError("psql %r failed: %s" % (sql, p.stderr))
        return p.stdout.strip()

    def createdb(self, name):
        self.psql('CREATE DATABASE "%s"' % name)
        return name

    def stop(self):
        """pg_ctl stop -m fast, then remove everything; safe to call
        twice."""
        if self.running:
            self.running = False
            try:
                p = self._run_server_tool(
                    [os.path.join(self.bindir, "pg_ctl"), "stop", "-D",
                     self.data, "-m", "fast", "-w", "-t", "60"],
                    timeout=90)
                if p.returncode != 0:
                    self._run_server_tool(
                        [os.path.join(self.bindir, "pg_ctl"), "stop", "-D",
                         self.data, "-m", "immediate"], timeout=60)
            except subprocess.TimeoutExpired:
                pass
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
