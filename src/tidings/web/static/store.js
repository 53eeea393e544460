// Application state and what realtime events do to it. Views subscribe to topics and redraw
// only what changed: "workspaces", "conversations", "messages" ({conversationId, ids}),
// "typing" (conversationId), "presence", "connection", "thread" (the open thread).

export class Store {
  constructor(api) {
    this.api = api;
    this.config = {};
    this.me = null;
    this.workspaces = [];
    this.workspaceId = null;
    this.members = new Map(); // user id → workspace member
    this.conversations = new Map(); // id → conversation (with unread/mention counts)
    this.dmPeople = new Map(); // conversation id → [user ids other than me]
    this.currentId = null;
    this.timelines = new Map(); // conversation id → Timeline
    this.typing = new Map(); // conversation id → Map(user id → timer)
    this.thread = null; // the thread open in the side panel (see openThread)
    this.connection = "closed";
    this.realtime = null;
    this._listeners = new Map();
    this._readTimers = new Map();
    // Conversations being fetched because an event named one we did not know: their
    // message.created events wait here, so none is lost while the fetch is in flight.
    this._discovering = new Map(); // conversation id → [[message, thread summary], …]
  }

  on(topic, listener) {
    if (!this._listeners.has(topic)) this._listeners.set(topic, new Set());
    this._listeners.get(topic).add(listener);
    return () => this._listeners.get(topic)?.delete(listener);
  }

  emit(topic, payload) {
    for (const listener of this._listeners.get(topic) || []) listener(payload);
  }

  reset() {
    this.me = null;
    this.workspaces = [];
    this.workspaceId = null;
    this.members.clear();
    this.conversations.clear();
    this.dmPeople.clear();
    this.timelines.clear();
    this.typing.clear();
    this.currentId = null;
    this.thread = null;
  }

  name(userId) {
    if (this.me && userId === this.me.id) return this.me.display_name;
    return this.members.get(userId)?.display_name || null;
  }

  presenceOf(userId) {
    return this.realtime?.presence.get(userId) || "offline";
  }

  // -- workspaces and conversations -------------------------------------------------------

  async loadWorkspaces() {
    this.workspaces = await this.api.get("/api/v1/workspaces");
    this.emit("workspaces");
    return this.workspaces;
  }

  async createWorkspace(name) {
    const workspace = await this.api.post("/api/v1/workspaces", { name });
    await this.loadWorkspaces();
    return workspace;
  }

  async openWorkspace(workspaceId) {
    if (this.workspaceId === workspaceId && this.conversations.size) return;
    this.workspaceId = workspaceId;
    this.conversations.clear();
    this.dmPeople.clear();
    this.timelines.clear();
    this.thread = null;
    const [members, conversations, presence] = await Promise.all([
      this.api.get(`/api/v1/workspaces/${workspaceId}/members`),
      this.api.get(`/api/v1/workspaces/${workspaceId}/conversations`),
      this.api.get(`/api/v1/workspaces/${workspaceId}/presence`),
    ]);
    if (this.workspaceId !== workspaceId) return;
    this.realtime?.seedPresence(presence);
    this.members = new Map(members.map((m) => [m.user_id, m]));
    for (const conversation of conversations) this.conversations.set(conversation.id, conversation);
    await Promise.all(conversations.filter(isDm).map((c) => this._loadDmPeople(c.id)));
    this.emit("conversations");
  }

  async refreshMembers() {
    const workspaceId = this.workspaceId;
    const members = await this.api.get(`/api/v1/workspaces/${workspaceId}/members`);
    if (workspaceId !== this.workspaceId) return;
    for (const member of members) this.members.set(member.user_id, member);
    this.emit("conversations");
  }

  async _loadDmPeople(conversationId) {
    const members = await this.api.get(`/api/v1/conversations/${conversationId}/members`);
    this.dmPeople.set(
      conversationId,
      members.map((m) => m.user_id).filter((id) => id !== this.me.id),
    );
    for (const m of members) {
      if (!this.members.has(m.user_id)) this.members.set(m.user_id, m);
    }
  }

  dmWith(userId) {
    for (const [id, people] of this.dmPeople) {
      const conversation = this.conversations.get(id);
      if (conversation?.kind === "direct" && people.length === 1 && people[0] === userId) {
        return conversation;
      }
    }
    return null;
  }

  async createChannel(name, kind = "public") {
    const conversation = await this.api.post(
      `/api/v1/workspaces/${this.workspaceId}/conversations`,
      { kind, name },
    );
    this._addConversation(conversation);
    return conversation;
  }

