// Workspace settings → Audit log: the workspace's security events, newest first, with the
// filters the API supports (action, actor, target, time range) and "Load more" paging over its
// opaque cursor. Actor and target ids are shown as member or API key names when known.

import { h } from "../../dom.js";
import {
  currentRole, errorLine, field, hideError, MANAGERS, showDenied, showError, showRoleDenied, table, when,
} from "./workspace-ui.js";

const PAGE = 50;
// The identity domain's audit actions (tidings.identity.audit.AuditAction).
const ACTIONS = [
  "LOGIN_SUCCEEDED", "LOGIN_FAILED", "LOGOUT", "USER_REGISTERED", "PASSWORD_CHANGED",
  "SESSION_REVOKED", "TOKEN_REUSE_DETECTED", "PERMISSION_DENIED", "API_KEY_CREATED",
  "API_KEY_REVOKED", "WORKSPACE_CREATED", "WORKSPACE_UPDATED", "WORKSPACE_DELETED",
  "MEMBER_INVITED", "MEMBER_JOINED", "MEMBER_REMOVED", "MEMBER_LEFT", "MEMBER_ROLE_CHANGED",
  "INVITATION_REVOKED",
];

/** API_KEY_CREATED → "API key created". */
export function actionLabel(action) {
  const words = String(action).toLowerCase().split("_");
  const text = words.join(" ").replace(/\bapi\b/, "API");
  return text.charAt(0).toUpperCase() + text.slice(1);
}

function shortId(id) {
  return id ? `${String(id).slice(0, 8)}…` : "—";
}

function detailText(value) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "string") return value;
  if (Array.isArray(value) && value.every((item) => typeof item === "string")) return value.join(", ");
  return JSON.stringify(value);
}

/** "2026-11-24T10:30" (a datetime-local value, local time) → ISO 8601 in UTC, or undefined. */
function isoOf(local) {
  if (!local) return undefined;
  const date = new Date(local);
  return Number.isNaN(date.getTime()) ? undefined : date.toISOString();
}

export function render(app, workspace, container) {
  let alive = true;
  let cursor = null;
  let filters = {};
  const names = new Map(); // actor or target id → name
  const base = `/api/v1/workspaces/${workspace.id}/audit`;
  const alert = errorLine();
  const rows = h("tbody");
  const status = h("p.muted", { role: "status" });
  const more = h("button", { type: "button", hidden: true, onclick: () => loadPage(false) }, "Load more");

  const action = h("select", { name: "action" },
    h("option", { value: "" }, "Any action"),
    ACTIONS.map((item) => h("option", { value: item }, actionLabel(item))));
  const actor = h("select", { name: "actor" }, h("option", { value: "" }, "Anyone"));
  const target = h("input", { name: "target", autocomplete: "off", maxLength: 64, placeholder: "an id" });
  const since = h("input", { name: "since", type: "datetime-local" });
  const until = h("input", { name: "until", type: "datetime-local" });
  const apply = h("button.primary", { type: "submit" }, "Apply filters");
  const form = h("form.ws-form", {
    "aria-label": "Filter the audit log",
    onsubmit: (event) => {
      event.preventDefault();
      filters = {
        action: action.value || undefined,
        actor_id: actor.value || undefined,
        target_id: target.value.trim() || undefined,
        since: isoOf(since.value),
        until: isoOf(until.value),
      };
      loadPage(true);
    },
  },
  h("div.ws-form-row", {},
    field("Action", action),
    field("Actor", actor),
    field("Target id", target),
    field("From", since),
    field("Until", until),
  ),
  h("div.ws-buttons", {},
    apply,
    h("button", {
      type: "button",
      onclick: () => {
        form.reset();
        filters = {};
        loadPage(true);
      },
    }, "Clear filters")));

  const body = h("div", {},
    h("p.intro", {}, "Security events of this workspace, newest first: sign-ins aside, who invited, joined, changed roles, created or revoked API keys, and refused requests."),
    form,
    alert,
    h("div.ws-section", {}, table("Audit log entries", ["Time", "Actor", "Action", "Target", "Details"], rows)),
    status,
    more,
  );
  container.replaceChildren(body);

  function nameOf(type, id) {
    if (!id) return type === "system" || !type ? "System" : "—";
    const known = names.get(String(id));
    if (known) return known;
    return `${type ? `${type.replace("_", " ")} ` : ""}${shortId(id)}`;
  }

  function entryRow(entry) {
    const details = Object.entries(entry.details || {});
    return h("tr", { dataset: { entryId: entry.id, action: entry.action } },
      h("td", {}, h("time", { dateTime: entry.occurred_at, title: entry.occurred_at }, when(entry.occurred_at))),
      h("td.ws-break", { title: entry.actor_id || "" }, nameOf(entry.actor_type, entry.actor_id)),
      h("td", {}, actionLabel(entry.action)),
      h("td.ws-break", { title: entry.target_id || "" }, entry.target_id ? nameOf(entry.target_type, entry.target_id) : "—"),
      h("td.ws-break", {},
        details.length || entry.ip
          ? h("ul.ws-details", {},
            details.map(([key, value]) => h("li", {}, h("span.muted", {}, `${key}: `), detailText(value))),
            entry.ip ? h("li", {}, h("span.muted", {}, "ip: "), entry.ip) : null)
          : "—"),
    );
  }

  async function loadPage(fresh) {
    hideError(alert);
    more.disabled = true;
    const query = { ...filters, limit: PAGE, cursor: fresh ? undefined : cursor };
    let page;
    try {
      page = await app.api.get(base, query);
    } catch (error) {
      if (!alive) return;
      more.disabled = false;
      if (showDenied(body, error, "Only workspace owners and admins can read the audit log.")) return;
      showError(alert, error);
      return;
    }
    if (!alive) return;
    if (fresh) rows.replaceChildren();
    rows.append(...page.items.map(entryRow));
    cursor = page.next_cursor;
    more.hidden = !cursor;
    more.disabled = false;
    const count = rows.childElementCount;
    status.textContent = count
      ? `${count} ${count === 1 ? "entry" : "entries"}${cursor ? ", more to load" : ""}.`
      : "No entries match.";
  }

  /** Names for the ids in the log: members and API keys (best effort, both admin-only). */
  async function loadNames() {
    const [members, keys] = await Promise.allSettled([
      app.api.get(`/api/v1/workspaces/${workspace.id}/members`),
      app.api.get(`/api/v1/workspaces/${workspace.id}/api-keys`),
    ]);
    if (!alive) return;
    const options = [];
    if (members.status === "fulfilled") {
      for (const member of members.value) {
        names.set(member.user_id, member.display_name);
        options.push(h("option", { value: member.user_id }, member.display_name));
      }
    }
    if (keys.status === "fulfilled") {
      for (const key of keys.value) {
        names.set(key.id, `API key “${key.name}”`);
        options.push(h("option", { value: key.id }, `API key “${key.name}”`));
      }
    }
    actor.append(...options);
  }

  async function start() {
    const role = await currentRole(app, workspace);
    if (!alive) return;
    if (!MANAGERS.has(role)) {
      showRoleDenied(body, role, "Only workspace owners and admins can read the audit log.");
      return;
    }
    // Names first, so the first page shows them.
    await loadNames().catch(() => {});
    if (alive) await loadPage(true);
  }

  start().catch((error) => {
    if (alive) showError(alert, error);
  });
  return () => {
    alive = false;
  };
}
