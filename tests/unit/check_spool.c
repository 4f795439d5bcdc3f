/*
 * check_spool.c - unit tests for src/spool.c: records staged from an
 * evbuffer (left in place, across many chains) and flushed, read back by
 * offset, a line found by its seq, a spool file that is unlinked from
 * the start, and the errors: a write to a full disk, reads of a file
 * shorter than its records say.
 */
#include <sys/stat.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <check.h>
#include <event2/buffer.h>

#include "consumersd.h"

static char	 dir[] = "/tmp/check_spool.XXXXXX";

static void
setup(void)
{
	strcpy(dir, "/tmp/check_spool.XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void
teardown(void)
{
	rmdir(dir);
}

START_TEST(test_open_is_unlinked)
{
	struct stat st;
	int fd = spool_open(dir);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(fstat(fd, &st), 0);
	ck_assert_uint_eq(st.st_nlink, 0);	/* no name: nothing left over */
	/* The directory holds no name for it: it can go at once. */
	ck_assert_int_eq(rmdir(dir), 0);
	ck_assert_int_eq(mkdir(dir, 0700), 0);
	close(fd);
}
END_TEST

/* Stage one record and write it at once; its size, or -1. */
static ssize_t
append(int fd, uint64_t first, uint32_t count, struct evbuffer *in,
    size_t nbytes)
{
	struct evbuffer *st = evbuffer_new();
	ssize_t n;

	spool_stage(st, first, count, in, nbytes);
	n = (ssize_t)evbuffer_get_length(st);
	if (spool_flush(fd, st) == -1)
		n = -1;
	ck_assert_uint_eq(evbuffer_get_length(st), 0);
	evbuffer_free(st);
	return n;
}

START_TEST(test_open_bad_dir)
{
	ck_assert_int_eq(spool_open("/nonexistent/spool/dir"), -1);
	ck_assert_int_eq(errno, ENOENT);
}
END_TEST

/* Lines in `in` as many small chains, the way client reads arrive. */
static struct evbuffer *
chained(const char *text)
{
	struct evbuffer *b = evbuffer_new();

	for (size_t off = 0, len = strlen(text); off < len; off += 3)
		evbuffer_add(b, text + off, len - off < 3 ? len - off : 3);
	return b;
}

START_TEST(test_append_read_back)
{
	const char *a = "1\n22\n333\n", *b = "\"x\"\n{\"k\":[1,2]}\n";
	struct evbuffer *in = chained(a);
	struct spool_rec r;
	uint64_t off = 0;
	ssize_t n;
	char *lines;
	int fd = spool_open(dir);

	ck_assert_int_ge(fd, 0);
	n = append(fd, 1, 3, in, strlen(a));
	ck_assert_int_eq(n, (ssize_t)(sizeof r + strlen(a)));
	/* The caller moves the bytes on; the spool only copied them. */
	ck_assert_uint_eq(evbuffer_get_length(in), strlen(a));
	evbuffer_free(in);
	off += (uint64_t)n;
	in = chained(b);
	evbuffer_add(in, "tail-not-spooled", 16);
	n = append(fd, 4, 2, in, strlen(b));
	ck_assert_int_eq(n, (ssize_t)(sizeof r + strlen(b)));
	evbuffer_free(in);

	ck_assert_int_eq(spool_rec_at(fd, 0, &r), 0);
	ck_assert_uint_eq(r.first, 1);
	ck_assert_uint_eq(r.count, 3);
	ck_assert_uint_eq(r.nbytes, strlen(a));
	lines = spool_lines(fd, 0, &r);
	ck_assert_mem_eq(lines, a, strlen(a));
	free(lines);
	ck_assert_int_eq(spool_rec_at(fd, off, &r), 0);
	ck_assert_uint_eq(r.first, 4);
	ck_assert_uint_eq(r.count, 2);
	lines = spool_lines(fd, off, &r);
	ck_assert_mem_eq(lines, b, strlen(b));
	free(lines);
	/* Past the end there is no record. */
	ck_assert_int_eq(spool_rec_at(fd, off + (uint64_t)n, &r), -1);
	close(fd);
}
END_TEST

START_TEST(test_find)
{
	const char *a = "1\n22\n333\n", *b = "\"x\"\n{\"k\":[1,2]}\n";
	struct evbuffer *in = chained(a);
	uint64_t len = 0;
	char *line;
	int fd = spool_open(dir);

	len += (uint64_t)append(fd, 10, 3, in, strlen(a));
	evbuffer_free(in);
	in = chained(b);
	len += (uint64_t)append(fd, 20, 2, in, strlen(b));
	evbuffer_free(in);
	line = spool_find(fd, len, 11);
	ck_assert_str_eq(line, "22");
	free(line);
	line = spool_find(fd, len, 12);
	ck_assert_str_eq(line, "333");
	free(line);
	line = spool_find(fd, len, 21);
	ck_assert_str_eq(line, "{\"k\":[1,2]}");
	free(line);
	ck_assert_ptr_null(spool_find(fd, len, 13));	/* a gap */
	ck_assert_ptr_null(spool_find(fd, len, 9));
	ck_assert_ptr_null(spool_find(fd, len, 22));
	close(fd);
}
END_TEST

static void
free_ref(const void *data, size_t len, void *extra)
{
	(void)len;
	(void)extra;
	free((void *)data);
}

/* A batch larger than one pwritev's worth of chains. */
START_TEST(test_many_chains)
{
	struct evbuffer *in = evbuffer_new();
	struct spool_rec r;
	char *lines, *want;
	size_t n = 5000, len;
	int fd = spool_open(dir);

	for (size_t i = 0; i < n; i++) {
		char line[16];
		int k = snprintf(line, sizeof line, "%zu\n", i);
		/* One chain per line: evbuffer_add_reference keeps them
		 * apart. */
		char *copy = strdup(line);
		evbuffer_add_reference(in, copy, (size_t)k, free_ref, NULL);
	}
	len = evbuffer_get_length(in);
	want = malloc(len);
	evbuffer_copyout(in, want, len);
	ck_assert_int_eq(append(fd, 1, (uint32_t)n, in, len),
	    (ssize_t)(sizeof r + len));
	ck_assert_int_eq(spool_rec_at(fd, 0, &r), 0);
	lines = spool_lines(fd, 0, &r);
	ck_assert_mem_eq(lines, want, len);
	free(lines);
	free(want);
	evbuffer_free(in);
	close(fd);
}
END_TEST

/* Records staged one after another land in one write, in order. */
START_TEST(test_stage_many_flush_once)
{
	struct evbuffer *st = evbuffer_new(), *in = evbuffer_new();
	struct spool_rec r;
	uint64_t off = 0;
	char *lines;
	int fd = spool_open(dir);

	for (unsigned i = 0; i < 100; i++) {
		evbuffer_add_printf(in, "%u\n%u\n", i * 2 + 1, i * 2 + 2);
		spool_stage(st, i * 2 + 1, 2, in, evbuffer_get_length(in));
		evbuffer_drain(in, evbuffer_get_length(in));
	}
	ck_assert_int_eq(spool_flush(fd, st), 0);
	for (unsigned i = 0; i < 100; i++) {
		char want[32];
		int k = snprintf(want, sizeof want, "%u\n%u\n", i * 2 + 1,
		    i * 2 + 2);
		ck_assert_int_eq(spool_rec_at(fd, off, &r), 0);
		ck_assert_uint_eq(r.first, i * 2 + 1);
		ck_assert_uint_eq(r.count, 2);
		ck_assert_uint_eq(r.nbytes, (unsigned)k);
		lines = spool_lines(fd, off, &r);
		ck_assert_mem_eq(lines, want, (size_t)k);
		free(lines);
		off += sizeof r + r.nbytes;
	}
	evbuffer_free(st);
	evbuffer_free(in);
	close(fd);
}
END_TEST

/* A disk with no room left: the flush fails with ENOSPC, and keeps what
 * it could not write staged (nothing is lost). */
START_TEST(test_flush_no_space)
{
	struct evbuffer *st = evbuffer_new(), *in = evbuffer_new();
	struct spool_rec r;
	size_t staged;
	int fd = open("/dev/full", O_WRONLY | O_CLOEXEC);

	ck_assert_int_ge(fd, 0);
	evbuffer_add_printf(in, "1\n2\n3\n");
	spool_stage(st, 1, 3, in, evbuffer_get_length(in));
	staged = evbuffer_get_length(st);
	ck_assert_uint_eq(staged, sizeof r + 6);
	errno = 0;
	ck_assert_int_eq(spool_flush(fd, st), -1);
	ck_assert_int_eq(errno, ENOSPC);
	ck_assert_uint_eq(evbuffer_get_length(st), staged);
	evbuffer_free(st);
	evbuffer_free(in);
	close(fd);
}
END_TEST

/* A file cut short: a record header, or a record's lines, past its end
 * are an I/O error (EIO), not a short record; spool_find finds nothing. */
START_TEST(test_truncated)
{
	const char *a = "1\n22\n333\n";
	struct evbuffer *in = chained(a);
	struct spool_rec r, full;
	ssize_t n;
	int fd = spool_open(dir);

	ck_assert_int_ge(fd, 0);
	n = append(fd, 1, 3, in, strlen(a));
	ck_assert_int_eq(n, (ssize_t)(sizeof r + strlen(a)));
	evbuffer_free(in);
	ck_assert_int_eq(spool_rec_at(fd, 0, &full), 0);

	/* The header whole, the lines short by one byte. */
	ck_assert_int_eq(ftruncate(fd, n - 1), 0);
	ck_assert_int_eq(spool_rec_at(fd, 0, &r), 0);
	errno = 0;
	ck_assert_ptr_null(spool_lines(fd, 0, &r));
	ck_assert_int_eq(errno, EIO);
	ck_assert_ptr_null(spool_find(fd, (uint64_t)n, 2));

	/* Half a header. */
	ck_assert_int_eq(ftruncate(fd, (off_t)(sizeof r / 2)), 0);
	errno = 0;
	ck_assert_int_eq(spool_rec_at(fd, 0, &r), -1);
	ck_assert_int_eq(errno, EIO);
	errno = 0;
	ck_assert_ptr_null(spool_lines(fd, 0, &full));
	ck_assert_int_eq(errno, EIO);
	ck_assert_ptr_null(spool_find(fd, (uint64_t)n, 1));

	/* Nothing at all. */
	ck_assert_int_eq(ftruncate(fd, 0), 0);
	errno = 0;
	ck_assert_int_eq(spool_rec_at(fd, 0, &r), -1);
	ck_assert_int_eq(errno, EIO);
	close(fd);
}
END_TEST

/* A header that cannot be one (no lines, or more bytes than a frame may
 * hold) is refused with EIO rather than trusted. */
START_TEST(test_bad_header)
{
	struct spool_rec bad[] = {
		{ 1, 0, 4 },			/* no lines */
		{ 1, 2, 0 },			/* no bytes */
		{ 1, 2, (uint32_t)FRAME_MAX + 1 },	/* too large */
	};
	struct spool_rec r;
	int fd = spool_open(dir);

	ck_assert_int_ge(fd, 0);
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		ck_assert_int_eq(pwrite(fd, &bad[i], sizeof bad[i], 0),
		    (ssize_t)sizeof bad[i]);
		errno = 0;
		ck_assert_int_eq(spool_rec_at(fd, 0, &r), -1);
		ck_assert_int_eq(errno, EIO);
	}
	close(fd);
}
END_TEST

static Suite *
spool_suite(void)
{
	Suite *s = suite_create("spool");
	TCase *tc = tcase_create("spool");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_open_is_unlinked);
	tcase_add_test(tc, test_open_bad_dir);
	tcase_add_test(tc, test_append_read_back);
	tcase_add_test(tc, test_find);
	tcase_add_test(tc, test_many_chains);
	tcase_add_test(tc, test_stage_many_flush_once);
	tcase_add_test(tc, test_flush_no_space);
	tcase_add_test(tc, test_truncated);
	tcase_add_test(tc, test_bad_header);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(spool_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed != 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
