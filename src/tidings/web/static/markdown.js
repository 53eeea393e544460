// Minimal, XSS-safe markdown: **bold**, *italic* / _italic_, `code`, ```code blocks```,
// [links](https://…), bare http(s) URLs and <@user-id> mentions. The result is built from DOM
// nodes; user text only ever becomes text nodes, and links only keep http, https and mailto.

import { h } from "./dom.js";

const SAFE_PROTOCOLS = new Set(["http:", "https:", "mailto:"]);
const UUID = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}";
const INLINE = new RegExp(
  [
    "(?<code>(?<!`)(`+)(?!`)([\\s\\S]+?)(?<!`)\\2(?!`))",
    "(?<bold>\\*\\*(?=\\S)([\\s\\S]+?)(?<=\\S)\\*\\*)",
    "(?<em>(?<![\\w*])\\*(?=[^\\s*])([\\s\\S]+?)(?<=[^\\s*])\\*(?![\\w*]))",
    "(?<em2>(?<!\\w)_(?=[^\\s_])([\\s\\S]+?)(?<=[^\\s_])_(?!\\w))",
    "(?<link>\\[([^\\]\\n]+)\\]\\(([^)\\s]+)\\))",
    `(?<mention><@(${UUID})>)`,
    "(?<url>https?:\\/\\/[^\\s<>]*[^\\s<>.,:;!?\"')\\]])",
  ].join("|"),
);

/** A safe href for `raw`, or null. */
export function safeHref(raw) {
  try {
    const url = new URL(raw, window.location.origin);
    return SAFE_PROTOCOLS.has(url.protocol) ? url.href : null;
  } catch {
    return null;
  }
}

function link(href, children) {
  const safe = safeHref(href);
  if (!safe) return null;
  return h("a", { href: safe, target: "_blank", rel: "noopener noreferrer nofollow" }, children);
}

/** Inline markdown of `text` as a list of nodes. `names(id)` gives a user's display name. */
export function renderInline(text, names = () => null, depth = 0) {
  const out = [];
  let rest = text;
  while (rest) {
    const match = depth > 4 ? null : INLINE.exec(rest);
    if (!match) {
      out.push(document.createTextNode(rest));
      break;
    }
    if (match.index > 0) out.push(document.createTextNode(rest.slice(0, match.index)));
    const g = match.groups;
    const parts = match.slice(1);
    let node = null;
    if (g.code !== undefined) {
      node = h("code", {}, parts[2]);
    } else if (g.bold !== undefined) {
      node = h("strong", {}, renderInline(parts[4], names, depth + 1));
    } else if (g.em !== undefined) {
      node = h("em", {}, renderInline(parts[6], names, depth + 1));
    } else if (g.em2 !== undefined) {
      node = h("em", {}, renderInline(parts[8], names, depth + 1));
    } else if (g.link !== undefined) {
      node = link(parts[11], renderInline(parts[10], names, depth + 1));
    } else if (g.mention !== undefined) {
      const id = parts[13];
      node = h("span.mention", { dataset: { userId: id } }, `@${names(id) || "someone"}`);
    } else if (g.url !== undefined) {
      node = link(g.url, g.url);
    }
    out.push(node || document.createTextNode(match[0]));
    rest = rest.slice(match.index + match[0].length);
  }
  return out;
}

/** A message body (markdown source) as a DocumentFragment. */
export function renderMarkdown(source, names) {
  const fragment = document.createDocumentFragment();
  const fence = /```([^\n`]*)\n?([\s\S]*?)(```|$)/g;
  let last = 0;
  for (const match of source.matchAll(fence)) {
    if (match.index > last) fragment.append(...renderInline(source.slice(last, match.index), names));
    fragment.append(h("pre", {}, h("code", {}, match[2].replace(/\n$/, ""))));
    last = match.index + match[0].length;
  }
  if (last < source.length) fragment.append(...renderInline(source.slice(last), names));
  return fragment;
}
