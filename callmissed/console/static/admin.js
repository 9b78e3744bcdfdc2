// The console's managing pages: Keys (everything `callmissed keys …` and /admin/keys do),
// Routes (live health across the server's workers), Retention.

import { api, card, chips, copyButton, fmt, h, meter, query, stateBadge, table, toast } from "./util.js";
import { facets } from "./pages.js";

const RESETS = [["", "never"], ["daily", "daily"], ["weekly", "weekly"], ["monthly", "monthly"]];
const PERIOD = { daily: "today", weekly: "this week", monthly: "this month" };

// A modal dialog; `actions` are [label, handler(form) -> Promise<bool keepOpen?>, kind].
function dialog(title, body, actions) {
  const box = document.getElementById("dialog");
  const error = h("p", { class: "form-error", role: "alert" });
  const form = h("form", { method: "dialog", onsubmit: (event) => event.preventDefault() },
    h("h2", {}, title), body, error,
    h("div", { class: "dialog-actions" }, actions.map(([label, run, kind]) => h("button", {
      type: kind === "primary" ? "submit" : "button", class: kind || "ghost",
      onclick: async (event) => {
        event.preventDefault();
        error.textContent = "";
        try {
          if (!(run && await run(form))) box.close();
        } catch (failure) {
          error.textContent = failure.message;
        }
      },
    }, label))));
  box.replaceChildren(form);
  box.showModal();
  const first = form.querySelector("input, select");
  if (first) first.focus();
  return form;
}

function field(label, input, hint = null) {
  return h("label", { class: "field" }, h("span", {}, label), input, hint ? h("small", {}, hint) : null);
}

function limitInput(name, value) {
  return h("input", { name, id: `key-${name}`, type: "number", min: "1", step: "1",
    placeholder: "no limit", value: value === null || value === undefined ? "" : String(value) });
}

function limitsOf(form) {
  const number = (name) => {
    const text = form.elements[name].value.trim();
    return text === "" ? null : Number(text);
  };
  const models = form.elements.models.value.split(",").map((m) => m.trim()).filter(Boolean);
  const body = { rpm: number("rpm"), tpm: number("tpm"), max_concurrent: number("max_concurrent"),
    models: models.length ? models : null };
  if (form.elements.limit_reset) body.limit_reset = form.elements.limit_reset.value || null;
  return body;
}

// `metered`: the key has (or will have) a credit limit, which may reset each day, week or month.
function policyFields(key, known, metered) {
  const list = h("datalist", { id: "model-names" }, known.models.map((m) => h("option", { value: m })));
  return [
    h("div", { class: "row" }, field("Requests / minute", limitInput("rpm", key.rpm)),
      field("Tokens / minute", limitInput("tpm", key.tpm)),
      field("At once", limitInput("max_concurrent", key.max_concurrent))),
    field("Models allowed", h("input", { name: "models", id: "key-models", list: "model-names",
      placeholder: "all models", value: (key.models || []).join(", ") }),
    "Comma-separated; empty allows every model."), list,
    metered ? field("Credit limit resets", h("select", { name: "limit_reset", id: "key-limit-reset" },
      RESETS.map(([value, text]) => h("option", { value, selected: (key.limit_reset || "") === value }, text))),
    "The credit is the limit per day, week or month (UTC); spending starts over each window.") : null,
  ];
}

