/*
 * libclient - drives libconsumers (<consumers/client.h>) for
 * tests/integration/test_libclient.py, against a real daemon:
 *
 *   libclient SOCKET stream POOL N BAD_EVERY [WORKERS]
 *	opens a stream, puts items 1..N (odd ones with cns_stream_put, even
 *	ones with cns_stream_put_line); every BAD_EVERY-th (0: none) is the
 *	invalid line "{bad" instead; collects the rejection callbacks; closes.
 *   libclient SOCKET ask HEADER-JSON
 *
 * and prints one JSON object on stdout saying what the library returned:
 * {"open_err", "put_err", "puts_failed", "final", "err", "rejected" (the
 * seqs of the rejection callbacks, in order), "id", "workers"} or, for
 * ask, {"answer", "err", "errno"}.  Exit status 0 unless the arguments
 * are wrong.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <consumers/client.h>

static void
on_reply(const json_t *reply, void *arg)
{
	json_t *seqs = arg, *r = json_object_get(reply, "rejected");

	if (json_is_object(r))
		json_array_append(seqs, json_object_get(r, "seq"));
}

static void
print(json_t *out)
{
	char *s = json_dumps(out, JSON_COMPACT);

	printf("%s\n", s);
	free(s);
	json_decref(out);
}

static int
stream(const char *sock, int argc, char **argv)
{
	json_t *out = json_object(), *seqs = json_array(), *final;
	unsigned long n, bad, workers = 0;
	unsigned long i, failed = 0;
	char err[1024], line[32];
	cns_stream *st;

	if (argc < 3)
		return 2;
	n = strtoul(argv[1], NULL, 10);
	bad = strtoul(argv[2], NULL, 10);
	if (argc > 3)
		workers = strtoul(argv[3], NULL, 10);
	st = cns_stream_open(sock, argv[0], NULL, (unsigned)workers, err,
	    sizeof err);
	if (st == NULL) {
		json_object_set_new(out, "open_err", json_string(err));
		json_object_set_new(out, "errno", json_integer(errno));
		json_decref(seqs);
		print(out);
		return 0;
	}
	cns_stream_on_reply(st, on_reply, seqs);
	for (i = 1; i <= n; i++) {
		int rc;
		if (bad > 0 && i % bad == 0)
			rc = cns_stream_put_line(st, "{bad", 4);
		else if (i % 2 == 1) {
			json_t *v = json_integer((json_int_t)i);
			rc = cns_stream_put(st, v);
			json_decref(v);
		} else
			rc = cns_stream_put_line(st, line, (size_t)snprintf(
			    line, sizeof line, "%lu", i));
		if (rc == -1) {
			if (failed++ == 0)
				json_object_set_new(out, "put_err",
				    json_string(cns_stream_error(st)));
			break;
		}
	}
	/* A line with a newline is refused, and the stream goes on. */
	if (failed == 0 && cns_stream_put_line(st, "1\n2", 3) != -1)
		json_object_set_new(out, "newline_accepted", json_true());
	json_object_set_new(out, "puts_failed", json_integer((json_int_t)
	    failed));
	final = cns_stream_close(st, err, sizeof err);
	json_object_set_new(out, "final", final != NULL ? final : json_null());
	json_object_set_new(out, "err", json_string(err));
	json_object_set_new(out, "id", json_integer((json_int_t)
	    cns_stream_id(st)));
	json_object_set_new(out, "workers", json_integer(
	    cns_stream_workers(st)));
	json_object_set_new(out, "rejected", seqs);
	cns_stream_free(st);
	print(out);
	return 0;
}

static int
ask(const char *sock, int argc, char **argv)
{
	json_t *out = json_object(), *h, *v;
	json_error_t jerr;
	char err[1024] = "";

	if (argc < 1 || (h = json_loads(argv[0], 0, &jerr)) == NULL)
		return 2;
	v = cns_ask(sock, h, err, sizeof err);
	json_decref(h);
	json_object_set_new(out, "answer", v != NULL ? v : json_null());
	json_object_set_new(out, "err", json_string(err));
	json_object_set_new(out, "errno", json_integer(v != NULL ? 0 : errno));
	print(out);
	return 0;
}

int
main(int argc, char **argv)
{
	if (argc >= 3 && strcmp(argv[2], "stream") == 0)
		return stream(argv[1], argc - 3, argv + 3);
	if (argc >= 3 && strcmp(argv[2], "ask") == 0)
		return ask(argv[1], argc - 3, argv + 3);
	fprintf(stderr, "usage: libclient SOCKET stream POOL N BAD_EVERY "
	    "[WORKERS] | libclient SOCKET ask HEADER\n");
	return 2;
}
