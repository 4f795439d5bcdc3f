/*
 * check_frame.c - unit tests for src/frame.c: header checks in each
 * direction, and frames written with frame_put/frame_put_json read back
 * with frame_pull over an evbuffer, byte by byte and back to back.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <event2/buffer.h>
#include <jansson.h>

#include "consumersd.h"

static const uint16_t master_types[] = { F_BEGIN, F_ITEMS, F_END, F_COMPLETE };
static const uint16_t worker_types[] = {
	F_READY, F_INITFAIL, F_ACK, F_REJECT, F_RESULT, F_COMPLETION
};
#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

/* A length each type accepts. */
static uint32_t
good_len(uint16_t type)
{
	switch (type) {
	case F_ITEMS:	return ITEMS_HDR_SIZE + 6;
	case F_END:	return 0;
	case F_ACK:	return ACK_SIZE;
	case F_REJECT:	return REJECT_MIN + 5;
	default:	return 17;
	}
}

static struct frame_hdr
hdr(uint16_t version, uint16_t type, uint32_t len)
{
	struct frame_hdr h = {
		.version = version, .type = type, .len = len, .stream = 42
	};
	return h;
}

/* frame_check, asserting it fails and says why. */
static void
assert_rejected(struct frame_hdr h, int from_worker)
{
	char why[256] = "";

	ck_assert_msg(frame_check(&h, from_worker, why, sizeof why) == -1,
	    "version %u type %u len %u from_worker %d accepted", h.version,
	    h.type, h.len, from_worker);
	ck_assert_msg(why[0] != '\0', "no reason for type %u len %u", h.type,
	    h.len);
}

static void
assert_accepted(struct frame_hdr h, int from_worker)
{
	char why[256] = "";

	ck_assert_msg(frame_check(&h, from_worker, why, sizeof why) == 0,
	    "version %u type %u len %u from_worker %d rejected: %s",
	    h.version, h.type, h.len, from_worker, why);
}

START_TEST(test_check_valid_master)
{
	for (size_t i = 0; i < NELEM(master_types); i++)
		assert_accepted(hdr(FRAME_VERSION, master_types[i],
		    good_len(master_types[i])), 0);
	/* The limits themselves are fine. */
	assert_accepted(hdr(FRAME_VERSION, F_ITEMS, ITEMS_HDR_SIZE), 0);
	assert_accepted(hdr(FRAME_VERSION, F_ITEMS, FRAME_MAX), 0);
	assert_accepted(hdr(FRAME_VERSION, F_BEGIN, 0), 0);
	assert_accepted(hdr(FRAME_VERSION, F_COMPLETE, FRAME_MAX), 0);
}
END_TEST

START_TEST(test_check_valid_worker)
{
	for (size_t i = 0; i < NELEM(worker_types); i++)
		assert_accepted(hdr(FRAME_VERSION, worker_types[i],
		    good_len(worker_types[i])), 1);
	assert_accepted(hdr(FRAME_VERSION, F_REJECT, REJECT_MIN), 1);
	assert_accepted(hdr(FRAME_VERSION, F_RESULT, FRAME_MAX), 1);
	assert_accepted(hdr(FRAME_VERSION, F_INITFAIL, 0), 1);
}
END_TEST

START_TEST(test_check_version)
{
	const uint16_t bad[] = { 0, FRAME_VERSION + 1, 0xffff };

	for (size_t i = 0; i < NELEM(bad); i++) {
		assert_rejected(hdr(bad[i], F_BEGIN, 17), 0);
		assert_rejected(hdr(bad[i], F_RESULT, 17), 1);
	}
}
END_TEST

