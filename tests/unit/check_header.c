/*
 * check_header.c - unit tests for src/header.c: header_parse() on good
 * headers, and the exact reason given for each way a header can be bad,
 * since that text is what a client reads in its refusal.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <jansson.h>

#include "consumersd.h"

/* Every op a header may name, in the order refusals list them. */
#define OPS	"submit, status, pools, reload, metrics, hello, result"

/* Parse `len` bytes of `text`; the caller owns the result. */
static json_t *
parse_n(const char *text, size_t len, char *why, size_t whylen)
{
	/* A copy with no NUL after it, as an evbuffer hands it over: the
	 * parser must stop at len. */
	char *copy = malloc(len + 1);
	json_t *h;

	ck_assert_ptr_nonnull(copy);
	memcpy(copy, text, len);
	copy[len] = '\n';
	h = header_parse(copy, len, why, whylen);
	free(copy);
	return h;
}

static json_t *
accepted(const char *text)
{
	char why[512] = "";
	json_t *h = parse_n(text, strlen(text), why, sizeof why);

	ck_assert_msg(h != NULL, "%s: refused: %s", text, why);
	ck_assert(json_is_object(h));
	return h;
}

static void
refused_n(const char *text, size_t len, const char *expect)
{
	char why[512];
	json_t *h;

	memset(why, 'X', sizeof why);
	h = parse_n(text, len, why, sizeof why);
	ck_assert_msg(h == NULL, "%.*s: accepted", (int)len, text);
	ck_assert_str_eq(why, expect);
}

static void
refused(const char *text, const char *expect)
{
	refused_n(text, strlen(text), expect);
}

START_TEST(test_minimal)
{
	json_t *h = accepted("{\"op\":\"submit\",\"pool\":\"sum\"}");

	ck_assert_str_eq(json_string_value(json_object_get(h, "op")),
	    "submit");
	ck_assert_str_eq(json_string_value(json_object_get(h, "pool")),
	    "sum");
	ck_assert_int_eq(json_object_size(h), 2);
	ck_assert_int_eq(h->refcount, 1);	/* the caller's */
	json_decref(h);
}
END_TEST

START_TEST(test_every_key)
{
	json_t *h = accepted(" {\"params\": {\"a\": [1, null]}, \"workers\": 3, "
	    "\"pool\": \"db\", \"op\": \"submit\"}\r");

	ck_assert_int_eq(json_integer_value(json_object_get(h, "workers")), 3);
	ck_assert(json_is_object(json_object_get(h, "params")));
	json_decref(h);
	/* params may be any value, null included. */
	json_decref(accepted("{\"op\":\"submit\",\"pool\":\"p\",\"params\":null}"));
	json_decref(accepted("{\"op\":\"submit\",\"pool\":\"p\",\"params\":\"s\"}"));
	/* A workers count above any pool's is lowered later, not refused. */
	json_decref(accepted("{\"op\":\"submit\",\"pool\":\"p\",\"workers\":"
	    "9223372036854775807}"));
	/* Unicode in the pool name is the lookup's business. */
	json_decref(accepted("{\"op\":\"submit\",\"pool\":\"caf\\u00e9\"}"));
}
END_TEST

START_TEST(test_length_limit)
{
	const char *pre = "{\"op\":\"submit\",\"pool\":\"p\"";
	size_t n = CNS_HEADER_MAX;
	char *buf = malloc(n + 2);
	json_t *h;
	char why[256];

	ck_assert_ptr_nonnull(buf);
	/* Exactly the limit: fine. */
	memcpy(buf, pre, strlen(pre));
	memset(buf + strlen(pre), ' ', n - strlen(pre) - 1);
	buf[n - 1] = '}';
	h = parse_n(buf, n, why, sizeof why);
	ck_assert_msg(h != NULL, "%s", why);
	json_decref(h);
	/* One byte more: refused, whatever it holds. */
	buf[n - 1] = ' ';
	buf[n] = '}';
	refused_n(buf, n + 1, "the header line is longer than 65536 bytes");
	free(buf);
}
END_TEST

