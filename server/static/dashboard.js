// dynwork dashboard: polls /dashboard/data every second and draws both servers.
// Plain DOM and SVG, no library. Text goes in with textContent only (nothing is parsed as HTML).
"use strict";

const POLL_MS = 1000;
const TIMEOUT_MS = 8000;
const SVG = "http://www.w3.org/2000/svg";
const W = 300; // chart coordinates; the SVG scales to its box
const H = 90;
const MIN_SPAN_S = 60;

// Each chart: the series it draws, their legend names, and how its numbers read.
const CHARTS = {
  queue: { series: ["queued", "running"], names: ["queued", "running"], format: count },
  throughput: { series: ["throughput"], names: ["jobs/s"], format: rate },
  latency: { series: ["p50", "p95", "p99"], names: ["p50", "p95", "p99"], format: seconds },
  workers: { series: ["workers", "busy"], names: ["reporting", "busy"], format: count },
};
const SERIES = ["queued", "running", "throughput", "p50", "p95", "p99", "workers", "busy"];

const state = {
  historyS: 900,
  timelines: new Map(), // server name -> {epoch, seq, t: [], <series>: []}
  panels: [], // the latest panel of each server, own first
  updates: 0,
};

function count(v) {
  return v === null || v === undefined ? "–" : Math.round(v).toLocaleString("en-US");
}

function rate(v) {
  if (v === null || v === undefined) return "–";
  return v >= 100 ? Math.round(v).toLocaleString("en-US") : v.toFixed(v >= 10 ? 1 : 2);
}

function seconds(v) {
  if (v === null || v === undefined) return "–";
  if (v < 1) return `${Math.round(v * 1000)} ms`;
  if (v < 120) return `${v.toFixed(v < 10 ? 2 : 1)} s`;
  if (v < 7200) return `${(v / 60).toFixed(1)} min`;
  return `${(v / 3600).toFixed(1)} h`;
}

