// The realtime gateway over one WebSocket: ticket → connect → hello → events, and after a drop
// a reconnect (exponential backoff with jitter) that resumes every stream from the last seq
// applied. Mirrors tidings.client.realtime: each (stream, seq) is handed out at most once;
// a gap or a `resync_required` is reported so the caller refetches over HTTP (messages are
// merged by id there, so nothing is lost or shown twice).

const INITIAL_DELAY_MS = 500;
const MAX_DELAY_MS = 30_000;
const PING_EVERY_MS = 20_000;
const PONG_TIMEOUT_MS = 10_000;
const SESSION_ENDED = 4001;
const POLICY = 1008;

export class Realtime {
  /**
   * handlers: event(frame), typing(frame), presence(frame), hello(frame, {reconnected}),
   * resync(stream), state(name) with name in connecting | live | offline | closed.
   */
  constructor(api, handlers) {
    this.api = api;
    this.handlers = handlers;
    this.positions = new Map(); // stream → last seq applied
    this.presence = new Map(); // user id → online | away
    this.typingTtlMs = 5000;
    this.userId = null;
    this.state = "closed";
    this.reconnects = 0;
    this.lastResume = null;
    this._ws = null;
    this._stopped = true;
    this._attempt = 0;
    this._retryTimer = null;
    this._pingTimer = null;
    this._pongTimer = null;
    this._refs = 0;
    this._everConnected = false;
    this._onOnline = () => this._reconnectNow();
    this._onOffline = () => this._drop();
  }

  start() {
    if (!this._stopped) return;
    this._stopped = false;
    window.addEventListener("online", this._onOnline);
    window.addEventListener("offline", this._onOffline);
    this._connect();
  }

  stop() {
    this._stopped = true;
    window.removeEventListener("online", this._onOnline);
    window.removeEventListener("offline", this._onOffline);
    clearTimeout(this._retryTimer);
    this._stopTimers();
    if (this._ws) {
      const ws = this._ws;
      this._ws = null;
      ws.close(1000, "signed out");
    }
    this._setState("closed");
  }

  /** Statuses read over HTTP (GET …/presence); frames that arrive later overwrite them. */
  seedPresence(statuses) {
    for (const [userId, status] of Object.entries(statuses)) {
      if (!this.presence.has(userId)) this.presence.set(userId, status);
    }
  }

  /** Send a command if connected; returns false when it could not go out. */
  send(command) {
    if (!this._ws || this._ws.readyState !== WebSocket.OPEN || this.state !== "live") return false;
    this._refs += 1;
    this._ws.send(JSON.stringify({ ref: this._refs, ...command }));
    return true;
  }

  _setState(state) {
    this.state = state;
    this.handlers.state?.(state);
  }

  async _connect() {
    if (this._stopped) return;
    if (!navigator.onLine) {
      this._setState("offline"); // the "online" event brings us back
      return;
    }
    this._setState("connecting");
    let ticket;
    try {
      ticket = (await this.api.post("/api/v1/realtime/tickets")).ticket;
    } catch (error) {
      if (error.status === 401) return; // signed out: the app takes over
      this._scheduleRetry();
      return;
    }
    if (this._stopped) return;
    const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    let url = `${scheme}//${window.location.host}/api/v1/realtime?ticket=${encodeURIComponent(ticket)}`;
    if (this.positions.size) {
      const resume = JSON.stringify(Object.fromEntries(this.positions));
      url += `&resume=${encodeURIComponent(resume)}`;
    }
    const ws = new WebSocket(url);
    this._ws = ws;
    ws.addEventListener("message", (message) => {
      if (ws !== this._ws) return;
      this._onFrame(message.data);
    });
    ws.addEventListener("close", (close) => {
      if (ws !== this._ws) return;
      this._ws = null;
      this._stopTimers();
      this._onClose(close.code);
    });
  }

  async _onClose(code) {
    if (this._stopped) return;
    if (code === SESSION_ENDED || code === POLICY) {
      // Signed out elsewhere, or the session was revoked: reconnect only with fresh tokens.
      if (!(await this.api.refresh())) {
        this._setState("closed");
        this.api.onSignedOut();
        return;
      }
    }
    this._scheduleRetry();
  }

  _scheduleRetry() {
    if (this._stopped) return;
    this._setState(navigator.onLine ? "connecting" : "offline");
    if (!navigator.onLine) return;
    const base = Math.min(MAX_DELAY_MS, INITIAL_DELAY_MS * 2 ** this._attempt);
    this._attempt += 1;
    const delay = base / 2 + Math.random() * (base / 2);
    clearTimeout(this._retryTimer);
    this._retryTimer = setTimeout(() => this._connect(), delay);
  }

  _reconnectNow() {
    if (this._stopped || this._ws) return;
    clearTimeout(this._retryTimer);
    this._attempt = 0;
    this._connect();
  }

  /** Close the socket now (network gone, or a dead peer); the close handler reconnects. */
  _drop() {
    const ws = this._ws;
    if (!ws) {
      if (!navigator.onLine) this._setState("offline");
      return;
    }
    this._ws = null;
    this._stopTimers();
    try {
      ws.close(1000, "reconnecting");
    } catch {
      // already closing
    }
    this._scheduleRetry();
  }

  _stopTimers() {
    clearInterval(this._pingTimer);
    clearTimeout(this._pongTimer);
    this._pingTimer = null;
    this._pongTimer = null;
  }

  _startHeartbeat() {
    this._stopTimers();
    this._pingTimer = setInterval(() => {
      if (!this.send({ type: "ping" })) return;
      clearTimeout(this._pongTimer);
      this._pongTimer = setTimeout(() => this._drop(), PONG_TIMEOUT_MS);
    }, PING_EVERY_MS);
  }

  _onFrame(raw) {
    let frame;
    try {
      frame = JSON.parse(raw);
    } catch {
      return;
    }
    clearTimeout(this._pongTimer); // any frame proves the connection is alive
    switch (frame.type) {
      case "hello":
        this._onHello(frame);
        break;
      case "event":
        this._onEvent(frame);
        break;
      case "typing":
        this.handlers.typing?.(frame);
        break;
      case "presence":
        if (frame.status === "offline") this.presence.delete(frame.user_id);
        else this.presence.set(frame.user_id, frame.status);
        this.handlers.presence?.(frame);
        break;
      case "resync_required":
        this._onResync(frame.stream);
        break;
      case "resumed":
        this.lastResume = frame.streams;
        break;
      default:
        break; // ack, error, pong
    }
  }

  _onHello(hello) {
    const reconnected = this._everConnected;
    this._everConnected = true;
    this._attempt = 0;
    this.userId = hello.user_id;
    this.typingTtlMs = hello.typing_ttl_ms || this.typingTtlMs;
    this.presence = new Map(Object.entries(hello.presence || {}));
    for (const [stream, seq] of Object.entries(hello.positions || {})) {
      if (!this.positions.has(stream)) this.positions.set(stream, seq);
    }
    if (reconnected) this.reconnects += 1;
    this._setState("live");
    this._startHeartbeat();
    this.handlers.hello?.(hello, { reconnected });
  }

  _onEvent(frame) {
    const last = this.positions.get(frame.stream);
    if (last !== undefined && frame.seq <= last) return; // seen already
    this.positions.set(frame.stream, frame.seq);
    this.handlers.event?.(frame);
    if (last !== undefined && frame.seq > last + 1) this.handlers.resync?.(frame.stream);
  }

  _onResync(stream) {
    this.positions.delete(stream); // the next connection starts it from `hello`
    this.handlers.resync?.(stream);
  }
}