START_TEST(test_nul)
{
	static const char nul_mid[] = "{\"op\":\"sub\0mit\",\"pool\":\"p\"}";
	/* jansson would take {"op":...,"pool":"p"} and stop at the NUL. */
	static const char nul_end[] = "{\"op\":\"submit\",\"pool\":\"p\"}\0junk";

	refused_n(nul_mid, sizeof nul_mid - 1,
	    "the header line contains a NUL byte at column 11");
	refused_n(nul_end, sizeof nul_end - 1,
	    "the header line contains a NUL byte at column 27");
	refused_n("\0", 1, "the header line contains a NUL byte at column 1");
}
END_TEST

START_TEST(test_not_json)
{
	refused("not json", "the header is not a JSON object: invalid token "
	    "near 'not' at column 3");
	refused("", "the header is not a JSON object: unexpected token near "
	    "end of file at column 0");
	refused("{\"op\":\"submit\"", "the header is not a JSON object: "
	    "'}' expected near end of file at column 14");
	refused("{\"op\":\"submit\"} {}", "the header is not a JSON object: "
	    "end of file expected near '{' at column 17");
	/* Binary garbage: jansson names the first byte it cannot decode. */
	refused("\xff\xfe\xfd\x01garbage", "the header is not a JSON "
	    "object: unable to decode byte 0xff at column 0");
}
END_TEST

START_TEST(test_not_an_object)
{
	const char *tail = ": it must be like {\"op\":\"submit\",\"pool\":\"NAME\"}";
	struct { const char *text, *type; } cases[] = {
		{ "[{\"op\":\"submit\",\"pool\":\"p\"}]", "an array" },
		{ "\"submit\"", "a string" },
		{ "42", "a number" },
		{ "-1.5e3", "a number" },
		{ "true", "a boolean" },
		{ "null", "null" },
	};
	char expect[256];

	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		snprintf(expect, sizeof expect, "the header is not a JSON object "
		    "but %s%s", cases[i].type, tail);
		refused(cases[i].text, expect);
	}
}
END_TEST

START_TEST(test_op)
{
	const char *need = "the header needs \"op\": one of " OPS;

	refused("{\"pool\":\"p\"}", need);
	refused("{\"op\":1,\"pool\":\"p\"}", need);
	refused("{\"op\":null,\"pool\":\"p\"}", need);
	refused("{\"op\":\"fly\",\"pool\":\"p\"}",
	    "unknown op \"fly\" (known: " OPS ")");
	refused("{\"op\":\"Submit\",\"pool\":\"p\"}",
	    "unknown op \"Submit\" (known: " OPS ")");
	/* op comes first: an unknown key after a bad op names the op. */
	refused("{\"op\":\"fly\",\"color\":1}",
	    "unknown op \"fly\" (known: " OPS ")");
}
END_TEST

START_TEST(test_unknown_key)
{
	refused("{\"op\":\"submit\",\"pool\":\"p\",\"color\":1}",
	    "unknown key \"color\" in the header (known: op, pool, workers, "
	    "params, args, kwargs)");
	refused("{\"op\":\"submit\",\"pool\":\"p\",\"\":1}",
	    "unknown key \"\" in the header (known: op, pool, workers, "
	    "params, args, kwargs)");
}
END_TEST

START_TEST(test_pool)
{
	const char *want = "the header needs \"pool\": the name of a pool, as "
	    "a string";

	refused("{\"op\":\"submit\"}", want);
	refused("{\"op\":\"submit\",\"pool\":3}", want);
	refused("{\"op\":\"submit\",\"pool\":[\"p\"]}", want);
	refused("{\"op\":\"submit\",\"pool\":null}", want);
}
END_TEST

START_TEST(test_workers)
{
	const char *want = "\"workers\" must be a positive integer";

	refused("{\"op\":\"submit\",\"pool\":\"p\",\"workers\":0}", want);
	refused("{\"op\":\"submit\",\"pool\":\"p\",\"workers\":-1}", want);
	refused("{\"op\":\"submit\",\"pool\":\"p\",\"workers\":\"2\"}", want);
	refused("{\"op\":\"submit\",\"pool\":\"p\",\"workers\":2.0}", want);
	refused("{\"op\":\"submit\",\"pool\":\"p\",\"workers\":true}", want);
	refused("{\"op\":\"submit\",\"pool\":\"p\",\"workers\":null}", want);
	refused("{\"op\":\"submit\",\"pool\":\"p\",\"workers\":"
	    "-9223372036854775808}", want);
	json_decref(accepted("{\"op\":\"submit\",\"pool\":\"p\",\"workers\":1}"));
}
END_TEST

