// The local provider of the delivery bench: answers every POST with 200 JSON after a fixed
// delay (default 50 ms), records when each delivery arrived, and can hold requests (a gate) so
// a backlog can be preloaded before the timed run. Node's `http`, one process: it answers
// several thousand requests per second, far above what the bench offers it.
//
//   node provider.js --port 0 --delay-ms 50      prints {"port": N} on stdout when listening
//
// Control (same port, paths under /_ctl/): GET stats, POST hold, POST release, POST reset,
// POST delay?ms=N, GET receipts (delivery id -> arrival time, Unix ms, sub-ms resolution),
// GET turnarounds ([arrival, ms since the previous answer on that connection] per request).
'use strict';

const http = require('http');
const { performance } = require('perf_hooks');

const args = process.argv.slice(2);
function option(name, fallback) {
  const index = args.indexOf(`--${name}`);
  return index >= 0 ? args[index + 1] : fallback;
}

let delayMs = Number(option('delay-ms', '50'));
const port = Number(option('port', '0'));
const nowMs = () => performance.timeOrigin + performance.now();
const REPLY = Buffer.from('{"ok":true,"status":"accepted"}');

let state;
function reset() {
  state = {
    received: 0,
    completed: 0,
    firstReceivedMs: null,
    lastCompletedMs: null,
    receipts: new Map(),
    // Turnaround: from an answer to the next request on the same keep-alive connection, i.e.
    // how long the client took to reuse its slot (its own overhead between two calls).
    turnarounds: [],
    held: [],
    holding: false,
  };
}
reset();

function answer(res) {
  res.socket.answeredMs = nowMs();
  res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': REPLY.length });
  res.end(REPLY);
  state.completed += 1;
  state.lastCompletedMs = nowMs();
}

function later(res) {
  if (delayMs > 0) setTimeout(answer, delayMs, res);
  else answer(res);
}

function control(req, res, url) {
  let body = {};
  switch (url.pathname) {
    case '/_ctl/stats':
      body = {
        received: state.received,
        completed: state.completed,
        held: state.held.length,
        holding: state.holding,
        first_received_ms: state.firstReceivedMs,
        last_completed_ms: state.lastCompletedMs,
        now_ms: nowMs(),
      };
      break;
    case '/_ctl/hold':
      state.holding = true;
      break;
    case '/_ctl/release': {
      const released = state.held;
      state.holding = false;
      state.held = [];
      body = { released: released.length, released_ms: nowMs() };
      for (const held of released) later(held);
      break;
    }
    case '/_ctl/reset':
      for (const held of state.held) answer(held);
      reset();
      break;
    case '/_ctl/delay':
      delayMs = Number(url.searchParams.get('ms'));
      break;
    case '/_ctl/turnarounds':
      body = state.turnarounds;
      break;
    case '/_ctl/receipts':
      body = Object.fromEntries(state.receipts);
      break;
    default:
      res.writeHead(404);
      res.end();
      return;
  }
  const data = Buffer.from(JSON.stringify(body));
  res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': data.length });
  res.end(data);
}

const server = http.createServer((req, res) => {
  if (req.url.startsWith('/_ctl/')) {
    req.resume();
    req.on('end', () => control(req, res, new URL(req.url, 'http://provider')));
    return;
  }
  const arrived = nowMs();
  state.received += 1;
  const answered = req.socket.answeredMs;
  if (answered !== undefined && !state.holding) state.turnarounds.push([arrived, arrived - answered]);
  if (state.firstReceivedMs === null) state.firstReceivedMs = arrived;
  const id = req.headers['tidings-delivery-id'];
  if (id) state.receipts.set(id, arrived);
  req.resume(); // the body is not needed: drain it
  req.on('end', () => {
    if (state.holding) state.held.push(res);
    else later(res);
  });
});
server.keepAliveTimeout = 120000;
server.headersTimeout = 121000;
server.requestTimeout = 0;
server.listen(port, '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ port: server.address().port }) + '\n');
});
process.on('SIGTERM', () => process.exit(0));
