/*
 * <consumers/client.h> - libconsumers, the C client library of consumersd.
 *
 * It speaks the client protocol of doc/protocol.md: open a stream to a
 * pool, put items, close it and get the daemon's final line; or ask one
 * question (status, pools, reload).  See consumers-client(3).
 *
 * Link with `pkg-config --cflags --libs consumers-client`.  The names are
 * cns_stream_*, cns_ask and cns_socket_path: none of them is one of the
 * cns_ functions the daemon gives plugins (<consumers/plugin.h>), so a
 * plugin may use this library to stream into another pool.
 *
 * Nothing here prints, exits or raises SIGPIPE; every failure returns -1 or
 * NULL with a message in the caller's err buffer (or cns_stream_error()).
 * A cns_stream is used by one thread at a time.
 */
#ifndef CONSUMERS_CLIENT_H
#define CONSUMERS_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped with the library's -version-info when the API changes. */
#define CNS_CLIENT_API 1

typedef struct cns_stream cns_stream;

/*
 * Called with each rejection ({"rejected":{...}}), quarantine
 * ({"quarantined":{...}}) and warning ({"warning":{...}}, a full spool)
 * line that arrives while the stream runs, from
 * inside cns_stream_put*() or cns_stream_close().  The reply is borrowed:
 * valid during the call only.  It must not call the stream's functions.
 */
typedef void cns_reply_fn(const json_t *reply, void *arg);

/*
 * The socket to use: `socket` when it is neither NULL nor empty, else
 * $CONSUMERS_SOCKET when set and not empty, else the default socket this
 * library was built with.  The consumers CLI resolves -s the same way.
 */
const char *cns_socket_path(const char *socket);

/*
 * Connect to the daemon and send the header of a stream to `pool`, with
 * `params` (NULL for none; any JSON value) and at most `workers` consumers
 * (0: the pool's stream_workers).  Returns NULL, with why in err, when the
 * socket cannot be reached.  A refusal (unknown pool, not allowed, pool
 * busy) comes later: puts fail and cns_stream_close() returns it.
 */
cns_stream *cns_stream_open(const char *socket, const char *pool,
    const json_t *params, unsigned workers, char *err, size_t errlen);

/* Set (or, with NULL, clear) the callback for rejection, quarantine and
 * warning lines.  Without one they are counted, not kept. */
void cns_stream_on_reply(cns_stream *s, cns_reply_fn *fn, void *arg);

/*
 * Queue one item: `item` as compact JSON and a newline; or one raw line
 * (`len` bytes, no newline in them; the newline is added).  Items are
 * sent in large writes; while a write would block the library reads the
 * daemon's replies, so a stream never deadlocks.  Returns 0, or -1 when
 * the stream can take no more: the daemon ended it (a refusal, shutdown)
 * or the connection failed; cns_stream_error() says which, and
 * cns_stream_close() then returns the daemon's last line if there is one.
 */
int cns_stream_put(cns_stream *s, const json_t *item);
int cns_stream_put_line(cns_stream *s, const char *line, size_t len);

/*
 * Queue raw bytes of the item stream: lines ending in newlines, a line may
 * be split over calls.  For a program passing NDJSON through (the CLI).
 * Nothing is added: a last line left without a newline at close is
 * rejected by the daemon as truncated.  Returns 0 or -1 as above.
 */
int cns_stream_write(cns_stream *s, const void *buf, size_t len);

/* Send everything queued now (reading replies meanwhile), for a producer
 * that pauses: queued items otherwise wait for a full write or close, and
 * the daemon ends a stream that sends nothing for idle_timeout.  0 or -1
 * as above. */
int cns_stream_flush(cns_stream *s);

/* Why the last put failed ("" if none).  Owned by the stream. */
const char *cns_stream_error(const cns_stream *s);

/* The stream's id and its consumers, from the lease reply; 0 until it has
 * come (it is read along the way, and at the latest by close). */
uint64_t cns_stream_id(const cns_stream *s);
unsigned cns_stream_workers(const cns_stream *s);

/* Bytes handed to the kernel so far, the header included. */
uint64_t cns_stream_sent(const cns_stream *s);

/*
 * End the items (half-close), read every remaining reply and return the
 * final line (a new reference; see doc/protocol.md section 7), or the
 * daemon's refusal {"ok":false,"error":...}.  When that line's "ok" is not
 * true, err also gets its "error" (a refusal) or its first error's message.
 * Returns NULL, with why in err, when no final line came (the connection
 * failed, the daemon closed without one, or sent a line that is not JSON).
 * Call it once; then cns_stream_free().
 */
json_t *cns_stream_close(cns_stream *s, char *err, size_t errlen);

/*
 * The final line exactly as the daemon sent it, without its newline (no
 * re-encoding: numbers keep their digits), or NULL before
 * cns_stream_close() returned one.  Valid until cns_stream_free().
 */
const char *cns_stream_final_line(const cns_stream *s);

/* Close the connection (without reading the final line if close was not
 * called: the stream still completes, the daemon logs its counts) and
 * free everything.  NULL is fine. */
void cns_stream_free(cns_stream *s);

/*
 * Ask one question: send `header` (an object, e.g. {"op":"status"}) and
 * return the daemon's one answer line, a JSON object (a new reference;
 * "ok" says whether it was refused).  NULL with why in err when there is
 * no answer; then errno is EINTR if a signal handler interrupted the wait
 * (so a program can stop on ^C), otherwise another value.
 */
json_t *cns_ask(const char *socket, const json_t *header, char *err,
    size_t errlen);

#ifdef __cplusplus
}
#endif

#endif /* CONSUMERS_CLIENT_H */
