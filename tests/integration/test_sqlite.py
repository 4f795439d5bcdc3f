"""The bundled sqlite plugin: items become rows of an SQLite table, read
back here with Python's sqlite3 module.  Many workers of one stream, and
several streams at once, write one file; each worker opens it once; a
stream's rows appear only at its commit; bad kwargs stop the pool with a
message saying what is wrong; items that cannot be rows are reported."""
import json
import os
import re
import shutil
import socket
import sqlite3
import sys
import tempfile
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Daemon, SLOWDOWN, ask, assert_invariant, final_of,  # noqa
                     lines, main, read_lines, wait_for)

OPENED = re.compile(r"sqlite: opened (\S+) \(pid (\d+)\), table (\w+)")


def query(path, sql, args=()):
    con = sqlite3.connect(path, timeout=30)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def compact(v):
    """What jansson's JSON_COMPACT writes (keys in order, UTF-8 as is)."""
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False)


def pool_status(d, name):
    for p in ask(d, {"op": "status", "pool": name})["pools"]:
        if p["name"] == name:
            return p
    raise AssertionError("no pool " + name)


def opened(d):
    """[(path, pid, table)] of the open lines in the daemon's log."""
    return [(m.group(1), int(m.group(2)), m.group(3))
            for m in OPENED.finditer(d.log_text())]


def db_daemon(tc, pool, settings=None):
    """A daemon with pool "db" writing rows.db in a directory of its own,
    removed when test tc ends."""
    tmp = tempfile.mkdtemp(prefix="cnsd-sqlite-")
    tc.addCleanup(shutil.rmtree, tmp, True)
    path = os.path.join(tmp, "rows.db")
    pool["kwargs"]["database"] = path
    return Daemon({"db": pool}, settings), path


class Rows(unittest.TestCase):

    def test_200000_items_over_4_workers_are_200000_rows(self):
        """Every item is one row, each column with its JSON type."""
        d, path = db_daemon(self, {
            "plugin": "sqlite", "workers": 4, "stream_workers": 4,
            "kwargs": {"database": "PATH", "table": "t",
                       "columns": {"n": "n", "name": "name", "half": "half",
                                   "even": "even", "tags": "tags",
                                   "meta": "meta"}}})

        def item(n):
            v = {"n": n, "half": n / 2, "even": n % 2 == 0,
                 "tags": ["t%d" % (n % 7), n], "meta": {"k": n % 3}}
            if n % 1000 != 0:           # every 1000th has no name
                v["name"] = "item %d é" % n
            if n % 5000 == 0:
                v["tags"] = None
            return v
        body = lines(item(n) for n in range(1, 200001))
        with d:
            rc, final, err = d.cli("submit", "db", input=body,
                                   timeout=300)
            self.assertEqual(rc, 0, err)
            self.assertTrue(final["ok"], final)
            assert_invariant(self, final)
            self.assertEqual(final["items"], 200000)
            self.assertEqual(final["consumed"], 200000)
            self.assertEqual(final["completion"], 200000)
            self.assertEqual(len(final["results"]), 4, final)
            self.assertEqual(sum(final["results"]), 200000)
            self.assertTrue(all(r > 0 for r in final["results"]), final)
            self.assertEqual(final["errors"], [])
        rows = query(path, "select n, name, half, even, tags, meta, "
                     "typeof(n), typeof(half), typeof(name) from t")
        self.assertEqual(len(rows), 200000)
        self.assertEqual({r[0] for r in rows}, set(range(1, 200001)))
        for n, name, half, even, tags, meta, tn, th, tname in rows:
            want = item(n)
            self.assertEqual((tn, th), ("integer", "real"), n)
            self.assertEqual(name, want.get("name"), n)
            self.assertEqual(tname, "text" if "name" in want else "null")
            self.assertEqual(half, n / 2)
            self.assertEqual(even, 1 if n % 2 == 0 else 0)
            self.assertEqual(tags, None if want["tags"] is None else
                             compact(want["tags"]), n)
            self.assertEqual(meta, compact(want["meta"]), n)

    def test_ten_streams_each_worker_opens_once(self):
        """Ten streams, two at a time, into one file: the JSON text of
        every item is there once, and each of the pool's four workers
        opened the database once."""
        d, path = db_daemon(self, {"plugin": "sqlite", "workers": 4,
                           "stream_workers": 2, "queue_timeout": 120,
                           "kwargs": {"database": "/nonexistent"}})

        def items(s):
            return [{"stream": s, "i": i, "text": "ünï %d" % i,
                     "list": [i, None, True, 1.5]} for i in range(2000)]
        finals = [None] * 10
        errors = []

        def run(s):
            try:
                rc, final, err = d.cli("submit", "db",
                                       input=lines(items(s)))
                finals[s] = (rc, final, err)
            except Exception as e:      # reported by the main thread
                errors.append(e)
        with d:
            pids = {p["pid"] for p in pool_status(d, "db")["processes"]}
            self.assertEqual(len(pids), 4)
            for batch in (range(0, 5), range(5, 10)):
                threads = []
                for s in batch:
                    t = threading.Thread(target=run, args=(s,))
                    t.start()
                    threads.append(t)
                for t in threads:
                    t.join()
            self.assertEqual(errors, [])
            for s, (rc, final, err) in enumerate(finals):
                self.assertEqual(rc, 0, err)
                assert_invariant(self, final)
                self.assertEqual(final["completion"], 2000, final)
            # The same workers served every stream.
            self.assertEqual({p["pid"] for p in
                              pool_status(d, "db")["processes"]}, pids)
            opens = opened(d)
            self.assertNotIn("failed to start", d.log_text())
        self.assertEqual(len(opens), 4, opens)
        self.assertEqual({pid for _, pid, _ in opens}, pids)
        self.assertEqual({(p, t) for p, _, t in opens}, {(path, "items")})
        got = sorted(r[0] for r in query(path, "select item from items"))
        want = sorted(compact(v) for s in range(10) for v in items(s))
        self.assertEqual(len(got), 20000)
        self.assertEqual(got, want)