/* A stream's own args and kwargs (for pools with client_args): the
 * shapes the pool file's have. */
START_TEST(test_args_kwargs)
{
	json_t *h;

	refused("{\"op\":\"submit\",\"pool\":\"p\",\"args\":{}}",
	    "\"args\" must be an array");
	refused("{\"op\":\"submit\",\"pool\":\"p\",\"args\":null}",
	    "\"args\" must be an array");
	refused("{\"op\":\"submit\",\"pool\":\"p\",\"kwargs\":[1]}",
	    "\"kwargs\" must be an object");
	refused("{\"op\":\"submit\",\"pool\":\"p\",\"kwargs\":\"c\"}",
	    "\"kwargs\" must be an object");
	h = accepted("{\"op\":\"submit\",\"pool\":\"p\",\"args\":[1,\"a\"],"
	    "\"kwargs\":{\"c\":3}}");
	ck_assert_int_eq(json_array_size(json_object_get(h, "args")), 2);
	ck_assert_int_eq(json_integer_value(json_object_get(
	    json_object_get(h, "kwargs"), "c")), 3);
	json_decref(h);
}
END_TEST

START_TEST(test_duplicate_keys)
{
	refused("{\"op\":\"submit\",\"pool\":\"a\",\"pool\":\"b\"}",
	    "the header is not a JSON object: duplicate object key near "
	    "'\"pool\"' at column 32");
	refused("{\"op\":\"submit\",\"op\":\"submit\",\"pool\":\"a\"}",
	    "the header is not a JSON object: duplicate object key near "
	    "'\"op\"' at column 19");
	/* Duplicates deeper down, inside params, are refused too. */
	refused("{\"op\":\"submit\",\"pool\":\"a\",\"params\":{\"k\":1,\"k\":2}}",
	    "the header is not a JSON object: duplicate object key near "
	    "'\"k\"' at column 45");
}
END_TEST

START_TEST(test_names_cut_cleanly)
{
	char text[512], expect[512], op[200];
	char why[512];
	json_t *v;

	/* A name is quoted up to 100 bytes; a cut inside a character leaves
	 * valid UTF-8, so the refusal can be sent as JSON. */
	memset(op, 'a', 99);
	strcpy(op + 99, "\xc3\xa9zzz");
	snprintf(text, sizeof text, "{\"op\":\"%s\",\"pool\":\"p\"}", op);
	snprintf(expect, sizeof expect, "unknown op \"%.99s?\" (known: "
	    OPS ")", op);
	refused(text, expect);
	ck_assert_ptr_null(header_parse(text, strlen(text), why, sizeof why));
	v = json_string(why);		/* valid UTF-8, or this is NULL */
	ck_assert_ptr_nonnull(v);
	json_decref(v);
}
END_TEST

START_TEST(test_short_why)
{
	char why[16];

	memset(why, 'X', sizeof why);
	ck_assert_ptr_null(header_parse("{\"pool\":\"p\"}", 12, why,
	    sizeof why));
	ck_assert_uint_eq(strlen(why), sizeof why - 1);
	ck_assert_str_eq(why, "the header need");
}
END_TEST

START_TEST(test_deep_nesting)
{
	size_t depth = 10000;
	char *text = malloc(2 * depth + 64);
	char why[512];

	ck_assert_ptr_nonnull(text);
	strcpy(text, "{\"op\":\"submit\",\"pool\":\"p\",\"params\":");
	size_t n = strlen(text);
	memset(text + n, '[', depth);
	memset(text + n + depth, ']', depth);
	text[n + 2 * depth] = '}';
	ck_assert_ptr_null(header_parse(text, n + 2 * depth + 1, why,
	    sizeof why));
	ck_assert_str_eq(why, "the header is not a JSON object: maximum "
	    "parsing depth reached near '[' at column 2083");
	free(text);
}
END_TEST