START_TEST(test_check_direction)
{
	/* A worker's type from the master's side, and the other way. */
	for (size_t i = 0; i < NELEM(worker_types); i++)
		assert_rejected(hdr(FRAME_VERSION, worker_types[i],
		    good_len(worker_types[i])), 0);
	for (size_t i = 0; i < NELEM(master_types); i++)
		assert_rejected(hdr(FRAME_VERSION, master_types[i],
		    good_len(master_types[i])), 1);
	/* Types nobody sends. */
	const uint16_t none[] = {
		0, F_MASTER_LAST + 1, F_READY - 1, F_WORKER_LAST + 1, 127,
		0xffff
	};
	for (size_t i = 0; i < NELEM(none); i++) {
		assert_rejected(hdr(FRAME_VERSION, none[i], 17), 0);
		assert_rejected(hdr(FRAME_VERSION, none[i], 17), 1);
	}
}
END_TEST

START_TEST(test_check_too_long)
{
	assert_rejected(hdr(FRAME_VERSION, F_BEGIN, FRAME_MAX + 1), 0);
	assert_rejected(hdr(FRAME_VERSION, F_ITEMS, FRAME_MAX + 1), 0);
	assert_rejected(hdr(FRAME_VERSION, F_RESULT, FRAME_MAX + 1), 1);
	assert_rejected(hdr(FRAME_VERSION, F_INITFAIL, UINT32_MAX), 1);
}
END_TEST

START_TEST(test_check_type_lengths)
{
	for (uint32_t len = 0; len < ITEMS_HDR_SIZE; len++)
		assert_rejected(hdr(FRAME_VERSION, F_ITEMS, len), 0);
	for (uint32_t len = 0; len < 2 * ACK_SIZE; len++) {
		if (len == ACK_SIZE)
			assert_accepted(hdr(FRAME_VERSION, F_ACK, len), 1);
		else
			assert_rejected(hdr(FRAME_VERSION, F_ACK, len), 1);
	}
	for (uint32_t len = 0; len < REJECT_MIN; len++)
		assert_rejected(hdr(FRAME_VERSION, F_REJECT, len), 1);
	assert_accepted(hdr(FRAME_VERSION, F_END, 0), 0);
	assert_rejected(hdr(FRAME_VERSION, F_END, 1), 0);
	assert_rejected(hdr(FRAME_VERSION, F_END, 8), 0);
}
END_TEST

START_TEST(test_check_short_why)
{
	struct frame_hdr h = hdr(FRAME_VERSION + 1, F_BEGIN, 0);
	char why[8];

	memset(why, 'x', sizeof why);
	ck_assert_int_eq(frame_check(&h, 0, why, 5), -1);
	/* Truncated and terminated inside the length it was given. */
	ck_assert_uint_eq(strlen(why), 4);
	ck_assert_int_eq(why[5], 'x');
}
END_TEST

/* Build the frame in one buffer, the expected bytes in plain memory. */
START_TEST(test_put_layout)
{
	struct evbuffer *b = evbuffer_new();
	const char payload[] = "hello, worker";
	unsigned char raw[FRAME_HDR_SIZE + sizeof payload];
	struct frame_hdr h;

	frame_put(b, F_REJECT, 0x0102030405060708ull, payload,
	    sizeof payload - 1);
	ck_assert_uint_eq(evbuffer_get_length(b),
	    FRAME_HDR_SIZE + sizeof payload - 1);
	ck_assert_int_eq(evbuffer_remove(b, raw, sizeof raw),
	    (int)(FRAME_HDR_SIZE + sizeof payload - 1));
	memcpy(&h, raw, sizeof h);
	ck_assert_uint_eq(h.version, FRAME_VERSION);
	ck_assert_uint_eq(h.type, F_REJECT);
	ck_assert_uint_eq(h.len, sizeof payload - 1);
	ck_assert(h.stream == 0x0102030405060708ull);
	ck_assert_mem_eq(raw + FRAME_HDR_SIZE, payload, sizeof payload - 1);

	/* No payload: just a header. */
	frame_put(b, F_END, 9, NULL, 0);
	ck_assert_uint_eq(evbuffer_get_length(b), FRAME_HDR_SIZE);
	evbuffer_remove(b, &h, sizeof h);
	ck_assert_uint_eq(h.type, F_END);
	ck_assert_uint_eq(h.len, 0);
	ck_assert(h.stream == 9);

	/* A one-byte payload. */
	frame_put(b, F_INITFAIL, 1, "!", 1);
	ck_assert_uint_eq(evbuffer_get_length(b), FRAME_HDR_SIZE + 1);
	evbuffer_remove(b, &h, sizeof h);
	ck_assert_uint_eq(h.len, 1);
	ck_assert_mem_eq(evbuffer_pullup(b, 1), "!", 1);
	evbuffer_free(b);
}
END_TEST

