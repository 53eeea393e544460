'use strict';
// The load client of `python -m bench.realtime`: the same client for every server.
//
// One process opens N subscriber connections (`ws` for Tidings, Node ws and `websockets`;
// `socket.io-client` for the Socket.IO servers), `concurrency` at a time, and talks to the
// harness in JSON lines: {"event":"ready"} once every subscriber is open (and, for Tidings, has
// its `hello`) and the warm-up broadcasts arrived; then, on "go" from stdin, the measured run;
// then {"event":"result"}. Every payload carries its index `i` and a time `t` (epoch ms): the
// server's send time in a burst, the scheduled send time when paced.
//
// Who sends: for the peers, a control connection asks the server to broadcast; for Tidings a
// sender connection (same user) issues `send` commands through the real path (validate,
// group-committed insert, outbox, backplane, hub) with the payload JSON as the message body.

const { performance } = require('perf_hooks');
const readline = require('readline');
const WebSocket = require('ws');
const { io } = require('socket.io-client');

const cfg = JSON.parse(process.argv[2]);
const now = () => performance.timeOrigin + performance.now();
const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

const N = cfg.n;
const kind = cfg.kind; // 'tidings' | 'ws' | 'sio'
const urls = cfg.urls;
const groups = urls.length;
const group = (k) => k % groups;

let expectedPer = 0; // messages each subscriber must receive in the current phase
let warm = true; // the warm-up phase: only payloads with w=1 count
let warmReceived = 0;
let warmExpected = 0;
let warmDone = null;
const perConn = new Int32Array(N);
const perGroup = new Float64Array(groups);
let delivered = 0;
let firstT = Infinity; // origin time of message 0 (server or sender clock)
let lastReceipt = 0;
let latencies = null; // Float64Array of receipt - t, paced only
let latGroup = null; // Uint8Array: group of each latency sample
let nLat = 0;
let finish = null;
let closedEarly = 0;
let errors = 0;

function onPayload(k, p) {
  const t1 = now();
  if (p.w) {
    if (warm && ++warmReceived >= warmExpected && warmDone) warmDone();
    return;
  }
  if (warm) return;
  perConn[k]++;
  perGroup[group(k)]++;
  delivered++;
  if (p.i === 0 && p.t < firstT) firstT = p.t;
  lastReceipt = t1;
  if (latencies !== null && nLat < latencies.length) {
    latencies[nLat] = t1 - p.t;
    latGroup[nLat++] = group(k);
  }
  if (delivered >= N * expectedPer && finish) finish();
}

// -- subscribers -------------------------------------------------------------------------------

const sockets = [];

function openTidings(k, done, fail) {
  const ws = new WebSocket(urls[group(k)], {
    perMessageDeflate: false,
    headers: { Authorization: `Bearer ${cfg.token}` },
  });
  let ready = false;
  ws.on('message', (data) => {
    const msg = JSON.parse(data);
    if (msg.type === 'hello') {
      ready = true;
      done();
    } else if (msg.type === 'event' && msg.event === 'message.created') {
      if (cfg.frameBytes === undefined) cfg.frameBytes = data.length;
      let p;
      try {
        p = JSON.parse(msg.data.message.body);
      } catch {
        return;
      }
      onPayload(k, p);
    }
  });
  ws.on('error', () => {
    if (!ready) fail();
  });
  ws.on('close', () => {
    if (ready) closedEarly++;
    else fail();
  });
  return ws;
}

function openWs(k, done, fail) {
  const ws = new WebSocket(urls[group(k)], { perMessageDeflate: false });
  let ready = false;
  ws.on('open', () => {
    ready = true;
    done();
  });
  ws.on('message', (data) => onPayload(k, JSON.parse(data)));
  ws.on('error', () => {
    if (!ready) fail();
  });
  ws.on('close', () => {
    if (ready) closedEarly++;
  });
  return ws;
}

function openSio(k, done, fail) {
  const s = io(urls[group(k)], {
    transports: ['websocket'],
    forceNew: true,
    reconnection: false,
    perMessageDeflate: false,
  });
  let ready = false;
  s.on('connect', () => {
    ready = true;
    done();
  });
  s.on('m', (p) => onPayload(k, p));
  s.on('connect_error', () => {
    if (!ready) fail();
  });
  s.on('disconnect', () => {
    if (ready) closedEarly++;
  });
  return s;
}

