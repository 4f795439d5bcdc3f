/*
 * check_log.c - unit tests for utf8_clean() in src/log.c: whatever bytes
 * come in, what comes out is valid UTF-8 (jansson takes it as a string),
 * valid characters are kept, and each bad byte becomes one '?'.  And
 * log_joins(): which of a worker's lines make one message (one journal
 * entry) - a traceback from its first line to its exception, chained
 * ones included, and lines that start with white space.
 */
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <jansson.h>

#include "consumersd.h"

static void
expect(const char *in, const char *want)
{
	char buf[64];
	json_t *s;

	strcpy(buf, in);
	utf8_clean(buf);
	ck_assert_str_eq(buf, want);
	s = json_string(buf);
	ck_assert_ptr_nonnull(s);
	json_decref(s);
}

START_TEST(test_valid_kept)
{
	expect("plain ascii", "plain ascii");
	expect("caf\xc3\xa9", "caf\xc3\xa9");			/* U+00E9 */
	expect("\xe2\x82\xac", "\xe2\x82\xac");			/* U+20AC */
	expect("\xed\x9f\xbf", "\xed\x9f\xbf");			/* U+D7FF */
	expect("\xee\x80\x80", "\xee\x80\x80");			/* U+E000 */
	expect("\xf0\x9f\x98\x80", "\xf0\x9f\x98\x80");		/* U+1F600 */
	expect("\xf4\x8f\xbf\xbf", "\xf4\x8f\xbf\xbf");		/* U+10FFFF */
}
END_TEST

START_TEST(test_invalid_replaced)
{
	expect("a\xff" "b", "a?b");
	expect("\x80", "?");				/* lone continuation */
	expect("\xc3", "?");				/* cut before its end */
	expect("x\xe2\x82", "x??");
	expect("\xc0\xaf", "??");			/* overlong '/' */
	expect("\xc1\xbf", "??");
	expect("\xe0\x80\xaf", "???");			/* overlong, 3 bytes */
	expect("\xf0\x80\x80\xaf", "????");		/* overlong, 4 bytes */
	expect("\xed\xa0\x80", "???");			/* surrogate U+D800 */
	expect("\xed\xbf\xbf", "???");			/* surrogate U+DFFF */
	expect("\xf4\x90\x80\x80", "????");		/* U+110000 */
	expect("\xf5\x80\x80\x80", "????");
	expect("\xc3\xa9\xc3", "\xc3\xa9?");		/* a name cut short */
}
END_TEST

/* Every 1-, 2- and 3-byte string of interesting bytes comes out valid. */
START_TEST(test_exhaustive_short)
{
	static const unsigned char b[] = { 0x01, 0x41, 0x7f, 0x80, 0x8f, 0x90,
	    0x9f, 0xa0, 0xbf, 0xc0, 0xc1, 0xc2, 0xdf, 0xe0, 0xe1, 0xed, 0xef,
	    0xf0, 0xf1, 0xf4, 0xf5, 0xff };
	size_t n = sizeof b;
	char buf[8];

	for (size_t i = 0; i < n; i++)
		for (size_t j = 0; j < n; j++)
			for (size_t k = 0; k < n; k++)
				for (size_t l = 0; l < n; l++) {
					json_t *s;
					buf[0] = (char)b[i];
					buf[1] = (char)b[j];
					buf[2] = (char)b[k];
					buf[3] = (char)b[l];
					buf[4] = '\0';
					utf8_clean(buf);
					ck_assert_uint_eq(strlen(buf), 4);
					s = json_string(buf);
					ck_assert_ptr_nonnull(s);
					json_decref(s);
				}
}
END_TEST

/* Each line, and whether it starts a message (0) or continues it (1). */
struct joined {
	const char	*line;
	int		 joins;
};

static void
expect_joins(const struct joined *j)
{
	int state = 0;

	for (; j->line != NULL; j++)
		ck_assert_msg(log_joins(&state, j->line, strlen(j->line)) ==
		    j->joins, "line \"%s\" should %s", j->line, j->joins ?
		    "continue the message" : "begin a message");
}

START_TEST(test_join_traceback)
{
	static const struct joined j[] = {
		{ "consumer starting", 0 },
		{ "Traceback (most recent call last):", 0 },
		{ "  File \"/srv/c.py\", line 3, in <module>", 1 },
		{ "    deep()", 1 },
		{ "    ^^^^^^", 1 },
		{ "ValueError: boom", 1 },
		{ "next message", 0 },
		{ "another", 0 },
		{ NULL, 0 }
	};
	expect_joins(j);
}
END_TEST

START_TEST(test_join_chained)
{
	static const struct joined j[] = {
		{ "Traceback (most recent call last):", 0 },
		{ "  File \"a.py\", line 1, in f", 1 },
		{ "KeyError: 'x'", 1 },
		{ "", 1 },
		{ "During handling of the above exception, another exception "
		    "occurred:", 1 },
		{ "", 1 },
		{ "Traceback (most recent call last):", 1 },
		{ "  File \"a.py\", line 2, in f", 1 },
		{ "RuntimeError: y", 1 },
		{ "Traceback (most recent call last):", 0 },	/* a new one */
		{ "  File \"b.py\", line 1, in g", 1 },
		{ "OSError: z", 1 },
		{ "done", 0 },
		{ NULL, 0 }
	};
	expect_joins(j);
}
END_TEST

START_TEST(test_join_indented)
{
	static const struct joined j[] = {
		{ "  leading space first", 0 },	/* nothing to continue */
		{ "warning: disk nearly full", 0 },
		{ "  /var 97%", 1 },
		{ "\t/srv 99%", 1 },
		{ "", 0 },
		{ "plain", 0 },
		{ "plain again", 0 },
		{ NULL, 0 }
	};
	int state = 0;

	expect_joins(j);
	/* A traceback's frames are followed by more; a line is not. */
	log_joins(&state, "Traceback (most recent call last):", 34);
	ck_assert_int_eq(log_join_open(state), 1);
	log_joins(&state, "  File", 6);
	ck_assert_int_eq(log_join_open(state), 1);
	log_joins(&state, "E: x", 4);
	ck_assert_int_eq(log_join_open(state), 0);
	log_joins(&state, "plain", 5);
	ck_assert_int_eq(log_join_open(state), 0);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("log");
	TCase *tc = tcase_create("utf8_clean");
	SRunner *sr;
	int failed;

	tcase_add_test(tc, test_valid_kept);
	tcase_add_test(tc, test_invalid_replaced);
	tcase_add_test(tc, test_exhaustive_short);
	suite_add_tcase(s, tc);
	tc = tcase_create("log_joins");
	tcase_add_test(tc, test_join_traceback);
	tcase_add_test(tc, test_join_chained);
	tcase_add_test(tc, test_join_indented);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed != 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
