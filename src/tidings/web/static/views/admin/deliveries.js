// Workspace settings › Delivery log: the workspace's outbound messages newest first, filtered by
// status, connector and recipient, paged with the API's cursor ("Load more"); a message's
// detail with every attempt, refreshed every second until its status settles; and a form to
// send a test message (POST /api/v1/messages with the workspace) that opens its detail.

import { formatTime, h, toast } from "../../dom.js";
import { field } from "./connectors.js";
import { problemLines } from "./templates.js";

const STATUSES = ["queued", "sending", "sent", "delivered", "bounced", "failed", "cancelled"];
// `sent` is where providers that never report delivery stop (tidings.delivery.statuses).
const SETTLED = new Set(["sent", "delivered", "bounced", "failed", "cancelled"]);
const POLL_MS = 1000;
const PAGE_SIZE = 50;

function badge(status) {
  return h(`span.status-badge.${status}`, {}, status);
}

function latency(value) {
  return value === null || value === undefined ? "—" : `${Math.round(value)} ms`;
}

function fullTime(iso) {
  return iso ? new Date(iso).toLocaleString([], { dateStyle: "medium", timeStyle: "medium" }) : "—";
}

export async function render(app, workspace, container) {
  const api = app.api;
  const query = { workspace_id: workspace.id };
  let closed = false;
  let pollTimer = null;
  let openId = null;
  let cursor = null;
  let connectors = [];
  let routes = [];
  let templates = [];

  const connectorName = (id) => {
    if (!id) return "—";
    return connectors.find((item) => item.id === id)?.name || `deleted (${id.slice(0, 8)})`;
  };
  const routeName = (id) => routes.find((item) => item.id === id)?.name || (id ? id.slice(0, 8) : "—");

  // -- the log -----------------------------------------------------------------------------
  const statusFilter = h("select", { name: "status" },
    h("option", { value: "" }, "Any status"),
    STATUSES.map((status) => h("option", { value: status }, status)));
  const connectorFilter = h("select", { name: "connector" }, h("option", { value: "" }, "Any connector"));
  const recipientFilter = h("input", { type: "search", name: "to", autocomplete: "off", spellcheck: false });
  const filters = h("form.log-filters", {
    "aria-label": "Filter the delivery log",
    onsubmit: (event) => {
      event.preventDefault();
      reload();
    },
  },
  field("Status", statusFilter),
  field("Connector", connectorFilter),
  field("Recipient", recipientFilter, "The exact address."),
  h("div.form-actions", {}, h("button", { type: "submit" }, "Apply filters")));
  statusFilter.addEventListener("change", () => reload());
  connectorFilter.addEventListener("change", () => reload());

  const rows = h("tbody");
  const table = h("table.deliveries", {},
    h("caption.visually-hidden", {}, "Delivery log, newest first"),
    h("thead", {}, h("tr", {},
      h("th", { scope: "col" }, "Created"),
      h("th", { scope: "col" }, "Recipient"),
      h("th", { scope: "col" }, "Status"),
      h("th", { scope: "col" }, "Connector"),
      h("th", { scope: "col" }, "Attempts"),
      h("th", { scope: "col" }, "Error"))),
    rows);
  const empty = h("p.empty", { hidden: true }, "No messages match.");
  const more = h("button", { type: "button", hidden: true, onclick: () => loadPage().catch((e) => toast(e.message)) }, "Load more");
  const logAlert = h("p.form-error", { role: "alert", hidden: true });
  const logView = h("div.log-view", {},
    h("div.section-intro", {},
      h("h2", {}, "Messages"),
      h("button", { type: "button", onclick: () => reload() }, "Refresh")),
    filters, logAlert, table, empty, more);

  function rowOf(message) {
    const open = h("button.link", {
      type: "button",
      "aria-label": `Open the message to ${message.to}, ${message.status}`,
      onclick: (event) => {
        event.stopPropagation();
        openDetail(message.id);
      },
    }, formatTime(message.created_at));
    const target = message.connector_id ? connectorName(message.connector_id) : `route ${routeName(message.route_id)}`;
    return h("tr.delivery", { dataset: { messageId: message.id, status: message.status }, onclick: () => openDetail(message.id) },
      h("td", {}, open),
      h("td.recipient", {}, message.to),
      h("td", {}, badge(message.status)),
      h("td", {}, target),
      h("td", {}, String(message.attempts)),
      h("td.error-cell", {}, message.error_class || ""));
  }

  async function loadPage() {
    more.disabled = true;
    try {
      const page = await api.get("/api/v1/messages", {
        ...query,
        status: statusFilter.value || undefined,
        connector_id: connectorFilter.value || undefined,
        to: recipientFilter.value.trim() || undefined,
        limit: PAGE_SIZE,
        cursor: cursor || undefined,
      });
      if (closed) return;
      logAlert.hidden = true;
      rows.append(...page.items.map(rowOf));
      cursor = page.next_cursor;
      more.hidden = !cursor;
      empty.hidden = rows.childElementCount > 0;
    } finally {
      more.disabled = false;
    }
  }

  function reload() {
    cursor = null;
    rows.replaceChildren();
    loadPage().catch((error) => {
      logAlert.textContent = error.message;
      logAlert.hidden = false;
    });
  }

  // -- one message -------------------------------------------------------------------------
  const detailView = h("section.message-detail", { hidden: true, "aria-label": "Message" });
  // Redrawn every second while the message is moving: the back button stays (and keeps focus).
  const detailBody = h("div.detail-body");
  const backButton = h("button", { type: "button", onclick: () => closeDetail() }, "← Back to the log");

  function stopPolling() {
    clearTimeout(pollTimer);
    pollTimer = null;
  }

  function closeDetail() {
    stopPolling();
    openId = null;
    detailView.hidden = true;
    detailBody.replaceChildren();
    logView.hidden = false;
    sendBox.hidden = false;
    reload();
  }

  function openDetail(id) {
    stopPolling();
    openId = id;
    logView.hidden = true;
    sendBox.hidden = true;
    detailView.hidden = false;
    detailView.dataset.messageId = id;
    delete detailView.dataset.status;
    delete detailView.dataset.polling;
    detailBody.replaceChildren(h("p.muted", {}, "Loading…"));
    detailView.replaceChildren(backButton, detailBody);
    refreshDetail(id, true);
  }

  async function refreshDetail(id, first = false) {
    let message;
    try {
      message = await api.get(`/api/v1/messages/${id}`, query);
    } catch (error) {
      if (closed || openId !== id) return;
      detailBody.replaceChildren(h("p.form-error", { role: "alert" }, error.message));
      return;
    }
    if (closed || openId !== id) return;
    const settled = SETTLED.has(message.status);
    drawDetail(message, settled, first);
    if (!settled) pollTimer = setTimeout(() => refreshDetail(id), POLL_MS);
  }

  function drawDetail(message, settled, focus) {
    const content = message.content || {};
    const facts = [
      ["Status", h("span", {}, badge(message.status), settled ? null : h("span.muted.live", {}, " · refreshing every second"))],
      ["Recipient", message.to],
      ["Through", message.connector_id ? `connector ${connectorName(message.connector_id)}` : `route ${routeName(message.route_id)}`],
      ["Template", message.template_id ? `${templates.find((t) => t.id === message.template_id)?.name || message.template_id} v${message.template_version}` : null],
      ["Created", fullTime(message.created_at)],
      ["Sent", message.sent_at ? fullTime(message.sent_at) : null],
      ["Finished", message.finished_at ? fullTime(message.finished_at) : null],
      ["Scheduled for", message.send_at ? fullTime(message.send_at) : null],
      ["Provider message id", message.provider_message_id],
      ["Error", message.error ? `${message.error_class}: ${message.error}` : null],
      ["Subject", content.subject],
      ["Text", content.text],
    ].filter(([, value]) => value !== null && value !== undefined && value !== "");
    const attempts = message.attempt_log || [];
    const heading = h("h2", { tabindex: "-1" }, `Message to ${message.to}`);
    detailView.dataset.status = message.status;
    detailView.dataset.polling = settled ? "no" : "yes";
    detailBody.replaceChildren(
      heading,
      h("dl.facts", {}, facts.map(([label, value]) => [h("dt", {}, label), h("dd", {}, value)])),
      h("h3", {}, `Attempts (${attempts.length})`),
      attempts.length
        ? h("table.attempts", {},
          h("caption.visually-hidden", {}, "Delivery attempts, oldest first"),
          h("thead", {}, h("tr", {},
            h("th", { scope: "col" }, "#"),
            h("th", { scope: "col" }, "Time"),
            h("th", { scope: "col" }, "Connector"),
            h("th", { scope: "col" }, "Outcome"),
            h("th", { scope: "col" }, "Error class"),
            h("th", { scope: "col" }, "Latency"),
            h("th", { scope: "col" }, "Provider status"),
            h("th", { scope: "col" }, "Provider answer"))),
          h("tbody", {}, attempts.map((attempt) => h("tr.attempt", { dataset: { outcome: attempt.outcome } },
            h("td", {}, String(attempt.number)),
            h("td", {}, fullTime(attempt.started_at)),
            h("td", {}, connectorName(attempt.connector_id)),
            h("td", {}, badge(attempt.outcome)),
            h("td", {}, attempt.error_class || "—"),
            h("td", {}, latency(attempt.latency_ms)),
            h("td", {}, attempt.provider_status === null ? "—" : String(attempt.provider_status)),
            h("td.provider-answer", {}, attempt.provider_response || "—")))))
        : h("p.muted", {}, "No attempt yet."),
    );
    if (focus) heading.focus();
  }

  // -- sending a test message ----------------------------------------------------------------
  const targetSelect = h("select", { name: "target", required: true });
  const recipientInput = h("input", { type: "text", name: "recipient", required: true, autocomplete: "off", spellcheck: false });
  const textMode = h("input", { type: "radio", name: "content-mode", value: "text", checked: true, id: "send-mode-text" });
  const templateMode = h("input", { type: "radio", name: "content-mode", value: "template", id: "send-mode-template" });
  const subjectInput = h("input", { type: "text", name: "subject" });
  const textInput = h("textarea", { name: "text", rows: 3 });
  const templateSelect = h("select", { name: "template" });
  const variablesInput = h("textarea", { name: "variables", rows: 3, spellcheck: false, value: "{}" });
  const textParts = h("div.send-text", {},
    field("Subject (email)", subjectInput),
    field("Message text", textInput));
  const templateParts = h("div.send-template", { hidden: true },
    field("Template", templateSelect),
    field("Variables (JSON)", variablesInput));
  const switchMode = () => {
    textParts.hidden = !textMode.checked;
    templateParts.hidden = !templateMode.checked;
  };
  textMode.addEventListener("change", switchMode);
  templateMode.addEventListener("change", switchMode);
  const sendError = h("div.form-error-box");
  const sendButton = h("button.primary", { type: "submit" }, "Send test message");
  const sendForm = h("form.send-form", {
    "aria-label": "Send a test message",
    onsubmit: async (event) => {
      event.preventDefault();
      sendError.replaceChildren();
      const [kind, id] = targetSelect.value.split(":");
      const body = { workspace_id: workspace.id, to: recipientInput.value.trim() };
      if (!id) {
        sendError.replaceChildren(h("p.form-error", { role: "alert" }, "Choose a connector or a route."));
        return;
      }
      body[kind] = id;
      if (templateMode.checked) {
        if (!templateSelect.value) {
          sendError.replaceChildren(h("p.form-error", { role: "alert" }, "Choose a template."));
          return;
        }
        body.template = templateSelect.value;
        try {
          body.variables = variablesInput.value.trim() ? JSON.parse(variablesInput.value) : {};
        } catch {
          sendError.replaceChildren(h("p.form-error", { role: "alert" }, "Variables: not valid JSON."));
          return;
        }
      } else {
        body.content = { text: textInput.value };
        if (subjectInput.value.trim()) body.content.subject = subjectInput.value.trim();
      }
      sendButton.disabled = true;
      try {
        const accepted = await api.post("/api/v1/messages", body);
        toast("Message accepted.", "info");
        sendBox.open = false;
        openDetail(accepted.id);
      } catch (error) {
        const lines = problemLines(error);
        sendError.replaceChildren(h("div.form-error", { role: "alert" }, lines.map((line) => h("p", {}, line))));
      } finally {
        sendButton.disabled = false;
      }
    },
  },
  field("Connector or route", targetSelect),
  field("Recipient address", recipientInput, "As the connector understands it: an email address, a phone number, a chat id…"),
  h("fieldset.content-mode", {}, h("legend", {}, "Content"),
    h("label.radio", { for: textMode.id }, textMode, " Text"),
    h("label.radio", { for: templateMode.id }, templateMode, " Template")),
  textParts,
  templateParts,
  sendError,
  h("div.form-actions", {}, sendButton));
  const sendBox = h("details.send-box", {}, h("summary", {}, "Send a test message"), sendForm);

  function fillTargets() {
    const options = [h("option", { value: "" }, "Choose…")];
    if (connectors.length) {
      options.push(h("optgroup", { label: "Connectors" }, connectors.map((item) =>
        h("option", { value: `connector:${item.id}` }, `${item.name} (${item.type}${item.status === "active" ? "" : `, ${item.status}`})`))));
    }
    if (routes.length) {
      options.push(h("optgroup", { label: "Routes" }, routes.map((item) =>
        h("option", { value: `route:${item.id}` }, `${item.name} (${item.connector_names.join(" → ")})`))));
    }
    targetSelect.replaceChildren(...options);
    if (connectors.length + routes.length === 1) targetSelect.selectedIndex = 1;
    connectorFilter.replaceChildren(h("option", { value: "" }, "Any connector"),
      connectors.map((item) => h("option", { value: item.id }, item.name)));
    templateSelect.replaceChildren(h("option", { value: "" }, templates.length ? "Choose…" : "No templates"),
      templates.map((item) => h("option", { value: item.id }, `${item.name} (v${item.latest_version})`)));
  }

  container.replaceChildren(sendBox, logView, detailView);

  const base = `/api/v1/workspaces/${workspace.id}`;
  const [connectorList, routeList, templatePage] = await Promise.all([
    api.get(`${base}/connectors`).catch((error) => (toast(error.message), [])),
    api.get(`${base}/routes`).catch((error) => (toast(error.message), [])),
    api.get(`${base}/templates`, { limit: 200 }).catch((error) => (toast(error.message), { items: [] })),
  ]);
  connectors = connectorList;
  routes = routeList;
  templates = templatePage.items;
  fillTargets();
  reload();

  return () => {
    closed = true;
    stopPolling();
  };
}