  async openDm(userId) {
    const conversation = await this.api.post(
      `/api/v1/workspaces/${this.workspaceId}/conversations`,
      { kind: "direct", member_ids: [userId] },
    );
    this.dmPeople.set(conversation.id, [userId]);
    this._addConversation(conversation);
    return conversation;
  }

  _addConversation(conversation) {
    const known = this.conversations.get(conversation.id);
    const fresh = { ...conversation };
    // Event payloads carry no caller state (null): keep ours (the "New" line needs last_read_seq).
    for (const key of ["last_read_seq", "unread_count", "mention_count", "muted"]) {
      if (fresh[key] === null || fresh[key] === undefined) delete fresh[key];
    }
    this.conversations.set(conversation.id, {
      unread_count: 0,
      mention_count: 0,
      ...known,
      ...fresh,
    });
    this.emit("conversations");
  }

  async fetchConversation(conversationId) {
    const conversation = await this.api.get(`/api/v1/conversations/${conversationId}`);
    if (conversation.workspace_id !== this.workspaceId) return null;
    if (isDm(conversation)) await this._loadDmPeople(conversation.id);
    this._addConversation(conversation);
    return conversation;
  }

  /** Learn of a conversation an event named (we were added, or a first message arrived):
   * one fetch at a time per conversation; messages that arrive meanwhile are replayed on top
   * of the fetched counts, unless the fetch already saw them. */
  _discover(conversationId, pendingMessage) {
    const waiting = this._discovering.get(conversationId);
    if (waiting) {
      if (pendingMessage) waiting.push(pendingMessage);
      return;
    }
    const queue = pendingMessage ? [pendingMessage] : [];
    this._discovering.set(conversationId, queue);
    this.fetchConversation(conversationId)
      .then((conversation) => {
        this._discovering.delete(conversationId);
        if (!conversation) return;
        const seen = conversation.last_seq || 0;
        for (const [message, summary] of queue) {
          if (message.seq > seen) this._onMessageCreated(message, summary);
        }
      })
      .catch(() => this._discovering.delete(conversationId));
  }

  // -- messages -----------------------------------------------------------------------------

  timeline(conversationId) {
    if (!this.timelines.has(conversationId)) {
      this.timelines.set(conversationId, new Timeline());
    }
    return this.timelines.get(conversationId);
  }

  /** The latest page (first open) or the page before the oldest loaded message. */
  async loadHistory(conversationId, { older = false } = {}) {
    const timeline = this.timeline(conversationId);
    if (timeline.loading || (older && !timeline.hasMoreBefore)) return [];
    timeline.loading = true;
    try {
      const query = { limit: 50 };
      if (older && timeline.oldestSeq() !== null) query.before = timeline.oldestSeq();
      const page = await this.api.get(`/api/v1/conversations/${conversationId}/messages`, query);
      if (older || !timeline.loaded) timeline.hasMoreBefore = page.has_more_before;
      timeline.loaded = true;
      const ids = page.messages.map((m) => timeline.upsert(m)).filter(Boolean);
      this.emit("messages", { conversationId, ids });
      return ids;
    } finally {
      timeline.loading = false;
    }
  }

  /** After a gap or resync: everything after the newest message we hold. */
  async catchUp(conversationId) {
    const timeline = this.timelines.get(conversationId);
    if (!timeline?.loaded) return;
    let after = timeline.newestSeq();
    for (;;) {
      const query = after === null ? { limit: 100 } : { after, limit: 100 };
      const page = await this.api.get(`/api/v1/conversations/${conversationId}/messages`, query);
      const ids = page.messages.map((m) => timeline.upsert(m)).filter(Boolean);
      this.emit("messages", { conversationId, ids });
      if (!page.has_more_after || !page.messages.length) break;
      after = Math.max(...page.messages.map((m) => m.seq));
    }
  }

  async send(conversationId, body) {
    const clientId = crypto.randomUUID();
    const timeline = this.timeline(conversationId);
    timeline.addPending(clientId, body, this.me);
    this.emit("messages", { conversationId, ids: [`pending:${clientId}`] });
    await this._post(conversationId, clientId, body);
  }

  async retry(conversationId, clientId) {
    const pending = this.timeline(conversationId).pending.get(clientId);
    if (!pending) return;
    pending.failed = false;
    this.emit("messages", { conversationId, ids: [`pending:${clientId}`] });
    await this._post(conversationId, clientId, pending.body);
  }