/*
 * Feed the bytes of `src` one at a time into a fresh buffer: frame_pull
 * wants more until the whole frame is there, and drains nothing before.
 */
START_TEST(test_pull_partial)
{
	struct evbuffer *src = evbuffer_new(), *in = evbuffer_new();
	unsigned char payload[100], *bytes, got[100];
	struct frame_hdr h;
	char why[256];
	size_t total;

	for (size_t i = 0; i < sizeof payload; i++)
		payload[i] = (unsigned char)(i * 7 + 3);
	frame_put(src, F_RESULT, 77, payload, sizeof payload);
	total = evbuffer_get_length(src);
	ck_assert_uint_eq(total, FRAME_HDR_SIZE + sizeof payload);
	bytes = evbuffer_pullup(src, -1);

	for (size_t i = 0; i < total; i++) {
		int r;

		evbuffer_add(in, bytes + i, 1);
		memset(&h, 0, sizeof h);
		r = frame_pull(in, &h, why, sizeof why);
		if (i + 1 < total) {
			ck_assert_msg(r == 0, "%zu of %zu bytes: %d", i + 1,
			    total, r);
			ck_assert_uint_eq(evbuffer_get_length(in), i + 1);
		} else
			ck_assert_int_eq(r, 1);
	}
	ck_assert_uint_eq(h.version, FRAME_VERSION);
	ck_assert_uint_eq(h.type, F_RESULT);
	ck_assert_uint_eq(h.len, sizeof payload);
	ck_assert(h.stream == 77);
	/* The header is gone, the payload is at the front. */
	ck_assert_uint_eq(evbuffer_get_length(in), sizeof payload);
	evbuffer_remove(in, got, sizeof got);
	ck_assert_mem_eq(got, payload, sizeof payload);
	evbuffer_free(src);
	evbuffer_free(in);
}
END_TEST

/* A header split over separate chains reads the same. */
START_TEST(test_pull_chains)
{
	struct evbuffer *src = evbuffer_new(), *in = evbuffer_new();
	static unsigned char bytes[FRAME_HDR_SIZE + ACK_SIZE];
	uint32_t ack[2] = { 3, 999 }, got[2];
	struct frame_hdr h;
	char why[256];

	frame_put(src, F_ACK, 5, ack, sizeof ack);
	ck_assert_int_eq(evbuffer_remove(src, bytes, sizeof bytes),
	    (int)sizeof bytes);
	/* References are never merged: 3 + 10 + 5 + 6 bytes, 4 chains. */
	evbuffer_add_reference(in, bytes, 3, NULL, NULL);
	evbuffer_add_reference(in, bytes + 3, 10, NULL, NULL);
	ck_assert_int_eq(frame_pull(in, &h, why, sizeof why), 0);
	evbuffer_add_reference(in, bytes + 13, 5, NULL, NULL);
	ck_assert_int_eq(frame_pull(in, &h, why, sizeof why), 0);
	ck_assert_uint_eq(evbuffer_get_length(in), 18);
	evbuffer_add_reference(in, bytes + 18, 6, NULL, NULL);
	ck_assert_int_eq(frame_pull(in, &h, why, sizeof why), 1);
	ck_assert_uint_eq(h.type, F_ACK);
	ck_assert_uint_eq(h.len, ACK_SIZE);
	ck_assert(h.stream == 5);
	ck_assert_int_eq(evbuffer_remove(in, got, sizeof got),
	    (int)sizeof got);
	ck_assert_uint_eq(got[0], 3);
	ck_assert_uint_eq(got[1], 999);
	evbuffer_free(src);
	evbuffer_free(in);
}
END_TEST

