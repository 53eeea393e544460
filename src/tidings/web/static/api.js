// The REST client: bearer access token in memory, refresh through the HttpOnly cookie, and
// problem+json errors surfaced by their `detail`.
//
// Tokens: the access token (15 minutes) lives only in this module's memory. The refresh token
// is never handled by JavaScript: /auth/login, /register and /refresh also set it as the
// `tidings_refresh` cookie (HttpOnly, SameSite=Strict, scoped to /api/v1/auth), and a reload
// gets a new access token by POSTing /auth/refresh with that cookie. The copy in the JSON
// answer is dropped at once. localStorage only holds a "probably signed in" hint (no secret),
// so a first visit does not ask for a refresh that must fail.

const SIGNED_IN_HINT = "tidings.signed-in";
const REFRESH_MARGIN_MS = 60_000;

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || problem?.title || `Request failed (${status})`);
    this.status = status;
    this.code = problem?.code || "unknown";
    this.problem = problem || {};
  }

  /** The field errors of a validation_failed answer, as one line. */
  get fields() {
    return (this.problem.errors || []).map((e) => `${e.field}: ${e.message}`).join("; ");
  }
}

async function problemOf(response) {
  try {
    return await response.json();
  } catch {
    return { detail: `${response.status} ${response.statusText}` };
  }
}

export class Api {
  constructor() {
    this.accessToken = null;
    this.sessionId = null;
    this.onSignedOut = () => {};
    this._refreshing = null;
    this._timer = null;
  }

  get signedIn() {
    return this.accessToken !== null;
  }

  get mightBeSignedIn() {
    return window.localStorage.getItem(SIGNED_IN_HINT) === "1";
  }

  /** Keep the access token; schedule a refresh a minute before it expires. */
  _accept(tokens) {
    this.accessToken = tokens.access_token;
    this.sessionId = tokens.session_id;
    window.localStorage.setItem(SIGNED_IN_HINT, "1");
    clearTimeout(this._timer);
    const delay = Math.max(5_000, tokens.expires_in * 1000 - REFRESH_MARGIN_MS);
    this._timer = setTimeout(() => this.refresh(), delay);
  }

  _forget() {
    this.accessToken = null;
    this.sessionId = null;
    clearTimeout(this._timer);
    window.localStorage.removeItem(SIGNED_IN_HINT);
  }

  async register(email, password, displayName) {
    const body = await this.request("POST", "/api/v1/auth/register", {
      body: { email, password, display_name: displayName },
      auth: false,
    });
    this._accept(body.tokens);
    return body.user;
  }

  async login(email, password) {
    this._accept(await this.request("POST", "/api/v1/auth/login", {
      body: { email, password },
      auth: false,
    }));
  }

  async logout() {
    try {
      if (this.signedIn) await this.request("POST", "/api/v1/auth/logout", { retry: false });
    } finally {
      this._forget();
    }
  }

  /**
   * Exchange the refresh cookie for new tokens; true on success. One refresh at a time per
   * tab, and across tabs (Web Locks): two tabs presenting the same rotating token would look
   * like a stolen token being reused and end the session.
   */
  refresh() {
    if (!this._refreshing) {
      this._refreshing = this._refresh().finally(() => {
        this._refreshing = null;
      });
    }
    return this._refreshing;
  }

  async _refresh() {
    const run = async () => {
      let response;
      try {
        response = await fetch("/api/v1/auth/refresh", {
          method: "POST",
          credentials: "same-origin",
          headers: { Accept: "application/json" },
        });
      } catch {
        return false; // offline: keep the hint, try again later
      }
      if (!response.ok) {
        this._forget();
        return false;
      }
      this._accept(await response.json());
      return true;
    };
    return navigator.locks ? navigator.locks.request("tidings-refresh", run) : run();
  }

  /**
   * `method path` as JSON. A 401 on an authenticated call refreshes once and repeats the
   * call; a second 401 signs out. Errors throw ApiError (status, code, detail).
   */
  async request(method, path, { body, auth = true, retry = true, query } = {}) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (auth && this.accessToken) headers.Authorization = `Bearer ${this.accessToken}`;
    let url = path;
    if (query) {
      const params = new URLSearchParams();
      for (const [key, value] of Object.entries(query)) {
        if (value !== undefined && value !== null) params.set(key, String(value));
      }
      if ([...params].length) url += `?${params}`;
    }
    const response = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
    });
    if (response.status === 401 && auth && retry) {
      if (await this.refresh()) return this.request(method, path, { body, auth, retry: false, query });
      this.onSignedOut();
    }
    if (!response.ok) throw new ApiError(response.status, await problemOf(response));
    if (response.status === 204) return null;
    return response.json();
  }

  get(path, query) {
    return this.request("GET", path, { query });
  }

  post(path, body = {}) {
    return this.request("POST", path, { body });
  }
}
