/*
 * proto.h - the master <-> worker wire format.
 *
 * Every message is a 16-byte header followed by `len` payload bytes, in host
 * byte order (both ends are the same binary on the same machine).  The
 * receiver checks version, type, direction and length before it reads a
 * payload.  Item lines travel in batches: one ITEMS frame carries many lines.
 */
#ifndef CONSUMERSD_PROTO_H
#define CONSUMERSD_PROTO_H

#include <stdint.h>

#define FRAME_VERSION	1
#define FRAME_HDR_SIZE	16
#define FRAME_MAX	(256u << 20)	/* largest payload either way */

struct frame_hdr {
	uint16_t	version;	/* FRAME_VERSION */
	uint16_t	type;		/* enum frame_type */
	uint32_t	len;		/* payload bytes that follow */
	uint64_t	stream;		/* stream id, 0 when none */
};
_Static_assert(sizeof(struct frame_hdr) == FRAME_HDR_SIZE, "frame header");

enum frame_type {
	/* master -> worker: 1..63 */
	F_BEGIN = 1,	/* JSON {"params":P}: a stream is leased to you */
	F_ITEMS,	/* u64 first seq, u32 count, then count lines each
			   ending in '\n' */
	F_END,		/* no more items for this stream */
	F_COMPLETE,	/* JSON {"results":[...],"params":P}: run complete */
	F_MASTER_LAST = F_COMPLETE,

	/* worker -> master: 64..127 */
	F_READY = 64,	/* JSON {"complete":bool}: init done */
	F_INITFAIL,	/* text: why init (or loading) failed */
	F_ACK,		/* u32 items, u32 bytes consumed from the window */
	F_REJECT,	/* u64 seq, then text: why that line was rejected */
	F_RESULT,	/* JSON {"result":R,"error":E,"consumed":n,
			   "rejected":n,"skipped":n}: consume returned */
	F_COMPLETION,	/* JSON {"completion":C,"error":E} */
	F_WORKER_LAST = F_COMPLETION
};

#define ITEMS_HDR_SIZE	12	/* u64 first seq + u32 count */
#define ACK_SIZE	8
#define REJECT_MIN	8

#endif /* CONSUMERSD_PROTO_H */
