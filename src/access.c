/*
 * access.c - who may do what: a pool's "allow" lists for submit, and
 * admin_group for the status of every pool.  The kernel tells who is
 * connecting (SO_PEERCRED: uid, gid, pid) but not the peer's
 * supplementary groups, so those are looked up by user name, once per
 * connection and only when a decision needs them.  They are the groups
 * the group database gives the user (getgrouplist), not those of the
 * connecting process, which may have dropped or added some.
 */
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "consumersd.h"

#define PEER_GROUPS_MAX	65536	/* NGROUPS_MAX on Linux */

void
peer_init(struct peer *p, uid_t uid, gid_t gid, pid_t pid)
{
	memset(p, 0, sizeof *p);
	p->uid = uid;
	p->gid = gid;
	p->pid = pid;
	p->ngroups = -1;
}

void
peer_clear(struct peer *p)
{
	free(p->user);
	free(p->groups);
	p->user = NULL;
	p->groups = NULL;
	p->ngroups = -1;
}

/* Look the user up once: its name, and the groups it is a member of. */
static void
peer_lookup(struct peer *p)
{
	struct passwd *pw;
	int n = 64;

	if (p->ngroups != -1)
		return;
	p->ngroups = 0;
	errno = 0;
	if ((pw = getpwuid(p->uid)) == NULL) {
		if (errno != 0)
			log_warn("uid %lu: getpwuid", (unsigned long)p->uid);
		return;
	}
	if ((p->user = strdup(pw->pw_name)) == NULL)
		fatal("%s: strdup", __func__);
	for (;;) {
		int got = n;
		gid_t *g = reallocarray(p->groups, (size_t)n, sizeof *g);
		if (g == NULL)
			fatal("%s: reallocarray", __func__);
		p->groups = g;
		if (getgrouplist(p->user, pw->pw_gid, g, &got) != -1) {
			p->ngroups = got;
			return;
		}
		/* got now says how many there are. */
		if (got <= n || got > PEER_GROUPS_MAX) {
			log_warnx("user %s: getgrouplist failed; only its "
			    "primary group counts", p->user);
			return;
		}
		n = got;
	}
}

const char *
peer_user(struct peer *p)
{
	peer_lookup(p);
	return p->user;
}

/* Is the peer in `gid`: its own gid, or one of its user's groups? */
int
peer_in_group(struct peer *p, gid_t gid)
{
	if (p->gid == gid)
		return 1;
	peer_lookup(p);
	for (int i = 0; i < p->ngroups; i++)
		if (p->groups[i] == gid)
			return 1;
	return 0;
}

static void
append(char *buf, size_t len, const char *s)
{
	size_t used = strlen(buf);

	if (used + 1 < len)
		snprintf(buf + used, len - used, "%s", s);
}

/* "users a, b; groups c" for a message, names where they are known. */
static void
allow_names(const struct pool_conf *pc, char *buf, size_t len)
{
	char num[32];

	buf[0] = '\0';
	append(buf, len, pc->nallow_uids == 0 ? "no users" : "users ");
	for (size_t i = 0; i < pc->nallow_uids; i++) {
		struct passwd *pw = getpwuid(pc->allow_uids[i]);
		if (i > 0)
			append(buf, len, ", ");
		snprintf(num, sizeof num, "uid %lu",
		    (unsigned long)pc->allow_uids[i]);
		append(buf, len, pw != NULL ? pw->pw_name : num);
	}
	append(buf, len, pc->nallow_gids == 0 ? "; no groups" : "; groups ");
	for (size_t i = 0; i < pc->nallow_gids; i++) {
		struct group *gr = getgrgid(pc->allow_gids[i]);
		if (i > 0)
			append(buf, len, ", ");
		snprintf(num, sizeof num, "gid %lu",
		    (unsigned long)pc->allow_gids[i]);
		append(buf, len, gr != NULL ? gr->gr_name : num);
	}
}

static int
allowed(struct peer *p, const struct pool_conf *pc)
{
	if (p->uid == 0 || !pc->allow)
		return 1;
	for (size_t i = 0; i < pc->nallow_uids; i++)
		if (pc->allow_uids[i] == p->uid)
			return 1;
	for (size_t i = 0; i < pc->nallow_gids; i++)
		if (peer_in_group(p, pc->allow_gids[i]))
			return 1;
	return 0;
}

/*
 * May the peer submit to the pool?  Root always may; with no "allow"
 * anyone who can connect may.  Returns 1, or 0 with why it may not.
 */
int
access_submit(struct peer *p, const struct pool_conf *pc, char *why,
    size_t whylen)
{
	char names[512];
	const char *user;

	if (allowed(p, pc))
		return 1;
	allow_names(pc, names, sizeof names);
	user = peer_user(p);
	snprintf(why, whylen, "permission denied: uid %lu (user %.64s) may "
	    "not submit to pool %.100s (allow: %s)", (unsigned long)p->uid,
	    user != NULL ? user : "unknown", pc->name, names);
	utf8_clean(why);
	return 0;
}

/* Root, or a member of admin_group when there is one. */
int
access_admin(struct peer *p, const struct conf *c)
{
	return p->uid == 0 || (c->admin_group != NULL &&
	    peer_in_group(p, c->admin_gid));
}

/*
 * May the peer see the status of pool `pc`, or of every pool (pc NULL)?
 * Administrators see all; anyone sees a pool it may submit to.
 */
int
access_status(struct peer *p, const struct conf *c,
    const struct pool_conf *pc, char *why, size_t whylen)
{
	char admins[160];
	const char *user;

	if (access_admin(p, c) || (pc != NULL && allowed(p, pc)))
		return 1;
	if (c->admin_group != NULL)
		snprintf(admins, sizeof admins, "root or the group %.100s "
		    "(admin_group)", c->admin_group);
	else
		snprintf(admins, sizeof admins, "root (no admin_group is "
		    "set)");
	user = peer_user(p);
	if (pc == NULL)
		snprintf(why, whylen, "permission denied: uid %lu (user %.64s) "
		    "may not see the status of every pool: that is for %s; "
		    "ask for one pool it may submit to, with "
		    "{\"op\":\"status\",\"pool\":\"NAME\"}",
		    (unsigned long)p->uid, user != NULL ? user : "unknown",
		    admins);
	else
		snprintf(why, whylen, "permission denied: uid %lu (user %.64s) "
		    "may not see the status of pool %.100s: that is for %s, "
		    "and for who may submit to it", (unsigned long)p->uid,
		    user != NULL ? user : "unknown", pc->name, admins);
	utf8_clean(why);
	return 0;
}
