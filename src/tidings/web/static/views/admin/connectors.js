// Workspace settings › Connectors: the workspace's connectors with their status (a broken one
// shown with its reason), "Test connection", per-connector statistics, and a form generated
// from the connector type's settings and credentials JSON schemas.
//
// Credentials are write-only: every credential field is a password input that is never
// filled in; the API answers them masked (`••••abcd`), which is all this page ever shows. On
// edit, leaving every credential blank keeps the current ones (the PATCH leaves them out);
// typing any replaces them all, as the API does.

import { formatTime, h, toast } from "../../dom.js";

// What the last "Test connection" answered, per connector id, while this page is open (the
// server does not keep test results).
const lastTests = new Map();

let ids = 0;
const nextId = (prefix) => `${prefix}-${++ids}`;

const WORDS = { url: "URL", api: "API", tls: "TLS", sid: "SID", ca: "CA", pem: "PEM", helo: "HELO", id: "ID" };

/** "previous_signing_secret" → "Previous signing secret", "api_base" → "API base". */
export function humanize(name) {
  const words = name.split("_").map((word) => WORDS[word] || word);
  const first = words[0];
  words[0] = first === first.toLowerCase() ? first.charAt(0).toUpperCase() + first.slice(1) : first;
  return words.join(" ");
}

/** A labelled control; `hint` becomes its description (aria-describedby). */
export function field(label, control, hint) {
  if (!control.id) control.id = nextId("field");
  let hintNode = null;
  if (hint) {
    hintNode = h("small.hint", { id: `${control.id}-hint` }, hint);
    control.setAttribute("aria-describedby", hintNode.id);
  }
  const isCheck = control.type === "checkbox";
  return h(
    `div.field${isCheck ? ".check" : ""}`,
    {},
    isCheck ? control : null,
    h("label", { for: control.id }, label),
    isCheck ? null : control,
    hintNode,
  );
}

/** The property's schema with `$ref` followed and `anyOf [X, null]` folded into X. */
function resolve(property, root) {
  const deref = (schema) => {
    if (schema && schema.$ref) {
      const name = schema.$ref.split("/").pop();
      return { ...((root.$defs || {})[name] || {}), ...schema, $ref: undefined };
    }
    return schema;
  };
  let schema = deref(property);
  let nullable = false;
  if (Array.isArray(schema.anyOf)) {
    const options = schema.anyOf.map(deref);
    const real = options.filter((option) => option.type !== "null");
    nullable = real.length < options.length;
    schema = { ...real[0], title: schema.title, description: schema.description, default: schema.default };
  }
  return { ...schema, nullable };
}

function kindOf(schema, secret) {
  if (secret) return "secret";
  if (Array.isArray(schema.enum)) return "enum";
  if (schema.type === "boolean") return "boolean";
  if (schema.type === "integer" || schema.type === "number") return "number";
  if (schema.type === "array") return "list";
  if (schema.type === "object") return "json";
  if ((schema.maxLength || 0) > 2000) return "long";
  return "text";
}

/**
 * The fields of one schema (settings or credentials). `current` holds the values to show
 * (settings on edit); credentials are never shown, only `masked` beside them.
 */
function schemaFields(schema, { secret, current = {}, masked = {}, editing = false }) {
  const required = new Set(schema.required || []);
  return Object.entries(schema.properties || {}).map(([name, raw]) => {
    const spec = resolve(raw, schema);
    const kind = kindOf(spec, secret);
    const value = current[name] ?? (editing ? undefined : spec.default);
    const label = humanize(name) + (required.has(name) && !(secret && editing) ? " (required)" : "");
    const hints = [];
    if (spec.description) hints.push(spec.description);
    let control;
    if (kind === "secret") {
      control = h("input", { type: "password", name, autocomplete: "new-password", value: "" });
      if (editing) {
        hints.push(masked[name] ? `Current: ${masked[name]}.` : "Not set.");
      } else if (required.has(name)) {
        control.required = true;
      }
    } else if (kind === "enum") {
      control = h(
        "select",
        { name },
        required.has(name) ? null : h("option", { value: "" }, spec.default != null ? `Default (${spec.default})` : "None"),
        spec.enum.map((option) => h("option", { value: option, selected: value === option }, option)),
      );
    } else if (kind === "boolean") {
      control = h("input", { type: "checkbox", name, checked: Boolean(value) });
    } else if (kind === "number") {
      control = h("input", { type: "number", name, step: spec.type === "integer" ? "1" : "any", value: value ?? "" });
      if (spec.minimum !== undefined) control.min = spec.minimum;
      if (spec.maximum !== undefined) control.max = spec.maximum;
    } else if (kind === "list") {
      control = h("input", { type: "text", name, value: Array.isArray(value) ? value.join(", ") : "" });
      hints.push("Comma-separated.");
    } else if (kind === "json") {
      const shown = value && Object.keys(value).length ? JSON.stringify(value, null, 2) : "";
      control = h("textarea", { name, rows: 3, spellcheck: false, value: shown });
      hints.push("A JSON object, e.g. {\"X-Team\": \"ops\"}.");
    } else if (kind === "long") {
      control = h("textarea", { name, rows: 4, spellcheck: false, value: value ?? "" });
    } else {
      control = h("input", { type: "text", name, value: value ?? "", spellcheck: false });
      if (required.has(name)) control.required = true;
    }
    if (kind !== "secret" && kind !== "boolean" && required.has(name)) control.required = true;
    return { name, kind, spec, control, required: required.has(name), node: field(label, control, hints.join(" ")) };
  });
}

