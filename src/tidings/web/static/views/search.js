// The search page (/w/{id}/search?q=…&in=…&from=…&since=…&until=…&thread=1): a form with the
// words and the filters GET /api/v1/workspaces/{id}/search supports (in:, from:, after:,
// before:, has:thread), the results newest first with the matched words highlighted, and
// "More results" (the cursor). A result opens its conversation at the message, or its thread.

import { formatTime, h } from "../dom.js";
import { isDm } from "../store.js";

const PAGE = 20;

/** The API's snippet (escaped text and <mark> tags only) as nodes, without innerHTML. */
export function snippetNodes(snippet) {
  const nodes = [];
  let marked = false;
  for (const piece of snippet.split(/(<mark>|<\/mark>)/)) {
    if (piece === "<mark>") marked = true;
    else if (piece === "</mark>") marked = false;
    else if (piece) {
      const text = unescapeHtml(piece);
      nodes.push(marked ? h("mark", {}, text) : text);
    }
  }
  return nodes;
}

const ENTITIES = { amp: "&", lt: "<", gt: ">", quot: '"', apos: "'" };

function unescapeHtml(text) {
  return text.replace(/&(#x[0-9a-f]+|#\d+|[a-z]+);/gi, (all, name) => {
    if (name[0] === "#") {
      const code = name[1] === "x" || name[1] === "X"
        ? Number.parseInt(name.slice(2), 16) : Number.parseInt(name.slice(1), 10);
      return Number.isFinite(code) && code <= 0x10ffff ? String.fromCodePoint(code) : all;
    }
    return ENTITIES[name.toLowerCase()] ?? all;
  });
}

/** YYYY-MM-DD shifted by `days` (UTC, as the API's dates are). */
function shiftDay(day, days) {
  const [y, m, d] = day.split("-").map(Number);
  return new Date(Date.UTC(y, m - 1, d + days)).toISOString().slice(0, 10);
}

/** The search box language from the form's fields (dates are inclusive in the form). */
export function buildQuery({ q, conversation, sender, since, until, thread }) {
  const parts = [q.trim()];
  if (conversation) parts.push(`in:${conversation}`);
  if (sender) parts.push(`from:${sender}`);
  if (since) parts.push(`after:${shiftDay(since, -1)}`);
  if (until) parts.push(`before:${shiftDay(until, 1)}`);
  if (thread) parts.push("has:thread");
  return parts.filter(Boolean).join(" ");
}

export class SearchView {
  constructor(chat, params) {
    this.chat = chat;
    this.store = chat.store;
    this.app = chat.app;
    this.workspaceId = chat.workspaceId;
    this.fields = {
      q: params.get("q") || "",
      conversation: params.get("in") || "",
      sender: params.get("from") || "",
      since: params.get("since") || "",
      until: params.get("until") || "",
      thread: params.get("thread") === "1",
    };
    this.cursor = null;
    this.count = 0;
    this.alive = true;
    this.root = this._layout();
  }

  destroy() {
    this.alive = false;
  }

  _layout() {
    const store = this.store;
    const f = this.fields;
    this.qInput = h("input", { id: "search-q", type: "search", name: "q", maxLength: 400, value: f.q });
    const conversations = [...store.conversations.values()]
      .sort((a, b) => Number(isDm(a)) - Number(isDm(b)) || this._label(a).localeCompare(this._label(b)));
    this.inSelect = h("select", { id: "search-in", name: "in" },
      h("option", { value: "" }, "Any conversation"),
      conversations.map((c) => h("option", { value: c.id, selected: c.id === f.conversation }, this._label(c))));
    const people = [...store.members.values()]
      .filter((m) => m.user_id !== store.me.id && m.role)
      .sort((a, b) => a.display_name.localeCompare(b.display_name));
    this.fromSelect = h("select", { id: "search-from", name: "from" },
      h("option", { value: "" }, "Anyone"),
      h("option", { value: "me", selected: f.sender === "me" }, `Me (${store.me.display_name})`),
      people.map((p) => h("option", { value: p.user_id, selected: p.user_id === f.sender }, p.display_name)));
    this.sinceInput = h("input", { id: "search-since", type: "date", name: "since", value: f.since });
    this.untilInput = h("input", { id: "search-until", type: "date", name: "until", value: f.until });
    this.threadBox = h("input", { id: "search-thread", type: "checkbox", name: "thread", checked: f.thread });
    this.status = h("p.search-status", { role: "status" });
    this.error = h("p.form-error", { role: "alert", hidden: true });
    this.results = h("ol.search-results", { "aria-label": "Search results" });
    this.more = h("button.small.more-results", {
      type: "button",
      hidden: true,
      onclick: () => this._page(),
    }, "More results");
    const field = (id, label, control) => h("div.search-field", {}, h("label", { for: id }, label), control);
    const form = h("form.search-form", {
      role: "search",
      onsubmit: (event) => {
        event.preventDefault();
        this._submit();
      },
    },
    field("search-q", "Words", this.qInput),
    h("div.search-filters", {},
      field("search-in", "In", this.inSelect),
      field("search-from", "Sent by", this.fromSelect),
      field("search-since", "On or after", this.sinceInput),
      field("search-until", "On or before", this.untilInput),
      h("div.search-field.check", {}, this.threadBox, h("label", { for: "search-thread" }, "Threads only"))),
    h("div.row", {},
      h("button.primary", { type: "submit" }, "Search"),
      h("button.small", { type: "button", onclick: () => this._clearFilters() }, "Clear filters")));
    return h("div.search-page", {},
      h("div.conversation-head", {},
        h("a.back", {
          href: `/w/${this.workspaceId}`,
          onclick: (event) => {
            event.preventDefault();
            this.chat.root.classList.remove("has-conversation");
          },
        }, "← Conversations"),
        h("h1", {}, "Search")),
      h("div.search-scroll", {}, form, this.error, this.status, this.results, this.more));
  }

