// Plain SVG charts for the CallMissed console: a time chart (lines, areas or stacked areas, with a
// hover read-out), a sparkline, and an attempt timeline. No dependencies; every number and label
// goes into the DOM as text, never as markup.

const SVG = "http://www.w3.org/2000/svg";
export const PALETTE = ["#3b6cf6", "#14a06f", "#f0a020", "#e0483e", "#8b5cf6", "#0e9fb8",
  "#d9468f", "#6b8e23", "#7c8799"];

function svg(tag, attrs = {}, parent = null) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (parent) parent.appendChild(node);
  return node;
}

// Round numbers for an axis from 0 to at least `max`: [0, step, 2 step, ...].
function niceTicks(max, count = 4) {
  if (!(max > 0)) return [0, 1];
  const raw = max / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= raw);
  const ticks = [];
  for (let value = 0; value <= max + step * 0.001; value += step) ticks.push(value);
  if (ticks[ticks.length - 1] < max) ticks.push(ticks[ticks.length - 1] + step);
  return ticks;
}

export function timeLabel(seconds, step) {
  const date = new Date(seconds * 1000);
  if (step >= 86400) return date.toLocaleDateString(undefined, { month: "short", day: "numeric" });
  if (step >= 3 * 3600) {
    return date.toLocaleDateString(undefined, { month: "short", day: "numeric" }) + " " +
      date.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
  }
  return date.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
}

// A chart of values over time. `series`: [{name, values (null: no value), color}]; `stacked`
// stacks them as areas (counts), else they are lines over a light area (or none, `lines`).
export function timeChart(element, { times, step, series, stacked = false, lines = false,
  format = String, height = 190, empty = "No data in this range" }) {
  element.replaceChildren();
  element.classList.add("chart");
  const width = Math.max(element.clientWidth || 600, 280);
  const margin = { left: 52, right: 14, top: 12, bottom: 26 };
  const plotH = height - margin.top - margin.bottom;
  const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img" }, element);
  const n = times.length;
  const tops = times.map((_, i) => stacked
    ? series.reduce((sum, s) => sum + (s.values[i] || 0), 0)
    : Math.max(0, ...series.map((s) => s.values[i] ?? 0)));
  const ticks = niceTicks(Math.max(0, ...tops));
  const top = ticks[ticks.length - 1] || 1;
  margin.left = Math.max(40, 14 + 6.6 * Math.max(...ticks.map((tick) => format(tick).length)));
  const plotW = width - margin.left - margin.right;
  const x = (i) => margin.left + (n <= 1 ? plotW / 2 : (i * plotW) / (n - 1));
  const y = (value) => margin.top + plotH - (value / top) * plotH;
  for (const tick of ticks) {
    svg("line", { x1: margin.left, x2: width - margin.right, y1: y(tick), y2: y(tick),
      class: "grid" }, root);
    const label = svg("text", { x: margin.left - 8, y: y(tick) + 4, class: "axis",
      "text-anchor": "end" }, root);
    label.textContent = format(tick);
  }
  const every = Math.max(1, Math.ceil(n / Math.max(2, Math.floor(plotW / 90))));
  for (let i = 0; i < n; i += every) {
    const label = svg("text", { x: x(i), y: height - 7, class: "axis", "text-anchor": "middle" },
      root);
    label.textContent = timeLabel(times[i], step);
  }
  const hasData = series.some((s) => s.values.some((v) => v));
  if (!hasData) {
    const note = svg("text", { x: margin.left + plotW / 2, y: margin.top + plotH / 2,
      class: "empty", "text-anchor": "middle" }, root);
    note.textContent = empty;
  }
  const base = times.map(() => 0);
  series.forEach((s, index) => {
    const color = s.color || PALETTE[index % PALETTE.length];
    const lower = base.slice();
    const upper = s.values.map((v, i) => (stacked ? lower[i] + (v || 0) : v));
    if (stacked) upper.forEach((v, i) => { base[i] = v; });
    const segments = [];
    let current = [];
    upper.forEach((v, i) => {
      if (v === null || v === undefined) { if (current.length) segments.push(current); current = []; }
      else current.push(i);
    });
    if (current.length) segments.push(current);
    for (const part of segments) {
      const line = part.map((i, k) => `${k ? "L" : "M"}${x(i).toFixed(1)},${y(upper[i]).toFixed(1)}`)
        .join("");
      if (!lines || stacked) {
        const back = part.slice().reverse()
          .map((i) => `L${x(i).toFixed(1)},${y(stacked ? lower[i] : 0).toFixed(1)}`).join("");
        svg("path", { d: line + back + "Z", fill: color, "fill-opacity": stacked ? 0.55 : 0.1,
          stroke: "none" }, root);
      }
      svg("path", { d: line, fill: "none", stroke: color, "stroke-width": stacked ? 1.2 : 2,
        "stroke-linejoin": "round" }, root);
      if (part.length === 1) svg("circle", { cx: x(part[0]), cy: y(upper[part[0]]), r: 2.5,
        fill: color }, root);
    }
  });
  hover(element, root, { times, step, series, x, n, margin, plotH, format });
  if (series.length > 1) legend(element, series);
  return root;
}

function legend(element, series) {
  const box = document.createElement("div");
  box.className = "legend";
  series.forEach((s, index) => {
    const item = document.createElement("span");
    const dot = document.createElement("i");
    dot.style.background = s.color || PALETTE[index % PALETTE.length];
    item.append(dot, document.createTextNode(s.name));
    box.appendChild(item);
  });
  element.appendChild(box);
}

