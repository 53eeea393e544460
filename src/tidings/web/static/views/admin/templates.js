// Workspace settings › Templates: the workspace's message templates, an editor for their parts
// per channel (email subject/text/HTML, SMS text, chat text/blocks) and sample variables, a
// live preview rendered by the server's own renderer (POST …/templates/preview, debounced, so
// what is shown is what a send produces, errors included), and the versions of a template.

import { formatTime, h, toast } from "../../dom.js";
import { field } from "./connectors.js";

const PREVIEW_DELAY_MS = 250;

const CHANNELS = [
  {
    id: "email",
    title: "Email",
    parts: [
      { id: "subject", label: "Email subject", kind: "input" },
      { id: "text", label: "Email text", kind: "text" },
      { id: "html", label: "Email HTML", kind: "text" },
    ],
  },
  { id: "sms", title: "SMS", parts: [{ id: "text", label: "SMS text", kind: "text" }] },
  {
    id: "chat",
    title: "Chat",
    parts: [
      { id: "text", label: "Chat text", kind: "text" },
      { id: "blocks", label: "Chat blocks (JSON)", kind: "json" },
    ],
  },
];

/** A render or save problem as lines: the detail, then where (part, line) and why. */
export function problemLines(error) {
  const problem = error.problem || {};
  const lines = [error.message];
  const where = (item) => [item.part, item.line ? `line ${item.line}` : null].filter(Boolean).join(", ");
  if (Array.isArray(problem.errors)) {
    for (const item of problem.errors) {
      const place = where(item) || item.field || "";
      lines.push(`${place ? `${place}: ` : ""}${item.reason || item.message || ""}`);
    }
  } else if (problem.part || problem.variable || problem.reason) {
    const bits = [];
    if (problem.variable) bits.push(`variable ${problem.variable}`);
    if (problem.reason) bits.push(problem.reason);
    const place = where(problem);
    lines.push(`${place ? `${place}: ` : ""}${bits.join(" — ")}`);
  }
  return lines.filter(Boolean);
}

function alertOf(lines) {
  const [first, ...rest] = lines;
  return h("div.form-error", { role: "alert" },
    h("p", {}, first),
    rest.length ? h("ul", {}, rest.map((line) => h("li", {}, line))) : null);
}

