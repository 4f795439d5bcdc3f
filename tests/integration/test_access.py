"""Access control: a pool's "allow" lists for submit (by user, by primary
group - the user's from passwd, or the connecting process's own gid from
SO_PEERCRED -, by supplementary group looked up in the group database),
root always allowed, admin_group for the status of every pool, the denial text
and its log line, and socket_group on the socket file.

Connecting as other users needs root: the tests that do create throwaway
users and groups (useradd, groupadd), run the real CLI as them through
setpriv, and remove them afterwards.  Not root, they are skipped, loudly;
root-always-allowed and the denial text are tested either way (as root,
the denial as a throwaway non-root user)."""
import grp
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (ask, Daemon, CLI, VALGRIND, SLOWDOWN, read_lines,  # noqa
                     main)

PREFIX = "cnsdt%d" % os.getpid()
ETL = PREFIX + "etl"            # a group alice has as a supplementary one
ADMINS = PREFIX + "adm"         # admin_group: dave
PRIMARY = PREFIX + "pri"        # erin's primary group, no one's supplementary
ALICE, BOB, CAROL, DAVE, ERIN = (PREFIX + n for n in ("a", "b", "c", "d",
                                                      "e"))
OUTSIDER = PREFIX + "x"         # RootAndDenialText's non-root user

AS_ROOT = os.geteuid() == 0
TOOLS = all(shutil.which(t) for t in ("useradd", "groupadd", "userdel",
                                      "groupdel", "setpriv"))
WHY_SKIP = ("access control by user and group needs root to test (it "
            "creates users and groups and connects as them): run the "
            "suite as root to cover it")
if AS_ROOT and not TOOLS:
    WHY_SKIP = ("access control by user and group needs useradd, "
                "groupadd, userdel, groupdel and setpriv to test")




def denial(user, uid, pool, allow):
    return ("permission denied: uid %d (user %s) may not submit to pool %s "
            "(allow: %s)" % (uid, user, pool, allow))


def as_user(d, user, *args, input=b"", group=None):
    """The CLI as `user`, with its primary group (from passwd) and its
    supplementary groups, or with `group` as its gid and no supplementary
    groups: (status, stdout, stderr)."""
    ids = (["--regid", group, "--clear-groups"] if group else
           ["--regid", str(pwd.getpwnam(user).pw_gid), "--init-groups"])
    p = subprocess.run(["setpriv", "--reuid", user] + ids + VALGRIND +
                       [CLI, "-s", d.socket] + list(args), input=input,
                       capture_output=True, timeout=60 * SLOWDOWN)
    return (p.returncode, p.stdout.decode(),
            p.stderr.decode(errors="replace"))


def submit_as(d, user, pool, group=None):
    rc, out, err = as_user(d, user, "submit", pool, input=b"1\n2\n",
                           group=group)
    return rc, json.loads(out) if out.strip() else None, err


class RootAndDenialText(unittest.TestCase):
    """Whoever runs the tests: root passes any allow list; anyone else is
    denied by a list that names only "nobody", with the exact text.  As
    root (CI), the denial is tested as a throwaway non-root user."""

    def test_nobody_only_pool(self):
        pools = {"closed": {"plugin": "sum", "allow": {"users": ["nobody"]}},
                 "open": {"plugin": "sum"}}
        if AS_ROOT:
            self.as_root(pools)
            return
        with Daemon(pools) as d:
            rc, final, err = d.cli("submit", "closed", input=b"1\n2\n")
            me = pwd.getpwuid(os.getuid()).pw_name
            if me == "nobody":
                self.skipTest("run as nobody, whom the list allows")
            want = denial(me, os.getuid(), "closed", "users nobody; no "
                          "groups")
            self.assertEqual(rc, 1)
            self.assertEqual(final, {"ok": False, "error": want,
                                     "code": "denied"})
            self.assertIn("denied submit of pool closed: " + want,
                          d.log_text())
            rc, final, err = d.cli("submit", "open", input=b"1\n2\n")
            self.assertEqual(rc, 0, err)

    def as_root(self, pools):
        if not TOOLS:
            self.fail(WHY_SKIP)
        subprocess.run(["useradd", "-M", "-U", "-s", "/usr/sbin/nologin",
                        OUTSIDER], check=True, capture_output=True)
        self.addCleanup(subprocess.run, ["userdel", OUTSIDER],
                        capture_output=True)
        d = Daemon(pools, {"socket_mode": "0666"})
        os.chmod(d.dir, 0o755)      # others reach the socket
        with d:
            # Root passes the list; so does nobody, whom it names.
            rc, final, err = d.cli("submit", "closed", input=b"1\n2\n")
            self.assertEqual((rc, (final or {}).get("completion")), (0, 3),
                             (final, err))
            rc, final, err = submit_as(d, "nobody", "closed")
            self.assertEqual((rc, (final or {}).get("completion")), (0, 3),
                             (final, err))
            # Anyone else: the exact denial, to the client and the log.
            uid = pwd.getpwnam(OUTSIDER).pw_uid
            want = denial(OUTSIDER, uid, "closed", "users nobody; no groups")
            rc, final, err = submit_as(d, OUTSIDER, "closed")
            self.assertEqual((rc, final), (1, {"ok": False, "error": want,
                                                "code": "denied"}),
                             err)
            self.assertIn("denied submit of pool closed: " + want,
                          d.log_text())
            rc, final, err = submit_as(d, OUTSIDER, "open")
            self.assertEqual((rc, (final or {}).get("completion")), (0, 3),
                             (final, err))


