'use strict';
// Peer server: Node Socket.IO, WebSocket transport only; subscribers join room `r` and each
// broadcast is io.to('r').emit('m', payload). Usage: node peer_sio.js PORT PAD_CHARS
const http = require('http');
const { performance } = require('perf_hooks');
const { Server } = require('socket.io');

const port = Number(process.argv[2]);
const pad = 'x'.repeat(Number(process.argv[3] || 0));
const now = () => performance.timeOrigin + performance.now();

const server = http.createServer((req, res) => {
  if (req.url === '/healthz') {
    res.writeHead(200);
    res.end('ok');
  }
});
const ioServer = new Server(server, {
  transports: ['websocket'],
  perMessageDeflate: false,
  httpCompression: false,
  cors: { origin: '*' },
});

function broadcast(payload) {
  ioServer.to('r').emit('m', payload);
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

ioServer.on('connection', (socket) => {
  if (socket.handshake.query.ctl === '1') {
    socket.on('go', run);
    return;
  }
  socket.join('r');
});

server.listen(port, '127.0.0.1');