  async _post(conversationId, clientId, body) {
    const timeline = this.timeline(conversationId);
    try {
      const message = await this.api.post(`/api/v1/conversations/${conversationId}/messages`, {
        body,
        client_id: clientId,
      });
      const id = timeline.upsert(message);
      this.emit("messages", { conversationId, ids: [id, `pending:${clientId}`] });
      this.markRead(conversationId, message.seq);
    } catch (error) {
      const pending = timeline.pending.get(clientId);
      if (pending) pending.failed = true;
      this.emit("messages", { conversationId, ids: [`pending:${clientId}`] });
      throw error;
    }
  }

  editMessage(conversationId, messageId, body) {
    return this.api.request("PATCH", `/api/v1/conversations/${conversationId}/messages/${messageId}`, {
      body: { body },
    }).then((message) => this._apply(message));
  }

  async deleteMessage(conversationId, messageId) {
    await this.api.request("DELETE", `/api/v1/conversations/${conversationId}/messages/${messageId}`);
    const message = this.findMessage(conversationId, messageId);
    if (message) this._apply({ ...message, deleted: true, body: "" });
  }

  async toggleReaction(conversationId, messageId, emoji) {
    const message = this.findMessage(conversationId, messageId);
    const mine = message?.reactions?.some((r) => r.emoji === emoji && r.user_ids.includes(this.me.id));
    const path = `/api/v1/conversations/${conversationId}/messages/${messageId}/reactions/${encodeURIComponent(emoji)}`;
    await this.api.request(mine ? "DELETE" : "PUT", path);
  }

  /** A loaded message (top level, or the open thread's root or reply), or null. */
  findMessage(conversationId, messageId) {
    const thread = this.thread;
    if (thread && thread.conversationId === conversationId) {
      if (thread.root?.id === messageId) return thread.root;
      const reply = thread.replies.byId.get(messageId);
      if (reply) return reply;
    }
    return this.timelines.get(conversationId)?.byId.get(messageId) || null;
  }

  _apply(message) {
    this._applyToThread(message);
    const timeline = this.timelines.get(message.conversation_id);
    // A timeline still loading keeps live messages too: its page and they merge by id.
    if (!timeline || message.thread_root_id) return;
    const id = timeline.upsert(message);
    if (id) this.emit("messages", { conversationId: message.conversation_id, ids: [id] });
  }

  // -- threads (one open at a time, in the side panel) ----------------------------------------

  /** Open the thread of `rootId`: its root and every reply (paged with `after`). */
  async openThread(conversationId, rootId) {
    const thread = {
      conversationId,
      rootId,
      root: this.timelines.get(conversationId)?.byId.get(rootId) || null,
      replies: new Timeline({ replies: true }),
      following: false,
      // Set once a reply, a follow button or an event has said: a page that was asked for
      // before then must not overwrite it.
      followingSettled: false,
      loaded: false,
    };
    this.thread = thread;
    this.emit("thread", thread);
    await this._loadReplies(thread, null);
    thread.loaded = true;
    if (this.thread === thread) this.emit("thread", thread);
    return thread;
  }

  closeThread() {
    this.thread = null;
  }

  async _loadReplies(thread, after) {
    const path = `/api/v1/conversations/${thread.conversationId}/messages/${thread.rootId}/thread`;
    for (;;) {
      const query = after === null ? { limit: 200 } : { after, limit: 200 };
      const page = await this.api.get(path, query);
      if (this.thread !== thread) return;
      this._setThreadRoot(thread, page.root);
      if (!thread.followingSettled) thread.following = page.following;
      for (const reply of page.replies) thread.replies.upsert(reply);
      if (!page.has_more || !page.replies.length) return;
      after = page.replies.at(-1).seq;
    }
  }

  _setThreadRoot(thread, root) {
    const known = thread.root;
    if (known?.edited_at && root.edited_at && known.edited_at > root.edited_at) return;
    if (known?.deleted && !root.deleted) return;
    thread.root = { ...root, reply_count: Math.max(root.reply_count, known?.reply_count || 0) };
  }

  async sendReply(body) {
    const thread = this.thread;
    if (!thread) return;
    const clientId = crypto.randomUUID();
    thread.replies.addPending(clientId, body, this.me);
    this.emit("thread", thread);
    await this._postReply(thread, clientId, body);
  }

  async retryReply(clientId) {
    const thread = this.thread;
    const pending = thread?.replies.pending.get(clientId);
    if (!pending) return;
    pending.failed = false;
    this.emit("thread", thread);
    await this._postReply(thread, clientId, pending.body);
  }

  async _postReply(thread, clientId, body) {
    try {
      const reply = await this.api.post(`/api/v1/conversations/${thread.conversationId}/messages`, {
        body,
        client_id: clientId,
        thread_root_id: thread.rootId,
      });
      thread.replies.upsert(reply);
      thread.following = true; // replying follows the thread
      thread.followingSettled = true;
    } catch (error) {
      const pending = thread.replies.pending.get(clientId);
      if (pending) pending.failed = true;
      throw error;
    } finally {
      if (this.thread === thread) this.emit("thread", thread);
    }
  }

