#!/usr/bin/env node
// submit.js - a consumersd client in Node.js, with nothing but Node's own
// modules: the whole client protocol (doc/protocol.md) in one short file.
//
//   node submit.js [-s SOCKET] [-w WORKERS] [-p PARAMS] POOL [ITEM...]
//
// Each ITEM argument is one JSON text (quote strings: '"a"'); with no
// ITEM, the items are the lines of standard input (NDJSON).  It prints
// "results: JSON" and "completion: JSON" on standard output, rejected
// and quarantined items on standard error, and exits 0 when every item
// was consumed, 1 when the stream was refused or had rejections or
// errors, 2 when the daemon could not be reached or on a usage error.
//
// The socket is -s, else $CONSUMERS_SOCKET, else the system default
// (/run/consumersd/consumersd.sock; the consumers CLI of a build with
// another --runstatedir has another default: use -s or the variable).
'use strict';

const net = require('node:net');
const readline = require('node:readline');
const { once } = require('node:events');

function usage() {
  console.error('usage: node submit.js [-s socket] [-w workers] ' +
                '[-p params-json] POOL [ITEM-JSON...]');
  process.exit(2);
}

// -- the command line --
const args = process.argv.slice(2);
let socketPath = process.env.CONSUMERS_SOCKET || '/run/consumersd/consumersd.sock';
const header = { op: 'submit' };          // section 2: the header line
while (args.length > 0 && args[0].startsWith('-') && args[0] !== '-') {
  const opt = args.shift();
  const val = args.shift();
  if (val === undefined) usage();
  if (opt === '-s') socketPath = val;
  else if (opt === '-w') header.workers = Number(val);
  else if (opt === '-p') header.params = JSON.parse(val);
  else usage();
}
if (args.length < 1) usage();
header.pool = args.shift();
const items = args;                       // JSON texts; none: read stdin
if (items.some((text) => text.includes('\n') || text === '')) usage();

// -- replies: one JSON object per line (sections 3, 5, 7 and 8) --
let lastLine = null;                      // the refusal or the final line
let rejected = 0;
let pending = '';

function reply(msg) {
  if (msg.rejected !== null && typeof msg.rejected === 'object') {
    rejected++;                           // {"rejected":{"seq":N,"error":...}}
    console.error(`item ${msg.rejected.seq} rejected: ${msg.rejected.error}`);
  } else if (msg.quarantined !== null && typeof msg.quarantined === 'object') {
    rejected++;                           // {"quarantined":{"seq":N,...}}
    console.error(`item ${msg.quarantined.seq} quarantined: ` +
                  msg.quarantined.reason);
  } else if ('items' in msg || msg.ok === false) {
    lastLine = msg;                       // the final line, or a refusal
  } else if (msg.ok === true) {
    console.error(`stream ${msg.stream}: ${msg.workers} consumer(s)`);
  }
}

const sock = net.createConnection({ path: socketPath, allowHalfOpen: true });

// Replies are read as they come, while the items are still being written:
// the daemon stops reading a client that leaves its replies unread.
sock.setEncoding('utf8');
sock.on('data', (chunk) => {
  const lines = (pending + chunk).split('\n');
  pending = lines.pop();                  // an incomplete last line waits
  for (const line of lines)
    if (line.trim() !== '') reply(JSON.parse(line));
});

sock.on('error', (err) => {
  if (lastLine !== null) return;          // writes after a refusal: EPIPE
  console.error(`submit.js: cannot talk to consumersd at ${socketPath}: ` +
                `${err.message} (is the daemon running? use -s or ` +
                '$CONSUMERS_SOCKET)');
  process.exit(2);
});

// The daemon closes the connection after the last line.
sock.on('close', () => {
  if (lastLine === null) {
    console.error('submit.js: the daemon closed the connection without a ' +
                  'final line (its log says why)');
    process.exit(2);
  }
  if (lastLine.ok === false && !('items' in lastLine)) {
    console.error(`submit.js: refused: ${lastLine.error}`);
    process.exit(1);
  }
  console.log(`results: ${JSON.stringify(lastLine.results)}`);
  console.log(`completion: ${JSON.stringify(lastLine.completion)}`);
  for (const e of lastLine.errors)
    console.error(`error (${e.stage}${'worker' in e ? ', worker ' + e.worker : ''}): ` +
                  e.error);
  process.exit(lastLine.ok && rejected === 0 ? 0 : 1);
});

// Write one line; wait when the socket's buffer is full (backpressure:
// the daemon reads no faster than its consumers take the items).
async function send(line) {
  if (lastLine !== null || sock.destroyed) return;
  if (!sock.write(line + '\n')) {
    try {
      await once(sock, 'drain');
    } catch {
      // The connection failed: the 'error' and 'close' handlers report it.
    }
  }
}

sock.on('connect', async () => {
  await send(JSON.stringify(header));     // the header first, one line
  if (items.length > 0) {
    // As given: the daemon rejects what is not JSON, naming the item.
    for (const text of items) await send(text);
  } else {
    const rl = readline.createInterface({ input: process.stdin,
                                          crlfDelay: Infinity });
    for await (const line of rl)
      if (line !== '') await send(line);   // empty lines are not items
  }
  sock.end();   // half-close (shutdown SHUT_WR): the end of the items
});