/* The one-word ops, and result's stream id. */
START_TEST(test_other_ops)
{
	const char *ops[] = { "pools", "reload", "metrics", "hello" };
	char text[64], expect[128];
	json_t *h;

	for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
		snprintf(text, sizeof text, "{\"op\":\"%s\"}", ops[i]);
		h = accepted(text);
		ck_assert_int_eq(json_object_size(h), 1);
		json_decref(h);
		snprintf(text, sizeof text, "{\"op\":\"%s\",\"pool\":\"p\"}",
		    ops[i]);
		snprintf(expect, sizeof expect, "unknown key \"pool\" in a "
		    "\"%s\" header (known: op)", ops[i]);
		refused(text, expect);
	}
	h = accepted("{\"op\":\"result\",\"stream\":42}");
	ck_assert_int_eq(json_integer_value(json_object_get(h, "stream")), 42);
	json_decref(h);
	refused("{\"op\":\"result\"}", "a \"result\" header needs "
	    "\"stream\": a cluster stream's id, a positive integer");
	refused("{\"op\":\"result\",\"stream\":0}", "a \"result\" header "
	    "needs \"stream\": a cluster stream's id, a positive integer");
	refused("{\"op\":\"result\",\"stream\":\"7\"}", "a \"result\" "
	    "header needs \"stream\": a cluster stream's id, a positive "
	    "integer");
	refused("{\"op\":\"result\",\"stream\":7,\"pool\":\"p\"}",
	    "unknown key \"pool\" in a \"result\" header (known: op, "
	    "stream)");
	/* stream is result's alone. */
	refused("{\"op\":\"submit\",\"pool\":\"p\",\"stream\":7}",
	    "unknown key \"stream\" in the header (known: op, pool, workers, "
	    "params, args, kwargs)");
}
END_TEST

START_TEST(test_status)
{
	json_t *h = accepted("{\"op\":\"status\"}");

	ck_assert_str_eq(json_string_value(json_object_get(h, "op")),
	    "status");
	ck_assert_ptr_null(json_object_get(h, "pool"));
	json_decref(h);
	h = accepted("{\"op\":\"status\",\"pool\":\"db\"}");
	ck_assert_str_eq(json_string_value(json_object_get(h, "pool")), "db");
	json_decref(h);
	refused("{\"op\":\"status\",\"pool\":3}", "\"pool\" must be the "
	    "name of a pool, as a string, or absent for every pool");
	refused("{\"op\":\"status\",\"pool\":null}", "\"pool\" must be "
	    "the name of a pool, as a string, or absent for every pool");
	/* A submit's keys are not a status's. */
	refused("{\"op\":\"status\",\"workers\":1}", "unknown key "
	    "\"workers\" in a \"status\" header (known: op, pool)");
	refused("{\"op\":\"status\",\"pool\":\"p\",\"params\":{}}",
	    "unknown key \"params\" in a \"status\" header (known: op, "
	    "pool)");
	refused("{\"op\":\"status\",\"pool\":\"a\",\"pool\":\"b\"}",
	    "the header is not a JSON object: duplicate object key near "
	    "'\"pool\"' at column 32");
}
END_TEST

START_TEST(test_pools)
{
	json_t *h = accepted("{\"op\":\"pools\"}");

	ck_assert_int_eq(json_object_size(h), 1);
	json_decref(h);
	refused("{\"op\":\"pools\",\"pool\":\"p\"}", "unknown key "
	    "\"pool\" in a \"pools\" header (known: op)");
	refused("{\"op\":\"pools\",\"color\":1}", "unknown key "
	    "\"color\" in a \"pools\" header (known: op)");
	refused("{\"op\":\"Pools\"}",
	    "unknown op \"Pools\" (known: " OPS ")");
}
END_TEST

static Suite *
header_suite(void)
{
	Suite *s = suite_create("header");
	TCase *tc;

	tc = tcase_create("good");
	tcase_add_test(tc, test_minimal);
	tcase_add_test(tc, test_every_key);
	tcase_add_test(tc, test_status);
	tcase_add_test(tc, test_pools);
	tcase_add_test(tc, test_other_ops);
	suite_add_tcase(s, tc);

	tc = tcase_create("bad");
	tcase_add_test(tc, test_length_limit);
	tcase_add_test(tc, test_nul);
	tcase_add_test(tc, test_not_json);
	tcase_add_test(tc, test_not_an_object);
	tcase_add_test(tc, test_op);
	tcase_add_test(tc, test_unknown_key);
	tcase_add_test(tc, test_pool);
	tcase_add_test(tc, test_workers);
	tcase_add_test(tc, test_args_kwargs);
	tcase_add_test(tc, test_duplicate_keys);
	tcase_add_test(tc, test_names_cut_cleanly);
	tcase_add_test(tc, test_short_why);
	tcase_add_test(tc, test_deep_nesting);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(header_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed != 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