export async function keysPage(root, { go }) {
  const body = h("div", { id: "keys" });
  root.replaceChildren(h("div", { class: "toolbar" },
    h("button", { type: "button", class: "primary", id: "create-key", onclick: () => createKey(load) }, "New key"),
    h("span", { class: "muted" }, "Keys are stored hashed: a key is shown once, when it is made.")),
  card("API keys", body));
  async function load() {
    const [keys, usage] = await Promise.all([api("/admin/keys"), api("/admin/usage/keys?range=30d")]);
    const used = Object.fromEntries(usage.data.map((u) => [u.key_id, u]));
    body.replaceChildren(table([
      { title: "Name", class: "nowrap", render: (k) => h("span", {}, h("b", {}, k.name), " ", h("code", { class: "muted" }, `${k.key_prefix}…`)) },
      { title: "Status", render: (k) => h("span", { class: `badge ${k.active ? "ok" : "muted"}` }, k.active ? "active" : "revoked") },
      { title: "Credit left", render: (k) => k.credits === null ? h("span", { class: "muted" }, "unlimited")
        : h("span", { class: "bar-cell" }, meter(k.granted ? k.credits / k.granted : 0, k.credits < (k.granted || 0) * 0.1 ? "bad" : ""),
          `${fmt.usd(k.credits)} of ${fmt.usd(k.granted)}${k.limit_reset ? ` ${PERIOD[k.limit_reset]}` : ""}`) },
      { title: "Spent", class: "num", render: (k) => fmt.usd(k.spent) },
      { title: "30 days", class: "num", render: (k) => used[k.id]
        ? `${fmt.usd(used[k.id].cost)} · ${fmt.count(used[k.id].requests)} req` : "–" },
      { title: "Limits", class: "limits", render: (k) => {
        const limits = [k.rpm && `${fmt.int(k.rpm)} rpm`, k.tpm && `${fmt.count(k.tpm)} tpm`,
          k.max_concurrent && `${k.max_concurrent} at once`, k.limit_reset && `resets ${k.limit_reset}`].filter(Boolean);
        return limits.length ? limits.map((text) => h("div", {}, text)) : h("span", { class: "muted" }, "none");
      } },
      { title: "Models", render: (k) => k.models ? chips(k.models) : h("span", { class: "muted" }, "all") },
      { title: "Last used", render: (k) => h("span", { title: fmt.time(used[k.id]?.last_used_at) }, fmt.ago(used[k.id]?.last_used_at)) },
      { title: "", render: (k) => h("span", { class: "actions" },
        h("button", { type: "button", class: "ghost small", onclick: (e) => { e.stopPropagation(); go(`#/requests${query({ key: k.id })}`); } }, "Requests"),
        k.active ? h("button", { type: "button", class: "ghost small", dataset: { action: "edit" }, onclick: (e) => { e.stopPropagation(); editKey(k, load); } }, "Edit") : null,
        k.active && k.credits !== null ? h("button", { type: "button", class: "ghost small", dataset: { action: "topup" }, onclick: (e) => { e.stopPropagation(); topUp(k, load); } }, "Top up") : null,
        k.active ? h("button", { type: "button", class: "danger small", dataset: { action: "revoke" }, onclick: (e) => { e.stopPropagation(); revoke(k, load); } }, "Revoke") : null) },
    ], keys.data.slice().reverse().map((k) => ({ ...k })), { empty: "No keys yet: make one with New key." }));
  }
  await load();
  return load;
}

async function createKey(reload) {
  const known = await facets();
  dialog("New API key", [
    field("Name", h("input", { name: "name", id: "key-name", required: true, placeholder: "e.g. search-backend" })),
    field("Credit (USD)", h("input", { name: "credits", id: "key-credits", type: "number", min: "0", step: "0.01",
      placeholder: "unlimited" }), "Leave empty for a key without a credit limit."),
    ...policyFields({}, known, true),
  ], [["Cancel"], ["Create key", async (form) => {
    const name = form.elements.name.value.trim();
    if (!name) throw new Error("Give the key a name.");
    const credits = form.elements.credits.value.trim();
    const limits = limitsOf(form);
    if (credits === "" && limits.limit_reset) throw new Error("Only a key with a credit limit can reset it.");
    if (credits === "") delete limits.limit_reset;
    const made = await api("/admin/keys", { method: "POST", body: {
      name, ...(credits === "" ? {} : { credits: Number(credits) }), ...limits } });
    await reload();
    showNewKey(made);
    return true;
  }, "primary"]]);
}

function showNewKey(made) {
  dialog("Your new key", [
    h("p", {}, `Copy the key for “${made.data.name}” now: it is stored hashed and will not be shown again.`),
    h("div", { class: "secret" }, h("code", { id: "new-key" }, made.key), copyButton(made.key)),
  ], [["Done", null, "primary"]]);
}

function editKey(key, reload) {
  facets().then((known) => dialog(`Limits of ${key.name}`, policyFields(key, known, key.credits !== null), [["Cancel"],
    ["Save", async (form) => {
      await api(`/admin/keys/${key.id}`, { method: "PATCH", body: limitsOf(form) });
      toast(`Saved the limits of ${key.name}`);
      await reload();
    }, "primary"]]));
}

function topUp(key, reload) {
  dialog(`Top up ${key.name}`, [
    h("p", {}, `It has ${fmt.usd(key.credits)} left of ${fmt.usd(key.granted)} granted.`),
    field("Add (USD)", h("input", { name: "amount", id: "topup-amount", type: "number", min: "0.01", step: "0.01", required: true })),
  ], [["Cancel"], ["Add credit", async (form) => {
    const amount = Number(form.elements.amount.value);
    if (!(amount > 0)) throw new Error("Enter an amount above zero.");
    await api(`/admin/keys/${key.id}/topup`, { method: "POST", body: { credits: amount } });
    toast(`Added ${fmt.usd(amount)} to ${key.name}`);
    await reload();
  }, "primary"]]);
}

function revoke(key, reload) {
  dialog(`Revoke ${key.name}?`, [
    h("p", {}, "Its next request is refused, on every worker and replica. This cannot be undone."),
  ], [["Cancel"], ["Revoke key", async () => {
    await api(`/admin/keys/${key.id}/revoke`, { method: "POST" });
    toast(`Revoked ${key.name}`);
    await reload();
  }, "danger"]]);
}

