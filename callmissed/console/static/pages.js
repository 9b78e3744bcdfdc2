// The console's reading pages: Overview, Requests (and one request), Tags. Each renders into
// the view and returns a function that refreshes it in place (or nothing).

import { attemptTimeline, PALETTE, sparkline, timeChart } from "./charts.js";
import { api, card, chips, copyButton, fmt, h, meter, query, statusBadge, table } from "./util.js";

const RANGES = [["1h", "Last hour"], ["24h", "24 hours"], ["7d", "7 days"], ["30d", "30 days"]];
// The models, routes and tags seen lately, for the filters: read afresh for each page shown.
export function facets() {
  return api("/admin/facets");
}

function select(id, options, value, onChange, label) {
  const element = h("select", { id, onchange: (event) => onChange(event.target.value),
    "aria-label": label },
  options.map(([optionValue, text]) => h("option", { value: optionValue }, text)));
  if (value && ![...element.options].some((option) => option.value === value)) {
    element.appendChild(h("option", { value }, value));
  }
  element.value = value || "";
  return element;
}

function rangeControl(range, onChange) {
  return h("div", { class: "segmented", role: "group", "aria-label": "Time range" },
    RANGES.map(([value, text]) => h("button", { type: "button", class: value === range ? "on" : "",
      dataset: { range: value }, onclick: () => onChange(value) }, text)));
}

// Overview

export async function overviewPage(root, { params, go }) {
  const range = params.get("range") || "24h";
  const tag = params.get("tag") || "";
  const known = await facets();
  const link = (changes) => go(`#/overview${query({ range, tag, ...changes })}`);
  const tagOptions = [["", "All requests"], ...known.tags.map((t) => [t, `tag: ${t}`])];
  const kpis = h("div", { class: "kpis" });
  const charts = {
    requests: h("div", { id: "chart-requests" }), cost: h("div", { id: "chart-cost" }),
    ttfb: h("div", { id: "chart-ttfb" }), routes: h("div", { id: "chart-routes" }),
  };
  const tables = h("div", { class: "grid two" });
  root.replaceChildren(
    h("div", { class: "toolbar" }, rangeControl(range, (value) => link({ range: value })),
      select("overview-tag", tagOptions, tag, (value) => link({ tag: value }), "Tag")),
    kpis,
    h("div", { class: "grid two" },
      card("Requests by model", charts.requests), card("Spend", charts.cost),
      card("Time to first token", charts.ttfb), card("First token p50 by route", charts.routes)),
    tables);
  async function load() {
    const data = await api(`/admin/overview${query({ range, tag })}`);
    drawOverview(data, { kpis, charts, tables, go });
  }
  await load();
  return load;
}