START_TEST(test_put_json_round_trip)
{
	struct evbuffer *b = evbuffer_new();
	json_t *v = json_pack("{s:b,s:[i,s,n],s:s,s:f}", "complete", 1,
	    "list", -5, "x\"y\n", "s", "\xc3\xa9t\xc3\xa9", "r", 0.5);
	json_t *back;
	json_error_t jerr;
	struct frame_hdr h;
	char why[256];
	unsigned char *p;

	ck_assert_ptr_nonnull(v);
	frame_put_json(b, F_READY, 123, v);
	ck_assert_int_eq(frame_pull(b, &h, why, sizeof why), 1);
	ck_assert_uint_eq(h.type, F_READY);
	ck_assert(h.stream == 123);
	ck_assert_uint_eq(evbuffer_get_length(b), h.len);
	p = evbuffer_pullup(b, h.len);
	back = json_loadb((const char *)p, h.len, 0, &jerr);
	ck_assert_msg(back != NULL, "payload is not JSON: %s", jerr.text);
	ck_assert(json_equal(v, back));
	/* One line, no trailing NUL or newline in the payload. */
	ck_assert_ptr_null(memchr(p, '\n', h.len));
	ck_assert_ptr_null(memchr(p, '\0', h.len));
	json_decref(back);
	json_decref(v);

	/* A bare string is allowed too (JSON_ENCODE_ANY). */
	evbuffer_drain(b, evbuffer_get_length(b));
	v = json_string("just text");
	frame_put_json(b, F_INITFAIL, 0, v);
	ck_assert_int_eq(frame_pull(b, &h, why, sizeof why), 1);
	p = evbuffer_pullup(b, h.len);
	back = json_loadb((const char *)p, h.len, JSON_DECODE_ANY, &jerr);
	ck_assert_ptr_nonnull(back);
	ck_assert(json_equal(v, back));
	json_decref(back);
	json_decref(v);
	evbuffer_free(b);
}
END_TEST

static void
put_raw_hdr(struct evbuffer *b, uint16_t version, uint16_t type,
    uint32_t len)
{
	struct frame_hdr h = hdr(version, type, len);
	evbuffer_add(b, &h, sizeof h);
}

START_TEST(test_pull_malformed)
{
	struct evbuffer *b = evbuffer_new();
	struct frame_hdr h;
	char why[256];

	/* A master type on the master's input. */
	frame_put(b, F_BEGIN, 1, "{}", 2);
	why[0] = '\0';
	ck_assert_int_eq(frame_pull(b, &h, why, sizeof why), -1);
	ck_assert(why[0] != '\0');
	ck_assert_uint_eq(evbuffer_get_length(b), FRAME_HDR_SIZE + 2);
	evbuffer_drain(b, evbuffer_get_length(b));

	/* A wrong version, with the whole payload there. */
	put_raw_hdr(b, FRAME_VERSION + 1, F_RESULT, 2);
	evbuffer_add(b, "{}", 2);
	ck_assert_int_eq(frame_pull(b, &h, why, sizeof why), -1);
	evbuffer_drain(b, evbuffer_get_length(b));

	/* An oversized length is refused from the header alone, not waited
	 * for. */
	put_raw_hdr(b, FRAME_VERSION, F_RESULT, FRAME_MAX + 1);
	ck_assert_int_eq(frame_pull(b, &h, why, sizeof why), -1);
	evbuffer_drain(b, evbuffer_get_length(b));

	/* A bad ACK length too. */
	put_raw_hdr(b, FRAME_VERSION, F_ACK, 4);
	ck_assert_int_eq(frame_pull(b, &h, why, sizeof why), -1);
	evbuffer_drain(b, evbuffer_get_length(b));

	/* An incomplete header is not judged yet. */
	evbuffer_add(b, "\xff\xff\xff", 3);
	ck_assert_int_eq(frame_pull(b, &h, why, sizeof why), 0);
	evbuffer_free(b);
}
END_TEST

