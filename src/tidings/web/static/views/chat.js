// The signed-in screen: header (workspace switcher), sidebar (channels, people and direct
// messages with badges and presence), and the open conversation (live message list, typing
// line, composer).

import { clear, formatTime, h, toast } from "../dom.js";
import { renderMarkdown } from "../markdown.js";
import { isDm } from "../store.js";
import { SearchView } from "./search.js";
import { ThreadPanel } from "./thread.js";

const REACTIONS = ["👍", "❤️", "😄", "🎉", "👀"];

function presenceDot(status) {
  return h("span.presence", { dataset: { presence: status }, title: status },
    h("span.visually-hidden", {}, status));
}

function badge(count, kind, label) {
  if (!count) return null;
  return h(`span.badge.${kind}`, { "aria-label": `${count} ${label}` }, String(count));
}

export class ChatScreen {
  constructor(app, workspaceId, conversationId) {
    this.app = app;
    this.store = app.store;
    this.workspaceId = workspaceId;
    this.conversationId = conversationId;
    this.unsubscribe = [];
    this.lastTypingSent = 0;
    this.thread = null; // the ThreadPanel, when one is open
    this.search = null; // the SearchView, on the search page
    this.readMarker = null; // the read position when the conversation was opened
    this.focusTarget = null; // {messageId, threadRootId}: where a search result leads
    this.root = this._layout();
  }

  destroy() {
    for (const off of this.unsubscribe) off();
    this.closeThread({ restoreFocus: false });
    this.search?.destroy();
    this._sendTyping("stop");
  }

  // -- layout -------------------------------------------------------------------------------

  _layout() {
    const store = this.store;
    this.switcher = h("select", { id: "workspace-switcher", onchange: () => {
      this.app.navigate(`/w/${this.switcher.value}`);
    } });
    this.connection = h("span.connection", { role: "status" });
    const newWorkspace = this._inlineForm({
      label: "Workspace name",
      button: "New workspace",
      submit: "Create workspace",
      name: "workspace-name",
      action: async (name) => {
        const workspace = await store.createWorkspace(name);
        this.app.navigate(`/w/${workspace.id}`);
      },
    });
    this.searchInput = h("input", {
      id: "top-search",
      type: "search",
      name: "q",
      maxLength: 500,
      placeholder: "Search messages",
      autocomplete: "off",
    });
    const searchBox = h("form.search-box", {
      role: "search",
      onsubmit: (event) => {
        event.preventDefault();
        const q = this.searchInput.value.trim();
        if (q) this.app.navigate(`/w/${this.workspaceId}/search?${new URLSearchParams({ q })}`);
      },
    },
    h("label.visually-hidden", { for: "top-search" }, "Search messages"),
    this.searchInput,
    h("button.small", { type: "submit" }, "Search"));
    const header = h(
      "header.topbar",
      {},
      h("span.brand", {}, "Tidings"),
      h("label.visually-hidden", { for: "workspace-switcher" }, "Workspace"),
      this.switcher,
      newWorkspace,
      searchBox,
      h("span.spacer"),
      this.connection,
      h("nav.user-menu", { "aria-label": "Account" },
        h("span.me", {}, store.me.display_name),
        this.settingsLink = h("a", {
          href: `/w/${this.workspaceId}/admin`,
          onclick: (event) => this.app.follow(event),
        }, "Workspace settings"),
        this.app.link("/sessions", "Sessions"),
        h("button", { type: "button", onclick: () => this.app.signOut() }, "Sign out"),
      ),
    );
    this.channelList = h("ul.conversation-list", { "aria-label": "Channels" });
    this.peopleList = h("ul.conversation-list", { "aria-label": "Direct messages" });
    const newChannel = this._inlineForm({
      label: "Channel name",
      button: "+",
      buttonLabel: "Create channel",
      submit: "Create",
      name: "channel-name",
      action: async (name) => {
        const channel = await store.createChannel(name);
        this.app.navigate(`/w/${this.workspaceId}/c/${channel.id}`);
      },
    });
    this.sidebar = h(
      "nav.sidebar",
      { "aria-label": "Conversations" },
      h("div.section-head", {}, h("h2", {}, "Channels"), newChannel),
      this.channelList,
      h("div.section-head", {}, h("h2", {}, "Direct messages")),
      this.peopleList,
    );
    this.main = h("main.conversation", { id: "main" });
    this.body = h("div.body", {}, this.sidebar, this.main);
    const root = h("div.chat", {}, header, this.body);

    this.unsubscribe.push(
      store.on("workspaces", () => this._drawSwitcher()),
      store.on("conversations", () => this._drawSidebar()),
      store.on("presence", () => {
        this._drawSidebar();
        this._drawHeaderPresence();
      }),
      store.on("connection", (state) => this._drawConnection(state)),
      store.on("messages", (change) => this._onMessages(change)),
      store.on("typing", (conversationId) => {
        if (conversationId === this.conversationId) this._drawTyping();
      }),
    );
    this._drawSwitcher();
    this._drawConnection(store.connection);
    return root;
  }

