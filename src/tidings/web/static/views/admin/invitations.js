// Workspace settings → Invitations: invite someone (role, optional email, how long the link
// lasts), show the invite link once with a Copy button, list the open invitations and revoke
// them. The link is /invite#<token>: the token travels in the fragment, which browsers never
// send to the server (no access logs, no Referer); the app reads it and accepts it after
// sign-in (app.js).

import { h, toast } from "../../dom.js";
import {
  askOnce, copyBox, currentRole, errorLine, field, hideError, MANAGERS, ROLES, showDenied, showError, showRoleDenied, table, when,
} from "./workspace-ui.js";

const LIFETIMES = [
  { hours: 24, label: "1 day" },
  { hours: 24 * 7, label: "7 days" },
  { hours: 24 * 30, label: "30 days" },
];

export function inviteLink(token) {
  return `${window.location.origin}/invite#${token}`;
}

export function render(app, workspace, container) {
  let alive = true;
  const base = `/api/v1/workspaces/${workspace.id}/invitations`;
  const alert = errorLine();
  const created = h("div.ws-reveal-slot", { "aria-live": "polite" });
  const list = h("div.ws-section", {}, h("p.loading", {}, "Loading invitations…"));
  const formSlot = h("div");
  const body = h("div", {},
    h("p.intro", {}, "An invitation is a link for one person. Whoever opens it signs in (or creates an account) and joins with the role you chose."),
    created,
    formSlot,
    alert,
    h("h2.ws-h2", {}, "Open invitations"),
    list,
  );
  container.replaceChildren(body);

  function buildForm(myRole) {
    const mayOwner = myRole === "owner";
    const role = h("select", { name: "role" }, ROLES
      .filter((item) => mayOwner || item !== "owner")
      .map((item) => h("option", { value: item, selected: item === "member" }, item)));
    role.value = "member";
    const email = h("input", { name: "email", type: "email", autocomplete: "off", maxLength: 320 });
    const lifetime = h("select", { name: "expires" }, LIFETIMES.map((item) =>
      h("option", { value: String(item.hours), selected: item.hours === 24 * 7 }, item.label)));
    lifetime.value = String(24 * 7);
    const submit = h("button.primary", { type: "submit" }, "Create invitation");
    return h("form.ws-form", {
      "aria-label": "New invitation",
      onsubmit: async (event) => {
        event.preventDefault();
        hideError(alert);
        submit.disabled = true;
        try {
          const invitation = await app.api.post(base, {
            role: role.value,
            email: email.value.trim() || null,
            expires_in_hours: Number(lifetime.value),
          });
          if (!alive) return;
          email.value = "";
          reveal(invitation);
          await load();
        } catch (error) {
          if (alive) showError(alert, error);
        } finally {
          submit.disabled = false;
        }
      },
    },
    h("div.ws-form-row", {},
      field("Role", role),
      field("Email (optional)", email, "Only this address can use the link. Leave empty for anyone who has it."),
      field("Link valid for", lifetime),
    ),
    submit);
  }

  function reveal(invitation) {
    const done = h("button", {
      type: "button",
      onclick: () => {
        created.replaceChildren();
        formSlot.querySelector("select")?.focus();
      },
    }, "Done");
    const box = h("section.ws-reveal", { "aria-labelledby": "invite-created-title" },
      h("h2.ws-h2", { id: "invite-created-title" }, "Invitation created"),
      h("p", {},
        `Send this link to ${invitation.email || "the person you invite"} (role: ${invitation.role}, valid until ${when(invitation.expires_at)}). `,
        h("strong", {}, "It is shown only this once."),
      ),
      copyBox("Invite link", inviteLink(invitation.token), { testId: "invite-link" }),
      done,
    );
    created.replaceChildren(box);
    box.querySelector("input").focus();
  }

  async function load() {
    let invitations;
    try {
      invitations = await app.api.get(base);
    } catch (error) {
      if (!alive) return;
      if (showDenied(body, error, "Only workspace owners and admins can invite people and see the open invitations.")) return;
      showError(alert, error);
      list.replaceChildren();
      return;
    }
    if (!alive) return;
    if (!invitations.length) {
      list.replaceChildren(h("p.muted", {}, "No open invitations."));
      return;
    }
    list.replaceChildren(table(
      "Open invitations",
      ["Role", "For", "Created", "Expires", "Actions"],
      invitations.map((invitation) => h("tr", { dataset: { invitationId: invitation.id } },
        h("td", {}, invitation.role),
        h("td.ws-break", {}, invitation.email || "anyone with the link"),
        h("td", {}, when(invitation.created_at)),
        h("td", {}, when(invitation.expires_at)),
        h("td", {}, askOnce({
          label: "Revoke",
          accessibleName: `Revoke the ${invitation.role} invitation${invitation.email ? ` for ${invitation.email}` : ""}`,
          question: "Revoke this invitation?",
          confirm: "Revoke invitation",
          action: async () => {
            try {
              await app.api.request("DELETE", `${base}/${invitation.id}`);
            } catch (error) {
              toast(error.message);
              throw error;
            }
            toast("Invitation revoked.", "info");
            if (alive) await load();
          },
        })),
      )),
    ));
  }

  async function start() {
    const role = await currentRole(app, workspace);
    if (!alive) return;
    if (!MANAGERS.has(role)) {
      showRoleDenied(body, role, "Only workspace owners and admins can invite people and see the open invitations.");
      return;
    }
    formSlot.replaceChildren(buildForm(role));
    await load();
  }

  start().catch((error) => {
    if (alive) showError(alert, error);
  });
  return () => {
    alive = false;
    created.replaceChildren(); // the link goes with the page
  };
}
