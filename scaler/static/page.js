// vfarm's status page: reads /status.json and /history.json every few seconds and draws them.
// Plain DOM and SVG, no library. Farm strings are shown as text, never parsed as HTML.
"use strict";

const REFRESH_MS = 5000;
const SVG = "http://www.w3.org/2000/svg";
// Known columns first, in this order; any other key of the rows (a cloud, ...) follows.
const COLUMNS = ["instance", "type", "state", "age", "slots", "jobs", "reason", "lost_reason", "verdict"];
const LABELS = { instance: "instance", type: "type", state: "state", age: "age", slots: "slots", jobs: "jobs",
                 reason: "why", lost_reason: "end reason", verdict: "verdict" };
const NUMERIC = new Set(["age", "slots", "jobs"]);
const STATE_ORDER = ["booting", "idle", "busy", "other", "draining", "drained", "lost", "stopping", "stopped", "shutting-down", "terminated"];
// Columns that group the by-state table when the rows have them.
const GROUPS = ["cloud", "type"];
const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"];

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "text") node.textContent = value;
    else if (key.startsWith("data-")) node.setAttribute(key, String(value));
    else node[key] = value;
  }
  for (const child of children) node.append(child);
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  return node;
}

function pad(n) { return String(n).padStart(2, "0"); }
function clock(epoch) {
  const d = new Date(epoch * 1000);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}
function age(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  const s = Math.max(0, seconds);
  if (s < 120) return `${Math.round(s)}s`;
  if (s < 7200) return `${Math.round(s / 60)}m`;
  return `${(s / 3600).toFixed(1)}h`;
}
function shown(value) {
  if (value === null || value === undefined || value === "") return "-";
  return typeof value === "object" ? JSON.stringify(value) : String(value);
}
function byState(a, b) {
  const i = STATE_ORDER.indexOf(a), j = STATE_ORDER.indexOf(b);
  return (i < 0 ? 99 : i) - (j < 0 ? 99 : j) || a.localeCompare(b);
}

async function load(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (response.status === 503) return null;  // no cycle yet
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

function renderStatus(status) {
  document.getElementById("farm").textContent = status.farm;
  const asof = document.getElementById("asof");
  asof.textContent = `as the cycle at ${clock(status.now)} saw it`;
  asof.setAttribute("data-now", status.now);
  for (const key of ["waiting", "demand", "supply"]) {
    const node = document.getElementById(key);
    node.textContent = String(status[key]);
    node.setAttribute("data-value", status[key]);
  }
  const rows = status.instances;
  const count = document.getElementById("instance-count");
  count.textContent = String(rows.length);
  count.setAttribute("data-value", rows.length);

  const keys = new Set();
  for (const row of rows) for (const key of Object.keys(row)) keys.add(key);
  const columns = COLUMNS.filter((c) => keys.has(c) || ["instance", "type", "state", "age", "reason"].includes(c))
    .concat([...keys].filter((k) => !COLUMNS.includes(k)).sort());
  const table = document.getElementById("instances");
  table.tHead.replaceChildren(el("tr", {}, ...columns.map((c) => el("th", { text: LABELS[c] || c }))));
  table.tBodies[0].replaceChildren(...rows.map((row) => el("tr",
    { "data-instance": row.instance, "data-state": row.state, "data-type": shown(row.type) },
    ...columns.map((c) => el("td", {
      text: c === "age" ? age(row[c]) : shown(row[c]),
      className: NUMERIC.has(c) ? "num" : c === "instance" ? "id" : "",
      "data-key": c, "data-value": row[c] === undefined || row[c] === null ? "" : shown(row[c]),
    })))));
  if (!rows.length) table.tBodies[0].replaceChildren(el("tr", {}, el("td", { colSpan: columns.length, text: "no instance" })));

  // Instances by state, one line per group (cloud and type, when the rows have them).
  const groups = GROUPS.filter((g) => rows.some((r) => r[g] !== undefined && r[g] !== null));
  const states = [...new Set(rows.map((r) => r.state))].sort(byState);
  const counts = new Map();
  for (const row of rows) {
    const group = groups.map((g) => shown(row[g])).join(" / ");
    if (!counts.has(group)) counts.set(group, new Map());
    const line = counts.get(group);
    line.set(row.state, (line.get(row.state) || 0) + 1);
  }
  const summary = document.getElementById("by-state");
  summary.tHead.replaceChildren(el("tr", {}, el("th", { text: groups.join(" / ") || "farm" }),
    ...states.map((s) => el("th", { text: s })), el("th", { text: "all" })));
  summary.tBodies[0].replaceChildren(...[...counts.keys()].sort().map((group) => {
    const line = counts.get(group);
    let all = 0;
    const cells = states.map((s) => {
      const n = line.get(s) || 0;
      all += n;
      return el("td", { text: String(n), className: "num", "data-group": group, "data-state": s, "data-count": n });
    });
    return el("tr", {}, el("th", { text: group || "-" }), ...cells, el("td", { text: String(all), className: "num", "data-group": group, "data-count": all }));
  }));
}

// A line plot of SERIES ({name, points: [[time, value|null], ...]}) into FIGURE.
function plot(figure, title, series) {
  const width = 560, height = 200, left = 40, right = 10, top = 10, bottom = 24;
  const times = series.flatMap((s) => s.points.map((p) => p[0]));
  const values = series.flatMap((s) => s.points.map((p) => p[1]).filter((v) => v !== null));
  const t0 = Math.min(...times), t1 = Math.max(...times);
  const vmax = Math.max(1, ...values);
  const step = Math.max(1, Math.ceil(vmax / 4));
  const ymax = step * 4;
  const x = (t) => left + (t1 > t0 ? (t - t0) / (t1 - t0) : 0.5) * (width - left - right);
  const y = (v) => top + (1 - v / ymax) * (height - top - bottom);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, width: "100%", role: "img", "aria-label": title });
  for (let v = 0; v <= ymax; v += step) {
    chart.append(svg("line", { class: "grid", x1: left, x2: width - right, y1: y(v), y2: y(v) }));
    const label = svg("text", { x: left - 4, y: y(v) + 4, "text-anchor": "end" });
    label.textContent = String(v);
    chart.append(label);
  }
  if (times.length) {
    for (const [t, anchor] of [[t0, "start"], [t1, "end"]]) {
      const label = svg("text", { x: x(t), y: height - 6, "text-anchor": t0 === t1 ? "middle" : anchor });
      label.textContent = clock(t);
      chart.append(label);
    }
  }
  const legend = el("div", { className: "legend" });
  series.forEach((s, i) => {
    const color = PALETTE[i % PALETTE.length];
    // A skipped cycle (null) breaks the line: one path of segments.
    let d = "", pen = "M";
    for (const [t, v] of s.points) {
      if (v === null) { pen = "M"; continue; }
      d += `${pen}${x(t).toFixed(1)},${y(v).toFixed(1)} `;
      pen = "L";
    }
    const last = s.points.length ? s.points[s.points.length - 1][1] : null;
    chart.append(svg("path", { class: "series", d: d || "M0,0", stroke: color, "data-series": s.name, "data-last": last === null ? "" : last }));
    if (s.points.length === 1 && last !== null) chart.append(svg("circle", { cx: x(s.points[0][0]), cy: y(last), r: 3, fill: color }));
    const key = el("span", { text: s.name });
    key.style.setProperty("--swatch", color);
    legend.append(key);
  });
  figure.replaceChildren(el("figcaption", { text: title }), chart, legend);
}