  /** A button that opens a one-field form (name → action). */
  _inlineForm({ label, button, buttonLabel, submit, name, action }) {
    const input = h("input", { id: `f-${name}`, name, required: true, maxLength: 80 });
    const error = h("p.form-error", { role: "alert", hidden: true });
    const form = h("form.inline-form", {
      hidden: true,
      onsubmit: async (event) => {
        event.preventDefault();
        error.hidden = true;
        try {
          await action(input.value.trim());
          input.value = "";
          form.hidden = true;
        } catch (failure) {
          error.hidden = false;
          error.textContent = failure.message;
        }
      },
      onkeydown: (event) => {
        if (event.key === "Escape") {
          form.hidden = true;
          open.focus();
        }
      },
    },
    h("label", { for: `f-${name}` }, label),
    input,
    h("button.primary", { type: "submit" }, submit),
    error);
    const open = h("button.small", {
      type: "button",
      "aria-label": buttonLabel || button,
      "aria-expanded": "false",
      onclick: () => {
        form.hidden = !form.hidden;
        open.setAttribute("aria-expanded", String(!form.hidden));
        if (!form.hidden) input.focus();
      },
    }, button);
    return h("span.inline-form-wrap", {}, open, form);
  }

  _drawSwitcher() {
    clear(this.switcher);
    for (const workspace of this.store.workspaces) {
      this.switcher.append(h("option", {
        value: workspace.id,
        selected: workspace.id === this.workspaceId,
      }, workspace.name));
    }
  }

  _drawConnection(state) {
    const text = { live: "Connected", connecting: "Connecting…", offline: "Offline", closed: "Disconnected" }[state] || state;
    this.connection.textContent = text;
    this.connection.dataset.state = state;
  }

  _drawSidebar() {
    const store = this.store;
    const channels = [...store.conversations.values()]
      .filter((c) => !isDm(c))
      .sort((a, b) => (a.name || "").localeCompare(b.name || ""));
    this.channelList.replaceChildren(...channels.map((c) => this._conversationItem(c, `# ${c.name}`)));

    // People: everyone in the workspace (a DM opens on click), then group messages.
    const people = [...store.members.values()]
      .filter((m) => m.user_id !== store.me.id && m.role)
      .sort((a, b) => a.display_name.localeCompare(b.display_name));
    const items = people.map((person) => {
      const dm = store.dmWith(person.user_id);
      return this._personItem(person, dm);
    });
    for (const c of store.conversations.values()) {
      if (c.kind !== "group") continue;
      const names = (store.dmPeople.get(c.id) || []).map((id) => store.name(id) || "someone");
      items.push(this._conversationItem(c, names.join(", ")));
    }
    this.peopleList.replaceChildren(...items);
  }

  _conversationItem(conversation, label) {
    const current = conversation.id === this.conversationId;
    return h("li", {},
      h("a.conversation-link", {
        href: `/w/${this.workspaceId}/c/${conversation.id}`,
        "aria-current": current ? "page" : null,
        dataset: { conversationId: conversation.id },
        class: conversation.unread_count ? "unread" : "",
        onclick: (event) => this.app.follow(event),
      },
      h("span.label", {}, label),
      badge(conversation.mention_count, "mention", "mentions"),
      badge(conversation.unread_count, "unread", "unread")));
  }