// Routes

export async function routesPage(root) {
  const summary = h("div", { class: "kpis small" });
  const body = h("div", { id: "routes" });
  root.replaceChildren(summary, card("Routes, live", body, h("span", { class: "live" }, "Live")));
  async function load() {
    const data = await api("/admin/routes");
    summary.replaceChildren(
      stat("Workers answering", `${data.workers}${data.workers_unanswered ? ` (+${data.workers_unanswered} silent)` : ""}`, "routes-workers"),
      stat("Requests in flight", fmt.int(data.inflight), "routes-inflight"),
      stat("Routes open", fmt.int(data.data.filter((r) => r.live && r.live.state === "open").length), "routes-open"));
    body.replaceChildren(table([
      { title: "Route", render: (r) => h("div", {}, h("code", {}, r.route), h("small", { class: "models" }, r.models.join(", ")),
        r.unavailable_reason ? h("small", { class: "warn-text" }, r.unavailable_reason) : null) },
      { title: "Breaker", render: (r) => r.live ? h("span", {}, stateBadge(r.live.state),
        r.live.retry_after ? h("small", {}, ` back in ${Math.ceil(r.live.retry_after)} s`) : null) : h("span", { class: "muted" }, "not tried") },
      { title: "First token (EWMA)", class: "num", render: (r) => fmt.ms(r.live?.ttfb_ms) },
      { title: "Error rate", render: (r) => r.live ? h("span", { class: "bar-cell" }, meter(r.live.error_rate, r.live.error_rate > 0.2 ? "bad" : ""), fmt.pct(r.live.error_rate)) : "–" },
      { title: "In flight", class: "num", render: (r) => h("b", {}, fmt.int(r.live?.inflight ?? 0)) },
      { title: "Last hour", class: "num", render: (r) => r.last_hour ? `${fmt.count(r.last_hour.requests)} req · ${fmt.pct(r.last_hour.error_rate)} err` : "–" },
      { title: "p50 / p99", class: "num", render: (r) => r.last_hour ? `${fmt.ms(r.last_hour.ttfb_p50_ms)} / ${fmt.ms(r.last_hour.ttfb_p99_ms)}` : "–" },
      { title: "Workers", render: (r) => r.live ? h("span", { class: "workers" }, r.live.workers.map((w) =>
        h("span", { class: `dot ${w.state}`, title: `worker ${w.worker}: ${w.state}, ${fmt.ms(w.ttfb_ms)}, ${fmt.pct(w.error_rate)} errors, ${w.inflight} in flight` }))) : "–" },
    ], data.data.map((r) => ({ ...r, id: r.route })), { empty: "No route has been used yet." }));
  }
  await load();
  return load;
}

function stat(label, value, id) {
  return h("div", { class: "kpi" }, h("span", { class: "label" }, label), h("strong", { id }, value));
}

// Retention

export async function retentionPage(root) {
  const body = h("div", { id: "retention" });
  root.replaceChildren(card("Retention", body));
  const render = (data) => {
    const last = data.last_run || data.ran;
    body.replaceChildren(
      h("p", {}, data.days ? `Ledger rows older than ${data.days} days are deleted, a few hundred at a time, after being counted into daily totals that are kept. Per-minute totals are kept ${data.minute_rollup_days} days.`
        : "Ledger rows are kept forever (CALLMISSED_RETENTION_DAYS=0)."),
      h("div", { class: "facts" },
        fact("Keep requests for", "retention-days", data.days ? `${data.days} days` : "ever"),
        fact("Oldest request kept", "retention-oldest", data.oldest_request_at ? `${fmt.time(data.oldest_request_at)} (${fmt.ago(data.oldest_request_at)})` : "none"),
        fact("Daily totals since", "retention-daily", data.daily_rollups_since ? fmt.time(data.daily_rollups_since) : "none"),
        fact("Last pass (this worker)", "retention-last", last ? `${fmt.time(last.at)}: ${fmt.int(last.ledger_rows)} requests, ${fmt.int(last.rollup_rows)} totals, ${last.seconds} s` : "not yet")),
      h("p", { class: "muted" }, "Deleting runs on its own every few minutes, in small batches between the gateway's own writes."),
      h("button", { type: "button", class: "ghost", id: "retention-run", onclick: async (event) => {
        event.target.disabled = true;
        try {
          const ran = await api("/admin/retention", { method: "POST" });
          toast(ran.ran ? `Deleted ${fmt.int(ran.ran.ledger_rows)} old requests` : "Another worker is running it");
          render(ran);
        } catch (error) { toast(error.message, "bad"); }
        finally { event.target.disabled = false; }
      } }, "Run now"));
  };
  render(await api("/admin/retention"));
}

function fact(label, id, value) {
  return h("div", { class: "fact" }, h("span", {}, label), h("strong", { id }, value));
}
