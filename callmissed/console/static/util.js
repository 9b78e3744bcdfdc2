// Shared by every console page: building DOM (text only, never markup from data), formatting
// numbers, money and times, and calling the admin API with the session's CSRF token.

export const session = { csrf: null, onSignedOut: () => {} };

// h("div", {class: "x", onclick: fn, dataset: {id: 1}}, "text", child, [children])
export function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name in node && typeof value !== "string") node[name] = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export async function api(path, { method = "GET", body } = {}) {
  const headers = { accept: "application/json" };
  if (method !== "GET") {
    headers["x-csrf-token"] = session.csrf || "";
    if (body !== undefined) headers["content-type"] = "application/json";
  }
  const response = await fetch(path, {
    method, headers, credentials: "same-origin", cache: "no-store",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let payload = null;
  try { payload = await response.json(); } catch { payload = null; }
  if (!response.ok) {
    const error = payload && payload.error ? payload.error : {};
    if (response.status === 401 && !path.startsWith("/console/session")) session.onSignedOut();
    throw new ApiError(response.status, error.message || `HTTP ${response.status}`, error.code);
  }
  return payload;
}

export function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") search.set(name, value);
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

const compact = new Intl.NumberFormat(undefined, { notation: "compact", maximumFractionDigits: 1 });
const whole = new Intl.NumberFormat();

export const fmt = {
  int: (value) => (value === null || value === undefined ? "–" : whole.format(value)),
  count: (value) => (value === null || value === undefined ? "–"
    : Math.abs(value) < 10000 ? whole.format(Math.round(value)) : compact.format(value)),
  usd(value) {
    if (value === null || value === undefined) return "unlimited";
    const amount = Math.abs(value);
    const digits = amount === 0 ? 2 : amount < 0.01 ? 6 : amount < 1 ? 4 : 2;
    return `$${value.toLocaleString(undefined, { minimumFractionDigits: digits > 2 ? 2 : digits,
      maximumFractionDigits: digits })}`;
  },
  ms(value) {
    if (value === null || value === undefined) return "–";
    if (value < 10) return `${value.toFixed(1)} ms`;
    if (value < 1000) return `${Math.round(value)} ms`;
    return `${(value / 1000).toFixed(value < 10000 ? 2 : 1)} s`;
  },
  pct: (value) => (value === null || value === undefined ? "–"
    : `${(value * 100).toFixed(value && value < 0.01 ? 2 : 1)}%`),
  time: (seconds) => (seconds ? new Date(seconds * 1000).toLocaleString() : "–"),
  clock(seconds) {
    const date = new Date(seconds * 1000);
    if (date.toDateString() === new Date().toDateString()) return date.toLocaleTimeString();
    return `${date.toLocaleDateString(undefined, { month: "short", day: "numeric" })}, ${
      date.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" })}`;
  },
  ago(seconds) {
    if (!seconds) return "never";
    const delta = Date.now() / 1000 - seconds;
    if (delta < 5) return "just now";
    if (delta < 60) return `${Math.round(delta)} s ago`;
    if (delta < 3600) return `${Math.round(delta / 60)} min ago`;
    if (delta < 86400) return `${Math.round(delta / 3600)} h ago`;
    return `${Math.round(delta / 86400)} d ago`;
  },
};

export function statusBadge(status) {
  const kind = status === 200 ? "ok" : status === 499 ? "muted" : "bad";
  const title = status === 499 ? "the client went away" : status === 200 ? "answered" : "failed";
  return h("span", { class: `badge ${kind}`, title }, String(status));
}

export function stateBadge(state) {
  const kind = { closed: "ok", half_open: "warn", open: "bad" }[state] || "muted";
  return h("span", { class: `badge ${kind}` }, (state || "unknown").replace("_", "-"));
}

export function meter(fraction, kind = "") {
  const bar = h("i");
  bar.style.width = `${Math.max(0, Math.min(1, fraction || 0)) * 100}%`;
  return h("span", { class: `meter ${kind}` }, bar);
}

export function chips(values, onClick = null) {
  return h("span", { class: "chips" }, (values || []).map((value) =>
    h(onClick ? "button" : "span", { class: "chip", type: onClick ? "button" : null,
      onclick: onClick ? (event) => { event.stopPropagation(); onClick(value); } : null }, value)));
}

export function card(title, body, extra = null) {
  return h("section", { class: "card" }, h("header", {}, h("h2", {}, title), extra), body);
}

export function table(columns, rows, { onRow = null, empty = "Nothing here yet." } = {}) {
  const head = h("tr", {}, columns.map((column) => h("th", { class: column.class }, column.title)));
  const body = rows.length ? rows.map((row) => h("tr", {
    class: onRow ? "link" : null, onclick: onRow ? () => onRow(row) : null,
    dataset: row.id !== undefined ? { id: row.id } : null,
  }, columns.map((column) => h("td", { class: column.class }, column.render(row)))))
    : [h("tr", {}, h("td", { class: "empty", colspan: columns.length }, empty))];
  return h("div", { class: "table-wrap" }, h("table", {}, h("thead", {}, head), h("tbody", {}, body)));
}

export function toast(message, kind = "info") {
  const box = document.getElementById("toasts");
  const item = h("div", { class: `toast ${kind}`, role: "status" }, message);
  box.appendChild(item);
  setTimeout(() => item.remove(), 4500);
}

export function copyButton(text) {
  return h("button", {
    class: "ghost small", type: "button", title: "Copy",
    onclick: async (event) => {
      event.stopPropagation();
      try { await navigator.clipboard.writeText(text); toast("Copied"); }
      catch { toast("Copy it by hand: the browser refused the clipboard", "bad"); }
    },
  }, "Copy");
}