  _personItem(person, dm) {
    const current = dm && dm.id === this.conversationId;
    return h("li", {},
      h("button.conversation-link", {
        type: "button",
        "aria-current": current ? "page" : null,
        dataset: { userId: person.user_id, conversationId: dm?.id },
        class: dm?.unread_count ? "unread" : "",
        onclick: async () => {
          try {
            const conversation = dm || await this.store.openDm(person.user_id);
            this.app.navigate(`/w/${this.workspaceId}/c/${conversation.id}`);
          } catch (error) {
            toast(error.message);
          }
        },
      },
      presenceDot(this.store.presenceOf(person.user_id)),
      h("span.label", {}, person.display_name),
      badge(dm?.mention_count, "mention", "mentions"),
      badge(dm?.unread_count, "unread", "unread")));
  }

  // -- the open conversation ----------------------------------------------------------------

  async show(workspaceId, conversationId) {
    const store = this.store;
    const switched = workspaceId !== this.workspaceId || !store.conversations.size;
    this.workspaceId = workspaceId;
    this.settingsLink.href = `/w/${workspaceId}/admin`;
    if (switched) {
      await store.openWorkspace(workspaceId);
      this._drawSwitcher();
    }
    this.search?.destroy();
    this.search = null;
    if (conversationId !== this.conversationId) this.closeThread({ restoreFocus: false });
    if (!conversationId) {
      const general = [...store.conversations.values()].find((c) => c.is_default)
        || [...store.conversations.values()][0];
      if (general) {
        this.app.navigate(`/w/${workspaceId}/c/${general.id}`, { replace: true });
        return;
      }
    }
    this.conversationId = conversationId;
    store.currentId = conversationId;
    this.root.classList.toggle("has-conversation", Boolean(conversationId));
    this._drawSidebar();
    let conversation = conversationId ? store.conversations.get(conversationId) : null;
    if (conversationId && !conversation) {
      conversation = await store.fetchConversation(conversationId).catch(() => null);
    }
    if (!conversation) {
      this.main.replaceChildren(h("p.empty", {}, "Pick a conversation."));
      return;
    }
    // Where the person had read to, before this visit marks everything read ("New" line).
    this.readMarker = conversation.last_read_seq ?? null;
    this._drawConversation(conversation);
    const timeline = store.timeline(conversation.id);
    if (!timeline.loaded) await store.loadHistory(conversation.id);
    else this._redrawMessages();
    this._scrollToBottom();
    const divider = this._drawNewDivider();
    if (divider) this._scrollIntoList(divider);
    const newest = timeline.newestSeq();
    if (newest !== null) store.markRead(conversation.id, newest);
    const target = this.focusTarget;
    this.focusTarget = null;
    if (target) await this._goTo(conversation.id, target);
  }

  // -- the search page ------------------------------------------------------------------------

  async showSearch(workspaceId, params) {
    const store = this.store;
    const switched = workspaceId !== this.workspaceId || !store.conversations.size;
    this.workspaceId = workspaceId;
    this.settingsLink.href = `/w/${workspaceId}/admin`;
    if (switched) {
      await store.openWorkspace(workspaceId);
      this._drawSwitcher();
    }
    this._sendTyping("stop");
    this.closeThread({ restoreFocus: false });
    this.conversationId = null;
    store.currentId = null;
    this.list = null;
    this.headerPresence = null;
    this.typingLine = null;
    this.root.classList.add("has-conversation");
    this._drawSidebar();
    this.searchInput.value = params.get("q") || "";
    this.search?.destroy();
    this.search = new SearchView(this, params);
    this.main.replaceChildren(this.search.root);
    // Submitted from the page's own form (now replaced): keep the focus in the new one.
    if (document.activeElement === document.body) this.search.qInput.focus();
    await this.search.run();
  }

  /** Open a search result: the message in its conversation, or its thread. */
  openResult(hit) {
    const message = hit.message;
    this.focusTarget = { messageId: message.id, threadRootId: message.thread_root_id };
    this.app.navigate(`/w/${this.workspaceId}/c/${message.conversation_id}`);
  }

  async _goTo(conversationId, { messageId, threadRootId }) {
    if (threadRootId) {
      this.openThread(conversationId, threadRootId, null, { highlight: messageId });
      return;
    }
    const timeline = this.store.timeline(conversationId);
    // Older than the loaded pages: load pages before them until it is there (bounded).
    for (let page = 0; page < 20 && !timeline.byId.has(messageId) && timeline.hasMoreBefore; page += 1) {
      await this.store.loadHistory(conversationId, { older: true });
      if (this.conversationId !== conversationId) return;
    }
    const row = this.rows.get(messageId);
    if (!row) {
      toast("That message is no longer here.");
      return;
    }
    row.classList.add("target");
    this._scrollIntoList(row);
    row.focus({ preventScroll: true });
  }

