// Workspace administration: one page per section at /w/{workspace}/admin/{section}, a
// section navigation on the left. Each section is its own module under views/admin/,
// loaded on first visit so a slow or broken section never blocks the others.
//
// A section module exports `render(app, workspace, container)`: it fills `container`
// (already in the page) and may return a cleanup function.

import { clear, h, toast } from "../dom.js";

export const SECTIONS = [
  { id: "members", title: "Members", module: "./admin/members.js" },
  { id: "invitations", title: "Invitations", module: "./admin/invitations.js" },
  { id: "api-keys", title: "API keys", module: "./admin/api-keys.js" },
  { id: "connectors", title: "Connectors", module: "./admin/connectors.js" },
  { id: "templates", title: "Templates", module: "./admin/templates.js" },
  { id: "deliveries", title: "Delivery log", module: "./admin/deliveries.js" },
  { id: "audit", title: "Audit log", module: "./admin/audit.js" },
];

export class AdminScreen {
  constructor(app) {
    this.app = app;
    this.cleanup = null;
    this.generation = 0;
    this.nav = h("ul.admin-nav");
    this.content = h("section.admin-content", { "aria-live": "polite" });
    this.backLink = h("p.back");
    this.heading = h("h1", {}, "Workspace settings");
    this.root = h(
      "main.page.admin",
      { id: "main" },
      this.backLink,
      this.heading,
      h("div.admin-body", {},
        h("nav.admin-sections", { "aria-label": "Workspace settings" }, this.nav),
        this.content),
    );
  }

  async show(workspaceId, sectionId) {
    const section = SECTIONS.find((item) => item.id === sectionId) || SECTIONS[0];
    const store = this.app.store;
    const workspace = store.workspaces.find((item) => item.id === workspaceId);
    if (!workspace) {
      this.app.navigate("/", { replace: true });
      return;
    }
    this.backLink.replaceChildren(this.app.link(`/w/${workspaceId}`, `← Back to ${workspace.name}`));
    this.heading.textContent = `${workspace.name} · ${section.title}`;
    this.nav.replaceChildren(...SECTIONS.map((item) => {
      const link = this.app.link(`/w/${workspaceId}/admin/${item.id}`, item.title);
      if (item.id === section.id) link.setAttribute("aria-current", "page");
      return h("li", {}, link);
    }));
    this.destroy();
    clear(this.content);
    this.content.dataset.section = section.id;
    // Each show() is a generation: a section still loading or rendering when the person
    // moves on must neither draw into nor leave its cleanup behind for the next one.
    const generation = ++this.generation;
    try {
      const module = await import(section.module);
      if (generation !== this.generation) return;
      const cleanup = await module.render(this.app, workspace, this.content);
      if (typeof cleanup !== "function") return;
      if (generation === this.generation) this.cleanup = cleanup;
      else cleanup();
    } catch (error) {
      if (generation !== this.generation) return;
      this.content.replaceChildren(h("p.error", { role: "alert" }, error.message));
      toast(error.message);
    }
  }

  destroy() {
    if (this.cleanup) this.cleanup();
    this.cleanup = null;
  }
}
