// The delivery bench's HTTP load client (Node `http`, keep-alive), the same for Tidings and the
// BullMQ peer. Prints one JSON object on stdout.
//
//   closed: --concurrency N clients send back to back for --seconds (after --warmup seconds not
//           counted); each request is one message, or --batch B messages.
//   open:   --rate R requests/s for --seconds, each sent at its intended time whatever the
//           server does (no coordinated omission); latency is counted from the intended time.
//           Reports [id, intended_ms, accepted_ms] (Unix ms) for every accepted message.
'use strict';

const http = require('http');
const { performance } = require('perf_hooks');

const args = process.argv.slice(2);
function option(name, fallback) {
  const index = args.indexOf(`--${name}`);
  return index >= 0 ? args[index + 1] : fallback;
}

const mode = option('mode', 'closed');
const target = new URL(option('url'));
const auth = option('auth', '');
const concurrency = Number(option('concurrency', '32'));
const seconds = Number(option('seconds', '5'));
const warmup = Number(option('warmup', '1'));
const rate = Number(option('rate', '200'));
const batch = Number(option('batch', '0'));
const connector = option('connector', 'hook');
const sendAt = option('send-at', '');
// A request unanswered after this long counts as failed (status 0): an overloaded server must
// not stretch the run without bound.
const timeoutMs = Number(option('timeout-ms', '30000'));
const nowMs = () => performance.timeOrigin + performance.now();
const agent = new http.Agent({ keepAlive: true, maxSockets: Math.max(concurrency, 1) });

let serial = 0;
function message() {
  serial += 1;
  const body = {
    to: `user-${serial}@example.com`,
    connector,
    content: { text: `Your code is ${100000 + (serial % 900000)}. It expires in 10 minutes.` },
    metadata: { bench: 'delivery', n: serial },
  };
  if (sendAt) body.send_at = sendAt;
  return body;
}

function payload() {
  if (batch > 0) {
    const messages = [];
    for (let i = 0; i < batch; i += 1) messages.push(message());
    return { path: `${target.pathname}/batch`, body: Buffer.from(JSON.stringify({ messages })) };
  }
  return { path: target.pathname, body: Buffer.from(JSON.stringify(message())) };
}

function post() {
  const { path, body } = payload();
  return new Promise((resolve) => {
    const req = http.request(
      {
        host: target.hostname,
        port: target.port,
        path,
        method: 'POST',
        agent,
        headers: {
          'Content-Type': 'application/json',
          'Content-Length': body.length,
          Authorization: auth,
        },
      },
      (res) => {
        const chunks = [];
        res.on('data', (chunk) => chunks.push(chunk));
        res.on('end', () => resolve({ status: res.statusCode, text: Buffer.concat(chunks).toString() }));
      },
    );
    // From creation, not from socket assignment: queued requests wait for a socket too.
    const timer = setTimeout(
      () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)),
      timeoutMs,
    );
    req.on('close', () => clearTimeout(timer));
    req.on('error', (error) => resolve({ status: 0, text: String(error) }));
    req.end(body);
  });
}

function percentile(sorted, q) {
  if (!sorted.length) return null;
  const rank = ((sorted.length - 1) * q) / 100;
  const low = Math.floor(rank);
  const high = Math.min(low + 1, sorted.length - 1);
  return sorted[low] + (sorted[high] - sorted[low]) * (rank - low);
}

function summary(latencies) {
  const sorted = latencies.slice().sort((a, b) => a - b);
  return {
    count: sorted.length,
    p50: percentile(sorted, 50),
    p90: percentile(sorted, 90),
    p99: percentile(sorted, 99),
    max: sorted.length ? sorted[sorted.length - 1] : null,
  };
}

function ids(result) {
  try {
    const body = JSON.parse(result.text);
    return body.messages ? body.messages.map((m) => String(m.id)) : [String(body.id)];
  } catch {
    return [];
  }
}

async function closed() {
  const statuses = {};
  const latencies = [];
  let requests = 0;
  let messages = 0;
  let firstError = null;
  const started = nowMs();
  const measureFrom = started + warmup * 1000;
  const stop = measureFrom + seconds * 1000;
  async function client() {
    while (nowMs() < stop) {
      const sent = nowMs();
      const result = await post();
      const done = nowMs();
      if (sent < measureFrom || done > stop) continue;
      statuses[result.status] = (statuses[result.status] || 0) + 1;
      if (result.status === 202) {
        requests += 1;
        messages += Math.max(batch, 1);
        latencies.push(done - sent);
      } else if (!firstError) {
        firstError = `${result.status} ${result.text.slice(0, 300)}`;
      }
    }
  }
  await Promise.all(Array.from({ length: concurrency }, client));
  return {
    mode,
    concurrency,
    batch,
    seconds,
    requests,
    messages,
    requests_per_s: requests / seconds,
    messages_per_s: messages / seconds,
    statuses,
    first_error: firstError,
    latency_ms: summary(latencies),
  };
}

async function open() {
  const total = Math.max(1, Math.round(rate * seconds));
  const statuses = {};
  const latencies = [];
  const accepted = [];
  let firstError = null;
  const start = nowMs() + 50;
  let late = 0;
  const pending = [];
  for (let i = 0; i < total; i += 1) {
    const intended = start + (i * 1000) / rate;
    const delay = intended - nowMs();
    if (delay > 1) await new Promise((r) => setTimeout(r, delay));
    else if (delay < -5) late += 1;
    pending.push(
      post().then((result) => {
        const done = nowMs();
        statuses[result.status] = (statuses[result.status] || 0) + 1;
        if (result.status === 202) {
          latencies.push(done - intended);
          for (const id of ids(result)) accepted.push([id, intended, done]);
        } else if (!firstError) {
          firstError = `${result.status} ${result.text.slice(0, 300)}`;
        }
      }),
    );
  }
  await Promise.all(pending);
  return {
    mode,
    rate,
    seconds,
    sent: total,
    sent_late_over_5ms: late,
    duration_s: (nowMs() - start) / 1000,
    statuses,
    first_error: firstError,
    latency_ms: summary(latencies),
    accepted,
  };
}

const cpuStart = process.cpuUsage();
const wallStart = nowMs();
(mode === 'open' ? open() : closed())
  .then((result) => {
    const cpu = process.cpuUsage(cpuStart);
    result.client_cpu_percent = (100 * (cpu.user + cpu.system)) / 1000 / (nowMs() - wallStart);
    // Exit only once the pipe took everything (a large result is written asynchronously).
    process.stdout.write(JSON.stringify(result) + '\n', () => process.exit(0));
  })
  .catch((error) => {
    process.stderr.write(`${error.stack || error}\n`);
    process.exit(1);
  });
