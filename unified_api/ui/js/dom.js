// DOM helpers. Every value from the server is written with textContent, never parsed as HTML.

export const $ = (selector, root = document) => root.querySelector(selector);

// h("div.card", {onclick}, child, "text", ...): a tag with optional classes, then attributes
// (on* become listeners, the rest properties or attributes), then children.
export function h(spec, attrs, ...children) {
  const [tag, ...classes] = spec.split(".");
  const node = document.createElement(tag || "div");
  if (classes.length) node.className = classes.join(" ");
  if (attrs && (typeof attrs !== "object" || attrs instanceof Node || Array.isArray(attrs))) {
    children.unshift(attrs);
    attrs = null;
  }
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name in node) node[name] = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function replace(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

export function badge(value, prefix = "") {
  return h(`span.badge.${prefix}${value || "none"}`, value || "—");
}

export function number(value, digits = 3) {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  if (typeof value !== "number") return String(value);
  if (Number.isInteger(value)) return value.toLocaleString("en-US");
  const magnitude = Math.abs(value);
  if (magnitude >= 1000) return value.toLocaleString("en-US", { maximumFractionDigits: 0 });
  return value.toPrecision(digits);
}

export function bytes(value) {
  if (value === null || value === undefined) return "—";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let index = 0;
  while (value >= 1024 && index < units.length - 1) {
    value /= 1024;
    index += 1;
  }
  return `${value.toFixed(index ? 1 : 0)} ${units[index]}`;
}

export function when(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return date.toLocaleString("en-GB", { dateStyle: "short", timeStyle: "medium" });
}

export function seconds(value) {
  if (value === null || value === undefined) return "—";
  if (value < 60) return `${value.toFixed(1)} s`;
  return `${Math.floor(value / 60)} min ${Math.round(value % 60)} s`;
}

// A table from column specs [{label, value: (row) => text|Node, className}].
export function table(columns, rows, { className = "grid", rowClass } = {}) {
  return h(
    `table.${className}`,
    h(
      "thead",
      h(
        "tr",
        columns.map((column) => h("th", column.label)),
      ),
    ),
    h(
      "tbody",
      rows.map((row) =>
        h(
          "tr",
          { className: rowClass ? rowClass(row) : undefined },
          columns.map((column) =>
            h(`td${column.className ? `.${column.className}` : ""}`, column.value(row)),
          ),
        ),
      ),
    ),
  );
}

export function errorBox(error) {
  const message =
    error.status === 401 ? "This server needs an API key: enter it at the top right." : error.message;
  return h("p.error", { role: "alert" }, message, error.code ? h("code", ` ${error.code}`) : null);
}

export function download(url, filename) {
  const link = h("a", { href: url, download: filename });
  document.body.append(link);
  link.click();
  link.remove();
}