  async setFollowing(following) {
    const thread = this.thread;
    if (!thread) return;
    const path = `/api/v1/conversations/${thread.conversationId}/messages/${thread.rootId}/follow`;
    await this.api.request(following ? "PUT" : "DELETE", path);
    thread.following = following;
    thread.followingSettled = true;
    if (this.thread === thread) this.emit("thread", thread);
  }

  /** An edited, deleted or reacted-to message that belongs to the open thread. */
  _applyToThread(message) {
    const thread = this.thread;
    if (!thread || thread.conversationId !== message.conversation_id) return;
    if (message.id === thread.rootId) this._setThreadRoot(thread, message);
    else if (message.thread_root_id === thread.rootId) thread.replies.upsert(message);
    else return;
    this.emit("thread", thread);
  }

  /** A new reply: the root's count in the list, and the reply in the open panel. */
  _onReply(message, summary) {
    const rootId = message.thread_root_id;
    const timeline = this.timelines.get(message.conversation_id);
    const root = timeline?.byId.get(rootId);
    if (root && summary && summary.reply_count >= (root.reply_count || 0)) {
      timeline.byId.set(rootId, {
        ...root,
        reply_count: summary.reply_count,
        last_reply_at: summary.last_reply_at,
      });
      this.emit("messages", { conversationId: message.conversation_id, ids: [rootId] });
    }
    const thread = this.thread;
    if (thread?.rootId === rootId && thread.conversationId === message.conversation_id) {
      thread.replies.upsert(message);
      if (thread.root && summary) {
        thread.root = { ...thread.root, reply_count: Math.max(thread.root.reply_count, summary.reply_count) };
      }
      this.emit("thread", thread);
    }
  }

  /** Move the read position (debounced) and clear the badges. */
  markRead(conversationId, seq) {
    const conversation = this.conversations.get(conversationId);
    if (!conversation) return;
    if ((conversation.last_read_seq || 0) >= seq && !conversation.unread_count) return;
    conversation.last_read_seq = Math.max(conversation.last_read_seq || 0, seq);
    conversation.unread_count = 0;
    conversation.mention_count = 0;
    this.emit("conversations");
    clearTimeout(this._readTimers.get(conversationId));
    this._readTimers.set(conversationId, setTimeout(() => {
      this.api.post(`/api/v1/conversations/${conversationId}/read`, {
        seq: conversation.last_read_seq,
      }).catch(() => {});
    }, 300));
  }

  // -- realtime -------------------------------------------------------------------------------

  onEvent(frame) {
    const data = frame.data || {};
    switch (frame.event) {
      case "message.created":
        this._onMessageCreated(data.message, data.thread);
        break;
      case "message.edited":
      case "message.deleted":
      case "message.pinned":
      case "message.unpinned":
        this._apply(data.message);
        break;
      case "reaction.added":
      case "reaction.removed":
        this._onReaction(frame.stream, data);
        break;
      case "conversation.created":
      case "conversation.updated": {
        const conversation = data.conversation;
        if (conversation && this.conversations.has(conversation.id)) {
          this._addConversation(conversation);
        }
        break;
      }
      case "conversation.member_joined":
        if ((data.user_ids || []).includes(this.me?.id) && !this.conversations.has(data.conversation_id)) {
          this._discover(data.conversation_id);
        } else if ((data.user_ids || []).some((id) => !this.members.has(id))) {
          this.refreshMembers().catch(() => {}); // someone new in the workspace
        }
        break;
      case "conversation.member_left":
        if ((data.user_ids || []).includes(this.me?.id)) {
          this.conversations.delete(data.conversation_id);
          this.emit("conversations");
        }
        break;
      case "thread.follow_updated":
        if (this.thread && this.thread.rootId === data.root_id) {
          this.thread.following = Boolean(data.following);
          this.thread.followingSettled = true;
          this.emit("thread", this.thread);
        }
        break;
      case "conversation.read": {
        const conversation = this.conversations.get(data.conversation_id);
        if (conversation && data.last_read_seq >= (conversation.last_read_seq || 0)) {
          conversation.last_read_seq = data.last_read_seq;
          if (data.last_read_seq >= conversation.last_seq) {
            conversation.unread_count = 0;
            conversation.mention_count = 0;
          }
          this.emit("conversations");
        }
        break;
      }
      default:
        break;
    }
  }

