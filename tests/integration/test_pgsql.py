"""The bundled pgsql plugin against a real PostgreSQL that this file starts
(pgserver.py: initdb in a temporary directory, a private Unix socket,
stopped and removed at the end).  Rows land exactly once, each stream in
one transaction; each worker keeps one connection; a backend terminated
mid-stream or during COMMIT, and a server that goes away and comes back,
are reported and lose or duplicate nothing; rows the server refuses are
left out and named; bad kwargs and an unreachable server fail init with
the reason."""
import json
import os
import re
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Daemon, SLOWDOWN, ask, assert_invariant, lines,  # noqa
                     read_lines, wait_for, main)
from pgserver import PgServer  # noqa

SERVER = None
_dbs = 0


def setUpModule():
    global SERVER
    SERVER = PgServer().start()


def tearDownModule():
    if SERVER is not None:
        SERVER.stop()


def new_db():
    """A fresh database per test: no test sees another's tables."""
    global _dbs
    _dbs += 1
    return SERVER.createdb("t%d" % _dbs)


def pool(db, workers=4, **kwargs):
    kw = {"conninfo": SERVER.conninfo(db)}
    kw.update(kwargs)
    return {"plugin": "pgsql", "workers": workers, "stream_workers": workers,
            "kwargs": kw}


def connected(log):
    """{worker pid: [backend pid, ...]} from the plugin's 'connected'
    lines (not its 'reconnected' ones)."""
    out = {}
    for m in re.finditer(r"worker \d+ \(pid (\d+)\): pgsql: connected to "
                         r"database .* \(backend pid (\d+)\)", log):
        out.setdefault(int(m.group(1)), []).append(int(m.group(2)))
    return out


def pool_status(d, name):
    return ask(d, {"op": "status", "pool": name})["pools"][0]


class Stream:
    """A stream held open over a plain socket."""

    def __init__(self, d, pool_name):
        self.s = d.connect()
        self.s.settimeout(60 * SLOWDOWN)
        self.s.sendall(json.dumps({"op": "submit", "pool": pool_name})
                       .encode() + b"\n")
        self.f = self.s.makefile("rb")
        self.lease = json.loads(self.f.readline())

    def send(self, values):
        self.s.sendall(lines(values))

    def end(self):
        self.s.shutdown(socket.SHUT_WR)
        rest = self.f.read()
        self.s.close()
        replies = [json.loads(l) for l in rest.split(b"\n") if l.strip()]
        return replies[-1]


TRICKY = "tab\there, backslash \\ newline\n cr\r \\N \\. \u00e9\u4e2d"