  // -- threads ----------------------------------------------------------------------------------

  /** The side panel with the thread of `rootId`; `opener` gets the focus back on close. */
  openThread(conversationId, rootId, opener, { highlight = null } = {}) {
    this.closeThread({ restoreFocus: false });
    this.thread = new ThreadPanel(this, conversationId, rootId, { opener, highlight });
    this.body.append(this.thread.root);
    this.root.classList.add("has-thread");
    this.thread.start();
  }

  closeThread({ restoreFocus = true } = {}) {
    const panel = this.thread;
    if (!panel) return;
    this.thread = null;
    panel.destroy();
    panel.root.remove();
    this.root.classList.remove("has-thread");
    if (!restoreFocus) return;
    let target = panel.opener?.isConnected ? panel.opener : null;
    const row = this.rows?.get(panel.rootId);
    target ||= row?.querySelector(".thread-link") || row || this.composer;
    target?.focus();
  }

  // -- the "New" line -------------------------------------------------------------------------

  /** A line above the first message someone else sent after `readMarker`; returns it. */
  _drawNewDivider() {
    if (!this.list) return null;
    this.list.querySelector(":scope > li.new-divider")?.remove();
    if (this.readMarker === null) return null;
    const me = this.store.me.id;
    const first = this.store.timeline(this.conversationId).ordered()
      .find((m) => m.seq > this.readMarker && !m.deleted && m.sender_id !== me);
    const row = first && this.rows.get(first.id);
    if (!row) return null;
    const divider = h("li.new-divider", {
      role: "separator",
      "aria-label": "New messages",
      dataset: { seq: String(first.seq - 0.5) },
    }, h("span", {}, "New"));
    this.list.insertBefore(divider, row);
    return divider;
  }

  _clearNewDivider() {
    this.readMarker = null;
    this.list?.querySelector(":scope > li.new-divider")?.remove();
  }

  /** Scroll the message list so that `node` is near its top, if it is above the view. */
  _scrollIntoList(node) {
    const offset = node.getBoundingClientRect().top - this.list.getBoundingClientRect().top;
    if (offset < 0 || offset > this.list.clientHeight - 40) this.list.scrollTop += offset - 8;
  }

  _title(conversation) {
    if (!isDm(conversation)) return `# ${conversation.name}`;
    const people = this.store.dmPeople.get(conversation.id) || [];
    return people.map((id) => this.store.name(id) || "someone").join(", ") || "Direct message";
  }

  _drawConversation(conversation) {
    this.headerPresence = h("span.header-presence");
    const back = h("a.back", {
      href: `/w/${this.workspaceId}`,
      onclick: (event) => {
        event.preventDefault();
        this.root.classList.remove("has-conversation");
      },
    }, "← Conversations");
    this.list = h("ol.messages", {
      "aria-label": `Messages in ${this._title(conversation)}`,
      tabindex: 0,
      onscroll: () => this._onScroll(),
      onkeydown: (event) => this._onListKey(event),
    });
    this.olderButton = h("button.small.older", {
      type: "button",
      hidden: true,
      onclick: () => this._loadOlder(),
    }, "Load older messages");
    this.typingLine = h("p.typing", { "aria-live": "polite" });
    this.composer = h("textarea", {
      id: "composer",
      rows: 1,
      placeholder: `Message ${this._title(conversation)}`,
      onkeydown: (event) => this._onComposerKey(event),
      oninput: () => this._onComposerInput(),
      onblur: () => this._sendTyping("stop"),
    });
    const form = h("form.composer", { onsubmit: (event) => {
      event.preventDefault();
      this._send();
    } },
    h("label.visually-hidden", { for: "composer" }, `Message ${this._title(conversation)}`),
    this.composer,
    h("button.primary", { type: "submit" }, "Send"));
    this.main.replaceChildren(
      h("div.conversation-head", {},
        back,
        h("h1", {}, this.headerPresence, this._title(conversation)),
        conversation.topic ? h("p.topic", {}, conversation.topic) : null),
      this.olderButton,
      this.list,
      this.typingLine,
      form,
    );
    this.rows = new Map();
    this._drawHeaderPresence();
    this._drawTyping();
  }