function drawOverview(data, { kpis, charts, tables, go }) {
  const t = data.totals;
  const times = data.series.map((point) => point.at);
  const pick = (name) => data.series.map((point) => point[name]);
  kpis.replaceChildren(
    kpi("Requests", fmt.count(t.requests), pick("requests"), PALETTE[0], "kpi-requests"),
    kpi("Spend", fmt.usd(t.cost), pick("cost"), PALETTE[1], "kpi-spend"),
    kpi("Tokens", fmt.count(t.prompt_tokens + t.completion_tokens),
      data.series.map((p) => p.prompt_tokens + p.completion_tokens), PALETTE[4], "kpi-tokens",
      `${fmt.count(t.prompt_tokens)} in · ${fmt.count(t.completion_tokens)} out`),
    kpi("Error rate", fmt.pct(t.error_rate), pick("errors"), PALETTE[3], "kpi-errors",
      `${fmt.int(t.errors)} failed · ${fmt.int(t.cancelled)} cancelled`),
    kpi("First token p50", fmt.ms(t.ttfb_p50_ms), pick("ttfb_p50_ms"), PALETTE[5], "kpi-p50"),
    kpi("First token p99", fmt.ms(t.ttfb_p99_ms), pick("ttfb_p99_ms"), PALETTE[2], "kpi-p99"));
  const models = data.models.filter((m) => m.series).slice(0, 6);
  const shown = models.map((m) => m.series.requests);
  const rest = data.series.map((p, i) => p.requests - shown.reduce((sum, s) => sum + (s[i] || 0), 0));
  const stacked = models.map((m, i) => ({ name: m.model, values: m.series.requests, color: PALETTE[i] }));
  if (rest.some((v) => v > 0)) stacked.push({ name: "other", values: rest, color: PALETTE[8] });
  timeChart(charts.requests, { times, step: data.step, series: stacked, stacked: true, format: fmt.count });
  timeChart(charts.cost, { times, step: data.step, format: fmt.usd,
    series: [{ name: "spend", values: pick("cost"), color: PALETTE[1] }] });
  timeChart(charts.ttfb, { times, step: data.step, format: fmt.ms, lines: true, series: [
    { name: "p50", values: pick("ttfb_p50_ms"), color: PALETTE[5] },
    { name: "p99", values: pick("ttfb_p99_ms"), color: PALETTE[2] }] });
  const routes = data.routes.filter((r) => r.route && r.series).slice(0, 5);
  timeChart(charts.routes, { times, step: data.step, format: fmt.ms, lines: true,
    series: routes.map((r, i) => ({ name: r.route, values: r.series.ttfb_p50_ms, color: PALETTE[i] })) });
  const spendiest = Math.max(...data.top_keys.map((k) => k.cost || 0), 0) || 1;
  tables.replaceChildren(
    card("Models", table(usageColumns("model", "Model"), data.models.map((m) => ({ ...m, id: m.model })),
      { onRow: (m) => go(`#/requests${query({ model: m.model })}`), empty: "No requests in this range." })),
    card("Routes", table(usageColumns("route", "Route"), data.routes.filter((r) => r.route),
      { onRow: (r) => go(`#/requests${query({ route: r.route })}`), empty: "No routes used in this range." })),
    card("Slowest routes", table([
      { title: "Route", render: (r) => h("code", {}, r.route) },
      { title: "p50", class: "num", render: (r) => fmt.ms(r.ttfb_p50_ms) },
      { title: "p99", class: "num", render: (r) => h("b", {}, fmt.ms(r.ttfb_p99_ms)) },
      { title: "Errors", class: "num", render: (r) => fmt.pct(r.error_rate) },
    ], data.slowest_routes, { onRow: (r) => go("#/routes"), empty: "No first tokens in this range." })),
    card("Biggest spenders", table([
      { title: "Key", render: (k) => h("span", {}, k.name || `#${k.key_id}`, h("small", {}, ` #${k.key_id}`)) },
      { title: "Spend", render: (k) => h("span", { class: "bar-cell" }, meter((k.cost || 0) / spendiest), fmt.usd(k.cost)) },
      { title: "Requests", class: "num", render: (k) => fmt.count(k.requests) },
      { title: "Errors", class: "num", render: (k) => fmt.int(k.errors) },
    ], data.top_keys, { onRow: (k) => go(`#/requests${query({ key: k.key_id })}`), empty: "No spending in this range." })));
}

function kpi(label, value, series, color, id, note = null) {
  return h("div", { class: "kpi" }, h("span", { class: "label" }, label),
    h("strong", { id }, value), note ? h("small", {}, note) : null, sparkline(series, color));
}

function usageColumns(name, label) {
  return [
    { title: label, render: (r) => h("code", {}, r[name] || "(none)") },
    { title: "Requests", class: "num", render: (r) => fmt.count(r.requests) },
    { title: "Errors", class: "num", render: (r) => fmt.pct(r.error_rate) },
    { title: "Spend", class: "num", render: (r) => fmt.usd(r.cost) },
    { title: "p50", class: "num", render: (r) => fmt.ms(r.ttfb_p50_ms) },
    { title: "p99", class: "num", render: (r) => fmt.ms(r.ttfb_p99_ms) },
  ];
}

// Requests

const TIMES = [["", "Any time"], ["3600", "Last hour"], ["86400", "Last 24 hours"],
  ["604800", "Last 7 days"], ["2592000", "Last 30 days"]];