function renderHistory(history) {
  const cycles = history.cycles;
  const series = (name, pick) => ({ name, points: cycles.map((c) => [c.time, c.skipped ? null : pick(c)]) });
  plot(document.getElementById("plot-queue"), "Queue: waiting jobs and CPUs", [
    series("waiting jobs", (c) => c.waiting), series("demand CPUs", (c) => c.demand), series("supply CPUs", (c) => c.supply)]);
  const states = [...new Set(cycles.flatMap((c) => Object.entries(c.states || {}).filter(([, n]) => n).map(([s]) => s)))].sort(byState);
  plot(document.getElementById("plot-workers"), "Workers by state",
    states.length ? states.map((s) => series(s, (c) => (c.states || {})[s] || 0)) : [series("active", (c) => c.active)]);
  plot(document.getElementById("plot-actions"), "Launches, drains, terminations per cycle", [
    series("launches", (c) => c.launched), series("drains", (c) => c.drained), series("terminations", (c) => c.terminated)]);

  const list = document.getElementById("cycles");
  list.replaceChildren(...history.decisions.map((entry) => {
    const item = el("li", { "data-time": entry.time }, el("span", { className: "when", text: clock(entry.time) }), " ");
    if (entry.skipped) {
      item.append(el("span", { className: "skipped", text: `skipped, nothing changed: ${entry.skipped}` }));
      return item;
    }
    const done = [`${entry.launched.length} launched`, `${entry.drained.length} drained`, `${entry.terminated.length} terminated`];
    item.append(el("span", { text: done.join(", ") }));
    if (!entry.decisions.length) {
      item.append(el("div", { text: "nothing to launch, drain or terminate" }));
      return item;
    }
    const rows = entry.decisions.map((d) => el("tr", { "data-action": d.action },
      el("td", { text: d.action }),
      el("td", { className: d.instance ? "id" : "", text: d.instance || `${d.count}${d.type ? " " + d.type : ""}` }),
      el("td", { text: d.reason })));
    if (entry.more) rows.push(el("tr", {}, el("td", { colSpan: 3, text: `and ${entry.more} more decision(s)` })));
    item.append(el("table", {}, el("thead", {}, el("tr", {}, ...["action", "what", "reason"].map((h) => el("th", { text: h })))),
      el("tbody", {}, ...rows)));
    for (const warning of entry.warnings || []) item.append(el("div", { className: "skipped", text: `warning: ${warning}` }));
    return item;
  }));
}

async function update() {
  const error = document.getElementById("error");
  try {
    const [status, history] = await Promise.all([load("/status.json"), load("/history.json")]);
    document.getElementById("farm").textContent = history.farm;
    if (status) renderStatus(status);
    renderHistory(history);
    error.hidden = true;
    document.body.setAttribute("data-updates", Number(document.body.getAttribute("data-updates")) + 1);
    document.body.setAttribute("data-ready", status ? "status" : "history");
  } catch (err) {
    error.textContent = `cannot read the scaler (showing what it said last): ${err.message}`;
    error.hidden = false;
  }
}

update();
setInterval(update, REFRESH_MS);