  _drawHeaderPresence() {
    if (!this.headerPresence) return;
    const conversation = this.store.conversations.get(this.conversationId);
    clear(this.headerPresence);
    if (conversation?.kind === "direct") {
      const [other] = this.store.dmPeople.get(conversation.id) || [];
      if (other) this.headerPresence.append(presenceDot(this.store.presenceOf(other)));
    }
  }

  _drawTyping() {
    if (!this.typingLine) return;
    const names = this.store.typingIn(this.conversationId).map((id) => this.store.name(id) || "Someone");
    this.typingLine.textContent = !names.length ? ""
      : names.length === 1 ? `${names[0]} is typing…`
        : `${names.slice(0, -1).join(", ")} and ${names.at(-1)} are typing…`;
  }

  _onMessages({ conversationId, ids }) {
    if (conversationId !== this.conversationId || !this.list) return;
    const hidden = document.visibilityState !== "visible";
    if (hidden && this.readMarker === null) {
      this.readMarker = this.store.conversations.get(conversationId)?.last_read_seq ?? null;
    }
    const nearBottom = this._nearBottom();
    const before = this.list.scrollHeight;
    const top = this.list.scrollTop;
    let prepended = false;
    for (const id of ids) {
      if (id.startsWith("pending:")) {
        this._drawPending(id.slice("pending:".length));
        continue;
      }
      const message = this.store.timeline(conversationId).byId.get(id);
      if (!message) continue;
      prepended = this._place(message) || prepended;
    }
    this.olderButton.hidden = !this.store.timeline(conversationId).hasMoreBefore;
    if (hidden && !this.list.querySelector(":scope > li.new-divider")) this._drawNewDivider();
    if (prepended && !nearBottom) this.list.scrollTop = top + (this.list.scrollHeight - before);
    else if (nearBottom) this._scrollToBottom();
    const newest = this.store.timeline(conversationId).newestSeq();
    if (newest !== null && document.visibilityState === "visible") {
      this.store.markRead(conversationId, newest);
    }
  }

  _redrawMessages() {
    const timeline = this.store.timeline(this.conversationId);
    this.rows = new Map();
    clear(this.list);
    for (const message of timeline.ordered()) this._place(message);
    for (const clientId of timeline.pending.keys()) this._drawPending(clientId);
    this.olderButton.hidden = !timeline.hasMoreBefore;
  }

  /** Insert or replace the row of `message` in seq order; true if it went above others. */
  _place(message) {
    const row = this._messageRow(message);
    const known = this.rows.get(message.id);
    this.rows.set(message.id, row);
    if (known) {
      const hadFocus = known.contains(document.activeElement);
      known.replaceWith(row);
      if (hadFocus) row.focus();
      return false;
    }
    let next = null;
    for (const candidate of this.list.children) {
      const seq = Number(candidate.dataset.seq);
      if (candidate.dataset.pending || seq > message.seq) {
        next = candidate;
        break;
      }
    }
    this.list.insertBefore(row, next);
    return next !== null && !next.dataset.pending;
  }

  _drawPending(clientId) {
    const timeline = this.store.timeline(this.conversationId);
    const pending = timeline.pending.get(clientId);
    const existing = this.list.querySelector(`[data-pending="${CSS.escape(clientId)}"]`);
    if (!pending) {
      existing?.remove();
      return;
    }
    const row = h("li.message.pending", { dataset: { pending: clientId }, tabindex: -1 },
      h("div.meta", {}, h("span.author", {}, pending.sender.display_name),
        h("span.muted", {}, pending.failed ? "not sent" : "sending…")),
      h("div.text", {}, renderMarkdown(pending.body, (id) => this.store.name(id))),
      pending.failed ? h("button.small", {
        type: "button",
        onclick: () => this.store.retry(this.conversationId, clientId).catch((e) => toast(e.message)),
      }, "Retry") : null);
    if (existing) existing.replaceWith(row);
    else this.list.append(row);
  }