const opener = { tidings: openTidings, ws: openWs, sio: openSio }[kind];

function connectAll() {
  return new Promise((resolve) => {
    let next = 0;
    let settled = 0;
    let failed = 0;
    const started = now();
    const one = () => {
      if (next >= N) return;
      const k = next++;
      let called = false;
      const end = (ok) => {
        if (called) return;
        called = true;
        if (!ok) failed++;
        if (++settled === N) resolve({ seconds: (now() - started) / 1000, failed });
        else one();
      };
      sockets[k] = opener(
        k,
        () => end(true),
        () => end(false),
      );
    };
    for (let c = 0; c < Math.min(cfg.concurrency, N); c++) one();
  });
}

// -- who sends ---------------------------------------------------------------------------------

let control = null; // peers: a connection outside the room that asks for broadcasts
let sender = null; // Tidings: a connection of the same user issuing `send` commands
const senderStats = { acks: 0, errors: 0, firstError: null, sent: 0, ackMs: [] };
const pendingAcks = new Map();
let ackWaiter = null;

function openControl() {
  return new Promise((resolve, reject) => {
    if (kind === 'sio') {
      control = io(urls[0], {
        transports: ['websocket'],
        forceNew: true,
        reconnection: false,
        query: { ctl: '1' },
      });
      control.on('connect', resolve);
      control.on('connect_error', reject);
    } else if (kind === 'ws') {
      const sep = urls[0].includes('?') ? '&' : '?';
      control = new WebSocket(`${urls[0]}${sep}ctl=1`, { perMessageDeflate: false });
      control.on('open', resolve);
      control.on('error', reject);
    } else {
      sender = new WebSocket(urls[0], {
        perMessageDeflate: false,
        headers: { Authorization: `Bearer ${cfg.token}` },
      });
      sender.on('message', (data) => {
        const msg = JSON.parse(data);
        if (msg.type === 'hello') resolve();
        else if (msg.type === 'ack' || msg.type === 'error') {
          const sentAt = pendingAcks.get(msg.ref);
          pendingAcks.delete(msg.ref);
          if (sentAt !== undefined) senderStats.ackMs.push(now() - sentAt);
          if (msg.type === 'ack') senderStats.acks++;
          else {
            senderStats.errors++;
            senderStats.firstError = senderStats.firstError || msg.problem;
          }
          if (ackWaiter) ackWaiter();
        }
      });
      sender.on('error', reject);
    }
  });
}

let ref = 0;
function tidingsSend(payload) {
  ref++;
  pendingAcks.set(ref, now());
  senderStats.sent++;
  sender.send(
    JSON.stringify({
      type: 'send',
      ref,
      conversation_id: cfg.conversation,
      body: JSON.stringify(payload),
    }),
  );
}

function command(cmd) {
  if (kind === 'sio') control.emit('go', cmd);
  else control.send(JSON.stringify(cmd));
}

// Burst: as fast as possible. Peers broadcast back to back (yielding once in between);
// the Tidings sender keeps `window` sends outstanding.
function burst(m, isWarm) {
  if (kind !== 'tidings') {
    command({ cmd: 'burst', m, w: isWarm ? 1 : 0 });
    return;
  }
  let i = 0;
  const pump = () => {
    while (i < m && pendingAcks.size < cfg.window) {
      const t = now();
      tidingsSend(isWarm ? { i: -1, t, w: 1 } : { i, t });
      i++;
    }
  };
  ackWaiter = pump;
  pump();
}

// Paced: open loop. Send i is due at start + i / rate; nothing waits for an ack.
function paced(m, rate) {
  if (kind !== 'tidings') {
    command({ cmd: 'paced', m, rate });
    return;
  }
  ackWaiter = null;
  const start = now() + 20;
  let i = 0;
  const tick = () => {
    while (i < m && start + (i * 1000) / rate <= now()) {
      tidingsSend({ i, t: start + (i * 1000) / rate });
      i++;
    }
    if (i < m) setTimeout(tick, Math.max(0, start + (i * 1000) / rate - now()));
  };
  setTimeout(tick, 20);
}