/** The values of `fields` as the API wants them; throws Error naming a field it cannot read. */
function collect(fields, { editing }) {
  const out = {};
  for (const item of fields) {
    const { name, kind, spec, control } = item;
    if (kind === "boolean") {
      out[name] = control.checked;
      continue;
    }
    const raw = control.value.trim();
    if (raw === "") {
      // Blank: the server's default on create; on edit, clear what can be cleared.
      if (editing && kind !== "secret" && spec.nullable) out[name] = null;
      else if (editing && kind === "json") out[name] = {};
      else if (editing && kind === "list") out[name] = [];
      continue;
    }
    if (kind === "number") {
      const number = Number(raw);
      if (!Number.isFinite(number)) throw new Error(`${humanize(name)}: not a number.`);
      out[name] = number;
    } else if (kind === "list") {
      out[name] = raw.split(",").map((part) => part.trim()).filter(Boolean);
    } else if (kind === "json") {
      let parsed;
      try {
        parsed = JSON.parse(raw);
      } catch {
        throw new Error(`${humanize(name)}: not valid JSON.`);
      }
      if (!parsed || typeof parsed !== "object" || Array.isArray(parsed)) {
        throw new Error(`${humanize(name)}: must be a JSON object.`);
      }
      out[name] = parsed;
    } else {
      out[name] = control.type === "password" ? control.value : raw;
    }
  }
  return out;
}

function problemText(error) {
  const fields = error.fields;
  return fields ? `${error.message} ${fields}` : error.message;
}

function statusBadge(connector) {
  if (connector.status === "broken") {
    return h("span.status-badge.broken", {}, "Broken");
  }
  return h(`span.status-badge.${connector.status === "active" ? "active" : "other"}`, {}, humanize(connector.status));
}

function ms(value) {
  return value === null || value === undefined ? "—" : `${Math.round(value * 10) / 10} ms`;
}