export async function render(app, workspace, container) {
  const base = `/api/v1/workspaces/${workspace.id}/templates`;
  let closed = false;
  let timer = null;

  const list = h("div.template-list");
  const editor = h("div.template-editor");
  const newButton = h("button.primary", { type: "button", onclick: () => openEditor(null) }, "New template");
  container.replaceChildren(
    h("div.section-intro", {},
      h("p.intro", {}, "Templates are written in Jinja2, with parts per channel. Sends render them with their variables."),
      newButton),
    editor,
    list,
  );

  async function load() {
    const page = await app.api.get(base, { limit: 200 });
    if (closed) return;
    if (!page.items.length) {
      list.replaceChildren(h("p.empty", {}, "No templates yet."));
      return;
    }
    list.replaceChildren(h("table.templates", {},
      h("caption.visually-hidden", {}, "Templates"),
      h("thead", {}, h("tr", {},
        h("th", { scope: "col" }, "Name"),
        h("th", { scope: "col" }, "Description"),
        h("th", { scope: "col" }, "Version"),
        h("th", { scope: "col" }, "Updated"),
        h("th", { scope: "col" }, h("span.visually-hidden", {}, "Actions")))),
      h("tbody", {}, page.items.map((item) => {
        const actions = h("div.row-actions");
        const remove = h("button.small.danger", {
          type: "button",
          "aria-label": `Delete ${item.name}`,
          onclick: () => {
            const confirm = h("button.small.danger", {
              type: "button",
              onclick: async () => {
                confirm.disabled = true;
                try {
                  await app.api.request("DELETE", `${base}/${item.id}`);
                  toast(`Template ${item.name} deleted.`, "info");
                  editor.replaceChildren();
                  newButton.hidden = false;
                  await load();
                } catch (error) {
                  toast(error.message);
                  confirm.disabled = false;
                }
              },
            }, `Delete ${item.name}`);
            actions.replaceChildren(h("span.muted", {}, "Delete for good?"), confirm,
              h("button.small", { type: "button", onclick: () => load().catch((e) => toast(e.message)) }, "Cancel"));
            confirm.focus();
          },
        }, "Delete");
        actions.append(
          h("button.small", {
            type: "button",
            "aria-label": `Edit ${item.name}`,
            onclick: () => edit(item.id).catch((error) => toast(error.message)),
          }, "Edit"),
          remove);
        return h("tr", { dataset: { templateId: item.id } },
          h("td", {}, h("strong", {}, item.name)),
          h("td", {}, item.description),
          h("td", {}, `v${item.latest_version}`),
          h("td", {}, formatTime(item.updated_at)),
          h("td", {}, actions));
      }))));
  }

  async function edit(id, version) {
    const template = await app.api.get(`${base}/${id}`, { version });
    if (!closed) openEditor(template);
  }

  function openEditor(template) {
    clearTimeout(timer);
    const editing = template !== null;
    const formError = h("div.form-error-box");
    const nameInput = h("input", {
      type: "text", name: "name", required: true, maxLength: 80, autocomplete: "off",
      spellcheck: false, value: editing ? template.name : "",
    });
    const descriptionInput = h("input", {
      type: "text", name: "description", maxLength: 500, value: editing ? template.description : "",
    });
    const variablesInput = h("textarea", {
      name: "variables", rows: 4, spellcheck: false,
      value: JSON.stringify(editing ? template.sample_variables : { name: "Ada" }, null, 2),
    });

    const channels = CHANNELS.map((channel) => {
      const saved = editing ? template.parts[channel.id] : null;
      const toggle = h("input", {
        type: "checkbox", name: `channel-${channel.id}`,
        checked: editing ? Boolean(saved) : channel.id === "email",
      });
      const parts = channel.parts.map((part) => {
        let value = saved ? saved[part.id] : null;
        if (part.kind === "json") value = value ? JSON.stringify(value, null, 2) : "";
        if (!editing && channel.id === "email" && part.id === "subject") value = "Welcome, {{ name }}";
        if (!editing && channel.id === "email" && part.id === "text") value = "Hello {{ name }}!";
        const control = part.kind === "input"
          ? h("input", { type: "text", name: `${channel.id}-${part.id}`, spellcheck: false, value: value ?? "" })
          : h("textarea", { name: `${channel.id}-${part.id}`, rows: part.kind === "json" ? 3 : 4, spellcheck: false, value: value ?? "" });
        return { ...part, control, node: field(part.label, control) };
      });
      const box = h("fieldset.channel-parts", { hidden: !toggle.checked },
        h("legend", {}, `${channel.title} parts`), parts.map((part) => part.node));
      toggle.addEventListener("change", () => {
        box.hidden = !toggle.checked;
      });
      return { ...channel, toggle, parts, box };
    });

    const preview = h("div.preview-output", { "aria-live": "polite", dataset: { state: "idle" } });
    const previewBox = h("section.template-preview", { "aria-label": "Preview" },
      h("h3", {}, "Preview"),
      h("p.hint", {}, "Rendered by the server with the variables of the form, as you type."),
      preview);

    /** The form as the API's `parts` and `sample_variables`; throws on what cannot be read. */
    function read() {
      const parts = {};
      for (const channel of channels) {
        if (!channel.toggle.checked) continue;
        const values = {};
        for (const part of channel.parts) {
          const raw = part.control.value;
          if (raw.trim() === "") continue;
          if (part.kind === "json") {
            try {
              values[part.id] = JSON.parse(raw);
            } catch {
              throw new Error(`${part.label}: not valid JSON.`);
            }
          } else {
            values[part.id] = raw;
          }
        }
        parts[channel.id] = values;
      }
      if (!Object.keys(parts).length) throw new Error("Choose at least one channel.");
      let variables;
      try {
        variables = variablesInput.value.trim() ? JSON.parse(variablesInput.value) : {};
      } catch {
        throw new Error("Variables: not valid JSON.");
      }
      if (!variables || typeof variables !== "object" || Array.isArray(variables)) {
        throw new Error("Variables: must be a JSON object.");
      }
      return { parts, variables };
    }

    let previewSeq = 0;
    async function renderPreview() {
      const seq = ++previewSeq;
      let input;
      try {
        input = read();
      } catch (error) {
        preview.dataset.state = "error";
        preview.replaceChildren(alertOf([error.message]));
        return;
      }
      preview.dataset.state = "pending";
      try {
        const rendered = await app.api.post(`${base}/preview`, input);
        if (seq !== previewSeq || closed) return;
        const sections = [];
        for (const channel of CHANNELS) {
          const out = rendered[channel.id];
          if (!out) continue;
          const rows = [];
          for (const [key, value] of Object.entries(out)) {
            if (value === null || value === undefined) continue;
            const shown = typeof value === "string" ? value : JSON.stringify(value, null, 2);
            rows.push(h("dt", {}, key === "html" ? "HTML (source)" : key.charAt(0).toUpperCase() + key.slice(1)),
              h("dd", {}, h("pre.rendered", { dataset: { channel: channel.id, part: key } }, shown)));
          }
          sections.push(h("div.preview-channel", {}, h("h4", {}, channel.title), h("dl", {}, rows)));
        }
        preview.dataset.state = "ok";
        preview.replaceChildren(...sections);
      } catch (error) {
        if (seq !== previewSeq || closed) return;
        preview.dataset.state = "error";
        preview.replaceChildren(alertOf(problemLines(error)));
      }
    }

    function schedule() {
      clearTimeout(timer);
      preview.dataset.state = "pending";
      timer = setTimeout(() => renderPreview(), PREVIEW_DELAY_MS);
    }

    const versions = h("section.template-versions", { "aria-label": "Versions" });
    async function loadVersions() {
      if (!editing) return;
      try {
        const page = await app.api.get(`${base}/${template.id}/versions`, { limit: 50 });
        if (closed) return;
        versions.replaceChildren(h("h3", {}, "Versions"), h("ol.versions", {}, page.items.map((item) => h("li", {},
          h("span", {}, `v${item.version}`),
          h("span.muted", {}, ` ${item.channels.join(", ")} · ${formatTime(item.created_at)}`),
          item.version === template.version
            ? h("span.tag", {}, "shown")
            : h("button.small", {
              type: "button",
              "aria-label": `Load version ${item.version}`,
              onclick: () => edit(template.id, item.version).catch((error) => toast(error.message)),
            }, "Load")))));
      } catch (error) {
        versions.replaceChildren(h("p.form-error", { role: "alert" }, error.message));
      }
    }

    const submit = h("button.primary", { type: "submit" }, editing ? "Save as new version" : "Create template");
    const form = h("form.template-form", {
      "aria-label": editing ? `Edit template ${template.name}` : "New template",
      oninput: schedule,
      onchange: schedule,
      onsubmit: async (event) => {
        event.preventDefault();
        formError.replaceChildren();
        let input;
        try {
          input = read();
        } catch (error) {
          formError.replaceChildren(alertOf([error.message]));
          return;
        }
        const body = {
          name: nameInput.value.trim(),
          description: descriptionInput.value,
          parts: input.parts,
          sample_variables: input.variables,
        };
        submit.disabled = true;
        try {
          const saved = editing
            ? await app.api.request("PUT", `${base}/${template.id}`, { body })
            : await app.api.post(base, body);
          toast(`Template ${saved.name} saved (v${saved.latest_version}).`, "info");
          await load();
          if (!closed) openEditor(saved);
        } catch (error) {
          formError.replaceChildren(alertOf(problemLines(error)));
        } finally {
          submit.disabled = false;
        }
      },
    },
    h("h2", {}, editing ? `Edit ${template.name} (v${template.version} of ${template.latest_version})` : "New template"),
    h("div.template-grid", {},
      h("div.template-fields", {},
        field("Name", nameInput, "a-z, 0-9, . _ -; unique in the workspace."),
        field("Description", descriptionInput),
        h("fieldset.channels", {}, h("legend", {}, "Channels"),
          channels.map((channel) => field(channel.title, channel.toggle))),
        channels.map((channel) => channel.box),
        field("Variables (JSON)", variablesInput, "Sample variables: used by the preview and saved with the template.")),
      previewBox),
    formError,
    h("div.form-actions", {},
      submit,
      h("button", {
        type: "button",
        onclick: () => {
          clearTimeout(timer);
          editor.replaceChildren();
          newButton.hidden = false;
          newButton.focus();
        },
      }, "Close")),
    versions);
    editor.replaceChildren(form);
    newButton.hidden = true;
    nameInput.focus();
    renderPreview();
    loadVersions();
  }

  try {
    await load();
  } catch (error) {
    list.replaceChildren(h("p.form-error", { role: "alert" }, error.message));
  }
  return () => {
    closed = true;
    clearTimeout(timer);
  };
}
