// Workspace settings → Members: everyone in the workspace with their role. Owners and admins
// change roles (a select per member) and remove members (asked once); everyone else sees the
// list read-only. The server decides; its problem+json `detail` is shown when it refuses
// (e.g. demoting or removing the last owner).

import { h, toast } from "../../dom.js";
import {
  askOnce, currentRole, errorLine, hideError, MANAGERS, ROLES, showDenied, showError, showRoleDenied, table, when,
} from "./workspace-ui.js";

export function render(app, workspace, container) {
  let alive = true;
  const base = `/api/v1/workspaces/${workspace.id}/members`;
  const alert = errorLine();
  const note = h("p.intro");
  const body = h("div.ws-section", {}, h("p.loading", {}, "Loading members…"));
  container.replaceChildren(note, alert, body);

  async function load() {
    const role = await currentRole(app, workspace);
    if (!alive) return;
    if (role === "guest") {
      showRoleDenied(body, role, "Guests do not see the workspace's member list.");
      return;
    }
    let members;
    try {
      members = await app.api.get(base);
    } catch (error) {
      if (!alive) return;
      if (showDenied(body, error, "Your role in this workspace does not include seeing its member list.")) return;
      showError(alert, error);
      body.replaceChildren();
      return;
    }
    if (!alive) return;
    const meId = app.store.me?.id;
    const myRole = members.find((member) => member.user_id === meId)?.role || role;
    const canManage = MANAGERS.has(myRole);
    note.textContent = canManage
      ? `${members.length} ${members.length === 1 ? "member" : "members"}. Change a role with its menu and Save; owners and admins manage members, only owners manage owners.`
      : `${members.length} ${members.length === 1 ? "member" : "members"}. Only owners and admins can change roles or remove members.`;
    body.replaceChildren(table(
      "Members of the workspace",
      ["Name", "Email", "Role", "Joined", canManage ? "Actions" : null].filter(Boolean),
      members.map((member) => row(member, { meId, myRole, canManage })),
    ));
  }

  function row(member, { meId, myRole, canManage }) {
    const self = member.user_id === meId;
    const name = member.display_name;
    // Admins manage everyone below owner; owners manage everyone.
    const mayAct = canManage && (myRole === "owner" || member.role !== "owner");
    let roleCell = member.role;
    if (mayAct) {
      // A separate Save: with the keyboard, each arrow key in a closed select is a change.
      const save = h("button.small", {
        type: "button",
        hidden: true,
        "aria-label": `Save the role of ${name}`,
        onclick: () => changeRole(member, select, save),
      }, "Save");
      const select = h("select", {
        "aria-label": `Role of ${name}`,
        onchange: () => {
          save.hidden = select.value === member.role;
        },
      }, ROLES
        .filter((role) => myRole === "owner" || role !== "owner")
        .map((role) => h("option", { value: role, selected: role === member.role }, role)));
      select.value = member.role;
      roleCell = h("span.ws-role", {}, select, save);
    }
    let actions = null;
    if (canManage) {
      actions = mayAct
        ? askOnce({
          label: self ? "Leave" : "Remove",
          accessibleName: self ? "Leave the workspace" : `Remove ${name}`,
          question: self ? "Leave this workspace?" : `Remove ${name}?`,
          confirm: self ? "Leave" : "Remove member",
          action: () => remove(member, self),
        })
        : h("span.muted", {}, "owner");
    }
    return h("tr", { dataset: { userId: member.user_id } },
      h("td", {}, h("strong", {}, name), self ? h("span.tag", {}, "you") : null),
      h("td.ws-break", {}, member.email),
      h("td", {}, roleCell),
      h("td", {}, when(member.joined_at)),
      canManage ? h("td", {}, actions) : null,
    );
  }

  async function changeRole(member, select, save) {
    const previous = member.role;
    const role = select.value;
    hideError(alert);
    select.disabled = true;
    save.disabled = true;
    try {
      const updated = await app.api.request("PATCH", `${base}/${member.user_id}`, { body: { role } });
      member.role = updated.role;
      toast(`${member.display_name} is now ${updated.role}.`, "info");
      if (member.user_id === app.store.me?.id) {
        // Our own role changed: what we may do here changed too.
        await app.store.loadWorkspaces();
        if (alive) await load();
      }
    } catch (error) {
      select.value = previous;
      if (alive) showError(alert, error);
    } finally {
      select.disabled = false;
      save.disabled = false;
      save.hidden = select.value === member.role;
    }
  }

  async function remove(member, self) {
    hideError(alert);
    try {
      if (self) await app.api.request("POST", `/api/v1/workspaces/${workspace.id}/leave`);
      else await app.api.request("DELETE", `${base}/${member.user_id}`);
    } catch (error) {
      if (alive) showError(alert, error);
      throw error;
    }
    if (self) {
      await app.store.loadWorkspaces();
      toast(`You left ${workspace.name}.`, "info");
      app.navigate("/");
      return;
    }
    toast(`${member.display_name} was removed.`, "info");
    if (alive) await load();
  }

  load().catch((error) => {
    if (alive) showError(alert, error);
  });
  return () => {
    alive = false;
  };
}
