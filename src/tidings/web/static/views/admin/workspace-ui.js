// Small building blocks shared by the workspace sections (members, invitations, API keys,
// audit): labelled fields, the polite "not allowed" notice, ask-once buttons and the
// show-once copy box. Everything is built with h(): user text only becomes text nodes.

import { formatTime, h, toast } from "../../dom.js";

export const ROLES = ["owner", "admin", "member", "agent", "guest"];
export const MANAGERS = new Set(["owner", "admin"]);

let counter = 0;

/** A unique element id, for label/for and aria-describedby pairs. */
export function uid(prefix) {
  counter += 1;
  return `${prefix}-${counter}`;
}

/** <div.field><label for>…</label>input [hint]</div>; the input gets an id if it has none. */
export function field(label, input, hint = null) {
  if (!input.id) input.id = uid("f");
  let hintNode = null;
  if (hint) {
    hintNode = h("p.hint", { id: uid("hint") }, hint);
    input.setAttribute("aria-describedby", hintNode.id);
  }
  return h("div.field", {}, h("label", { for: input.id }, label), input, hintNode);
}

/** An inline error line (role=alert), hidden until `showError`. */
export function errorLine() {
  return h("p.form-error", { role: "alert", hidden: true });
}

export function showError(line, error) {
  line.hidden = false;
  const fields = error.fields ? ` ${error.fields}` : "";
  line.textContent = `${error.message}${fields}`;
}

export function hideError(line) {
  line.hidden = true;
  line.textContent = "";
}

export function when(iso) {
  return iso ? formatTime(iso) : "—";
}

/**
 * A 403 (role too weak) or 404 answer becomes a polite notice in `target` instead of a
 * broken page; true when it did. Other errors are left to the caller.
 */
export function showDenied(target, error, what) {
  if (error?.status !== 403 && error?.status !== 404) return false;
  target.replaceChildren(
    h("div.ws-notice", { role: "status" },
      h("strong", {}, "Not available to you"),
      h("p", {}, what),
      error.message ? h("p.muted", {}, `The server said: ${error.message}`) : null,
    ),
  );
  return true;
}

/**
 * The caller's current role in the workspace (asked again: it may have changed since the
 * workspace list was loaded); the store's copy if the server cannot be asked. Sections use it
 * to show a denial without first making a request the server must refuse.
 */
export async function currentRole(app, workspace) {
  try {
    const fresh = await app.api.get(`/api/v1/workspaces/${workspace.id}`);
    return fresh.role || workspace.role;
  } catch {
    return workspace.role;
  }
}

/** The notice for a role that may not use a section (same look as a server's 403). */
export function showRoleDenied(target, role, what) {
  target.replaceChildren(
    h("div.ws-notice", { role: "status" },
      h("strong", {}, "Not available to you"),
      h("p", {}, what),
      h("p.muted", {}, `Your role in this workspace is ${role || "unknown"}.`),
    ),
  );
}

/** A table with a caption (for screen readers) and a header row; `rows` is a list of <tr>
 * or a <tbody> the caller keeps to append to. */
export function table(caption, headers, rows) {
  const body = rows instanceof HTMLTableSectionElement ? rows : h("tbody", {}, rows);
  return h("table.ws-table", {},
    h("caption.visually-hidden", {}, caption),
    h("thead", {}, h("tr", {}, headers.map((title) => h("th", { scope: "col" }, title)))),
    body,
  );
}

/**
 * A button that asks once: the first click swaps it for "question [confirm] [Cancel]"; the
 * confirm button runs `action` (an async function that shows its own errors, then throws).
 * Escape or Cancel puts the button back.
 */
export function askOnce({ label, question, confirm, action, accessibleName }) {
  const wrap = h("span.ws-ask");
  const button = h("button.small", {
    type: "button",
    "aria-label": accessibleName || null,
    onclick: () => ask(),
  }, label);
  wrap.append(button);

  function restore() {
    wrap.replaceChildren(button);
    button.focus();
  }

  function ask() {
    const yes = h("button.small.danger", {
      type: "button",
      onclick: async () => {
        yes.disabled = true;
        try {
          await action();
        } catch {
          // The caller shows the error (inline or as a toast); offer the button again.
          if (wrap.isConnected) restore();
        }
      },
    }, confirm);
    const group = h("span.ws-confirm", {
      role: "group",
      "aria-label": question,
      onkeydown: (event) => {
        if (event.key === "Escape") restore();
      },
    },
    h("span", {}, question),
    yes,
    h("button.small", { type: "button", onclick: restore }, "Cancel"));
    wrap.replaceChildren(group);
    yes.focus();
  }

  return wrap;
}

/**
 * A read-only text box with a Copy button: the clipboard when the browser allows it, else the
 * text is selected for Ctrl+C / ⌘C. The value lives only in this DOM node.
 */
export function copyBox(label, value, { testId } = {}) {
  const input = h("input.ws-secret", {
    type: "text",
    readOnly: true,
    value,
    spellcheck: false,
    autocomplete: "off",
    dataset: { testid: testId },
    onfocus: () => input.select(),
  });
  const copy = h("button.primary", {
    type: "button",
    onclick: async () => {
      if (navigator.clipboard?.writeText) {
        try {
          await navigator.clipboard.writeText(input.value);
          copy.textContent = "Copied";
          toast("Copied to the clipboard.", "info");
          return;
        } catch {
          // Not allowed here (permissions, insecure origin): fall back to selecting the text.
        }
      }
      input.focus();
      input.select();
      toast("Selected: press Ctrl+C (⌘C on a Mac) to copy.", "info");
    },
  }, "Copy");
  if (!input.id) input.id = uid("copy");
  return h("div.field.ws-copy", {},
    h("label", { for: input.id }, label),
    h("div.ws-copy-row", {}, input, copy),
  );
}
