// Building DOM nodes without innerHTML: user text only ever becomes text nodes.

/**
 * h("button.primary", {type: "submit", onclick}, "Save") → <button class="primary">.
 * Props starting with "on" are listeners; "dataset", "aria-*", "class", "for" are handled;
 * children are nodes or strings (strings become text nodes), null/false are skipped.
 */
export function h(tag, props = {}, ...children) {
  const [name, ...classes] = tag.split(".");
  const node = document.createElement(name || "div");
  if (classes.length) node.className = classes.join(" ");
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      node.addEventListener(key.slice(2), value);
    } else if (key === "dataset") {
      for (const [name, item] of Object.entries(value)) {
        if (item !== undefined && item !== null) node.dataset[name] = item;
      }
    } else if (key === "class") {
      node.className = [node.className, value].filter(Boolean).join(" ");
    } else if (key === "text") {
      node.textContent = value;
    } else if (key in node && !key.includes("-") && key !== "list" && key !== "for") {
      node[key] = value;
    } else {
      node.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(node, children);
  return node;
}

export function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function clear(node) {
  while (node.firstChild) node.firstChild.remove();
  return node;
}

let toastTimer = null;

/** A short status line for errors and notices (role=status, read by screen readers). */
export function toast(text, kind = "error") {
  const box = document.getElementById("toasts");
  if (!box) return;
  clear(box).append(h(`p.toast.${kind}`, {}, text));
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => clear(box), 6000);
}

export function formatTime(iso) {
  const date = new Date(iso);
  const sameDay = date.toDateString() === new Date().toDateString();
  return sameDay
    ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : date.toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
}