@unittest.skipUnless(AS_ROOT and TOOLS, WHY_SKIP)
class AsOtherUsers(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.made_users, cls.made_groups = [], []
        try:
            for g in (ETL, ADMINS, PRIMARY):
                subprocess.run(["groupadd", g], check=True,
                               capture_output=True)
                cls.made_groups.append(g)
            for u, extra in ((ALICE, [ETL]), (BOB, []), (CAROL, []),
                             (DAVE, [ADMINS]), (ERIN, None)):
                cmd = ["useradd", "-M", "-s", "/usr/sbin/nologin"]
                if extra is None:
                    cmd += ["-g", PRIMARY]      # primary group only
                else:
                    cmd += ["-U"]
                if extra:
                    cmd += ["-G", ",".join(extra)]
                subprocess.run(cmd + [u], check=True, capture_output=True)
                cls.made_users.append(u)
        except subprocess.CalledProcessError as e:
            cls.tearDownClass()
            raise unittest.SkipTest("cannot create test users and groups: "
                                    "%s" % e.stderr.decode().strip())

    @classmethod
    def tearDownClass(cls):
        for u in cls.made_users:
            subprocess.run(["userdel", u], capture_output=True)
        for g in cls.made_groups:
            subprocess.run(["groupdel", g], capture_output=True)

    def daemon(self, extra_pools=None, **settings):
        pools = {
            "locked": {"plugin": "sum",
                       "allow": {"users": [BOB], "groups": [ETL]}},
            "open": {"plugin": "sum"},
        }
        pools.update(extra_pools or {})
        d = Daemon(pools, dict({"socket_mode": "0666",
                                "admin_group": ADMINS}, **settings))
        os.chmod(d.dir, 0o755)      # others reach the socket
        return d

    def as_user(self, d, user, *args, input=b""):
        return as_user(d, user, *args, input=input)

    def submit_as(self, d, user, pool):
        return submit_as(d, user, pool)

    def test_allow_lists(self):
        with self.daemon() as d:
            # By uid, and by a supplementary group the kernel did not
            # report (the peer's primary group is its own).
            for user in (BOB, ALICE):
                rc, final, err = self.submit_as(d, user, "locked")
                self.assertEqual((rc, final["completion"]), (0, 3),
                                 (user, err))
            rc, final, err = self.submit_as(d, CAROL, "locked")
            uid = pwd.getpwnam(CAROL).pw_uid
            want = denial(CAROL, uid, "locked", "users %s; groups %s" %
                          (BOB, ETL))
            self.assertEqual((rc, final), (1, {"ok": False,
                                               "error": want,
                                               "code": "denied"}))
            self.assertIn(want, err)
            self.assertRegex(d.log_text(), r"client \(pid \d+, uid %d, user "
                             r"%s, gid %d\) denied submit of pool locked: "
                             % (uid, CAROL, pwd.getpwnam(CAROL).pw_gid) +
                             "permission denied")
            # No allow list: anyone who can connect.
            rc, final, err = self.submit_as(d, CAROL, "open")
            self.assertEqual(rc, 0, err)
            # Root passes any list.
            rc, final, err = d.cli("submit", "locked", input=b"4\n")
            self.assertEqual((rc, final["completion"]), (0, 4), err)

    def test_primary_group(self):
        # "allow" names a group that is erin's primary group and no one's
        # supplementary one: erin may submit by it.  So may a process
        # whose own gid (SO_PEERCRED) is that group, though its user is
        # not in it; carol, with neither, is denied.
        prim = {"prim": {"plugin": "sum", "allow": {"groups": [PRIMARY]}}}
        with self.daemon(prim) as d:
            self.assertEqual(grp.getgrnam(PRIMARY).gr_mem, [])
            self.assertEqual(pwd.getpwnam(ERIN).pw_gid,
                             grp.getgrnam(PRIMARY).gr_gid)
            rc, final, err = self.submit_as(d, ERIN, "prim")
            self.assertEqual((rc, (final or {}).get("completion")), (0, 3),
                             (final, err))
            rc, final, err = submit_as(d, CAROL, "prim", group=PRIMARY)
            self.assertEqual((rc, (final or {}).get("completion")), (0, 3),
                             (final, err))
            rc, final, err = self.submit_as(d, CAROL, "prim")
            uid = pwd.getpwnam(CAROL).pw_uid
            want = denial(CAROL, uid, "prim", "no users; groups %s" %
                          PRIMARY)
            self.assertEqual((rc, final), (1, {"ok": False,
                                               "error": want,
                                               "code": "denied"}), err)
            # erin is no one else's: "locked" (bob, etl) denies her.
            rc, final, err = self.submit_as(d, ERIN, "locked")
            self.assertEqual(rc, 1, err)
            self.assertEqual(final["error"], denial(
                ERIN, pwd.getpwnam(ERIN).pw_uid, "locked",
                "users %s; groups %s" % (BOB, ETL)))

    def test_status_needs_admin_or_the_pool(self):
        with self.daemon() as d:
            rc, out, err = self.as_user(d, CAROL, "status")
            self.assertEqual(rc, 1)
            self.assertIn("permission denied: uid %d (user %s) may not see "
                          "the status of every pool: that is for root or "
                          "the group %s (admin_group)" %
                          (pwd.getpwnam(CAROL).pw_uid, CAROL, ADMINS), err)
            rc, out, err = self.as_user(d, CAROL, "status", "locked")
            self.assertEqual(rc, 1)
            self.assertIn("may not see the status of pool locked", err)
            rc, out, err = self.as_user(d, CAROL, "status", "--json", "open")
            self.assertEqual(rc, 0, err)
            self.assertEqual([p["name"] for p in json.loads(out)["pools"]],
                             ["open"])
            # Allowed to submit: may see that pool.
            rc, out, err = self.as_user(d, ALICE, "status", "locked")
            self.assertEqual(rc, 0, err)
            # admin_group, as a supplementary group: every pool.
            rc, out, err = self.as_user(d, DAVE, "status", "--json")
            self.assertEqual(rc, 0, err)
            self.assertEqual(sorted(p["name"] for p in
                                    json.loads(out)["pools"]),
                             ["locked", "open"])
            # pools: anyone.
            rc, out, err = self.as_user(d, CAROL, "pools")
            self.assertEqual(rc, 0, err)
            self.assertRegex(out, r"(?m)^locked ")
            self.assertIn("denied status: permission denied", d.log_text())

    def test_reload_is_for_admins(self):
        with self.daemon() as d:
            rc, out, err = self.as_user(d, CAROL, "reload")
            self.assertEqual(rc, 1)
            self.assertIn("permission denied: uid %d may not reload the "
                          "configuration: that is for root and the "
                          "admin_group" % pwd.getpwnam(CAROL).pw_uid, err)
            self.assertNotIn("SIGHUP: reloading", d.log_text())
            self.assertIn("denied reload: permission denied", d.log_text())
            # A member of admin_group may; so may root.
            rc, out, err = self.as_user(d, DAVE, "reload")
            self.assertEqual(rc, 0, err)
            self.assertEqual(out, "reloaded: 0 pools added, 0 changed, 0 "
                             "removed, 2 unchanged\n")
            rc, out, err = self.as_user(d, "root", "reload")
            self.assertEqual(rc, 0, err)
            self.assertTrue(out.startswith("reloaded: "), out)

    def test_socket_group(self):
        with self.daemon(socket_group=ETL) as d:
            st = os.stat(d.socket)
            self.assertEqual(st.st_gid, grp.getgrnam(ETL).gr_gid)
            self.assertEqual(st.st_mode & 0o777, 0o666)
            self.assertEqual(ask(d, {"op": "pools"})["ok"], True)


if __name__ == "__main__":
    main()