  _label(conversation) {
    if (!isDm(conversation)) return `# ${conversation.name}`;
    const people = this.store.dmPeople.get(conversation.id) || [];
    return people.map((id) => this.store.name(id) || "someone").join(", ") || "Direct message";
  }

  _values() {
    return {
      q: this.qInput.value,
      conversation: this.inSelect.value,
      sender: this.fromSelect.value,
      since: this.sinceInput.value,
      until: this.untilInput.value,
      thread: this.threadBox.checked,
    };
  }

  _submit() {
    const v = this._values();
    const params = new URLSearchParams();
    if (v.q.trim()) params.set("q", v.q.trim());
    if (v.conversation) params.set("in", v.conversation);
    if (v.sender) params.set("from", v.sender);
    if (v.since) params.set("since", v.since);
    if (v.until) params.set("until", v.until);
    if (v.thread) params.set("thread", "1");
    if (!buildQuery(v)) {
      this._fail("Type some words or pick a filter.");
      this.qInput.focus();
      return;
    }
    this.app.navigate(`/w/${this.workspaceId}/search?${params}`);
  }

  _clearFilters() {
    this.inSelect.value = "";
    this.fromSelect.value = "";
    this.sinceInput.value = "";
    this.untilInput.value = "";
    this.threadBox.checked = false;
    this.qInput.focus();
  }

  _fail(message) {
    this.error.hidden = false;
    this.error.textContent = message;
  }

  /** The first page for the fields the page was opened with. */
  async run() {
    this.query = buildQuery(this.fields);
    this.results.replaceChildren();
    this.count = 0;
    this.cursor = null;
    if (!this.query) {
      this.status.textContent = "Search the messages you can read: words, \"phrases\", prefix*.";
      this.qInput.focus();
      return;
    }
    await this._page();
  }

  async _page() {
    this.error.hidden = true;
    this.more.hidden = true;
    this.status.textContent = "Searching…";
    const query = { q: this.query, limit: PAGE };
    if (this.cursor) query.cursor = this.cursor;
    let page;
    try {
      page = await this.store.api.get(`/api/v1/workspaces/${this.workspaceId}/search`, query);
    } catch (failure) {
      if (!this.alive) return;
      this.status.textContent = "";
      this._fail(failure.message);
      return;
    }
    if (!this.alive) return;
    const first = this.count === 0;
    this.results.append(...page.items.map((hit) => this._result(hit)));
    this.count += page.items.length;
    this.cursor = page.next_cursor;
    this.more.hidden = !this.cursor;
    this.status.textContent = !this.count ? "No messages found."
      : `${this.count}${this.cursor ? "+" : ""} ${this.count === 1 ? "result" : "results"}`;
    if (!first) this.results.children[this.count - page.items.length]?.querySelector("a")?.focus();
  }

  _result(hit) {
    const message = hit.message;
    const known = this.store.conversations.get(hit.conversation.id);
    const where = known ? this._label(known)
      : hit.conversation.name ? `# ${hit.conversation.name}` : "Direct message";
    return h("li.search-result", { dataset: { id: message.id, conversationId: message.conversation_id } },
      h("a.result-link", {
        href: `/w/${this.workspaceId}/c/${message.conversation_id}`,
        onclick: (event) => {
          if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey) return;
          event.preventDefault();
          this.chat.openResult(hit);
        },
      },
      h("span.meta", {},
        h("span.where", {}, where),
        h("span.author", {}, message.sender_name),
        h("time", { dateTime: message.created_at }, formatTime(message.created_at)),
        message.thread_root_id ? h("span.tag.thread-tag", {}, "in a thread") : null),
      h("span.snippet", {}, snippetNodes(hit.snippet))));
  }
}