export async function render(app, workspace, container) {
  const base = `/api/v1/workspaces/${workspace.id}`;
  let types = [];
  let closed = false;

  const alert = h("p.form-error", { role: "alert", hidden: true });
  const list = h("div.connector-list");
  const editor = h("div.connector-editor");
  // Enabled once the connector types (what the form is made from) have loaded.
  const newButton = h("button.primary", { type: "button", disabled: true, onclick: () => openEditor(null) }, "New connector");

  container.replaceChildren(
    h("div.section-intro", {},
      h("p.intro", {}, "Connectors deliver messages through a provider. Credentials are stored sealed and are never shown again."),
      newButton),
    alert,
    editor,
    list,
  );

  function showAlert(text) {
    alert.textContent = text || "";
    alert.hidden = !text;
  }

  async function load() {
    const connectors = await app.api.get(`${base}/connectors`);
    if (closed) return;
    if (!connectors.length) {
      list.replaceChildren(h("p.empty", {}, "No connectors yet."));
      return;
    }
    const body = h("tbody");
    for (const connector of connectors) body.append(...rowsOf(connector));
    list.replaceChildren(h("table.connectors", {},
      h("caption.visually-hidden", {}, "Connectors"),
      h("thead", {}, h("tr", {},
        h("th", { scope: "col" }, "Name"),
        h("th", { scope: "col" }, "Type"),
        h("th", { scope: "col" }, "Status"),
        h("th", { scope: "col" }, "Last test"),
        h("th", { scope: "col" }, h("span.visually-hidden", {}, "Actions")))),
      body));
  }

  function lastTestNode(connector) {
    const test = lastTests.get(connector.id);
    if (!test) return h("span.muted", {}, "Not tested yet");
    return h(`span.test-result.${test.ok ? "ok" : "failed"}`, {},
      `${test.ok ? "✓ OK" : "✗ Failed"}: ${test.detail}${test.status && !test.detail.includes(`HTTP ${test.status}`) ? ` (HTTP ${test.status})` : ""} · ${formatTime(test.at)}`);
  }

  function rowsOf(connector) {
    const testCell = h("td.last-test", { "aria-live": "polite" }, lastTestNode(connector));
    const statsRow = h("tr.stats-row", { hidden: true }, h("td", { colspan: 5 }));
    const typeTitle = types.find((item) => item.type === connector.type)?.title || connector.type;
    const masked = Object.entries(connector.credentials || {})
      .filter(([, value]) => value)
      .map(([name, value]) => `${humanize(name)} ${value}`)
      .join(" · ");

    const testButton = h("button.small", {
      type: "button",
      "aria-label": `Test connection of ${connector.name}`,
      onclick: async () => {
        testButton.disabled = true;
        testCell.replaceChildren(h("span.muted", {}, "Testing…"));
        try {
          const result = await app.api.post(`${base}/connectors/${connector.id}/test`);
          lastTests.set(connector.id, { ...result, at: new Date().toISOString() });
          if (result.ok && connector.status === "broken") {
            await load(); // a successful test puts a broken connector back in service
            return;
          }
          testCell.replaceChildren(lastTestNode(connector));
        } catch (error) {
          testCell.replaceChildren(lastTestNode(connector));
          toast(error.message);
        } finally {
          testButton.disabled = false;
        }
      },
    }, "Test connection");

    const statsButton = h("button.small", {
      type: "button",
      "aria-expanded": "false",
      "aria-label": `Statistics of ${connector.name}`,
      onclick: async () => {
        const open = statsRow.hidden;
        statsButton.setAttribute("aria-expanded", String(open));
        statsRow.hidden = !open;
        if (open) await loadStats(connector, statsRow.firstChild);
      },
    }, "Stats");

    const editButton = h("button.small", {
      type: "button",
      "aria-label": `Edit ${connector.name}`,
      onclick: () => openEditor(connector),
    }, "Edit");

    const actions = h("div.row-actions");
    const deleteButton = h("button.small.danger", {
      type: "button",
      "aria-label": `Delete ${connector.name}`,
      onclick: () => {
        const confirmButton = h("button.small.danger", {
          type: "button",
          onclick: async () => {
            confirmButton.disabled = true;
            try {
              await app.api.request("DELETE", `${base}/connectors/${connector.id}`);
              toast(`Connector ${connector.name} deleted.`, "info");
              await load();
            } catch (error) {
              toast(error.message);
              confirmButton.disabled = false;
            }
          },
        }, `Delete ${connector.name}`);
        const cancel = h("button.small", { type: "button", onclick: () => load().catch((e) => toast(e.message)) }, "Cancel");
        actions.replaceChildren(h("span.muted", {}, "Delete for good?"), confirmButton, cancel);
        confirmButton.focus();
      },
    }, "Delete");
    actions.append(testButton, statsButton, editButton, deleteButton);

    const status = h("td.status", {}, statusBadge(connector));
    if (connector.status === "broken") {
      status.append(h("span.status-reason", {}, connector.status_reason || "the provider refused the credentials"));
    }
    const row = h(`tr.connector${connector.status === "broken" ? ".broken" : ""}`,
      { dataset: { connectorId: connector.id, status: connector.status } },
      h("td", {}, h("strong", {}, connector.name), masked ? h("div.muted", {}, masked) : null),
      h("td", {}, typeTitle),
      status,
      testCell,
      h("td", {}, actions));
    return [row, statsRow];
  }

  async function loadStats(connector, cell) {
    cell.replaceChildren(h("span.muted", {}, "Loading statistics…"));
    try {
      const stats = await app.api.get(`${base}/connectors/${connector.id}/stats`, { hours: 24 });
      const failures = Object.entries(stats.failed || {});
      cell.replaceChildren(h("dl.stats", { "aria-label": `Statistics of ${connector.name}, last ${stats.window_hours} hours` },
        h("dt", {}, "Sent"), h("dd", {}, String(stats.sent)),
        h("dt", {}, "Failures"),
        h("dd", {}, failures.length ? failures.map(([kind, count]) => `${kind}: ${count}`).join(", ") : "none"),
        h("dt", {}, "Skipped"), h("dd", {}, String(stats.skipped)),
        h("dt", {}, "Latency p50 / p99"), h("dd", {}, `${ms(stats.latency_p50_ms)} / ${ms(stats.latency_p99_ms)}`),
        h("dt", {}, "Circuit"), h("dd", {}, stats.circuit.replace("_", " ")),
        h("dt", {}, "Window"), h("dd", {}, `last ${stats.window_hours} hours`)));
    } catch (error) {
      cell.replaceChildren(h("p.form-error", { role: "alert" }, error.message));
    }
  }

  function openEditor(connector) {
    showAlert("");
    const editing = connector !== null;
    const formError = h("p.form-error", { role: "alert", hidden: true });
    const typeSelect = h("select", { name: "type", required: true, disabled: editing },
      editing ? null : h("option", { value: "" }, "Choose a type…"),
      types.map((item) => h("option", { value: item.type, selected: editing && item.type === connector.type }, `${item.title} (${item.channel})`)));
    const nameInput = h("input", {
      type: "text", name: "name", required: true, maxLength: 80, autocomplete: "off",
      value: editing ? connector.name : "",
    });
    const settingsBox = h("fieldset.schema", {}, h("legend", {}, "Settings"));
    const credentialsBox = h("fieldset.schema", {}, h("legend", {}, "Credentials"));
    let settingsFields = [];
    let credentialFields = [];

    function build() {
      const type = types.find((item) => item.type === typeSelect.value);
      settingsBox.replaceChildren(h("legend", {}, "Settings"));
      credentialsBox.replaceChildren(h("legend", {}, "Credentials"));
      settingsBox.hidden = credentialsBox.hidden = !type;
      if (!type) return;
      settingsFields = schemaFields(type.settings_schema, { secret: false, current: editing ? connector.settings : {}, editing });
      credentialFields = schemaFields(type.credentials_schema, { secret: true, masked: editing ? connector.credentials : {}, editing });
      settingsBox.append(...(settingsFields.length ? settingsFields.map((item) => item.node) : [h("p.muted", {}, "No settings.")]));
      if (editing) {
        credentialsBox.append(h("p.hint", {}, "Leave every credential blank to keep the current ones; new values replace them all."));
      }
      credentialsBox.append(...(credentialFields.length ? credentialFields.map((item) => item.node) : [h("p.muted", {}, "No credentials.")]));
    }
    typeSelect.addEventListener("change", build);
    build();

    const submit = h("button.primary", { type: "submit" }, editing ? "Save connector" : "Create connector");
    const form = h("form.connector-form", {
      "aria-label": editing ? `Edit connector ${connector.name}` : "New connector",
      onsubmit: async (event) => {
        event.preventDefault();
        formError.hidden = true;
        let body;
        try {
          const settings = collect(settingsFields, { editing });
          const credentials = collect(credentialFields, { editing });
          const anyCredential = credentialFields.some((item) => item.control.value !== "");
          body = { name: nameInput.value.trim(), settings };
          if (!editing) {
            body.type = typeSelect.value;
            body.credentials = credentials;
          } else if (anyCredential) {
            body.credentials = credentials;
          }
        } catch (error) {
          formError.textContent = error.message;
          formError.hidden = false;
          return;
        }
        submit.disabled = true;
        try {
          const saved = editing
            ? await app.api.request("PATCH", `${base}/connectors/${connector.id}`, { body })
            : await app.api.post(`${base}/connectors`, body);
          toast(`Connector ${saved.name} ${editing ? "saved" : "created"}.`, "info");
          editor.replaceChildren();
          newButton.hidden = false;
          await load();
        } catch (error) {
          formError.textContent = problemText(error);
          formError.hidden = false;
        } finally {
          submit.disabled = false;
        }
      },
    },
    h("h2", {}, editing ? `Edit ${connector.name}` : "New connector"),
    field("Type", typeSelect),
    field("Name", nameInput, "Letters, digits, spaces, . _ -; unique in the workspace."),
    settingsBox,
    credentialsBox,
    formError,
    h("div.form-actions", {},
      submit,
      h("button", { type: "button", onclick: () => { editor.replaceChildren(); newButton.hidden = false; newButton.focus(); } }, "Cancel")));
    editor.replaceChildren(form);
    newButton.hidden = true;
    (editing ? nameInput : typeSelect).focus();
  }

  try {
    types = await app.api.get(`${base}/connector-types`);
    newButton.disabled = false;
    await load();
  } catch (error) {
    showAlert(error.message);
  }
  return () => {
    closed = true;
  };
}
