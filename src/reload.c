/*
 * reload.c - SIGHUP: read the configuration again into a fresh structure
 * and swap it in only if all of it is valid (every plugin loads, the
 * spool directory works).  Pools whose settings did not change keep their
 * workers; changed ones get new workers while their open streams finish
 * on the old ones; removed ones take no new streams and go once their
 * streams are done.  No open stream is cut.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "consumersd.h"

/* Why the last reload was refused, in file order; NULL after a good one. */
static json_t *reload_reasons;

json_t *
cns_reload_reasons(void)
{
	return reload_reasons;
}

static void
reason(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void
reason(const char *fmt, ...)
{
	char msg[1200];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	log_warnx("reload: %s", msg);
	utf8_clean(msg);
	json_array_append_new(reload_reasons, json_string(msg));
}

/* The new configuration, checked like consumersd -t; NULL if not valid. */
static struct conf *
reload_load(void)
{
	json_t *errors = json_array(), *e;
	struct conf *nc;
	char why[1024];
	size_t i;
	int bad = 0;

	nc = conf_load(cns_conf->file, &cns_overrides, errors);
	if (nc != NULL && conf_check_root(nc, errors) == -1) {
		conf_unref(nc);
		nc = NULL;
	}
	json_array_foreach(errors, i, e)
		reason("%s", json_string_value(e));
	json_decref(errors);
	if (nc == NULL)
		return NULL;
	for (i = 0; i < nc->npools; i++) {
		struct pool_conf *pc = &nc->pools[i];
		struct pool *p = pool_find(pc->name);
		if (p != NULL && conf_pool_same(p->pc, pc))
			continue;	/* its workers run it already */
		if (child_probe(pc, why, sizeof why) == -1) {
			reason("%s:%d:%d: %s", pc->file, pc->plugin_line,
			    pc->plugin_column, why);
			bad = 1;
		}
	}
	if (spool_check(nc, why, sizeof why) == -1) {
		reason("%s", why);
		bad = 1;
	}
	if (bad) {
		conf_unref(nc);
		return NULL;
	}
	return nc;
}

/* Settings that only a restart applies keep their running values. */
static void
reload_keep(struct conf *nc)
{
	if (strcmp(nc->socket, cns_conf->socket) != 0 ||
	    nc->socket_mode != cns_conf->socket_mode ||
	    (nc->socket_group == NULL) != (cns_conf->socket_group == NULL) ||
	    (nc->socket_group != NULL &&
	    strcmp(nc->socket_group, cns_conf->socket_group) != 0))
		log_warnx("reload: the socket's path, mode and group change "
		    "only with a restart; still listening on %s",
		    cns_conf->socket);
	if (nc->max_item_bytes != cns_conf->max_item_bytes) {
		/* Clients connected now read with the old limit. */
		log_warnx("reload: max_item_bytes changes only with a "
		    "restart; still %zu", cns_conf->max_item_bytes);
		nc->max_item_bytes = cns_conf->max_item_bytes;
	}
}

int
cns_reload(char *why, size_t whylen)
{
	unsigned added = 0, changed = 0, removed = 0, same = 0;
	struct pool *p, *next, *np;
	struct conf *nc, *old;

	log_info("SIGHUP: reloading %s", cns_conf->file);
	notify_reloading();
	json_decref(reload_reasons);
	if ((reload_reasons = json_array()) == NULL)
		fatalx("%s: json_array", __func__);
	if ((nc = reload_load()) == NULL) {
		log_warnx("reload: %s is not valid; still running the previous "
		    "configuration", cns_conf->file);
		notify_status("reload failed: %s is not valid (see the log); "
		    "running the previous configuration", cns_conf->file);
		notify_ready();
		snprintf(why, whylen, "%s is not valid; the previous "
		    "configuration keeps running", cns_conf->file);
		return -1;
	}
	reload_keep(nc);
	for (p = TAILQ_FIRST(pool_all()); p != NULL; p = next) {
		struct pool_conf *npc = conf_pool(nc, p->pc->name);
		next = TAILQ_NEXT(p, entry);
		if (npc == NULL) {
			log_info("reload: pool %s removed; its %u open stream%s "
			    "finish first", p->pc->name, p->nrunning,
			    p->nrunning == 1 ? "" : "s");
			pool_retire(p, NULL);
			removed++;
		} else if (conf_pool_same(p->pc, npc)) {
			conf_unref(p->conf);
			p->conf = conf_ref(nc);
			p->pc = npc;
			same++;
		} else {
			np = pool_new(npc);
			np->conf = conf_ref(nc);
			TAILQ_INSERT_AFTER(pool_all(), p, np, entry);
			log_info("reload: pool %s changed: new workers start; its "
			    "%u open stream%s finish on the old ones",
			    p->pc->name, p->nrunning,
			    p->nrunning == 1 ? "" : "s");
			pool_retire(p, np);
			pool_start(np);
			changed++;
		}
	}
	for (size_t i = 0; i < nc->npools; i++) {
		if (pool_find(nc->pools[i].name) != NULL)
			continue;
		np = pool_new(&nc->pools[i]);
		np->conf = conf_ref(nc);
		pool_add(np);
		pool_start(np);
		log_info("reload: pool %s added", np->pc->name);
		added++;
	}
	old = cns_conf;
	cns_conf = nc;		/* takes conf_load's reference */
	conf_unref(old);
	/* A "cluster" section given now connects; a changed one waits for a
	 * restart (cluster_init keeps the connection it has). */
	cluster_init(cns_base, cns_conf);
	if (!cns_debug)
		log_setlevel(cns_conf->log_level);
	log_info("reload: done: %u pool%s added, %u changed, %u removed, %u "
	    "unchanged", added, added == 1 ? "" : "s", changed, removed,
	    same);
	notify_status_clear();
	notify_ready();
	snprintf(why, whylen, "%u pool%s added, %u changed, %u removed, %u "
	    "unchanged", added, added == 1 ? "" : "s", changed, removed, same);
	return 0;
}