export async function requestsPage(root, { params, go }) {
  const filters = Object.fromEntries(["key", "model", "route", "status", "tag", "within", "since",
    "until"].map((name) => [name, params.get(name) || ""]));
  const [known, keys] = await Promise.all([facets(), api("/admin/keys")]);
  const set = (name, value) => go(`#/requests${query({ ...filters, [name]: value })}`);
  const keyOptions = [["", "Any key"], ...keys.data.map((k) => [String(k.id), `${k.name} (#${k.id})`])];
  const bar = h("div", { class: "toolbar filters" },
    select("filter-key", keyOptions, filters.key, (v) => set("key", v), "Key"),
    select("filter-model", [["", "Any model"], ...known.models.map((m) => [m, m])], filters.model,
      (v) => set("model", v), "Model"),
    select("filter-route", [["", "Any route"], ...known.routes.map((r) => [r, r])], filters.route,
      (v) => set("route", v), "Route"),
    select("filter-status", [["", "Any status"], ["ok", "Answered"], ["error", "Failed"],
      ["cancelled", "Cancelled"]], filters.status, (v) => set("status", v), "Status"),
    select("filter-time", TIMES, filters.within, (v) => set("within", v), "Time"),
    select("filter-tag", [["", "Any tag"], ...known.tags.map((t) => [t, t])], filters.tag,
      (v) => set("tag", v), "Tag"),
    Object.values(filters).some(Boolean)
      ? h("button", { type: "button", class: "ghost", onclick: () => go("#/requests") }, "Clear") : null,
    h("span", { class: "live", title: "The newest requests appear as they settle" }, "Live"));
  const list = h("div", { id: "requests" });
  const more = h("div", { class: "more" });
  root.replaceChildren(bar, card("Requests, newest first", h("div", {}, list, more)));
  let rows = [];
  let paged = false;
  const filterQuery = () => {
    const since = filters.within ? Date.now() / 1000 - Number(filters.within) : filters.since;
    return { key: filters.key, model: filters.model, route: filters.route, status: filters.status,
      tag: filters.tag, since, until: filters.until };
  };
  const draw = (next) => {
    list.replaceChildren(requestTable(rows, go));
    more.replaceChildren(next ? h("button", { type: "button", class: "ghost", id: "older", onclick: async () => {
      const page = await api(`/admin/requests${query({ ...filterQuery(), cursor: next })}`);
      rows = rows.concat(page.data);
      paged = true;
      draw(page.next_cursor);
    } }, "Load older") : h("small", {}, rows.length ? "That is every request matching." : ""));
  };
  async function load() {
    if (paged) return; // a reader deep in the list keeps their place
    const page = await api(`/admin/requests${query(filterQuery())}`);
    rows = page.data;
    draw(page.next_cursor);
  }
  await load();
  return load;
}

function requestTable(rows, go) {
  return table([
    { title: "Time", render: (r) => h("span", { title: fmt.time(r.created_at) }, fmt.clock(r.created_at)) },
    { title: "Status", render: (r) => statusBadge(r.status) },
    { title: "Model", render: (r) => h("code", {}, r.model) },
    { title: "Route", render: (r) => r.route ? h("span", {}, h("code", {}, r.route),
      r.attempts > 1 ? h("span", { class: "badge warn", title: "upstream attempts" }, `${r.attempts}×`) : null) : "–" },
    { title: "Key", render: (r) => r.key.name || `#${r.key.id}` },
    { title: "Tokens", class: "num", render: (r) => `${fmt.count(r.usage.prompt_tokens)} / ${fmt.count(r.usage.completion_tokens)}` },
    { title: "Cost", class: "num", render: (r) => fmt.usd(r.cost) },
    { title: "First token", class: "num", render: (r) => fmt.ms(r.ttfb_ms) },
    { title: "Total", class: "num", render: (r) => fmt.ms(r.total_ms) },
    { title: "Tags", render: (r) => chips(r.tags) },
  ], rows, { onRow: (r) => go(`#/requests/${encodeURIComponent(r.id)}`),
    empty: "No requests match. They appear here a moment after they finish." });
}

