// The console's shell: sign-in, the sidebar, the hash router (#/overview, #/requests?model=…,
// #/requests/<id>, #/keys, #/routes, #/tags, #/retention) and each page's live refresh.
// The session is an HttpOnly cookie; this script only ever holds its CSRF token, in memory.

import { api, h, session, toast } from "./util.js";
import { overviewPage, requestPage, requestsPage, tagsPage } from "./pages.js";
import { keysPage, retentionPage, routesPage } from "./admin.js";

const PAGES = {
  overview: { title: "Overview", render: overviewPage, every: 10000 },
  requests: { title: "Requests", render: requestsPage, every: 1000 },
  keys: { title: "Keys", render: keysPage, every: 0 },
  routes: { title: "Routes", render: routesPage, every: 2000 },
  tags: { title: "Tags", render: tagsPage, every: 15000 },
  retention: { title: "Retention", render: retentionPage, every: 0 },
};

const view = document.getElementById("view");
const title = document.getElementById("title");
const updated = document.getElementById("updated");
let current = null; // {key, refresh, timer}

function route() {
  const [path, search = ""] = location.hash.replace(/^#\/?/, "").split("?");
  const [page, ...rest] = path.split("/");
  return { page: PAGES[page] ? page : "overview", arg: rest.join("/") || null,
    params: new URLSearchParams(search) };
}

export function go(hash) {
  if (location.hash === hash) show();
  else location.hash = hash;
}

async function show() {
  if (document.body.dataset.state !== "ready") return;
  stop();
  const { page, arg, params } = route();
  const spec = page === "requests" && arg ? { title: "Request", render: requestPage, every: 0 }
    : PAGES[page];
  for (const link of document.querySelectorAll("nav a[data-page]")) {
    link.classList.toggle("active", link.dataset.page === page);
  }
  title.textContent = spec.title;
  document.title = `${spec.title} · CallMissed console`;
  document.body.dataset.view = arg ? `${page}-detail` : page;
  view.dataset.loaded = "";
  const key = location.hash;
  const mine = { key, refresh: null, timer: null };
  current = mine;
  view.replaceChildren(h("div", { class: "loading" }, "Loading…"));
  try {
    const refresh = await spec.render(view, { arg, params, go });
    if (current !== mine) return;
    stamp();
    view.dataset.loaded = "1";
    if (refresh && spec.every) {
      mine.refresh = refresh;
      mine.timer = setInterval(() => tick(mine), spec.every);
    }
  } catch (error) {
    if (current !== mine) return;
    view.replaceChildren(h("div", { class: "card failure" }, h("h2", {}, "Could not load this page"),
      h("p", {}, error.message)));
    view.dataset.loaded = "error";
  }
}

async function tick(mine) {
  if (document.hidden || mine.busy) return;
  mine.busy = true;
  try {
    await mine.refresh();
    if (current === mine) stamp();
  } catch (error) {
    updated.textContent = `Refresh failed: ${error.message}`;
  } finally {
    mine.busy = false;
  }
}

function stamp() {
  updated.textContent = `Updated ${new Date().toLocaleTimeString()}`;
}

function stop() {
  if (current && current.timer) clearInterval(current.timer);
  current = null;
}

function signedOut() {
  stop();
  session.csrf = null;
  document.body.dataset.state = "signin";
  document.getElementById("app").hidden = true;
  document.getElementById("signin").hidden = false;
  document.getElementById("token").focus();
}

function signedIn(csrf) {
  session.csrf = csrf;
  document.body.dataset.state = "ready";
  document.getElementById("signin").hidden = true;
  document.getElementById("app").hidden = false;
  show();
}

async function signIn(event) {
  event.preventDefault();
  const field = document.getElementById("token");
  const error = document.getElementById("signin-error");
  const button = document.getElementById("signin-button");
  error.textContent = "";
  button.disabled = true;
  try {
    const answer = await api("/console/session", { method: "POST", body: { token: field.value } });
    field.value = "";
    signedIn(answer.csrf);
  } catch (failure) {
    error.textContent = failure.message;
    field.select();
  } finally {
    button.disabled = false;
  }
}

async function signOut() {
  try {
    await api("/console/session", { method: "DELETE" });
  } catch (error) {
    toast(error.message, "bad");
  }
  signedOut();
}

async function start() {
  session.onSignedOut = signedOut;
  document.getElementById("signin-form").addEventListener("submit", signIn);
  document.getElementById("signout").addEventListener("click", signOut);
  window.addEventListener("hashchange", show);
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && current && current.refresh) tick(current);
  });
  let resized = null; // charts are drawn to their box's width: draw them again when it changes
  window.addEventListener("resize", () => {
    clearTimeout(resized);
    resized = setTimeout(() => { if (current && current.refresh) tick(current); }, 250);
  });
  try {
    const state = await api("/console/session");
    if (state.signed_in) signedIn(state.csrf);
    else signedOut();
  } catch (error) {
    signedOut();
    document.getElementById("signin-error").textContent = error.message;
  }
}

start();
