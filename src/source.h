/*
 * source.h - where a stream's items come from and where its replies go:
 * the local socket's client (client.c) today, a Redis stream tomorrow.
 * The stream and the item pump (stream.c, feed.c) call a source only
 * through this table, never by name.
 */
#ifndef SOURCE_H
#define SOURCE_H

#include <jansson.h>

struct evbuffer;
struct peer;

struct source_ops {
	/* The bytes read and not yet taken: item lines, one per line. */
	struct evbuffer	*(*input)(void *arg);
	/* Read more (on) or pause (off): backpressure, the end of input. */
	void		 (*reading)(void *arg, int on);
	/* Its replies are piling up unread: stop feeding until they drain
	 * (the source calls stream_input again then). */
	int		 (*full)(void *arg);
	/* One reply line now: the lease answer, a rejection, a quarantine.
	 * The source keeps no reference to v. */
	void		 (*event)(void *arg, json_t *v);
	/* The last line; the source takes v's reference, and frees the
	 * stream when it is done with it (not from inside this call). */
	void		 (*finish)(void *arg, json_t *v);
	/* Who sent the stream, for its access line; NULL: not a local
	 * peer.  May be NULL. */
	struct peer	*(*peer)(void *arg);
};

struct source {
	const struct source_ops	*ops;
	void			*arg;
};

#endif /* SOURCE_H */