function age(v) {
  if (v === null || v === undefined) return "–";
  const s = Math.floor(v);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

function hashRate(v) {
  if (v === null || v === undefined) return "–";
  const units = [[1e9, "G"], [1e6, "M"], [1e3, "k"]];
  for (const [size, unit] of units) if (v >= size) return `${(v / size).toFixed(1)} ${unit}/s`;
  return `${v.toFixed(0)} /s`;
}

function clock(t) {
  return new Date(t * 1000).toLocaleTimeString("en-GB", { hour12: false });
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

// -- the timelines: merged sample by sample, trimmed to the last history_s -----------------------
function merge(name, columns) {
  let line = state.timelines.get(name);
  if (!line || columns.full || line.epoch !== columns.epoch) {
    line = { epoch: columns.epoch, seq: 0, t: [] };
    for (const s of SERIES) line[s] = [];
    state.timelines.set(name, line);
  }
  for (const key of ["t", ...SERIES]) line[key].push(...columns[key]);
  line.seq = columns.seq;
  const newest = line.t.length ? line.t[line.t.length - 1] : 0;
  let drop = 0;
  while (drop < line.t.length && line.t[drop] < newest - state.historyS) drop++;
  if (drop) for (const key of ["t", ...SERIES]) line[key].splice(0, drop);
  return line;
}

function cursor(name) {
  const line = name && state.timelines.get(name);
  return line ? `${line.epoch}:${line.seq}` : null;
}

// -- charts ---------------------------------------------------------------------------------------
function niceMax(v) {
  if (!(v > 0)) return 1;
  const step = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * step) return m * step;
  return 10 * step;
}

function span(seconds) {
  return seconds >= 120 ? `−${Math.round(seconds / 60)} min` : `−${Math.round(seconds)} s`;
}

function path(ts, values, t0, spanS, yMax) {
  let d = "";
  let pen = false;
  for (let i = 0; i < ts.length; i++) {
    const v = values[i];
    if (v === null || v === undefined) {
      pen = false;
      continue;
    }
    const x = ((ts[i] - t0) / spanS) * W;
    const y = H - (Math.min(v, yMax) / yMax) * H;
    // A segment starts with a dot (a sample alone between gaps still shows).
    d += pen ? `L${x.toFixed(1)},${y.toFixed(1)}` : `M${x.toFixed(1)},${y.toFixed(1)}h0.1`;
    pen = true;
  }
  return d;
}

function buildChart(figure, spec) {
  const top = el("span", "", "max");
  figure.querySelector("figcaption").append(top);
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  for (const y of [0, H / 2, H]) {
    const grid = document.createElementNS(SVG, "line");
    grid.setAttribute("class", "grid");
    grid.setAttribute("x1", "0");
    grid.setAttribute("x2", String(W));
    grid.setAttribute("y1", String(y));
    grid.setAttribute("y2", String(y));
    grid.setAttribute("vector-effect", "non-scaling-stroke");
    svg.append(grid);
  }
  spec.series.forEach((_, i) => {
    const p = document.createElementNS(SVG, "path");
    p.setAttribute("class", `series s${i}`);
    p.setAttribute("vector-effect", "non-scaling-stroke");
    svg.append(p);
  });
  const axis = el("div", undefined, "axis");
  axis.append(el("span", span(state.historyS)), el("span", "now"));
  const legend = el("ul", undefined, "legend");
  spec.names.forEach((n, i) => {
    const item = el("li", `${n} `, `s${i}`);
    item.append(el("span", "–"));
    legend.append(item);
  });
  figure.append(svg, axis, legend);
}

function drawChart(figure, spec, line) {
  const svg = figure.querySelector("svg");
  const n = line.t.length;
  const t1 = n ? line.t[n - 1] : 0;
  // The last history_s; while less has been sampled, what there is (at least a minute).
  const spanS = Math.min(state.historyS, Math.max(MIN_SPAN_S, n ? t1 - line.t[0] : 0));
  const t0 = t1 - spanS;
  let top = 0;
  for (const s of spec.series) for (const v of line[s]) if (v !== null && v > top) top = v;
  const yMax = niceMax(top);
  const paths = svg.querySelectorAll("path");
  spec.series.forEach((s, i) => paths[i].setAttribute("d", path(line.t, line[s], t0, spanS, yMax)));
  figure.querySelector(".axis span").textContent = span(spanS);
  svg.dataset.points = String(n);
  svg.setAttribute("aria-label", `${figure.querySelector("figcaption").firstChild.textContent}: ${n} samples`);
  figure.querySelector(".max").textContent = `max ${spec.format(yMax)}`;
  const latest = figure.querySelectorAll(".legend span");
  spec.series.forEach((s, i) => {
    const v = n ? line[s][n - 1] : null;
    latest[i].textContent = spec.format(v);
  });
  figure.dataset.peak = String(top); // the largest value drawn (tests read these two)
  figure.dataset.last = n ? JSON.stringify(spec.series.map((s) => line[s][n - 1])) : "";
}

// -- the server panels ----------------------------------------------------------------------------
function panelElement(index, name) {
  const holder = document.getElementById("servers");
  let article = holder.children[index];
  if (!article) {
    article = document.getElementById("server-template").content.firstElementChild.cloneNode(true);
    for (const figure of article.querySelectorAll(".chart")) buildChart(figure, CHARTS[figure.dataset.chart]);
    holder.append(article);
  }
  article.dataset.server = name;
  article.querySelector(".name").textContent = name;
  return article;
}

function setText(root, selector, text) {
  const node = root.querySelector(selector);
  if (node.textContent !== text) node.textContent = text;
}

function drawPanel(index, panel) {
  const article = panelElement(index, panel.server);
  const reach = article.querySelector(".reach");
  article.classList.toggle("unreachable", !panel.reachable);
  if (!panel.reachable) {
    reach.dataset.state = "unreachable";
    reach.textContent = "unreachable";
    return;
  }
  const s = panel.summary;
  const f = panel.fleet;
  const healthy = s.healthy && !s.closing;
  reach.dataset.state = healthy ? "ok" : "degraded";
  reach.textContent = s.closing ? "stopping" : healthy ? "ok" : "degraded";
  setText(article, "[data-stat=queued]", count(s.queued));
  setText(article, "[data-stat=running]", count(s.running));
  setText(article, "[data-stat=completed]", count(s.completed));
  setText(article, "[data-stat=failed]", count(s.failed));
  setText(article, "[data-stat=throughput]", rate(s.throughput));
  setText(article, "[data-stat=p95]", seconds(s.p95));
  setText(article, "[data-stat=workers]", `${count(s.workers)} (${count(s.busy)} busy)`);
  setText(article, "[data-stat=oldest]", seconds(s.oldest_queued_age_s));
  setText(article, "[data-fleet=launcher]", f.launcher);
  let guard = f.guard || "–";
  if (f.retry_in_s !== null) guard += `, retry in ${seconds(f.retry_in_s)}`;
  if (f.probe_in_s !== null) guard += `, probe in ${seconds(f.probe_in_s)}`;
  if (f.launch_failures) guard += `, ${f.launch_failures} failed launches`;
  if (f.boot_failures) guard += `, ${f.boot_failures} failed boots`;
  setText(article, "[data-fleet=guard]", guard);
  setText(
    article,
    "[data-fleet=launches]",
    f.max_launches_per_minute === null ? "–" : `${f.launches_last_minute} of ${f.max_launches_per_minute}`,
  );
  setText(article, "[data-fleet=fleet]", `${f.live} / ${f.starting} / ${f.allowed} (max ${f.max})`);
  setText(article, "[data-fleet=loans]", `${f.borrowed} / ${f.lent}`);
  const line = merge(panel.server, panel.timeline);
  for (const figure of article.querySelectorAll(".chart")) drawChart(figure, CHARTS[figure.dataset.chart], line);
}

// -- the tables -----------------------------------------------------------------------------------
function fillTable(id, rows, emptyId) {
  // Each cell is labelled with its column, for the stacked layout on narrow screens.
  const labels = [...document.querySelectorAll(`#${id} thead th`)].map((th) => th.textContent);
  for (const row of rows) [...row.children].forEach((td, i) => (td.dataset.label = labels[i]));
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren(...rows);
  document.getElementById(emptyId).hidden = rows.length > 0;
}

function drawWorkers(panels) {
  const rows = [];
  for (const p of panels) {
    if (!p.reachable) continue;
    for (const w of p.workers) {
      const tr = el("tr");
      tr.dataset.worker = w.id;
      tr.dataset.server = p.server;
      const badge = el("span", w.state, "badge");
      badge.dataset.state = w.state;
      const stateCell = el("td");
      stateCell.append(badge);
      tr.append(
        el("td", w.id, "id"),
        el("td", p.server),
        stateCell,
        el("td", hashRate(w.rate), "num"),
        el("td", count(w.jobs_done), "num jobs-done"),
        el("td", age(w.age_s), "num"),
      );
      rows.push(tr);
    }
  }
  fillTable("workers", rows, "workers-empty");
}

function drawFailures(panels) {
  const all = [];
  for (const p of panels) if (p.reachable) for (const f of p.failures) all.push({ ...f, server: p.server });
  all.sort((a, b) => b.at - a.at);
  const rows = all.slice(0, 20).map((f) => {
    const tr = el("tr");
    tr.dataset.workId = f.work_id;
    tr.append(
      el("td", clock(f.at)),
      el("td", f.server),
      el("td", f.work_id, "id"),
      el("td", f.worker || "–", "id"),
      el("td", count(f.attempts), "num"),
      el("td", f.error, "reason"),
    );
    return tr;
  });
  fillTable("failures", rows, "failures-empty");
}

// -- polling --------------------------------------------------------------------------------------
function setConnection(kind, text) {
  const badge = document.getElementById("connection");
  badge.dataset.state = kind;
  badge.textContent = text;
}

function render(data) {
  state.historyS = data.history_s;
  // A peer unreachable now keeps the panel it had (greyed) until it answers again.
  data.servers.forEach((panel, i) => {
    if (panel.reachable) state.panels[i] = panel;
    else state.panels[i] = { ...(state.panels[i] || {}), server: panel.server, reachable: false };
    drawPanel(i, panel);
  });
  drawWorkers(state.panels);
  drawFailures(state.panels);
  setConnection("ok", `live from ${data.server}`);
  document.getElementById("updated").textContent = `updated ${clock(data.at)}`;
  state.updates += 1;
  document.body.dataset.updates = String(state.updates);
}

async function poll() {
  const query = new URLSearchParams();
  const own = cursor(state.panels[0] && state.panels[0].server);
  const peer = cursor(state.panels[1] && state.panels[1].server);
  if (own) query.set("since", own);
  if (peer) query.set("peer_since", peer);
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), TIMEOUT_MS);
  try {
    const answer = await fetch(`/dashboard/data?${query}`, { cache: "no-store", signal: controller.signal });
    if (!answer.ok) throw new Error(`HTTP ${answer.status}`);
    render(await answer.json());
  } catch (error) {
    setConnection("error", "this server does not answer");
  } finally {
    clearTimeout(timer);
    setTimeout(poll, POLL_MS);
  }
}

poll();