function hover(element, root, { times, step, series, x, n, margin, plotH, format }) {
  const guide = svg("line", { y1: margin.top, y2: margin.top + plotH, class: "guide",
    visibility: "hidden" }, root);
  const tip = document.createElement("div");
  tip.className = "tip";
  tip.hidden = true;
  element.appendChild(tip);
  const area = svg("rect", { x: margin.left, y: margin.top, width: Math.max(1, x(n - 1) - margin.left),
    height: plotH, fill: "transparent" }, root);
  area.addEventListener("mouseleave", () => { tip.hidden = true; guide.setAttribute("visibility", "hidden"); });
  area.addEventListener("mousemove", (event) => {
    const box = root.getBoundingClientRect();
    const px = event.clientX - box.left;
    let index = 0;
    for (let i = 1; i < n; i++) if (Math.abs(x(i) - px) < Math.abs(x(index) - px)) index = i;
    guide.setAttribute("x1", x(index));
    guide.setAttribute("x2", x(index));
    guide.setAttribute("visibility", "visible");
    const title = document.createElement("b");
    title.textContent = timeLabel(times[index], Math.min(step, 3600));
    const rows = series.map((s, k) => {
      const row = document.createElement("div");
      const dot = document.createElement("i");
      dot.style.background = s.color || PALETTE[k % PALETTE.length];
      const value = s.values[index];
      row.append(dot, document.createTextNode(`${s.name}: ${value === null || value === undefined ? "–" : format(value)}`));
      return row;
    });
    tip.replaceChildren(title, ...rows);
    tip.hidden = false;
    const left = Math.min(x(index) + 12, box.width - tip.offsetWidth - 4);
    tip.style.left = `${Math.max(4, left)}px`;
    tip.style.top = `${margin.top}px`;
  });
}

export function sparkline(values, color = PALETTE[0]) {
  const width = 120;
  const height = 30;
  const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "spark" });
  const numbers = values.map((v) => v || 0);
  const top = Math.max(...numbers, 0) || 1;
  const step = numbers.length > 1 ? width / (numbers.length - 1) : width;
  const points = numbers.map((v, i) => `${(i * step).toFixed(1)},${(height - 2 - (v / top) * (height - 4)).toFixed(1)}`);
  if (points.length) {
    svg("path", { d: `M0,${height} L${points.join(" L")} L${width},${height} Z`, fill: color,
      "fill-opacity": 0.12 }, root);
    svg("path", { d: `M${points.join(" L")}`, fill: "none", stroke: color, "stroke-width": 1.5 }, root);
  }
  return root;
}

const OUTCOME_COLORS = { ok: "#14a06f", abandoned: "#9aa3b2", timeout: "#f0a020",
  rate_limited: "#f0a020" };

// Upstream attempts on one time axis: [{route, start_ms, ms, outcome, hedge}], plus markers
// for the request's first token and total time (ms since it began routing).
export function attemptTimeline(attempts, { firstToken = null, total = null, format = String,
  width = 720 } = {}) {
  width = Math.max(width, 420);
  const rowH = 30;
  const labelW = Math.min(260, Math.max(140, 7.4 * Math.max(...attempts.map((a) => a.route.length + (a.hedge ? 10 : 0)))));
  const height = attempts.length * rowH + 52;
  const end = Math.max(1, total || 0, ...attempts.map((a) => (a.start_ms || 0) + (a.ms || 0)));
  const plotW = width - labelW - 110; // room for the last bar's note
  const x = (ms) => labelW + (ms / end) * plotW;
  const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "timeline",
    role: "img" });
  attempts.forEach((attempt, i) => {
    const top = 6 + i * rowH;
    const label = svg("text", { x: 0, y: top + 16, class: "label" }, root);
    label.textContent = `${attempt.hedge ? "⤷ hedge · " : ""}${attempt.route}`;
    const color = OUTCOME_COLORS[attempt.outcome] || "#e0483e";
    const start = attempt.start_ms || 0;
    svg("rect", { x: x(start), y: top + 3, width: Math.max(3, x(start + (attempt.ms || 0)) - x(start)),
      height: rowH - 12, rx: 4, fill: color, "fill-opacity": 0.85 }, root);
    const note = svg("text", { x: Math.min(x(start + (attempt.ms || 0)) + 6, width - 4), y: top + 16,
      class: "value", "text-anchor": x(start + (attempt.ms || 0)) + 120 > width ? "end" : "start" }, root);
    note.textContent = `${attempt.outcome} · ${format(attempt.ms)}`;
  });
  const axisY = attempts.length * rowH + 14;
  svg("line", { x1: labelW, x2: labelW + plotW, y1: axisY, y2: axisY, class: "grid" }, root);
  for (const [value, name] of [[0, "0"], [end, format(end)]]) {
    const tick = svg("text", { x: x(value), y: axisY + 14, class: "axis",
      "text-anchor": value ? "end" : "start" }, root);
    tick.textContent = name;
  }
  // The request's own first token and end, below the axis: apart, or as one label if close.
  const marks = [[firstToken, "first token"], [total, "done"]].filter(([v]) => v !== null && v !== undefined);
  const close = marks.length === 2 && x(marks[1][0]) - x(marks[0][0]) < 90;
  marks.forEach(([value, name], index) => {
    svg("line", { x1: x(value), x2: x(value), y1: 2, y2: axisY + 20, class: "marker" }, root);
    if (close && index === 0) return;
    const right = x(value) > width - 160;
    const label = svg("text", { x: x(value) + (right ? -4 : 4), y: axisY + 32, class: "marker-label",
      "text-anchor": right ? "end" : "start" }, root);
    label.textContent = close ? `first token · done ${format(value)}` : `${name} ${format(value)}`;
  });
  return root;
}