class Start(unittest.TestCase):

    def test_workers_starting_together_on_a_new_file(self):
        """Eight workers open a file that does not exist yet, at once:
        every one switches it to WAL or finds it switched, none fails."""
        for _ in range(10):
            d, path = db_daemon(self, {"plugin": "sqlite", "workers": 8,
                                       "kwargs": {"database": "PATH"}})
            with d:
                wait_for(lambda: len(opened(d)) == 8, what="8 open lines")
                self.assertNotIn("failed to start", d.log_text())
                self.assertEqual(query(path, "pragma journal_mode"),
                                 [("wal",)])


class Commit(unittest.TestCase):

    def test_rows_appear_when_the_stream_closes(self):
        """Items the worker has taken are not in the table until the
        client closes the stream; then all of them are."""
        # A window of 100 items: once 5000 items were sent to the one
        # worker, it has taken (acknowledged) at least 4900 of them.
        d, path = db_daemon(self, {"plugin": "sqlite", "workers": 1,
                           "kwargs": {"database": "/nonexistent",
                                      "columns": {"n": "n"}}}, {"window_items": 100})
        with d:
            s = d.connect()
            s.settimeout(60 * SLOWDOWN)
            s.sendall(b'{"op":"submit","pool":"db"}\n')
            s.sendall(lines({"n": n} for n in range(1, 5001)))
            wait_for(lambda: pool_status(d, "db")["processes"][0]
                     ["items"] == 5000, what="5000 items sent to the worker")
            self.assertEqual(query(path, "select count(*) from items"),
                             [(0,)])
            s.shutdown(socket.SHUT_WR)
            replies = read_lines(s)
            s.close()
            final = final_of(replies)
            self.assertTrue(final["ok"], final)
            assert_invariant(self, final)
            self.assertEqual(final["completion"], 5000)
            self.assertEqual(query(path, "select count(*), min(n), max(n), "
                                   "count(distinct n) from items"),
                             [(5000, 1, 5000, 5000)])

    def test_items_that_are_not_objects_are_reported(self):
        d, path = db_daemon(self, {"plugin": "sqlite", "workers": 1,
                           "kwargs": {"database": "/nonexistent",
                                      "columns": {"n": "n"}}})
        items = [{"n": n} for n in range(1, 11)]
        items[6] = [7]          # seq 7
        items[8] = "nine"       # seq 9
        with d:
            replies, final = d.submit_raw({"op": "submit", "pool": "db"},
                                          lines(items))
            assert_invariant(self, final)
            self.assertFalse(final["ok"], final)
            self.assertEqual(final["completion"], 8)
            text = json.dumps(final["errors"])
            self.assertIn("2 items were not JSON objects (first: seq 7); "
                          "they were not inserted", text)
        self.assertEqual(sorted(r[0] for r in query(path, "select n from "
                                                    "items")),
                         [1, 2, 3, 4, 5, 6, 8, 10])


    def test_a_commit_that_cannot_get_the_lock_commits_nothing(self):
        """Another connection holds the write lock past busy_timeout: the
        stream reports SQLite's message, commits 0 rows; the next stream,
        once the lock is gone, commits its own rows only."""
        d, path = db_daemon(self, {"plugin": "sqlite", "workers": 1,
                                   "kwargs": {"database": "PATH",
                                              "columns": {"n": "n"},
                                              "busy_timeout": 300}})
        with d:
            wait_for(lambda: opened(d), what="the database opened")
            holder = sqlite3.connect(path, isolation_level=None)
            try:
                holder.execute("begin immediate")
                holder.execute("insert into items values (-1)")
                replies, final = d.submit_raw(
                    {"op": "submit", "pool": "db"},
                    lines({"n": n} for n in range(1, 101)))
            finally:
                holder.execute("rollback")
                holder.close()
            assert_invariant(self, final)
            self.assertFalse(final["ok"], final)
            self.assertEqual((final["results"], final["completion"]),
                             ([0], 0), final)
            text = json.dumps(final["errors"])
            self.assertIn("cannot commit 100 rows to table items: database "
                          "is locked; nothing was committed", text)
            self.assertEqual(query(path, "select count(*) from items"),
                             [(0,)])
            replies, final = d.submit_raw(
                {"op": "submit", "pool": "db"},
                lines({"n": n} for n in range(101, 111)))
            self.assertTrue(final["ok"], final)
            self.assertEqual(final["completion"], 10)
            self.assertEqual(query(path, "select min(n), max(n), count(*) "
                                   "from items"), [(101, 110, 10)])


