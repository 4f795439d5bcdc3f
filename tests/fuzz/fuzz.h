/*
 * fuzz.h - what the libFuzzer harnesses share: an invariant check that
 * stays on whatever NDEBUG says, and the splitting of an input into
 * separately allocated evbuffer chains.
 */
#ifndef CNS_FUZZ_H
#define CNS_FUZZ_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

/*
 * An invariant broken is a finding: say which, then abort so libFuzzer
 * stops, saves the input and exits non-zero.
 */
#define FUZZ_CHECK(cond) do {						\
	if (!(cond)) {							\
		fprintf(stderr, "%s:%d: invariant broken: %s\n",	\
		    __FILE__, __LINE__, #cond);				\
		abort();						\
	}								\
} while (0)

/*
 * Add `data` to `b` in pieces of `piece` bytes (0: one piece).  Real input
 * arrives in several reads, so lines and frames straddle chain boundaries;
 * references keep each piece in a chain of its own instead of letting
 * evbuffer_add() pack them together.  `data` must outlive `b`.
 */
static inline void
fuzz_add_pieces(struct evbuffer *b, const uint8_t *data, size_t size,
    size_t piece)
{
	if (piece == 0)
		piece = size;
	for (size_t off = 0; off < size; off += piece) {
		size_t n = size - off < piece ? size - off : piece;
		if (evbuffer_add_reference(b, data + off, n, NULL, NULL) == -1)
			abort();
	}
}

#endif /* CNS_FUZZ_H */