  _messageRow(message) {
    const store = this.store;
    const mine = message.sender_id === store.me.id && message.sender_kind === "user";
    const row = h("li.message", {
      id: `message-${message.id}`,
      tabindex: -1,
      dataset: { id: message.id, seq: String(message.seq), mine: mine ? "true" : "false" },
    });
    const meta = h("div.meta", {},
      message.sender_kind === "user" && message.sender_id ? presenceDot(store.presenceOf(message.sender_id)) : null,
      h("span.author", {}, message.sender_name),
      h("time", { dateTime: message.created_at }, formatTime(message.created_at)),
      message.edited_at && !message.deleted ? h("span.muted.edited", {}, "(edited)") : null);
    row.append(meta);
    if (message.deleted) {
      row.append(h("p.text.tombstone", {}, "This message was deleted."), this._repliesLink(message));
      return row;
    }
    const text = h("div.text", {}, renderMarkdown(message.body, (id) => store.name(id)));
    row.append(text);
    const replies = this._repliesLink(message);
    if (replies) row.append(replies);
    const reactions = h("div.reactions", {},
      (message.reactions || []).map((r) => h("button.reaction", {
        type: "button",
        "aria-pressed": String(r.user_ids.includes(store.me.id)),
        "aria-label": `${r.emoji} ${r.count}`,
        onclick: () => this._react(message, r.emoji),
      }, `${r.emoji} ${r.count}`)));
    row.append(reactions);
    const picker = h("div.picker", { hidden: true, role: "group", "aria-label": "Pick a reaction" },
      REACTIONS.map((emoji) => h("button.small", {
        type: "button",
        "aria-label": `React with ${emoji}`,
        onclick: () => {
          picker.hidden = true;
          this._react(message, emoji);
        },
      }, emoji)));
    const actions = h("div.actions", {},
      h("button.small", {
        type: "button",
        onclick: (event) => this.openThread(message.conversation_id, message.id, event.currentTarget),
      }, "Reply in thread"),
      h("button.small", {
        type: "button",
        "aria-label": "Add reaction",
        onclick: () => {
          picker.hidden = !picker.hidden;
          if (!picker.hidden) picker.querySelector("button").focus();
        },
      }, "React"),
      mine ? h("button.small", { type: "button", onclick: () => this._edit(message, row) }, "Edit") : null,
      mine ? h("button.small", { type: "button", onclick: () => this._confirmDelete(message, row) }, "Delete") : null);
    row.append(actions, picker);
    return row;
  }

  /** "3 replies" under a thread's root (replies are not shown in the list itself). */
  _repliesLink(message) {
    const count = message.reply_count || 0;
    if (!count) return null;
    return h("button.link.thread-link", {
      type: "button",
      onclick: (event) => this.openThread(message.conversation_id, message.id, event.currentTarget),
    }, count === 1 ? "1 reply" : `${count} replies`);
  }

  _react(message, emoji) {
    this.store.toggleReaction(message.conversation_id, message.id, emoji).catch((e) => toast(e.message));
  }