// -- the run -----------------------------------------------------------------------------------

function percentile(sorted, q) {
  if (sorted.length === 0) return null;
  const rank = ((sorted.length - 1) * q) / 100;
  const lo = Math.floor(rank);
  const hi = Math.min(lo + 1, sorted.length - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo);
}

// Deliveries that never arrived count as infinitely late (JSON null): a percentile they reach
// is unknown, never flattered by leaving them out.
function summary(values, expected = values.length) {
  const s = new Float64Array(Math.max(expected, values.length)).fill(Infinity);
  s.set(values);
  s.sort();
  return {
    count: s.length,
    p50: percentile(s, 50),
    p90: percentile(s, 90),
    p99: percentile(s, 99),
    p999: percentile(s, 99.9),
    max: s.length ? s[s.length - 1] : null,
  };
}

async function main() {
  const connected = await connectAll();
  await openControl();
  if (cfg.mode !== 'idle' && cfg.warmup > 0) {
    warmExpected = N * cfg.warmup;
    const warmed = new Promise((resolve) => {
      warmDone = resolve;
    });
    burst(cfg.warmup, true);
    await Promise.race([warmed, new Promise((r) => setTimeout(r, 10000))]);
    await new Promise((r) => setTimeout(r, 300));
  }
  warm = false;
  out({
    event: 'ready',
    connect_seconds: connected.seconds,
    failed: connected.failed,
    warm_received: warmReceived,
    warm_expected: warmExpected,
  });
  const rl = readline.createInterface({ input: process.stdin });
  const line = await new Promise((resolve) => rl.once('line', resolve));
  if (line.trim() !== 'go' || cfg.mode === 'idle') {
    // Idle: hold the connections until the harness ends this process.
    return;
  }
  rl.close();
  expectedPer = cfg.m;
  if (cfg.mode === 'paced') {
    latencies = new Float64Array(N * cfg.m);
    latGroup = new Uint8Array(N * cfg.m);
  }
  senderStats.ackMs = [];
  const cpu0 = process.cpuUsage();
  const started = now();
  const done = new Promise((resolve) => {
    finish = () => resolve(true);
  });
  const timer = new Promise((resolve) => setTimeout(() => resolve(false), cfg.timeout_s * 1000));
  if (cfg.mode === 'burst') burst(cfg.m, false);
  else paced(cfg.m, cfg.rate);
  const complete = await Promise.race([done, timer]);
  const ended = now();
  const cpu = process.cpuUsage(cpu0);
  const origin = kind === 'tidings' ? started : firstT;
  const span = (lastReceipt - origin) / 1000;
  const result = {
    event: 'result',
    complete,
    delivered,
    expected: N * cfg.m,
    per_group: Array.from(perGroup),
    complete_connections: perConn.reduce((a, c) => a + (c >= cfg.m ? 1 : 0), 0),
    closed_early: closedEarly,
    span_seconds: span,
    deliveries_per_s: span > 0 ? delivered / span : null,
    wall_seconds: (ended - started) / 1000,
    client_cpu_seconds: (cpu.user + cpu.system) / 1e6,
    client_cpu_share: (cpu.user + cpu.system) / 1e3 / (ended - started),
    frame_bytes: cfg.frameBytes === undefined ? null : cfg.frameBytes,
  };
  if (kind === 'tidings') {
    result.sender = {
      sent: senderStats.sent,
      acks: senderStats.acks,
      errors: senderStats.errors,
      first_error: senderStats.firstError,
      ack_ms: summary(senderStats.ackMs),
    };
  }
  if (latencies !== null) {
    const all = latencies.subarray(0, nLat);
    result.latency_ms = summary(all, N * cfg.m);
    result.latency_ms_by_group = [];
    for (let g = 0; g < groups; g++) {
      const members = Math.floor(N / groups) + (g < N % groups ? 1 : 0);
      const mine = all.filter((_, j) => latGroup[j] === g);
      result.latency_ms_by_group.push(summary(mine, members * cfg.m));
    }
  }
  out(result);
  // Stay alive (connections open) until the harness has read this process's CPU time and
  // ends it.
}

main().catch((err) => {
  out({ event: 'error', error: String(err && err.stack ? err.stack : err) });
  process.exit(1);
});
