// The CallMissed playground: a plain-JS client of this gateway's own OpenAI-compatible API.
// A URL like /playground?model=sim/instant&prompt=hi&run=1#key=cm_… fills the form (the key
// stays in the fragment, which browsers never send to the server). It never sends by itself:
// a link chose that request, so `run=1` only readies it, and spending a key takes a click.
"use strict";

const $ = (id) => document.getElementById(id);
let controller = null;

function setStat(name, value) { $(`stat-${name}`).textContent = value ?? "–"; }

function resetAnswer() {
  $("output").textContent = "";
  $("reasoning").textContent = "";
  $("reasoning").hidden = true;
  $("error").hidden = true;
  for (const name of ["status", "ttfb", "total", "route", "upstream", "effort", "usage", "request"]) {
    setStat(name, null);
  }
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

function showHeaders(response) {
  setStat("status", response.status);
  setStat("route", response.headers.get("x-callmissed-route"));
  setStat("upstream", response.headers.get("x-callmissed-upstream-model"));
  setStat("effort", response.headers.get("x-callmissed-reasoning-effort") ?? "(not sent)");
  setStat("request", response.headers.get("x-request-id"));
}

function showUsage(usage) {
  if (!usage) return;
  const reasoning = usage.completion_tokens_details?.reasoning_tokens ?? 0;
  setStat("usage", `${usage.prompt_tokens} / ${usage.completion_tokens} / ${reasoning}`);
}

function append(delta, started) {
  const thinking = delta.reasoning ?? delta.reasoning_content;
  if (thinking) {
    $("reasoning").hidden = false;
    $("reasoning").textContent += thinking;
  }
  if (delta.content) {
    if (started.ttfb === null) {
      started.ttfb = performance.now() - started.at;
      setStat("ttfb", `${started.ttfb.toFixed(0)} ms`);
    }
    $("output").textContent += delta.content;
  }
}

// Yields the JSON payload of each `data:` event of a server-sent-events body.
async function* sseEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replaceAll("\r\n", "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).trimStart()).join("\n");
      if (data) yield data;
    }
  }
}

function buildBody() {
  const body = {
    model: $("model").value,
    messages: [{ role: "user", content: $("prompt").value }],
    stream: $("stream").checked,
  };
  if (body.stream) body.stream_options = { include_usage: true };
  if ($("effort").value) body.reasoning_effort = $("effort").value;
  if ($("max-tokens").value) body.max_tokens = Number($("max-tokens").value);
  return body;
}

async function readStream(response, started) {
  for await (const data of sseEvents(response.body)) {
    if (data === "[DONE]") return;
    const chunk = JSON.parse(data);
    if (chunk.error) throw new Error(chunk.error.message);
    for (const choice of chunk.choices ?? []) append(choice.delta ?? {}, started);
    showUsage(chunk.usage);
  }
  throw new Error("the stream ended before [DONE]");
}

async function send(event) {
  event?.preventDefault();
  resetAnswer();
  localStorage.setItem("callmissed-key", $("key").value);
  controller = new AbortController();
  $("send").disabled = true;
  $("stop").disabled = false;
  const started = { at: performance.now(), ttfb: null };
  try {
    const body = buildBody();
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${$("key").value}` },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    showHeaders(response);
    if (!response.ok) {
      const payload = await response.json();
      throw new Error(payload.error?.message ?? response.statusText);
    }
    if (body.stream) {
      await readStream(response, started);
    } else {
      const completion = await response.json();
      append(completion.choices[0].message, started);
      showUsage(completion.usage);
    }
    setStat("total", `${(performance.now() - started.at).toFixed(0)} ms`);
    document.body.dataset.state = "done";
  } catch (error) {
    showError(error.name === "AbortError" ? "Stopped." : error.message);
    document.body.dataset.state = "error";
  } finally {
    $("send").disabled = false;
    $("stop").disabled = true;
  }
}

async function loadModels(preferred) {
  const response = await fetch("/v1/models", {
    headers: { authorization: `Bearer ${$("key").value}` },
  });
  if (!response.ok) return;
  const data = (await response.json()).data.filter((model) => model.capabilities?.chat !== false);
  $("model").replaceChildren(...data.map((model) => {
    const option = new Option(`${model.id} — ${model.route}${model.available ? "" : " (unavailable)"}`,
      model.id);
    option.disabled = !model.available;
    return option;
  }));
  // Any vendor/model id works through OpenRouter, listed or not.
  if (preferred && !data.some((model) => model.id === preferred)) {
    $("model").append(new Option(preferred, preferred));
  }
  const fallback = data.some((m) => m.id === "auto" && m.available) ? "auto" : "sim/gpt-oss-120b";
  $("model").value = preferred || fallback;
}

async function start() {
  const params = new URLSearchParams(location.search);
  const fragment = new URLSearchParams(location.hash.slice(1));
  $("key").value = fragment.get("key") ?? localStorage.getItem("callmissed-key") ?? "";
  if (params.get("prompt")) $("prompt").value = params.get("prompt");
  if (params.get("effort")) $("effort").value = params.get("effort");
  if (params.get("stream") === "0") $("stream").checked = false;
  $("request").addEventListener("submit", send);
  $("stop").addEventListener("click", () => controller?.abort());
  $("key").addEventListener("change", () => loadModels());
  if ($("key").value) await loadModels(params.get("model"));
  if (params.get("run") === "1") {
    $("ready").hidden = false;
    $("send").focus();
  }
  document.body.dataset.state ||= "ready";
}

start();