  _edit(message, row) {
    const input = h("textarea.edit", { "aria-label": "Edit message", rows: 2 });
    input.value = message.body;
    const cancel = () => {
      const fresh = this.store.timeline(message.conversation_id).byId.get(message.id) || message;
      this._place(fresh);
      this.rows.get(message.id)?.focus();
    };
    const save = async () => {
      const body = input.value.trim();
      if (!body || body === message.body) {
        cancel();
        return;
      }
      try {
        await this.store.editMessage(message.conversation_id, message.id, body);
        this.rows.get(message.id)?.focus();
      } catch (error) {
        toast(error.message);
      }
    };
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey) {
        event.preventDefault();
        save();
      } else if (event.key === "Escape") {
        event.preventDefault();
        cancel();
      }
    });
    const form = h("form.edit-form", { onsubmit: (event) => {
      event.preventDefault();
      save();
    } }, input,
    h("div.row", {},
      h("button.primary.small", { type: "submit" }, "Save"),
      h("button.small", { type: "button", onclick: cancel }, "Cancel")),
    h("p.hint", {}, "Enter saves, Escape cancels"));
    row.querySelector(".text")?.replaceWith(form);
    row.querySelector(".actions")?.remove();
    input.focus();
  }

  _confirmDelete(message, row) {
    const actions = row.querySelector(".actions");
    const confirm = h("div.actions.confirm", { role: "group", "aria-label": "Confirm delete" },
      h("span", {}, "Delete this message?"),
      h("button.small.danger", {
        type: "button",
        onclick: () => this.store.deleteMessage(message.conversation_id, message.id)
          .catch((e) => toast(e.message)),
      }, "Delete message"),
      h("button.small", { type: "button", onclick: () => {
        confirm.replaceWith(actions);
        row.focus();
      } }, "Cancel"));
    actions.replaceWith(confirm);
    confirm.querySelector("button").focus();
  }

  _nearBottom() {
    return this.list.scrollHeight - this.list.scrollTop - this.list.clientHeight < 80;
  }

  _scrollToBottom() {
    if (this.list) this.list.scrollTop = this.list.scrollHeight;
  }

  _onScroll() {
    if (this.list.scrollTop < 60) this._loadOlder();
  }

  async _loadOlder() {
    try {
      await this.store.loadHistory(this.conversationId, { older: true });
    } catch (error) {
      toast(error.message);
    }
  }

  /** Up/Down move between messages; Home/End jump; Escape goes back to the composer. */
  _onListKey(event) {
    const rows = [...this.list.querySelectorAll(":scope > li.message")];
    if (!rows.length) return;
    const current = rows.indexOf(document.activeElement?.closest("li.message"));
    let target = null;
    if (event.key === "ArrowDown") target = rows[Math.min(rows.length - 1, current + 1)];
    else if (event.key === "ArrowUp") target = rows[current < 0 ? rows.length - 1 : Math.max(0, current - 1)];
    else if (event.key === "Home") target = rows[0];
    else if (event.key === "End") target = rows.at(-1);
    else if (event.key === "Escape") {
      this.composer.focus();
      return;
    }
    if (target && event.target.tagName !== "TEXTAREA") {
      event.preventDefault();
      target.focus();
    }
  }

  _onComposerKey(event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      this._send();
    } else if (event.key === "ArrowUp" && !this.composer.value) {
      // Up in an empty composer edits your last message.
      const mine = [...this.list.querySelectorAll("li.message[data-mine='true']")].at(-1);
      const message = mine && this.store.timeline(this.conversationId).byId.get(mine.dataset.id);
      if (message && !message.deleted) {
        event.preventDefault();
        this._edit(message, mine);
      }
    }
  }

  _onComposerInput() {
    this.composer.style.height = "auto";
    this.composer.style.height = `${Math.min(200, this.composer.scrollHeight)}px`;
    if (!this.composer.value.trim()) {
      this._sendTyping("stop");
      return;
    }
    const ttl = this.store.realtime?.typingTtlMs || 5000;
    if (Date.now() - this.lastTypingSent > ttl * 0.5) this._sendTyping("start");
  }

  _sendTyping(state) {
    if (!this.conversationId || !this.store.realtime) return;
    if (state === "stop" && !this.lastTypingSent) return;
    this.lastTypingSent = state === "start" ? Date.now() : 0;
    this.store.realtime.send({ type: "typing", conversation_id: this.conversationId, state });
  }

  async _send() {
    const body = this.composer.value.trim();
    if (!body) return;
    this.composer.value = "";
    this._clearNewDivider(); // answering means the new ones were read
    this.lastTypingSent = 0; // the server ends the typing indicator when the message lands
    this._onComposerInput();
    this._scrollToBottom();
    try {
      await this.store.send(this.conversationId, body);
    } catch (error) {
      toast(error.message);
    }
  }
}

/** Shown when the user belongs to no workspace yet. */
export function noWorkspaceScreen(app) {
  const input = h("input", { id: "f-first-workspace", name: "name", required: true, maxLength: 80 });
  const error = h("p.form-error", { role: "alert", hidden: true });
  return h("main.auth", { id: "main" },
    h("section.card", {},
      h("h1", {}, "Create a workspace"),
      h("p.intro", {}, "A workspace holds your team's channels and direct messages. It starts with #general."),
      h("form", { onsubmit: async (event) => {
        event.preventDefault();
        try {
          const workspace = await app.store.createWorkspace(input.value.trim());
          app.navigate(`/w/${workspace.id}`);
        } catch (failure) {
          error.hidden = false;
          error.textContent = failure.message;
        }
      } },
      h("div.field", {}, h("label", { for: "f-first-workspace" }, "Workspace name"), input),
      error,
      h("button.primary", { type: "submit" }, "Create workspace")),
      h("p", {}, app.link("/sessions", "Sessions"), " · ",
        h("button.link", { type: "button", onclick: () => app.signOut() }, "Sign out"))));
}
