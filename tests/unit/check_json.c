/*
 * check_json.c - unit tests for cns_json_dumps() in src/util.c: what it
 * writes parses back to the same document (each double bit for bit), each
 * real is in the fewest significant digits (15 to 17) that read back as
 * the same double, and strings, keys and integers are left as jansson
 * wrote them.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <jansson.h>

#include "consumersd.h"

/* Significant digits of a number as written: sign, point, exponent and
 * leading and trailing zeros do not count. */
static int
sig_digits(const char *tok, size_t len)
{
	char d[64];
	size_t n = 0, i, a, b;

	for (i = 0; i < len && tok[i] != 'e' && tok[i] != 'E'; i++)
		if (tok[i] >= '0' && tok[i] <= '9' && n < sizeof d)
			d[n++] = tok[i];
	for (a = 0; a < n && d[a] == '0'; a++)
		;
	for (b = n; b > a && d[b - 1] == '0'; b--)
		;
	return b > a ? (int)(b - a) : 1;
}

/* The fewest significant digits, 15 to 17, that read back as d. */
static int
want_digits(double d)
{
	char buf[64];
	int p;

	for (p = 15; p <= 17; p++) {
		snprintf(buf, sizeof buf, "%.*g", p, d);
		if (strtod(buf, NULL) == d)
			break;
	}
	return sig_digits(buf, strlen(buf));
}

static int
same_double(double a, double b)
{
	return memcmp(&a, &b, sizeof a) == 0;
}

/*
 * v (an array of reals) dumped by cns_json_dumps: parsed back, the same
 * doubles bit for bit; each in its fewest digits.
 */
static void
check_reals(json_t *v, size_t flags)
{
	char *s = cns_json_dumps(v, flags);
	json_t *back;
	json_error_t err;
	const char *p;
	size_t i, n;

	ck_assert_ptr_nonnull(s);
	back = json_loads(s, JSON_DECODE_ANY, &err);
	ck_assert_msg(back != NULL, "%s does not parse: %s", s, err.text);
	ck_assert_msg(json_equal(v, back), "%s is not the document", s);
	ck_assert_uint_eq(json_array_size(back), json_array_size(v));
	for (i = 0; i < json_array_size(v); i++) {
		double a = json_real_value(json_array_get(v, i));
		json_t *b = json_array_get(back, i);

		ck_assert_msg(json_is_real(b), "%s: item %zu is not a real",
		    s, i);
		ck_assert_msg(same_double(a, json_real_value(b)),
		    "%s: item %zu is not %.17g", s, i, a);
	}
	/* The tokens, in order: '[', then numbers separated by ','. */
	p = s + 1;
	for (i = 0; i < json_array_size(v); i++) {
		double a = json_real_value(json_array_get(v, i));

		while (*p == ' ' || *p == '\n' || *p == ',')
			p++;
		n = strspn(p, "-+.0123456789eE");
		ck_assert_msg(sig_digits(p, n) == want_digits(a),
		    "%.*s has %d significant digits, %.17g needs %d", (int)n,
		    p, sig_digits(p, n), a, want_digits(a));
		ck_assert_msg(memchr(p, '.', n) != NULL ||
		    memchr(p, 'e', n) != NULL, "%.*s does not look real",
		    (int)n, p);
		p += n;
	}
	json_decref(back);
	free(s);
}

static void
check_one(double d)
{
	json_t *v = json_array();

	json_array_append_new(v, json_real(d));
	check_reals(v, JSON_COMPACT);
	json_decref(v);
}

START_TEST(test_values)
{
	static const double d[] = {
		0.0, -0.0, 0.1, -0.1, 0.5, 1.0, -1.0, 2.5, 0.30000000000000004,
		1e300, -1e300, 1.5e-07, -1.5e-07, 1e-5, 1e21, 1e22, 123456.789,
		1e15, 1e16, 1e17, 1234567890123460.0, 9007199254740993.0,
		12345678901234568.0, 18014398509481988.0, 1.7976931348623157e308,
		-1.7976931348623157e308, 2.2250738585072014e-308, 5e-324,
		-5e-324, 4.35, 1.0 / 3, 2.0 / 3, 100.0, 3.14159,
	};

	for (size_t i = 0; i < sizeof d / sizeof d[0]; i++)
		check_one(d[i]);
}
END_TEST

static uint64_t rng = 0x9e3779b97f4a7c15ull;	/* fixed seed */

