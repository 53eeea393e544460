// The signed-in user's sessions, each revocable.

import { formatTime, h, toast } from "../dom.js";

export function sessionsScreen(app) {
  const list = h("ul.sessions", { "aria-label": "Sessions" });
  const main = h(
    "main.page",
    { id: "main" },
    h("p", {}, app.link("/", "← Back to chat")),
    h("h1", {}, "Your sessions"),
    h("p.intro", {}, "Every browser or device signed in to your account. Revoking one signs it out."),
    list,
  );

  async function load() {
    const sessions = await app.api.get("/api/v1/me/sessions");
    list.replaceChildren(...sessions.map((session) => {
      const revoke = h("button", {
        type: "button",
        onclick: async () => {
          revoke.disabled = true;
          try {
            if (session.current) {
              await app.signOut();
              return;
            }
            await app.api.request("DELETE", `/api/v1/me/sessions/${session.id}`);
            toast("Session revoked.", "info");
            await load();
          } catch (error) {
            toast(error.message);
            revoke.disabled = false;
          }
        },
      }, session.current ? "Sign out" : "Revoke");
      return h(
        "li.session",
        { dataset: { sessionId: session.id } },
        h("div", {},
          h("strong", {}, session.user_agent || "Unknown client"),
          session.current ? h("span.tag", {}, "this browser") : null,
        ),
        h("div.muted", {},
          `Signed in ${formatTime(session.created_at)} · last used ${formatTime(session.last_used_at)}`,
          session.ip ? ` · ${session.ip}` : "",
        ),
        revoke,
      );
    }));
  }

  load().catch((error) => toast(error.message));
  return main;
}
