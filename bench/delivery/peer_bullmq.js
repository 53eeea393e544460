// The BullMQ peer of the delivery bench (Node, bullmq from bench/package.json).
//
//   node peer_bullmq.js api     --redis URL --prefix P --queue Q --port 0
//       an HTTP front end with the send API's two paths: POST /api/v1/messages -> queue.add,
//       POST /api/v1/messages/batch -> queue.addBulk (one MULTI), both answer 202 {id, status}.
//       `send_at` becomes BullMQ's `delay`. Prints {"port": N} when listening.
//   node peer_bullmq.js worker  --redis URL --prefix P --queue Q --concurrency C --url URL --secret S
//       a BullMQ Worker whose job does what Tidings' webhook connector does: the message as
//       JSON, signed with HMAC-SHA256 (t=..,v1=..), POSTed with a keep-alive agent, non-2xx
//       thrown (retried with backoff). Prints {"ready": true} once connected.
//   node peer_bullmq.js preload --redis URL --prefix P --queue Q --count N [--chunk 500]
//   node peer_bullmq.js counts  --redis URL --prefix P --queue Q
//
// Jobs get the same retry budget as Tidings' deliveries (6 attempts, exponential backoff from
// 2 s) and are kept after completion (removeOnComplete: false, BullMQ's default), as Tidings
// keeps its delivery log.
'use strict';

const crypto = require('crypto');
const http = require('http');
const { Queue, Worker } = require('bullmq');

const [role, ...args] = process.argv.slice(2);
function option(name, fallback) {
  const index = args.indexOf(`--${name}`);
  return index >= 0 ? args[index + 1] : fallback;
}

function connectionOf(url) {
  const parsed = new URL(url);
  return {
    host: parsed.hostname,
    port: Number(parsed.port || 6379),
    db: Number((parsed.pathname || '/0').slice(1) || 0),
    maxRetriesPerRequest: null,
  };
}

const connection = connectionOf(option('redis', 'redis://127.0.0.1:6379/0'));
const prefix = option('prefix', 'bull');
const queueName = option('queue', 'delivery');
const JOB_OPTIONS = { attempts: 6, backoff: { type: 'exponential', delay: 2000 } };

function jobOf(message) {
  const opts = { ...JOB_OPTIONS };
  if (message.send_at) {
    const delay = Date.parse(message.send_at) - Date.now();
    if (delay > 0) opts.delay = delay;
  }
  return {
    name: 'delivery.send',
    data: {
      to: message.to,
      connector: message.connector,
      content: message.content || {},
      metadata: message.metadata || {},
    },
    opts,
  };
}

function valid(message) {
  return message && typeof message.to === 'string' && message.to && message.content;
}

function reply(res, status, body) {
  const data = Buffer.from(JSON.stringify(body));
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': data.length });
  res.end(data);
}

async function api() {
  const queue = new Queue(queueName, { connection, prefix });
  await queue.waitUntilReady();
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', async () => {
      try {
        if (req.method !== 'POST' || !req.headers.authorization) return reply(res, 401, {});
        const body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
        if (req.url === '/api/v1/messages') {
          if (!valid(body)) return reply(res, 400, { code: 'validation_failed' });
          const job = jobOf(body);
          const added = await queue.add(job.name, job.data, job.opts);
          return reply(res, 202, { id: added.id, status: 'queued', send_at: body.send_at || null });
        }
        if (req.url === '/api/v1/messages/batch') {
          const messages = body.messages || [];
          if (!messages.length || messages.length > 1000 || !messages.every(valid)) {
            return reply(res, 400, { code: 'validation_failed' });
          }
          const added = await queue.addBulk(messages.map(jobOf));
          return reply(res, 202, {
            messages: added.map((job, i) => ({
              id: job.id,
              status: 'queued',
              send_at: messages[i].send_at || null,
            })),
          });
        }
        return reply(res, 404, {});
      } catch (error) {
        return reply(res, 500, { error: String(error) });
      }
    });
  });
  server.keepAliveTimeout = 120000;
  server.headersTimeout = 121000;
  server.listen(Number(option('port', '0')), '127.0.0.1', () => {
    process.stdout.write(JSON.stringify({ port: server.address().port }) + '\n');
  });
  process.on('SIGTERM', async () => {
    server.close();
    await queue.close();
    process.exit(0);
  });
}

