// Workspace settings → API keys: create a key (name, scopes, optional expiry), show its secret
// exactly once with a Copy button, list the keys (public prefix only, never a secret) and
// revoke them (asked once). The secret lives only in the DOM of this page: it is not logged,
// not stored, and removed when the person presses Done or leaves the section.

import { h, toast } from "../../dom.js";
import {
  askOnce, copyBox, currentRole, errorLine, field, hideError, MANAGERS, showDenied, showError, showRoleDenied, table, uid, when,
} from "./workspace-ui.js";

const SCOPES = [
  { value: "messages:send", help: "post messages, send through the send API, read its delivery log" },
  { value: "messages:read", help: "read messages, search, read the delivery log" },
  { value: "conversations:write", help: "create channels, set topics, add and remove their members" },
  { value: "admin", help: "all of the above, plus members, connectors, templates and the audit log" },
];

const EXPIRIES = [
  { value: "", label: "Never" },
  { value: "30", label: "In 30 days" },
  { value: "90", label: "In 90 days" },
  { value: "365", label: "In a year" },
];

function keyState(key) {
  if (key.revoked_at) return `revoked ${when(key.revoked_at)}`;
  if (key.expires_at && new Date(key.expires_at) <= new Date()) return "expired";
  return "active";
}

export function render(app, workspace, container) {
  let alive = true;
  const base = `/api/v1/workspaces/${workspace.id}/api-keys`;
  const alert = errorLine();
  const created = h("div.ws-reveal-slot", { "aria-live": "polite" });
  const list = h("div.ws-section", {}, h("p.loading", {}, "Loading API keys…"));
  const form = buildForm();
  form.hidden = true; // until we know this person may manage keys
  const body = h("div", {},
    h("p.intro", {}, "An API key lets an app act in this workspace with the scopes you give it. Its secret is shown once, when you create it."),
    created,
    form,
    alert,
    h("h2.ws-h2", {}, "Keys"),
    list,
  );
  container.replaceChildren(body);

  function buildForm() {
    const name = h("input", { name: "name", required: true, maxLength: 80, autocomplete: "off" });
    const boxes = SCOPES.map((scope) => {
      const id = uid("scope");
      const help = h("span.muted.ws-check-help", { id: `${id}-help` }, scope.help);
      const box = h("input", {
        type: "checkbox",
        id,
        name: "scopes",
        value: scope.value,
        checked: scope.value === "messages:send",
        "aria-describedby": help.id,
      });
      return { box, node: h("div.ws-check", {}, box, h("label", { for: id }, scope.value), help) };
    });
    const expires = h("select", { name: "expires" }, EXPIRIES.map((item) =>
      h("option", { value: item.value }, item.label)));
    const submit = h("button.primary", { type: "submit" }, "Create API key");
    return h("form.ws-form", {
      "aria-label": "New API key",
      onsubmit: async (event) => {
        event.preventDefault();
        hideError(alert);
        const scopes = boxes.filter((item) => item.box.checked).map((item) => item.box.value);
        if (!scopes.length) {
          showError(alert, new Error("Choose at least one scope."));
          boxes[0].box.focus();
          return;
        }
        const days = Number(expires.value);
        submit.disabled = true;
        try {
          const key = await app.api.post(base, {
            name: name.value.trim(),
            scopes,
            expires_at: days ? new Date(Date.now() + days * 86_400_000).toISOString() : null,
          });
          if (!alive) return;
          name.value = "";
          reveal(key);
          await load();
        } catch (error) {
          if (alive) showError(alert, error);
        } finally {
          submit.disabled = false;
        }
      },
    },
    h("div.ws-form-row", {}, field("Key name", name, "Which app uses it, e.g. “billing mailer”."), field("Expires", expires)),
    h("fieldset.ws-fieldset", {}, h("legend", {}, "Scopes"), boxes.map((item) => item.node)),
    submit);
  }

  function reveal(key) {
    const done = h("button", {
      type: "button",
      onclick: () => {
        created.replaceChildren(); // the secret leaves the page
        form.querySelector("input")?.focus();
      },
    }, "Done, I have stored it");
    const box = h("section.ws-reveal", { "aria-labelledby": "key-created-title" },
      h("h2.ws-h2", { id: "key-created-title" }, `Your new API key “${key.name}”`),
      h("p", {},
        h("strong", {}, "Copy it now: you won't see this again. "),
        "Tidings keeps only a hash of it. If you lose it, revoke the key and create a new one."),
      copyBox("API key secret", key.key, { testId: "api-key-secret" }),
      done,
    );
    created.replaceChildren(box);
    box.querySelector("input").focus();
  }

  async function load() {
    let keys;
    try {
      keys = await app.api.get(base);
    } catch (error) {
      if (!alive) return;
      if (showDenied(body, error, "Only workspace owners and admins can create, see and revoke API keys.")) return;
      showError(alert, error);
      list.replaceChildren();
      return;
    }
    if (!alive) return;
    form.hidden = false;
    if (!keys.length) {
      list.replaceChildren(h("p.muted", {}, "No API keys yet."));
      return;
    }
    list.replaceChildren(table(
      "API keys of the workspace",
      ["Name", "Key", "Scopes", "Created", "Last used", "Expires", "Status", "Actions"],
      keys.map((key) => {
        const state = keyState(key);
        return h("tr", { dataset: { keyId: key.id, state: state === "active" ? "active" : "inactive" } },
          h("td", {}, h("strong", {}, key.name)),
          h("td", {}, h("code.ws-break", {}, key.prefix)),
          h("td", {}, key.scopes.join(", ")),
          h("td", {}, when(key.created_at)),
          h("td", {}, key.last_used_at ? when(key.last_used_at) : "never"),
          h("td", {}, key.expires_at ? when(key.expires_at) : "never"),
          h("td", {}, state),
          h("td", {}, key.revoked_at ? null : askOnce({
            label: "Revoke",
            accessibleName: `Revoke ${key.name}`,
            question: `Revoke “${key.name}”? Apps using it stop working.`,
            confirm: "Revoke key",
            action: async () => {
              try {
                await app.api.request("DELETE", `${base}/${key.id}`);
              } catch (error) {
                toast(error.message);
                throw error;
              }
              toast(`API key “${key.name}” revoked.`, "info");
              if (alive) await load();
            },
          })),
        );
      }),
    ));
  }

  async function start() {
    const role = await currentRole(app, workspace);
    if (!alive) return;
    if (!MANAGERS.has(role)) {
      showRoleDenied(body, role, "Only workspace owners and admins can create, see and revoke API keys.");
      return;
    }
    await load();
  }

  start().catch((error) => {
    if (alive) showError(alert, error);
  });
  return () => {
    alive = false;
    created.replaceChildren(); // never keep the secret beyond the page
  };
}
