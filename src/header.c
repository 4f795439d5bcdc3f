/*
 * header.c - checking a client's header line.  Pure: no daemon state, so
 * the unit tests and the fuzzer drive it directly.  The caller looks the
 * pool up; this only says whether the line is a well-formed request.
 */
#include <stdio.h>
#include <string.h>

#include "consumersd.h"

static const char *submit_keys[] = { "op", "pool", "workers", "params",
    NULL };

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
 * by the caller, or NULL with the reason in `why`.
 */
json_t *
header_parse(const char *line, size_t len, char *why, size_t whylen)
{
	json_error_t jerr;
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
		snprintf(why, whylen, "the header needs \"op\": \"submit\"");
		goto bad;
	}
	if (strcmp(json_string_value(v), "submit") != 0) {
		snprintf(why, whylen, "unknown op \"%.100s\" (known: submit)",
		    json_string_value(v));
		goto bad;
	}
	json_object_foreach(h, key, v) {
		int ok = 0;
		for (const char **k = submit_keys; *k != NULL; k++)
			ok |= strcmp(*k, key) == 0;
		if (!ok) {
			snprintf(why, whylen, "unknown key \"%.100s\" in the "
			    "header (known: op, pool, workers, params)", key);
			goto bad;
		}
	}
	if (!json_is_string(json_object_get(h, "pool"))) {
		snprintf(why, whylen, "the header needs \"pool\": the name of a "
		    "pool, as a string");
		goto bad;
	}
	v = json_object_get(h, "workers");
	if (v != NULL && (!json_is_integer(v) || json_integer_value(v) < 1)) {
		snprintf(why, whylen, "\"workers\" must be a positive integer");
		goto bad;
	}
	return h;
bad:
	utf8_clean(why);	/* a name cut at 100 bytes may split a char */
	json_decref(h);
	return NULL;
}