START_TEST(test_pull_back_to_back)
{
	struct evbuffer *b = evbuffer_new();
	uint32_t ack[2] = { 10, 2000 };
	const char *text = "line 17 is not a number";
	unsigned char rej[64];
	uint64_t seq = 17;
	struct {
		uint16_t type;
		uint64_t stream;
		const void *payload;
		size_t len;
	} f[4];
	struct frame_hdr h;
	char why[256];

	memcpy(rej, &seq, sizeof seq);
	memcpy(rej + sizeof seq, text, strlen(text));
	f[0].type = F_READY;	f[0].stream = 0;
	f[0].payload = "{\"complete\":true}"; f[0].len = 17;
	f[1].type = F_ACK;	f[1].stream = 3;
	f[1].payload = ack;	f[1].len = sizeof ack;
	f[2].type = F_COMPLETION; f[2].stream = 3;
	f[2].payload = NULL;	f[2].len = 0;
	f[3].type = F_REJECT;	f[3].stream = 4;
	f[3].payload = rej;	f[3].len = sizeof seq + strlen(text);
	for (int i = 0; i < 4; i++)
		frame_put(b, f[i].type, f[i].stream, f[i].payload, f[i].len);
	/* And a fifth whose payload is one byte short. */
	put_raw_hdr(b, FRAME_VERSION, F_RESULT, 2);
	evbuffer_add(b, "{", 1);

	for (int i = 0; i < 4; i++) {
		ck_assert_int_eq(frame_pull(b, &h, why, sizeof why), 1);
		ck_assert_uint_eq(h.type, f[i].type);
		ck_assert(h.stream == f[i].stream);
		ck_assert_uint_eq(h.len, f[i].len);
		if (f[i].len > 0)
			ck_assert_mem_eq(evbuffer_pullup(b, f[i].len),
			    f[i].payload, f[i].len);
		evbuffer_drain(b, h.len);
	}
	/* The fifth: header there, payload short by one byte. */
	ck_assert_uint_eq(evbuffer_get_length(b), FRAME_HDR_SIZE + 1);
	ck_assert_int_eq(frame_pull(b, &h, why, sizeof why), 0);
	ck_assert_uint_eq(evbuffer_get_length(b), FRAME_HDR_SIZE + 1);
	evbuffer_add(b, "}", 1);
	ck_assert_int_eq(frame_pull(b, &h, why, sizeof why), 1);
	ck_assert_uint_eq(h.type, F_RESULT);
	ck_assert(h.stream == 42);
	ck_assert_mem_eq(evbuffer_pullup(b, 2), "{}", 2);
	evbuffer_drain(b, 2);
	ck_assert_int_eq(frame_pull(b, &h, why, sizeof why), 0);
	evbuffer_free(b);
}
END_TEST

static Suite *
frame_suite(void)
{
	Suite *s = suite_create("frame");
	TCase *tc;

	tc = tcase_create("check");
	tcase_add_test(tc, test_check_valid_master);
	tcase_add_test(tc, test_check_valid_worker);
	tcase_add_test(tc, test_check_version);
	tcase_add_test(tc, test_check_direction);
	tcase_add_test(tc, test_check_too_long);
	tcase_add_test(tc, test_check_type_lengths);
	tcase_add_test(tc, test_check_short_why);
	suite_add_tcase(s, tc);

	tc = tcase_create("put_pull");
	tcase_add_test(tc, test_put_layout);
	tcase_add_test(tc, test_pull_partial);
	tcase_add_test(tc, test_pull_chains);
	tcase_add_test(tc, test_put_json_round_trip);
	tcase_add_test(tc, test_pull_malformed);
	tcase_add_test(tc, test_pull_back_to_back);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(frame_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed != 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
