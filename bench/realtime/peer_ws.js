'use strict';
// Peer server: Node `ws`, one room = every connection; JSON.stringify once per broadcast, then
// send() to each subscriber. Usage: node peer_ws.js PORT PAD_CHARS
const http = require('http');
const { performance } = require('perf_hooks');
const { WebSocketServer } = require('ws');

const port = Number(process.argv[2]);
const pad = 'x'.repeat(Number(process.argv[3] || 0));
const now = () => performance.timeOrigin + performance.now();
const subs = new Set();

const server = http.createServer((req, res) => {
  res.writeHead(200);
  res.end('ok');
});
const wss = new WebSocketServer({ server, perMessageDeflate: false });

function broadcast(payload) {
  const s = JSON.stringify(payload);
  for (const c of subs) c.send(s);
}

function run(cmd) {
  if (cmd.cmd === 'burst') {
    let i = 0;
    const step = () => {
      if (i >= cmd.m) return;
      broadcast({ i: cmd.w ? -1 : i, t: now(), w: cmd.w, p: pad });
      i++;
      setImmediate(step);
    };
    step();
  } else if (cmd.cmd === 'paced') {
    const start = now() + 20;
    let i = 0;
    const tick = () => {
      while (i < cmd.m && start + (i * 1000) / cmd.rate <= now()) {
        broadcast({ i, t: start + (i * 1000) / cmd.rate, w: 0, p: pad });
        i++;
      }
      if (i < cmd.m) setTimeout(tick, Math.max(0, start + (i * 1000) / cmd.rate - now()));
    };
    setTimeout(tick, 20);
  }
}

wss.on('connection', (ws, req) => {
  if (req.url.includes('ctl=1')) {
    ws.on('message', (data) => run(JSON.parse(data)));
    return;
  }
  subs.add(ws);
  ws.on('close', () => subs.delete(ws));
});

server.listen(port, '127.0.0.1');