function sign(secret, timestamp, body) {
  return crypto.createHmac('sha256', secret).update(`${timestamp}.`).update(body).digest('hex');
}

async function worker() {
  const target = new URL(option('url'));
  const secret = option('secret');
  const concurrency = Number(option('concurrency', '32'));
  const timeoutMs = Number(option('timeout-ms', '120000'));
  // Same pool shape as Tidings' outbound client (200 connections, 50 kept alive).
  const agent = new http.Agent({ keepAlive: true, maxSockets: 200, maxFreeSockets: 50 });

  function post(job) {
    const body = Buffer.from(
      JSON.stringify({
        id: job.id,
        type: 'message',
        created_at: new Date().toISOString(),
        recipient: job.data.to,
        content: job.data.content,
        metadata: job.data.metadata,
      }),
    );
    const timestamp = Math.floor(Date.now() / 1000);
    return new Promise((resolve, reject) => {
      const req = http.request(
        {
          host: target.hostname,
          port: target.port,
          path: target.pathname,
          method: 'POST',
          agent,
          timeout: timeoutMs,
          headers: {
            'Content-Type': 'application/json',
            'Content-Length': body.length,
            'User-Agent': 'bullmq-peer',
            'Tidings-Event': 'message',
            'Tidings-Delivery-Id': String(job.id),
            'Tidings-Signature': `t=${timestamp},v1=${sign(secret, timestamp, body)}`,
          },
        },
        (res) => {
          const chunks = [];
          res.on('data', (chunk) => chunks.push(chunk));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8').slice(0, 500);
            if (res.statusCode >= 200 && res.statusCode < 300) {
              resolve({ status: res.statusCode, response: text });
            } else {
              reject(new Error(`provider answered ${res.statusCode}: ${text}`));
            }
          });
        },
      );
      req.on('timeout', () => req.destroy(new Error('provider timed out')));
      req.on('error', reject);
      req.end(body);
    });
  }

  const w = new Worker(queueName, post, { connection, prefix, concurrency });
  await w.waitUntilReady();
  process.stdout.write(JSON.stringify({ ready: true }) + '\n');
  process.on('SIGTERM', async () => {
    await w.close();
    process.exit(0);
  });
}

async function preload() {
  const queue = new Queue(queueName, { connection, prefix });
  const count = Number(option('count', '1000'));
  const chunk = Number(option('chunk', '500'));
  for (let start = 0; start < count; start += chunk) {
    const jobs = [];
    for (let i = start; i < Math.min(count, start + chunk); i += 1) {
      jobs.push(
        jobOf({ to: `user-${i}@example.com`, content: { text: `backlog message ${i}` } }),
      );
    }
    await queue.addBulk(jobs);
  }
  process.stdout.write(JSON.stringify({ added: count }) + '\n');
  await queue.close();
}

async function counts() {
  const queue = new Queue(queueName, { connection, prefix });
  const result = await queue.getJobCounts('waiting', 'active', 'delayed', 'completed', 'failed');
  process.stdout.write(JSON.stringify(result) + '\n');
  await queue.close();
}

const roles = { api, worker, preload, counts };
if (!roles[role]) {
  process.stderr.write(`usage: peer_bullmq.js ${Object.keys(roles).join('|')} [options]\n`);
  process.exit(2);
}
roles[role]().catch((error) => {
  process.stderr.write(`${error.stack || error}\n`);
  process.exit(1);
});
