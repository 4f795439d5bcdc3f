#!/usr/bin/env python3
"""Write the seed corpus of fuzz_frame: master <-> worker frames as
src/proto.h lays them out (16-byte header in host byte order: u16 version,
u16 type, u32 payload length, u64 stream id; then the payload).

The seeds are committed; run this again only when proto.h changes:

    python3 tests/fuzz/make_frame_seeds.py tests/fuzz/corpus/frame
"""

import json
import os
import struct
import sys

VERSION = 1
# master -> worker
F_BEGIN, F_ITEMS, F_END, F_COMPLETE = 1, 2, 3, 4
# worker -> master
F_READY, F_INITFAIL, F_ACK, F_REJECT, F_RESULT, F_COMPLETION = range(64, 70)


def frame(ftype, payload=b"", stream=7, version=VERSION, length=None):
    if length is None:
        length = len(payload)
    return struct.pack("=HHIQ", version, ftype, length, stream) + payload


def js(value):
    return json.dumps(value, separators=(",", ":")).encode()


def items(first, lines):
    body = b"".join(line + b"\n" for line in lines)
    return struct.pack("=QI", first, len(lines)) + body


SEEDS = {
    # What a worker sends, one frame each.
    "ready": frame(F_READY, js({"complete": True}), stream=0),
    "ready-nocomplete": frame(F_READY, js({"complete": False}), stream=0),
    "initfail": frame(F_INITFAIL, b"plugin.so: cannot open shared object",
                      stream=0),
    "ack": frame(F_ACK, struct.pack("=II", 3, 42)),
    "reject": frame(F_REJECT, struct.pack("=Q", 2) +
                    b"invalid JSON: '[' or '{' expected near 'x' at column 1"),
    "result": frame(F_RESULT, js({"result": "a-b-c", "error": None,
                                  "consumed": 3, "rejected": 1,
                                  "skipped": 0})),
    "result-error": frame(F_RESULT, js({"result": None, "error": "db down",
                                        "consumed": 0, "rejected": 0,
                                        "skipped": 4})),
    "completion": frame(F_COMPLETION, js({"completion": [1, 2, 3],
                                          "error": None})),
    # A worker's whole stream in one read.
    "worker-stream": (frame(F_READY, js({"complete": True}), stream=0) +
                      frame(F_ACK, struct.pack("=II", 2, 10)) +
                      frame(F_REJECT, struct.pack("=Q", 2) + b"bad") +
                      frame(F_RESULT, js({"result": 1, "consumed": 1,
                                          "rejected": 1, "skipped": 0})) +
                      frame(F_COMPLETION, js({"completion": 1}))),
    # What the master sends.
    "master-stream": (frame(F_BEGIN, js({"params": {"k": [1, "two"]}})) +
                      frame(F_ITEMS, items(1, [b'{"a":1}', b'"b"', b"x"])) +
                      frame(F_END) +
                      frame(F_COMPLETE, js({"results": ["r1", "r2"],
                                            "params": None}))),
    # Broken ones: wrong version, bad lengths, a truncated payload,
    # a type from the wrong direction.
    "bad-version": frame(F_READY, js({"complete": True}), version=2),
    "bad-ack-len": frame(F_ACK, struct.pack("=III", 1, 2, 3)),
    "bad-reject-short": frame(F_REJECT, b"\x01\x02\x03"),
    "truncated": frame(F_RESULT, js({"result": 1}), length=4096),
    "wrong-direction": frame(F_ITEMS, items(1, [b"1"])),
    "not-object": frame(F_RESULT, js([1, 2, 3])),
    "reject-bad-utf8": frame(F_REJECT, struct.pack("=Q", 1) +
                             b"cut \xe2\x82 in the middle \xff\xfe"),
}


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "corpus", "frame")
    os.makedirs(out, exist_ok=True)
    for name, data in sorted(SEEDS.items()):
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
    print("wrote %d seeds to %s" % (len(SEEDS), out))


if __name__ == "__main__":
    main()