class BadKwargs(unittest.TestCase):

    def refused(self, kwargs, text, env=None, pool_extra=None):
        pool = {"plugin": "sqlite", "kwargs": kwargs}
        pool.update(pool_extra or {})
        with Daemon({"bad": pool, "sum": {"plugin": "sum"}}, env=env) as d:
            rc, final, err = d.cli("submit", "bad", input=b"{}\n")
            self.assertEqual(rc, 1, err)
            self.assertFalse(final["ok"])
            self.assertIn("pool bad cannot start its workers", final["error"])
            self.assertIn(text, final["error"])
            self.assertIn(text, d.log_text())
            rc, final, err = d.cli("submit", "sum", input=b"1\n2\n")
            self.assertEqual((rc, final["completion"]), (0, 3), err)
            self.assertEqual(opened(d), [])

    def test_missing_database(self):
        self.refused({"table": "t"}, "sqlite: kwargs.database is missing")

    def test_bad_table_name(self):
        self.refused({"database": "/tmp/x.db", "table": "t; drop"},
                     'sqlite: kwargs.table "t; drop" is not a plain SQL '
                     'name')

    def test_unknown_key(self):
        self.refused({"database": "/tmp/x.db", "tabel": "t"},
                     'sqlite: unknown key "tabel" in kwargs (known: '
                     'database, table, columns, create, busy_timeout)')

    def test_wrong_types(self):
        self.refused({"database": "/tmp/x.db", "busy_timeout": "5s"},
                     "sqlite: kwargs.busy_timeout must be an integer")
        self.refused({"database": "/tmp/x.db", "columns": {"a": 1}},
                     "sqlite: kwargs.columns.a must be a string")

    def test_relative_path_needs_state_directory(self):
        self.refused({"database": "rel.db"},
                     'sqlite: kwargs.database "rel.db" is a relative path '
                     'and STATE_DIRECTORY is not set')

    def test_relative_path_in_state_directory(self):
        """With env_keep, a relative path lands in $STATE_DIRECTORY."""
        state = tempfile.mkdtemp(prefix="cnsd-sqlite-")
        self.addCleanup(shutil.rmtree, state, True)
        with Daemon({"db": {"plugin": "sqlite",
                            "env_keep": ["STATE_DIRECTORY"],
                            "kwargs": {"database": "rel.db"}}},
                    env={"STATE_DIRECTORY": state}) as d:
            rc, final, err = d.cli("submit", "db", input=b'{"a":1}\n')
            self.assertEqual((rc, final["completion"]), (0, 1), err)
            self.assertEqual(opened(d)[0][0], os.path.join(state, "rel.db"))
        self.assertEqual(query(os.path.join(state, "rel.db"),
                               "select item from items"), [('{"a":1}',)])


if __name__ == "__main__":
    main()
