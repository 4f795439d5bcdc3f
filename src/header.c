/*
 * header.c - checking a client's header line.  Pure: no daemon state, so
 * the unit tests and the fuzzer drive it directly.  The caller looks the
 * pool up and decides who may do what; this only says whether the line
 * is a well-formed request: a submit, or one of the read-only ops.
 */
#include <stdio.h>
#include <string.h>

#include "consumersd.h"

/* Each op with the keys its header may hold, and how to say them. */
static const struct header_op {
	const char	*op;
	const char	*keys[7];
	const char	*known;
} header_ops[] = {
	{ "submit", { "op", "pool", "workers", "params", "args", "kwargs",
	    NULL }, "op, pool, workers, params, args, kwargs" },
	{ "status", { "op", "pool", NULL }, "op, pool" },
	{ "pools", { "op", NULL }, "op" },
	{ "reload", { "op", NULL }, "op" },
	{ "metrics", { "op", NULL }, "op" },
	{ "hello", { "op", NULL }, "op" },
	{ "result", { "op", "stream", NULL }, "op, stream" },
};
#define HEADER_NOPS	(sizeof header_ops / sizeof header_ops[0])
#define HEADER_KNOWN	"submit, status, pools, reload, metrics, hello, result"

static const char *
header_type(const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_ARRAY:	return "an array";
	case JSON_STRING:	return "a string";
	case JSON_INTEGER:
	case JSON_REAL:		return "a number";
	case JSON_TRUE:
	case JSON_FALSE:	return "a boolean";
	case JSON_NULL:		return "null";
	default:		return "not an object";
	}
}

/*
 * Parse `len` bytes (no newline) as a header.  Returns the object, owned
 * by the caller, or NULL with the reason in `why`.  Its "op" is then one
 * of header_ops[], and it holds only that op's keys.
 */
json_t *
header_parse(const char *line, size_t len, char *why, size_t whylen)
{
	json_error_t jerr;
	const struct header_op *op;
	const char *key, *nul;
	json_t *h, *v;

	if (len > CNS_HEADER_MAX) {
		snprintf(why, whylen, "the header line is longer than %d "
		    "bytes", CNS_HEADER_MAX);
		return NULL;
	}
	/* jansson stops at a NUL and may take what came before it for the
	 * whole text: refuse it before parsing. */
	if ((nul = memchr(line, '\0', len)) != NULL) {
		snprintf(why, whylen, "the header line contains a NUL byte at "
		    "column %zu", (size_t)(nul - line) + 1);
		return NULL;
	}
	h = json_loadb(line, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY,
	    &jerr);
	if (h == NULL) {
		snprintf(why, whylen, "the header is not a JSON object: %s at "
		    "column %d", jerr.text, jerr.column);
		goto bad;
	}
	if (!json_is_object(h)) {
		snprintf(why, whylen, "the header is not a JSON object but %s: "
		    "it must be like {\"op\":\"submit\",\"pool\":\"NAME\"}",
		    header_type(h));
		goto bad;
	}
	v = json_object_get(h, "op");
	if (!json_is_string(v)) {
		snprintf(why, whylen, "the header needs \"op\": one of "
		    HEADER_KNOWN);
		goto bad;
	}
	for (op = header_ops; op < header_ops + HEADER_NOPS; op++)
		if (strcmp(json_string_value(v), op->op) == 0)
			break;
	if (op == header_ops + HEADER_NOPS) {
		snprintf(why, whylen, "unknown op \"%.100s\" (known: "
		    HEADER_KNOWN ")", json_string_value(v));
		goto bad;
	}
	json_object_foreach(h, key, v) {
		int ok = 0;
		for (const char *const *k = op->keys; *k != NULL; k++)
			ok |= strcmp(*k, key) == 0;
		if (ok)
			continue;
		/* A submit's wording predates the other ops: kept. */
		if (op == header_ops)
			snprintf(why, whylen, "unknown key \"%.100s\" in the "
			    "header (known: %s)", key, op->known);
		else
			snprintf(why, whylen, "unknown key \"%.100s\" in a "
			    "\"%s\" header (known: %s)", key, op->op,
			    op->known);
		goto bad;
	}
	v = json_object_get(h, "pool");
	if (op == header_ops && !json_is_string(v)) {
		snprintf(why, whylen, "the header needs \"pool\": the name of a "
		    "pool, as a string");
		goto bad;
	}
	if (v != NULL && !json_is_string(v)) {
		snprintf(why, whylen, "\"pool\" must be the name of a pool, as "
		    "a string, or absent for every pool");
		goto bad;
	}
	v = json_object_get(h, "stream");
	if (strcmp(op->op, "result") == 0 && (!json_is_integer(v) ||
	    json_integer_value(v) < 1)) {
		snprintf(why, whylen, "a \"result\" header needs \"stream\": "
		    "a cluster stream's id, a positive integer");
		goto bad;
	}
	v = json_object_get(h, "workers");
	if (v != NULL && (!json_is_integer(v) || json_integer_value(v) < 1)) {
		snprintf(why, whylen, "\"workers\" must be a positive integer");
		goto bad;
	}
	v = json_object_get(h, "args");
	if (v != NULL && !json_is_array(v)) {
		snprintf(why, whylen, "\"args\" must be an array");
		goto bad;
	}
	v = json_object_get(h, "kwargs");
	if (v != NULL && !json_is_object(v)) {
		snprintf(why, whylen, "\"kwargs\" must be an object");
		goto bad;
	}
	return h;
bad:
	utf8_clean(why);	/* a name cut at 100 bytes may split a char */
	json_decref(h);
	return NULL;
}
