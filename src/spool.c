/*
 * spool.c - the replay spool: an unlinked file per lane that keeps every
 * batch of lines a consume call has taken, so a new worker can run the
 * call again after a crash.  Records are a 16-byte header (first seq,
 * count, bytes) and the lines, as the master sent them.  The file lives
 * in spool_dir, not in RAM; it vanishes with its descriptor.
 */
#include <sys/stat.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>

#include "consumersd.h"

#define SPOOL_IOV	64

/* Whether a replay/redeliver pool of `c` can spool; 0, or -1 with why. */
int
spool_check(const struct conf *c, char *why, size_t whylen)
{
	int fd, need = 0;

	for (size_t i = 0; i < c->npools; i++)
		need |= crash_spools(c->pools[i].on_crash);
	if (!need)
		return 0;
	if ((fd = spool_open(c->spool_dir)) == -1) {
		snprintf(why, whylen, "cannot create replay spool files in %s: "
		    "%s (set \"spool_dir\" to a writable directory, or "
		    "\"on_crash\": \"fail\" in every pool)", c->spool_dir,
		    strerror(errno));
		return -1;
	}
	close(fd);
	return 0;
}

/* A new, already unlinked spool file in `dir`; -1 with errno. */
int
spool_open(const char *dir)
{
	char *path;
	int fd, saved;

#ifdef O_TMPFILE
	fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (fd != -1 || (errno != EOPNOTSUPP && errno != EISDIR &&
	    errno != EINVAL))
		return fd;
#endif
	if (asprintf(&path, "%s/.consumersd-spool.XXXXXX", dir) == -1)
		fatal("%s: asprintf", __func__);
	fd = mkostemp(path, O_CLOEXEC);
	saved = errno;
	if (fd != -1)
		unlink(path);
	free(path);
	errno = saved;
	return fd;
}

/*
 * Stage one record: the first `nbytes` of `in` (left in place) hold
 * `count` lines from seq `first`.  Staged records reach the file with
 * spool_flush, many per write.
 */
void
spool_stage(struct evbuffer *stage, uint64_t first, uint32_t count,
    struct evbuffer *in, size_t nbytes)
{
	struct spool_rec r = { first, count, (uint32_t)nbytes };
	struct evbuffer_iovec v[SPOOL_IOV];
	struct evbuffer_ptr pos;
	size_t done = 0;

	evbuffer_add(stage, &r, sizeof r);
	evbuffer_ptr_set(in, &pos, 0, EVBUFFER_PTR_SET);
	while (done < nbytes) {
		int n = evbuffer_peek(in, (ev_ssize_t)(nbytes - done), &pos, v,
		    SPOOL_IOV);
		size_t chunk = 0;
		if (n > SPOOL_IOV)
			n = SPOOL_IOV;
		if (n <= 0)
			fatalx("%s: fewer bytes than the record says", __func__);
		for (int i = 0; i < n; i++) {
			size_t len = v[i].iov_len;
			if (len > nbytes - done - chunk)
				len = nbytes - done - chunk;
			evbuffer_add(stage, v[i].iov_base, len);
			chunk += len;
		}
		done += chunk;
		evbuffer_ptr_set(in, &pos, chunk, EVBUFFER_PTR_ADD);
	}
}

/* Write what is staged to the end of the file; -1 with errno. */
int
spool_flush(int fd, struct evbuffer *stage)
{
	while (evbuffer_get_length(stage) > 0) {
		int w = evbuffer_write(stage, fd);
		if (w == -1 && errno == EINTR)
			continue;
		if (w <= 0) {
			if (w == 0)
				errno = ENOSPC;
			return -1;
		}
	}
	return 0;
}

static int
spool_pread(int fd, void *buf, size_t len, uint64_t off)
{
	size_t got = 0;

	while (got < len) {
		ssize_t r = pread(fd, (char *)buf + got, len - got,
		    (off_t)(off + got));
		if (r == -1 && errno == EINTR)
			continue;
		if (r <= 0) {
			if (r == 0)
				errno = EIO;
			return -1;
		}
		got += (size_t)r;
	}
	return 0;
}

/* The record header at `off`; -1 with errno. */
int
spool_rec_at(int fd, uint64_t off, struct spool_rec *r)
{
	if (spool_pread(fd, r, sizeof *r, off) == -1)
		return -1;
	if (r->count == 0 || r->nbytes == 0 || r->nbytes > FRAME_MAX) {
		errno = EIO;
		return -1;
	}
	return 0;
}

/* The lines of the record at `off`, in a buffer the caller frees. */
char *
spool_lines(int fd, uint64_t off, const struct spool_rec *r)
{
	char *buf;

	if ((buf = malloc(r->nbytes)) == NULL)
		fatal("%s: malloc", __func__);
	if (spool_pread(fd, buf, r->nbytes, off + sizeof *r) == -1) {
		free(buf);
		return NULL;
	}
	return buf;
}

/* The line of `seq`, as a NUL-terminated copy; NULL if not spooled. */
char *
spool_find(int fd, uint64_t len, uint64_t seq)
{
	struct spool_rec r;
	uint64_t off = 0;

	while (off < len) {
		if (spool_rec_at(fd, off, &r) == -1)
			return NULL;
		if (seq >= r.first && seq < r.first + r.count) {
			char *buf = spool_lines(fd, off, &r), *p, *nl, *out;
			if (buf == NULL)
				return NULL;
			p = buf;
			for (uint64_t s = r.first; s < seq; s++) {
				nl = memchr(p, '\n', r.nbytes - (size_t)(p -
				    buf));
				if (nl == NULL) {
					free(buf);
					return NULL;
				}
				p = nl + 1;
			}
			nl = memchr(p, '\n', r.nbytes - (size_t)(p - buf));
			out = nl != NULL ? strndup(p, (size_t)(nl - p)) : NULL;
			free(buf);
			return out;
		}
		off += sizeof r + r.nbytes;
	}
	return NULL;
}
