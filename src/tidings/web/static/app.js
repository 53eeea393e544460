// Entry point: boot (restore the session from the refresh cookie), a small router over the
// History API, and the wiring between the API, the realtime connection and the store.

import { Api } from "./api.js";
import { h, toast } from "./dom.js";
import { Realtime } from "./realtime.js";
import { Store } from "./store.js";
import { AdminScreen } from "./views/admin.js";
import { authScreen } from "./views/auth.js";
import { ChatScreen, noWorkspaceScreen } from "./views/chat.js";
import { inviteNotice, inviteScreen, inviteToken } from "./views/invite.js";
import { sessionsScreen } from "./views/sessions.js";

const PUBLIC_PATHS = new Set(["/welcome", "/signin", "/signup"]);

class App {
  constructor(root) {
    this.root = root;
    this.config = JSON.parse(document.getElementById("tidings-config").textContent);
    this.api = new Api();
    this.store = new Store(this.api);
    this.store.config = this.config;
    this.chat = null;
    this.admin = null;
    this.pendingInvite = null; // an invite link's token while its visitor signs in (memory only)
    this.api.onSignedOut = () => this._signedOut();
    window.addEventListener("popstate", () => this.route());
    document.addEventListener("visibilitychange", () => this._onVisibility());
    // Tests and curious people can look at the connection: no tokens here.
    window.tidings = { app: this };
  }

  async boot() {
    if (this.api.mightBeSignedIn) await this.api.refresh();
    if (this.api.signedIn) await this._startSession();
    await this.route();
  }

  link(path, text) {
    return h("a", { href: path, onclick: (event) => this.follow(event) }, text);
  }

  /** Click handler of in-app links: navigate without reloading. */
  follow(event) {
    if (event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey) return;
    event.preventDefault();
    this.navigate(new URL(event.currentTarget.href).pathname);
  }

  navigate(path, { replace = false } = {}) {
    if (path !== window.location.pathname) {
      if (replace) window.history.replaceState(null, "", path);
      else window.history.pushState(null, "", path);
    }
    this.route().catch((error) => toast(error.message));
  }

  async _startSession() {
    this.store.me = await this.api.get("/api/v1/me");
    const store = this.store;
    store.realtime = new Realtime(this.api, {
      event: (frame) => store.onEvent(frame),
      typing: (frame) => store.onTyping(frame),
      presence: () => store.emit("presence"),
      hello: (_hello, { reconnected }) => {
        store.emit("presence");
        if (reconnected) document.body.dataset.reconnects = String(store.realtime.reconnects);
      },
      resync: (stream) => store.onResync(stream).catch(() => {}),
      state: (state) => {
        store.connection = state;
        document.body.dataset.realtime = state;
        store.emit("connection", state);
      },
    });
    store.realtime.start();
    await store.loadWorkspaces();
  }

  async signedIn() {
    await this._startSession();
    this.navigate(this.pendingInvite ? "/invite" : "/");
  }

  async signOut() {
    this.store.realtime?.stop();
    await this.api.logout().catch(() => {});
    this._signedOut();
  }

  _signedOut() {
    this.store.realtime?.stop();
    this.store.realtime = null;
    this.store.reset();
    this.chat?.destroy();
    this.chat = null;
    this.navigate("/signin");
  }

  _onVisibility() {
    const realtime = this.store.realtime;
    if (!realtime) return;
    const visible = document.visibilityState === "visible";
    realtime.send({ type: "presence", status: visible ? "online" : "away" });
    const current = this.store.currentId;
    const newest = current && this.store.timelines.get(current)?.newestSeq();
    if (visible && newest) this.store.markRead(current, newest); // read what arrived meanwhile
  }

  _show(node, title) {
    if (this.chat && node !== this.chat.root) {
      this.chat.destroy();
      this.chat = null;
    }
    if (this.admin && node !== this.admin.root) {
      this.admin.destroy();
      this.admin = null;
    }
    if (this.root.firstChild !== node) this.root.replaceChildren(node);
    document.title = title ? `${title} · Tidings` : "Tidings";
  }

  /** The sign-in/sign-up screen, with a line saying an invitation waits when one does. */
  _withInvite(screen) {
    if (this.pendingInvite) screen.querySelector("h1")?.after(inviteNotice());
    return screen;
  }

  async route() {
    const path = window.location.pathname;
    if (!this.api.signedIn) {
      if (path === "/invite") this.pendingInvite = inviteToken() || this.pendingInvite;
      if (this.config.first_run && path !== "/signin") {
        if (path !== "/welcome") window.history.replaceState(null, "", "/welcome");
        this._show(authScreen(this, "welcome"), "Welcome");
      } else if (path === "/signup" && this.config.open_registration) {
        this._show(this._withInvite(authScreen(this, "signup")), "Create account");
      } else {
        // An invite link keeps its address (and fragment) so a reload still has the token.
        if (path !== "/signin" && path !== "/invite") window.history.replaceState(null, "", "/signin");
        this._show(this._withInvite(authScreen(this, "signin")), "Sign in");
      }
      return;
    }
    if (path === "/invite") {
      const token = inviteToken() || this.pendingInvite;
      this.pendingInvite = null;
      window.history.replaceState(null, "", "/invite"); // the token leaves the address bar
      this._show(inviteScreen(this, token), "Invitation");
      return;
    }
    if (PUBLIC_PATHS.has(path)) {
      this.navigate("/", { replace: true });
      return;
    }
    if (path === "/sessions") {
      this._show(sessionsScreen(this), "Sessions");
      return;
    }
    const admin = path.match(/^\/w\/([0-9a-f-]{36})\/admin(?:\/([a-z-]+))?\/?$/);
    if (admin) {
      if (!this.admin) this.admin = new AdminScreen(this);
      this._show(this.admin.root, "Workspace settings");
      await this.admin.show(admin[1], admin[2] || "members");
      return;
    }
    const search = path.match(/^\/w\/([0-9a-f-]{36})\/search\/?$/);
    if (search) {
      if (!this.chat) this.chat = new ChatScreen(this, search[1], null);
      this._show(this.chat.root, "Search");
      await this.chat.showSearch(search[1], new URLSearchParams(window.location.search));
      return;
    }
    const match = path.match(/^\/w\/([0-9a-f-]{36})(?:\/c\/([0-9a-f-]{36}))?\/?$/);
    if (!match) {
      const [first] = this.store.workspaces;
      if (!first) {
        this._show(noWorkspaceScreen(this), "Create a workspace");
        return;
      }
      this.navigate(`/w/${first.id}`, { replace: true });
      return;
    }
    const [, workspaceId, conversationId] = match;
    if (!this.chat) this.chat = new ChatScreen(this, workspaceId, conversationId);
    this._show(this.chat.root, "Chat");
    await this.chat.show(workspaceId, conversationId || null);
  }
}

const app = new App(document.getElementById("app"));
app.boot().catch((error) => {
  toast(error.message);
});