export async function requestPage(root, { arg, go }) {
  const { data: r } = await api(`/admin/requests/${encodeURIComponent(arg)}`);
  const fact = (label, id, value) => h("div", { class: "fact" }, h("span", {}, label), h("strong", { id }, value));
  const attempts = r.attempts;
  const failed = attempts.filter((a) => a.outcome !== "ok");
  const width = root.clientWidth - 40;
  root.replaceChildren(...[
    h("div", { class: "toolbar" },
      h("button", { type: "button", class: "ghost", onclick: () => history.back() }, "← Back"),
      h("code", { id: "detail-id", class: "request-id" }, r.id), copyButton(r.id),
      statusBadge(r.status), h("span", { class: "muted" }, fmt.time(r.created_at))),
    r.error ? h("div", { class: "card failure", id: "detail-error" }, h("h2", {}, r.error.code),
      h("p", {}, r.error.message || "No message was recorded.")) : null,
    h("div", { class: "grid two" },
      card("The request and the upstream model", h("div", { class: "facts" },
        fact("Model", "detail-model", r.model),
        fact("Route", "detail-route", r.route || "none answered"),
        fact("Upstream model", "detail-upstream", r.upstream_model || "–"),
        fact("Key", "detail-key", `${r.key.name || ""} #${r.key.id}`),
        fact("Status", "detail-status", String(r.status)),
        fact("Streamed", "detail-stream", r.stream ? "yes" : "no"),
        fact("reasoning_effort received", "detail-effort-received", r.reasoning_effort.received ?? "not sent"),
        fact("reasoning_effort sent", "detail-effort-sent", r.reasoning_effort.sent ?? "not sent"),
        fact("Tags", "detail-tags", r.tags.length ? chips(r.tags, (tag) => go(`#/requests${query({ tag })}`)) : "none"))),
      card("Time, tokens and cost", h("div", { class: "facts" },
        fact("First token", "detail-ttfb", fmt.ms(r.ttfb_ms)),
        fact("Total", "detail-total", fmt.ms(r.total_ms)),
        fact("Prompt tokens", "detail-prompt", fmt.int(r.usage.prompt_tokens)),
        fact("Completion tokens", "detail-completion", fmt.int(r.usage.completion_tokens)),
        fact("Reasoning tokens", "detail-reasoning", fmt.int(r.usage.reasoning_tokens)),
        fact("Cached tokens", "detail-cached", fmt.int(r.usage.cached_tokens)),
        fact("Cost", "detail-cost", fmt.usd(r.cost)),
        fact("Not covered by the balance", "detail-uncharged", fmt.usd(r.uncharged))))),
    card(`Upstream attempts (${attempts.length})`, attempts.length ? h("div", {},
      h("p", { class: "muted", id: "detail-attempts" }, attempts.length === 1
        ? "Answered by its first attempt."
        : `${attempts.length} attempts: ${failed.length} did not answer${attempts.some((a) => a.hedge) ? ", a hedge raced a slow one" : ""}.`),
      attemptTimeline(attempts, { firstToken: r.ttfb_ms, total: r.total_ms, format: fmt.ms, width }),
      table([
        { title: "#", render: (a) => String(attempts.indexOf(a) + 1) },
        { title: "Route", render: (a) => h("code", {}, a.route) },
        { title: "Kind", render: (a) => a.hedge ? "hedge" : attempts.indexOf(a) === 0 ? "first"
          : attempts.slice(0, attempts.indexOf(a)).some((b) => b.route === a.route) ? "retry" : "fallback" },
        { title: "Started", class: "num", render: (a) => `+${fmt.ms(a.start_ms)}` },
        { title: "Took", class: "num", render: (a) => fmt.ms(a.ms) },
        { title: "Outcome", render: (a) => h("span", { class: `badge ${a.outcome === "ok" ? "ok" : a.outcome === "abandoned" ? "muted" : "bad"}` }, a.outcome) },
      ], attempts)) : h("p", { class: "muted", id: "detail-attempts" }, "No upstream was tried."))]
    .filter(Boolean));
}

// Tags

export async function tagsPage(root, { params, go }) {
  const range = params.get("range") || "30d";
  const body = h("div", { id: "tags" });
  root.replaceChildren(
    h("div", { class: "toolbar" }, rangeControl(range, (value) => go(`#/tags${query({ range: value })}`)),
      h("span", { class: "muted" }, "Tags come from an x-callmissed-tags header or the body's metadata.")),
    card("Usage by tag", body));
  async function load() {
    const { data } = await api(`/admin/tags${query({ range })}`);
    const top = Math.max(...data.map((t) => t.cost || 0), 0) || 1;
    body.replaceChildren(table([
      { title: "Tag", render: (t) => h("code", {}, t.tag) },
      { title: "Requests", class: "num", render: (t) => fmt.count(t.requests) },
      { title: "Errors", class: "num", render: (t) => fmt.pct(t.error_rate) },
      { title: "Spend", render: (t) => h("span", { class: "bar-cell" }, meter((t.cost || 0) / top), fmt.usd(t.cost)) },
      { title: "Tokens", class: "num", render: (t) => fmt.count(t.prompt_tokens + t.completion_tokens) },
      { title: "p50", class: "num", render: (t) => fmt.ms(t.ttfb_p50_ms) },
      { title: "p99", class: "num", render: (t) => fmt.ms(t.ttfb_p99_ms) },
      { title: "", render: (t) => h("span", { class: "actions" },
        h("button", { type: "button", class: "ghost small", onclick: (e) => { e.stopPropagation(); go(`#/overview${query({ range, tag: t.tag })}`); } }, "Overview"),
        h("button", { type: "button", class: "ghost small", onclick: (e) => { e.stopPropagation(); go(`#/requests${query({ tag: t.tag })}`); } }, "Requests")) },
    ], data.map((t) => ({ ...t, id: t.tag })), { empty: "No tagged requests in this range. Send x-callmissed-tags: team:search to start." }));
  }
  await load();
  return load;
}
