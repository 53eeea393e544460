// The thread side panel: a root message, its replies (live), a reply composer and follow /
// unfollow. The store holds the open thread (`store.thread`) and routes realtime replies,
// edits, deletes and reactions into it; this view redraws on its "thread" topic.

import { formatTime, h, toast } from "../dom.js";
import { renderMarkdown } from "../markdown.js";

let panels = 0;

export class ThreadPanel {
  /** opener: the element to focus on close; highlight: a reply id to show (from a search). */
  constructor(chat, conversationId, rootId, { opener = null, highlight = null } = {}) {
    this.chat = chat;
    this.store = chat.store;
    this.conversationId = conversationId;
    this.rootId = rootId;
    this.opener = opener;
    this.highlight = highlight;
    this.off = null;
    panels += 1;
    const titleId = `thread-title-${panels}`;
    const composerId = `thread-composer-${panels}`;
    this.title = h("h2", { id: titleId }, "Thread");
    this.followButton = h("button.small", {
      type: "button",
      hidden: true,
      "aria-pressed": "false",
      onclick: () => this._toggleFollow(),
    }, "Follow thread");
    this.rootBox = h("div.thread-root", {}, h("p.muted", {}, "Loading the thread…"));
    this.count = h("p.thread-count", { role: "status" });
    this.list = h("ol.thread-replies", { "aria-label": "Replies" });
    this.composer = h("textarea", {
      id: composerId,
      rows: 2,
      placeholder: "Reply…",
      onkeydown: (event) => {
        if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
          event.preventDefault();
          this._send();
        }
      },
    });
    this.error = h("p.form-error", { role: "alert", hidden: true });
    this.root = h("aside.thread-panel", {
      "aria-labelledby": titleId,
      onkeydown: (event) => {
        if (event.key === "Escape" && !event.defaultPrevented) {
          event.preventDefault();
          this.chat.closeThread();
        }
      },
    },
    h("div.thread-head", {},
      this.title,
      h("span.spacer"),
      this.followButton,
      h("button.small", {
        type: "button",
        "aria-label": "Close thread",
        onclick: () => this.chat.closeThread(),
      }, "✕")),
    // Focusable so the keyboard can scroll a long thread.
    h("section.thread-scroll", { "aria-label": "Thread messages", tabindex: 0 },
      this.rootBox, this.count, this.list),
    this.error,
    h("form.composer.thread-composer", {
      onsubmit: (event) => {
        event.preventDefault();
        this._send();
      },
    },
    h("label.visually-hidden", { for: composerId }, "Reply in thread"),
    this.composer,
    h("button.primary", { type: "submit" }, "Reply")));
  }

  /** Subscribe, load, and move the focus into the panel (call once it is in the page). */
  start() {
    this.off = this.store.on("thread", (thread) => {
      if (thread === this.store.thread && thread.rootId === this.rootId) this._draw(thread);
    });
    this.composer.focus();
    this.store.openThread(this.conversationId, this.rootId).then(() => {
      if (this.highlight) this._showHighlight();
    }).catch((failure) => {
      if (!this.off) return;
      this.error.hidden = false;
      this.error.textContent = failure.message;
    });
  }

  destroy() {
    this.off?.();
    this.off = null;
    if (this.store.thread?.rootId === this.rootId) this.store.closeThread();
  }

  _draw(thread) {
    const scroller = this.list.parentElement;
    const nearBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80;
    if (thread.root) {
      this.rootBox.replaceChildren(this._row(thread.root, { root: true }));
      const count = thread.root.reply_count || 0;
      this.count.textContent = !thread.loaded ? "" : count === 1 ? "1 reply" : `${count} replies`;
    }
    this.followButton.hidden = !thread.loaded;
    this.followButton.textContent = thread.following ? "Unfollow thread" : "Follow thread";
    this.followButton.setAttribute("aria-pressed", String(thread.following));
    const rows = thread.replies.ordered().map((reply) => this._row(reply));
    for (const pending of thread.replies.pending.values()) rows.push(this._pendingRow(pending));
    const hadFocus = this.list.contains(document.activeElement)
      ? document.activeElement.closest("li")?.dataset.id : null;
    this.list.replaceChildren(...rows);
    if (hadFocus) this.list.querySelector(`li[data-id="${CSS.escape(hadFocus)}"]`)?.focus();
    if (nearBottom) scroller.scrollTop = scroller.scrollHeight;
  }

  _row(message, { root = false } = {}) {
    const store = this.store;
    const row = h(root ? "div.message.thread-root-message" : "li.message.reply", {
      tabindex: -1,
      dataset: { id: message.id, seq: String(message.seq) },
    },
    h("div.meta", {},
      h("span.author", {}, message.sender_name),
      h("time", { dateTime: message.created_at }, formatTime(message.created_at)),
      message.edited_at && !message.deleted ? h("span.muted.edited", {}, "(edited)") : null));
    if (message.deleted) {
      row.append(h("p.text.tombstone", {}, "This message was deleted."));
      return row;
    }
    row.append(
      h("div.text", {}, renderMarkdown(message.body, (id) => store.name(id))),
      h("div.reactions", {}, (message.reactions || []).map((r) => h("button.reaction", {
        type: "button",
        "aria-pressed": String(r.user_ids.includes(store.me.id)),
        "aria-label": `${r.emoji} ${r.count}`,
        onclick: () => store.toggleReaction(message.conversation_id, message.id, r.emoji)
          .catch((e) => toast(e.message)),
      }, `${r.emoji} ${r.count}`))),
    );
    return row;
  }

  _pendingRow(pending) {
    return h("li.message.reply.pending", { dataset: { pending: pending.clientId } },
      h("div.meta", {}, h("span.author", {}, pending.sender.display_name),
        h("span.muted", {}, pending.failed ? "not sent" : "sending…")),
      h("div.text", {}, renderMarkdown(pending.body, (id) => this.store.name(id))),
      pending.failed ? h("button.small", {
        type: "button",
        onclick: () => this.store.retryReply(pending.clientId).catch((e) => toast(e.message)),
      }, "Retry") : null);
  }

  _showHighlight() {
    const row = this.list.querySelector(`li[data-id="${CSS.escape(this.highlight)}"]`);
    if (!row) return;
    row.classList.add("target");
    row.scrollIntoView({ block: "center" });
  }

  async _send() {
    const body = this.composer.value.trim();
    if (!body || !this.store.thread) return;
    this.composer.value = "";
    this.error.hidden = true;
    const scroller = this.list.parentElement;
    scroller.scrollTop = scroller.scrollHeight;
    try {
      await this.store.sendReply(body);
    } catch (failure) {
      toast(failure.message);
    }
  }

  async _toggleFollow() {
    const thread = this.store.thread;
    if (!thread) return;
    try {
      await this.store.setFollowing(!thread.following);
    } catch (failure) {
      toast(failure.message);
    }
  }
}