  _onMessageCreated(message, summary) {
    if (!message) return;
    const conversation = this.conversations.get(message.conversation_id);
    if (!conversation) {
      if (message.workspace_id === this.workspaceId) {
        this._discover(message.conversation_id, [message, summary]);
      }
      return;
    }
    this.clearTyping(message.conversation_id, message.sender_id);
    // At or below the known last_seq: already counted (a replay after a resume or a fetch).
    const counted = message.seq <= (conversation.last_seq || 0);
    conversation.last_seq = Math.max(conversation.last_seq || 0, message.seq);
    conversation.last_message_at = message.created_at;
    if (message.thread_root_id) {
      this._onReply(message, summary); // replies are not unread in the channel
      return;
    }
    this._apply(message);
    const mine = message.sender_id === this.me?.id;
    if (mine || counted || message.seq <= (conversation.last_read_seq || 0)) return;
    if (message.conversation_id === this.currentId && document.visibilityState === "visible") {
      this.markRead(message.conversation_id, message.seq);
      return;
    }
    conversation.unread_count = (conversation.unread_count || 0) + 1;
    const mentions = message.mentions || {};
    if ((mentions.users || []).includes(this.me.id) || mentions.channel || mentions.here || isDm(conversation)) {
      conversation.mention_count = (conversation.mention_count || 0) + 1;
    }
    this.emit("conversations");
  }

  _onReaction(stream, data) {
    const conversationId = stream.replace(/^conversation:/, "");
    const message = this.findMessage(conversationId, data.message_id);
    if (!message) return;
    this._apply({ ...message, reactions: data.reactions || [] });
  }

  onTyping(frame) {
    if (frame.user_id === this.me?.id) return;
    if (frame.state === "stop") {
      this.clearTyping(frame.conversation_id, frame.user_id);
      return;
    }
    if (!this.typing.has(frame.conversation_id)) this.typing.set(frame.conversation_id, new Map());
    const people = this.typing.get(frame.conversation_id);
    clearTimeout(people.get(frame.user_id));
    people.set(frame.user_id, setTimeout(
      () => this.clearTyping(frame.conversation_id, frame.user_id),
      frame.ttl_ms || 5000,
    ));
    this.emit("typing", frame.conversation_id);
  }

  clearTyping(conversationId, userId) {
    const people = this.typing.get(conversationId);
    if (!people?.has(userId)) return;
    clearTimeout(people.get(userId));
    people.delete(userId);
    this.emit("typing", conversationId);
  }

  typingIn(conversationId) {
    return [...(this.typing.get(conversationId)?.keys() || [])];
  }

  /** After a reconnect or a resync: refetch what the socket could not replay. */
  async onResync(stream) {
    if (!stream.startsWith("conversation:")) return;
    const conversationId = stream.slice("conversation:".length);
    const thread = this.thread;
    if (thread?.loaded && thread.conversationId === conversationId) {
      await this._loadReplies(thread, thread.replies.newestSeq()); // replies are not in catchUp
      if (this.thread === thread) this.emit("thread", thread);
    }
    await this.catchUp(conversationId);
  }
}

export function isDm(conversation) {
  return conversation.kind === "direct" || conversation.kind === "group";
}

/**
 * The messages of one conversation: by id, ordered by seq, plus pending sends. A conversation's
 * timeline holds top-level messages only; `{replies: true}` makes one for a thread's replies.
 */
export class Timeline {
  constructor({ replies = false } = {}) {
    this.replies = replies;
    this.byId = new Map();
    this.pending = new Map(); // client id → {body, failed, sender}
    this.loaded = false;
    this.loading = false;
    this.hasMoreBefore = false;
  }

  /** Insert or update (a newer edit wins); returns the id, or null if nothing changed. */
  upsert(message) {
    if (Boolean(message.thread_root_id) !== this.replies) return null;
    const known = this.byId.get(message.id);
    if (message.client_id) this.pending.delete(message.client_id);
    if (known && known.edited_at && message.edited_at && known.edited_at > message.edited_at) {
      return null;
    }
    if (known && known.deleted && !message.deleted) return null;
    this.byId.set(message.id, message);
    return message.id;
  }

  addPending(clientId, body, sender) {
    this.pending.set(clientId, { clientId, body, failed: false, sender });
  }

  ordered() {
    return [...this.byId.values()].sort((a, b) => a.seq - b.seq);
  }

  oldestSeq() {
    let seq = null;
    for (const m of this.byId.values()) if (seq === null || m.seq < seq) seq = m.seq;
    return seq;
  }

  newestSeq() {
    let seq = null;
    for (const m of this.byId.values()) if (seq === null || m.seq > seq) seq = m.seq;
    return seq;
  }
}