class Bulk(unittest.TestCase):

    def test_200000_items_four_workers_ten_streams(self):
        db = new_db()
        with Daemon({"db": pool(db)}) as d:
            t0 = time.monotonic()
            rc, final, err = d.cli("submit", "db", input=lines(
                {"n": i, "s": TRICKY} for i in range(1, 200001)))
            took = time.monotonic() - t0
            self.assertEqual(rc, 0, err)
            self.assertTrue(final["ok"], final)
            self.assertEqual(final["errors"], [])
            self.assertEqual(final["consumed"], 200000)
            assert_invariant(self, final)
            self.assertEqual(len(final["results"]), 4)
            self.assertEqual(sum(final["results"]), 200000)
            self.assertEqual(final["completion"], 200000)
            self.assertEqual(SERVER.psql(
                "SELECT count(*), count(DISTINCT (item->>'n')::int), "
                "min((item->>'n')::int), max((item->>'n')::int), "
                "sum((item->>'n')::int), count(*) FILTER (WHERE "
                "item->>'s' = %s) FROM items" % quote(TRICKY), db),
                "200000|200000|1|200000|%d|200000" % (200000 * 200001 // 2))
            sys.stderr.write("200000 items into PostgreSQL: %.2f s\n" % took)
            # Nine more streams, on the same connections.
            for k in range(9):
                base = 1000000 * (k + 1)
                rc, final, err = d.cli("submit", "db", input=lines(
                    {"n": base + i} for i in range(1000)))
                self.assertEqual((rc, final["completion"]), (0, 1000), err)
            self.assertEqual(SERVER.psql("SELECT count(*), count(DISTINCT "
                                         "item->>'n') FROM items", db),
                             "209000|209000")
            log = d.log_text()
            conns = connected(log)
            workers = [w["pid"] for w in pool_status(d, "db")["processes"]]
            self.assertEqual(sorted(conns), sorted(workers), log)
            for pid, backends in conns.items():
                self.assertEqual(len(backends), 1, (pid, backends))
            self.assertNotIn("reconnected", log)
            # The server agrees: four sessions, the ones logged.
            active = SERVER.psql(
                "SELECT pid FROM pg_stat_activity WHERE datname = '%s' AND "
                "application_name LIKE 'consumersd db worker %%'" % db, db)
            self.assertEqual(sorted(int(p) for p in active.split()),
                             sorted(b[0] for b in conns.values()))
            served = [w["streams_served"] for w in
                      pool_status(d, "db")["processes"]]
            self.assertEqual(served, [10] * 4)

    def test_rows_appear_only_after_commit(self):
        db = new_db()
        with Daemon({"db": pool(db, workers=2)}) as d:
            st = Stream(d, "db")
            self.assertTrue(st.lease["ok"], st.lease)
            st.send({"n": i, "pad": "x" * 40} for i in range(1, 20001))
            wait_for(lambda: sum(w["items"] for w in pool_status(d, "db")
                                 ["processes"]) == 20000,
                     what="20000 items taken by the workers")
            # Both workers are inside their COPY, with rows sent...
            wait_for(lambda: SERVER.psql(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name"
                " LIKE 'consumersd db worker %%' AND query LIKE 'COPY%%' AND "
                "backend_xid IS NOT NULL", db) == "2",
                what="two open COPY transactions")
            # ...none of which another session sees.
            self.assertEqual(SERVER.psql("SELECT count(*) FROM items", db),
                             "0")
            final = st.end()
            self.assertEqual((final["ok"], final["completion"]),
                             (True, 20000), final)
            self.assertEqual(SERVER.psql(
                "SELECT count(*), count(DISTINCT item->>'n') FROM items",
                db), "20000|20000")


def quote(s):
    return "'" + s.replace("'", "''") + "'"


def count_distinct(db, table="items", expr="item->>'n'"):
    return SERVER.psql("SELECT count(*), count(DISTINCT %s), min((%s)::int),"
                       " max((%s)::int) FROM %s" % (expr, expr, expr, table),
                       db)


class LostConnections(unittest.TestCase):

    def test_backend_terminated_mid_stream(self):
        db = new_db()
        with Daemon({"db": pool(db)}) as d:
            st = Stream(d, "db")
            st.send({"n": i} for i in range(1, 50001))
            wait_for(lambda: sum(w["items"] for w in pool_status(d, "db")
                                 ["processes"]) == 50000,
                     what="50000 items taken")
            backends = connected(d.log_text())
            victim_worker, (victim,) = sorted(backends.items())[0]
            self.assertEqual(SERVER.psql(
                "SELECT pg_terminate_backend(%d)" % victim, db), "t")
            st.send({"n": i} for i in range(50001, 100001))
            final = st.end()
            self.assertEqual(final["completion"], 100000, final)
            self.assertEqual(sum(final["results"]), 100000)
            assert_invariant(self, final)
            errs = final["errors"]
            self.assertEqual(len(errs), 1, errs)
            self.assertEqual(errs[0]["pid"], victim_worker)
            self.assertRegex(
                errs[0]["error"], r"^connection to the server lost at seq "
                r"\d+ \(.*(terminating connection due to administrator "
                r"command|server closed the connection).*\); reconnected and "
                r"re-sent \d+ rows in a new transaction$")
            self.assertEqual(count_distinct(db), "100000|100000|1|100000")
            log = d.log_text()
            self.assertEqual(len(re.findall(r"pgsql: connection lost .*; "
                                            r"reconnected to database", log)),
                             1, log)

    def test_backend_terminated_during_commit(self):
        db = new_db()
        # A deferred trigger makes the first COMMIT that holds n = 777
        # sleep, so that the backend is terminated inside the COMMIT.
        SERVER.psql("""
            CREATE TABLE items (item jsonb);
            CREATE SEQUENCE once;
            CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS
            $$ BEGIN
                IF (NEW.item->>'n')::int = 777 AND nextval('once') = 1 THEN
                    PERFORM pg_sleep(60);
                END IF;
                RETURN NULL;
            END $$;
            CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON items
                DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
                EXECUTE FUNCTION slow_commit();""", db)
        with Daemon({"db": pool(db, workers=1)}) as d:
            out = {}
            t = threading.Thread(target=lambda: out.update(r=d.cli(
                "submit", "db", input=lines({"n": i} for i in
                                            range(1, 2001)))))
            t.start()
            try:
                pid = wait_for(lambda: SERVER.psql(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event = "
                    "'PgSleep' AND query = 'COMMIT'", db),
                    what="the COMMIT to sleep")
                SERVER.psql("SELECT pg_terminate_backend(%s)" % pid, db)
            finally:
                t.join(120 * SLOWDOWN)
            rc, final, err = out["r"]
            self.assertEqual(final["completion"], 2000, final)
            self.assertEqual(len(final["errors"]), 1, final)
            self.assertRegex(final["errors"][0]["error"],
                             r"^connection to the server lost at seq \d+ "
                             r"\(during COMMIT: .*(terminating connection "
                             r"due to administrator command|server closed "
                             r"the connection).*\);"
                             r" reconnected and re-sent 2000 rows")
            self.assertEqual(count_distinct(db), "2000|2000|1|2000")
            # The bookkeeping table keeps no tokens of finished streams.
            self.assertEqual(SERVER.psql(
                "SELECT count(*) FROM consumersd_pgsql_commits", db), "0")

    def test_server_gone_then_back(self):
        own = PgServer(prefix="cnsd-pg-restart-").start()
        try:
            with Daemon({"db": {"plugin": "pgsql", "workers": 1,
                                "kwargs": {"conninfo": own.conninfo()}}}) as d:
                st = Stream(d, "db")
                st.send({"n": i} for i in range(1, 3001))
                wait_for(lambda: pool_status(d, "db")["processes"][0]
                         ["items"] == 3000, what="3000 items taken")
                own.pause()
                final = st.end()
                self.assertEqual(final["results"], [0], final)
                self.assertEqual(final["completion"], 0)
                err = final["errors"][0]["error"]
                self.assertRegex(err, r"3000 rows not committed \(the "
                                 r"connection to the server was lost .* and "
                                 r"5 attempts to reconnect failed .*\): "
                                 r"seqs 1-3000$")
                own.resume()
                self.assertEqual(own.psql("SELECT count(*) FROM items"), "0")
                # The next stream reconnects, and says so.
                rc, final, err = d.cli("submit", "db", input=lines(
                    {"n": i} for i in range(1, 101)))
                self.assertEqual(final["completion"], 100, final)
                self.assertRegex(final["errors"][0]["error"],
                                 r"^connection to the server lost before "
                                 r"this stream's first row \(.*\); "
                                 r"reconnected$")
                self.assertEqual(own.psql(
                    "SELECT count(*), count(DISTINCT item->>'n') FROM items"),
                    "100|100")
        finally:
            own.stop()


class Columns(unittest.TestCase):

    def test_columns_and_refused_rows(self):
        db = new_db()
        SERVER.psql("CREATE TABLE typed (n integer PRIMARY KEY, s text, "
                    "b boolean, r double precision, o jsonb)", db)
        cols = {"n": "n", "s": "s", "b": "b", "r": "r", "o": "obj"}
        items = [{"n": i, "s": "s%d" % i, "b": i % 2 == 0, "r": i / 4,
                  "obj": {"k": [i, None]}} for i in range(1, 1001)]
        items[99] = {"n": 100}                   # missing fields: NULL
        items[499]["n"] = "abc"                  # refused by the server
        items[699]["n"] = 3                      # a duplicate key, too
        items[799] = [800]                       # not an object
        with Daemon({"db": pool(db, workers=1, table="typed", create=False,
                                columns=cols)}) as d:
            rc, final, err = d.cli("submit", "db", input=lines(items))
            self.assertEqual(final["completion"], 997, final)
            e = final["errors"][0]["error"]
            self.assertIn('2 rows refused by the server and left out (first:'
                          ' seq 500: ERROR: invalid input syntax for type '
                          'integer: "abc"', e)
            self.assertIn("1 item not inserted (first: seq 800: the item is "
                          "not an object", e)
        self.assertEqual(SERVER.psql(
            "SELECT count(*), count(DISTINCT n) FROM typed", db), "997|997")
        self.assertEqual(SERVER.psql(
            "SELECT n, s, b, r, o FROM typed WHERE n IN (4, 5, 100) "
            "ORDER BY n", db),
            '4|s4|t|1|{"k": [4, null]}\n5|s5|f|1.25|{"k": [5, null]}\n'
            '100||||')
        self.assertEqual(SERVER.psql(
            "SELECT count(*) FROM typed WHERE n IN (500, 700, 800)", db), "0")

    def test_created_text_columns(self):
        db = new_db()
        with Daemon({"db": pool(db, workers=2, table="Made_1",
                                columns={"a": "x", "b": "y"})}) as d:
            rc, final, err = d.cli("submit", "db", input=lines(
                [{"x": TRICKY, "y": [1, "\t"]}, {"x": 1.5e300}, {"y": False}]))
            self.assertEqual((rc, final["completion"]), (0, 3), final)
        self.assertEqual(SERVER.psql(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'Made_1' ORDER BY 1", db),
            "a|text\nb|text")
        self.assertEqual(SERVER.psql(
            'SELECT count(*) FROM "Made_1" WHERE a = %s AND b = %s' % (
                quote(TRICKY), quote('[1,"\\t"]')), db), "1")
        self.assertEqual(SERVER.psql(
            'SELECT a FROM "Made_1" WHERE b = \'false\'', db), "")
        self.assertEqual(SERVER.psql(
            'SELECT a::float8 = 1.5e300 FROM "Made_1" WHERE b IS NULL', db),
            "t")


class InitFailures(unittest.TestCase):

    def refused(self, d, name):
        rc, final, err = d.cli("submit", name, input=b"{}\n")
        self.assertEqual(rc, 1, err + d.log_text())
        self.assertIn("pool %s cannot start its workers: init failed: " %
                      name, final["error"], d.log_text())
        return final["error"]

    def test_server_unreachable(self):
        gone = os.path.join(SERVER.dir, "nowhere")
        with Daemon({"db": {"plugin": "pgsql", "kwargs": {
                "conninfo": "host=%s port=5 dbname=x user=postgres" % gone}}}
                    ) as d:
            e = self.refused(d, "db")
            self.assertIn("cannot connect to PostgreSQL: connection to "
                          "server on socket \"%s/.s.PGSQL.5\" failed: No "
                          "such file or directory" % gone, e)
            self.assertIn("No such file or directory", d.log_text())

    def test_bad_kwargs(self):
        db = new_db()
        ci = SERVER.conninfo(db)
        cases = {
            "nocinfo": ({}, 'kwargs "conninfo" is required: a libpq '
                        'connection string'),
            "cinfoint": ({"conninfo": 5}, 'kwargs "conninfo" must be a '
                         'string, not an integer'),
            "unknown": ({"conninfo": ci, "tabel": "x"}, 'unknown kwargs key '
                        '"tabel" for the pgsql plugin (known: conninfo, '
                        'table, columns, create)'),
            "badtable": ({"conninfo": ci, "table": "a; DROP"}, 'kwargs '
                         '"table": "a; DROP" is not a plain SQL table name: '
                         'it may hold only ASCII letters, digits and '
                         'underscores'),
            "digit": ({"conninfo": ci, "table": "1x"}, 'it must not start '
                      'with a digit'),
            "cols": ({"conninfo": ci, "columns": ["a"]}, 'kwargs "columns" '
                     'must be a non-empty object {"column": "field", ...}, '
                     'not an array'),
            "colval": ({"conninfo": ci, "columns": {"a": 1}}, 'kwargs '
                       '"columns": column "a" must name an item field with '
                       'a non-empty string, not an integer'),
            "colname": ({"conninfo": ci, "columns": {"a b": "x"}}, 'kwargs '
                        '"columns": "a b" is not a plain SQL column name'),
            "create": ({"conninfo": ci, "create": "yes"}, 'kwargs "create" '
                       'must be true or false, not a string'),
            "notable": ({"conninfo": ci, "table": "nosuch", "create": False},
                        'table "nosuch" does not exist (create it, or set '
                        'kwargs "create" to true)'),
            "badci": ({"conninfo": "host=%s nosuchkey=1" % SERVER.sockdir},
                      'cannot connect to PostgreSQL: invalid connection '
                      'option "nosuchkey"'),
        }
        pools = {name: {"plugin": "pgsql", "workers": 1, "kwargs": kw}
                 for name, (kw, _) in cases.items()}
        with Daemon(pools) as d:
            for name, (_, text) in cases.items():
                self.assertIn(text, self.refused(d, name), name)


if __name__ == "__main__":
    main()
