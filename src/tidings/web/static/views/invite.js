// /invite#<token>: accept a workspace invitation, then open the workspace. The token is in
// the URL fragment, which the browser never sends to the server. Someone not signed in sees
// the sign-in form first (app.js keeps the token in memory meanwhile, never in storage).

import { h, toast } from "../dom.js";

/** The token of an invite link's fragment ("" when there is none). */
export function inviteToken() {
  const raw = window.location.hash.replace(/^#/, "");
  try {
    return decodeURIComponent(raw).trim();
  } catch {
    return "";
  }
}

/** What the sign-in and sign-up forms show above themselves while an invitation waits. */
export function inviteNotice() {
  return h("p.intro.invite-notice", { role: "status" },
    "You have been invited to a workspace. Sign in, or create an account, to join it.");
}

export function inviteScreen(app, token) {
  const status = h("p", { role: "status" }, "Joining the workspace…");
  const main = h("main.page", { id: "main" }, h("h1", {}, "Invitation"), status);

  function fail(text) {
    status.replaceWith(
      h("div", {},
        h("p.form-error", { role: "alert" }, text),
        h("p", {}, app.link("/", "Go to your workspaces"))),
    );
  }

  (async () => {
    if (!token) {
      fail("This invitation link is incomplete. Ask the person who invited you for a new one.");
      return;
    }
    try {
      const workspace = await app.api.post("/api/v1/invitations/accept", { token });
      await app.store.loadWorkspaces();
      toast(`You joined ${workspace.name}.`, "info");
      app.navigate(`/w/${workspace.id}`, { replace: true });
    } catch (error) {
      fail(error.message);
    }
  })();
  return main;
}