static uint64_t
next(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

/* Random bit patterns, random decimals of few digits, and values between
 * 1e15 and 1e17, where jansson changes between plain and exponent form. */
START_TEST(test_random)
{
	json_t *v = json_array();
	double d;
	int i;

	for (i = 0; i < 30000; i++) {
		uint64_t u = next();

		switch (i % 3) {
		case 0:
			memcpy(&d, &u, sizeof d);
			if (!isfinite(d))
				continue;
			break;
		case 1:
			d = (double)(int64_t)(u >> 12) /
			    pow(10, (double)(u % 23));
			break;
		default:
			d = ldexp((double)(u >> 11), -53) * 1e17;
			if (d < 1e15)
				d += 1e15;
			if (u & 1)
				d = -d;
			break;
		}
		json_array_append_new(v, json_real(d));
		if (json_array_size(v) == 1000) {
			check_reals(v, JSON_COMPACT);
			check_reals(v, JSON_INDENT(2));
			json_array_clear(v);
		}
	}
	check_reals(v, JSON_COMPACT);
	json_decref(v);
}
END_TEST

/* Strings, keys and integers come out as jansson wrote them. */
static void
expect_untouched(json_t *v, size_t flags)
{
	char *s = cns_json_dumps(v, flags);
	char *t = json_dumps(v, flags);

	ck_assert_ptr_nonnull(s);
	ck_assert_ptr_nonnull(t);
	ck_assert_str_eq(s, t);
	free(s);
	free(t);
	json_decref(v);
}

START_TEST(test_strings_untouched)
{
	static const char *str[] = {
		"0.10000000000000001", "-1.4999999999999999e-7",
		"\"0.10000000000000001\"", "\\", "\\\\0.10000000000000001",
		"\\\"0.10000000000000001\\\"", "a\"b", "0", "\x01 0.2000000001",
		"caf\xc3\xa9 1.0000000000000001e300", "", "\"", "-", "e",
		"1e", "\t\n0.3000000000000000444", "\xe2\x82\xac 2.5",
	};
	size_t flags[] = { JSON_COMPACT, JSON_INDENT(3),
	    JSON_COMPACT | JSON_ENSURE_ASCII, JSON_SORT_KEYS };

	for (size_t f = 0; f < sizeof flags / sizeof flags[0]; f++)
		for (size_t i = 0; i < sizeof str / sizeof str[0]; i++) {
			expect_untouched(json_string(str[i]), flags[f] |
			    JSON_ENCODE_ANY);
			expect_untouched(json_pack("{s:s}", str[i], str[i]),
			    flags[f]);
			expect_untouched(json_pack("[s,i,s]", str[i], -7,
			    str[i]), flags[f]);
		}
	expect_untouched(json_pack("{s:I,s:I,s:I,s:i}", "0.10000000000000001",
	    (json_int_t)-9223372036854775807LL - 1, "max",
	    (json_int_t)9223372036854775807LL, "z", (json_int_t)0, "m", -1),
	    JSON_COMPACT);
	expect_untouched(json_pack("[b,n,b,[],{}]", 1, 0), JSON_COMPACT);
}
END_TEST

/* Reals beside strings that hold digits and escapes, in keys too. */
START_TEST(test_mixed)
{
	json_t *v = json_pack("{s:s,s:f,s:[f,s,I,f],s:{s:f}}",
	    "k\\\"0.10000000000000001", "v\\", "0.1", 0.1, "a\"",
	    0.30000000000000004, "\\u0030 1e300", (json_int_t)-12,
	    -1.5e-07, "\\", "-0.0", -0.0);
	char *s = cns_json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS);
	char *e = cns_json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS |
	    JSON_ENSURE_ASCII);

	ck_assert_str_eq(s, "{\"0.1\":0.1,\"\\\\\":{\"-0.0\":-0.0},"
	    "\"a\\\"\":[0.30000000000000004,\"\\\\u0030 1e300\",-12,-1.5e-7],"
	    "\"k\\\\\\\"0.10000000000000001\":\"v\\\\\"}");
	ck_assert_str_eq(s, e);
	free(s);
	free(e);
	json_decref(v);
}
END_TEST

/* A long document: every real shortened, nothing lost at the end. */
START_TEST(test_long)
{
	json_t *v = json_array();
	char *s;
	size_t i, n = 200000;

	for (i = 0; i < n; i++)
		json_array_append_new(v, i % 2 ? json_real(0.1 * (double)i) :
		    json_string("0.10000000000000001"));
	s = cns_json_dumps(v, JSON_COMPACT);
	ck_assert_ptr_nonnull(s);
	{
		json_t *back = json_loads(s, 0, NULL);

		ck_assert_ptr_nonnull(back);
		ck_assert(json_equal(back, v));
		json_decref(back);
	}
	ck_assert_ptr_nonnull(strstr(s, ",0.1,"));
	ck_assert(s[strlen(s) - 1] == ']');
	free(s);
	json_decref(v);
}
END_TEST

static Suite *
json_suite(void)
{
	Suite *s = suite_create("json");
	TCase *tc = tcase_create("dumps");

	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_values);
	tcase_add_test(tc, test_random);
	tcase_add_test(tc, test_strings_untouched);
	tcase_add_test(tc, test_mixed);
	tcase_add_test(tc, test_long);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(json_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
