// adbandit console: a static page over the read API (no library, no CDN).
//
// Reads GET /v1/placements, /v1/placements/{p}/history?segment=&since=, /v1/placements/{p}/experiment
// (and, for a waterfall or auction placement, /v1/placements/{p}/allocation?segment= for its plans)
// and draws SVG line charts. When the service has a read key, the page asks for it once, keeps it in
// sessionStorage (this tab only) and sends it as "Authorization: Bearer <key>".
//
// Every chart lists the points it draws in a visually hidden table (<table class="points">, one
// <tr data-series data-t data-v> per point): screen readers and the browser test read the same data.
"use strict";

const KEY_STORAGE = "adbandit.readKey";
const ROOT = location.pathname.replace(/\/console\/?$/, "");
const COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563",
  "#65a30d", "#9333ea"];
const SVG_NS = "http://www.w3.org/2000/svg";
const W = 560, H = 220, M = { top: 10, right: 14, bottom: 24, left: 48 };

// serverOffset: the server's clock minus this browser's (seconds), from the last reply.
const state = { placement: null, segment: "*", networks: [], timer: null, everyS: 30, loading: false, again: false,
  serverOffset: 0 };
const $ = (id) => document.getElementById(id);

class Unauthorized extends Error {}

async function api(path) {
  const headers = { Accept: "application/json" };
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (key) headers.Authorization = `Bearer ${key}`;
  const response = await fetch(ROOT + path, { headers, cache: "no-store" });
  if (response.status === 401) throw new Unauthorized((await response.json()).detail);
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = JSON.stringify((await response.json()).detail); } catch (e) { /* not JSON */ }
    throw new Error(`${response.status} ${path}: ${detail}`);
  }
  return response.json();
}

// ------------------------------------------------------------------ formatting
const pct = (x, digits = 1) => (x == null ? "–" : `${(100 * x).toFixed(digits)}%`);
const signedPct = (x) => (x == null ? "–" : `${x >= 0 ? "+" : ""}${(100 * x).toFixed(2)}%`);
const cpm = (x) => (x == null ? "–" : x.toFixed(3));
const pval = (p) => (p == null ? "–" : p < 1e-4 ? "<0.0001" : p.toFixed(4));
const clock = (t) => new Date(t * 1000).toLocaleTimeString([], { hour12: false });
const when = (t) => (t == null ? "never" : new Date(t * 1000).toLocaleString([], { hour12: false }));
function ago(seconds) {
  if (seconds == null) return "";
  if (seconds < 90) return `${Math.round(seconds)} s ago`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
  return `${(seconds / 3600).toFixed(1)} h ago`;
}

function el(tag, attrs = {}, ...children) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG_NS, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) if (v != null) node.setAttribute(k, v);
  for (const child of children) node.append(child);
  return node;
}

// ------------------------------------------------------------------ charts
function niceTicks(lo, hi, count = 4) {
  if (!(hi > lo)) { hi = lo + 1; }
  const raw = (hi - lo) / count;
  const step = [1, 2, 2.5, 5, 10].map((m) => m * 10 ** Math.floor(Math.log10(raw))).find((s) => s >= raw);
  const ticks = [];
  const top = Math.ceil(hi / step - 1e-9) * step;
  for (let v = Math.floor(lo / step + 1e-9) * step; v <= top + step * 1e-9; v += step) ticks.push(+v.toPrecision(12));
  return { ticks, lo: Math.min(lo, ticks[0]), hi: Math.max(hi, ticks[ticks.length - 1]) };
}

// series: [{name, color, points: [[t, v|null, lo?, hi?], ...]}]; v null breaks the line (an empty window);
// lo/hi (both given) draw a band around the line (a confidence interval) and go into the table as data-lo/data-hi.
// marks: times of change alarms, drawn as dashed vertical lines; zero: a reference line at 0.
function drawChart(figure, series, { yMin = null, yMax = null, format = (v) => v.toString(), marks = [],
  zero = false } = {}) {
  for (const old of figure.querySelectorAll("svg, .legend, table.points")) old.remove();
  const svg = el("svg:svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": figure.dataset.chart });
  const table = el("table", { class: "points", "data-chart": figure.dataset.chart });
  table.append(el("tr", {}, el("th", {}, "series"), el("th", {}, "t"), el("th", {}, "value")));
  const values = series.flatMap((s) => s.points.filter((p) => p[1] != null));
  const legend = el("div", { class: "legend" });
  figure.append(svg, legend, table);
  if (!values.length) {
    svg.append(el("svg:text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, "no data yet"));
    return;
  }
  const ts = series.flatMap((s) => s.points.map((p) => p[0]));
  let t0 = Math.min(...ts), t1 = Math.max(...ts);
  if (t1 === t0) { t0 -= 30; t1 += 30; }
  const vs = values.flatMap((p) => [p[1], p[2], p[3]].filter((v) => v != null));
  if (zero) vs.push(0);
  const y = niceTicks(yMin ?? Math.min(...vs), yMax ?? Math.max(...vs));
  const px = (t) => M.left + ((t - t0) / (t1 - t0)) * (W - M.left - M.right);
  const py = (v) => H - M.bottom - ((v - y.lo) / (y.hi - y.lo || 1)) * (H - M.top - M.bottom);
  const axis = el("svg:g", { class: "axis" });
  for (const v of y.ticks) {
    axis.append(el("svg:line", { x1: M.left, x2: W - M.right, y1: py(v), y2: py(v), class: "grid" }));
    axis.append(el("svg:text", { x: M.left - 6, y: py(v) + 4, "text-anchor": "end" }, format(v)));
  }
  for (let i = 0; i <= 4; i++) {
    const t = t0 + ((t1 - t0) * i) / 4;
    const anchor = i === 0 ? "start" : i === 4 ? "end" : "middle";
    axis.append(el("svg:text", { x: px(t), y: H - 6, "text-anchor": anchor }, clock(t)));
  }
  if (zero) axis.append(el("svg:line", { x1: M.left, x2: W - M.right, y1: py(0), y2: py(0), class: "zero" }));
  svg.append(axis);
  for (const t of marks.filter((m) => m >= t0 && m <= t1)) {
    svg.append(el("svg:line", { x1: px(t), x2: px(t), y1: M.top, y2: H - M.bottom, class: "alarm", "data-t": t },
      el("svg:title", {}, `change alarm ${clock(t)}`)));
  }
  for (const s of series) {
    const g = el("svg:g", { "data-series": s.name });
    // The band (e.g. a 95% CI): upper edge forward, lower edge back, one polygon per unbroken run.
    let band = [];
    const flushBand = () => {
      if (band.length > 1) {
        const upper = band.map(([t, , hi]) => `${px(t).toFixed(1)},${py(hi).toFixed(1)}`);
        const lower = band.slice().reverse().map(([t, lo]) => `${px(t).toFixed(1)},${py(lo).toFixed(1)}`);
        g.append(el("svg:polygon", { points: [...upper, ...lower].join(" "), fill: s.color, "fill-opacity": 0.15,
          stroke: "none", class: "band" }));
      }
      band = [];
    };
    for (const [t, v, lo, hi] of s.points) {
      if (v == null || lo == null || hi == null) { flushBand(); continue; }
      band.push([t, lo, hi]);
    }
    flushBand();
    let run = [];
    const flush = () => {
      if (run.length > 1) {
        g.append(el("svg:polyline", { points: run.join(" "), fill: "none", stroke: s.color, "stroke-width": 2,
          "stroke-linejoin": "round" }));
      }
      run = [];
    };
    for (const [t, v, lo, hi] of s.points) {
      if (v == null) { flush(); continue; }
      run.push(`${px(t).toFixed(1)},${py(v).toFixed(1)}`);
      table.append(el("tr", { "data-series": s.name, "data-t": t, "data-v": v, "data-lo": lo, "data-hi": hi },
        el("td", {}, s.name), el("td", {}, clock(t)),
        el("td", {}, lo == null || hi == null ? format(v) : `${format(v)} (${format(lo)} … ${format(hi)})`)));
    }
    flush();
    const shown = s.points.filter((p) => p[1] != null);
    if (shown.length <= 240) {
      for (const [t, v] of shown) {
        g.append(el("svg:circle", { cx: px(t).toFixed(1), cy: py(v).toFixed(1), r: shown.length > 60 ? 1.6 : 2.6,
          fill: s.color, "data-t": t, "data-v": v }));
      }
    }
    svg.append(g);
    const swatch = el("i");
    swatch.style.background = s.color;
    legend.append(el("span", {}, swatch, s.name));
  }
}

// ------------------------------------------------------------------ panels
function colorOf(network) {
  const i = state.networks.indexOf(network);
  return COLORS[(i < 0 ? state.networks.length : i) % COLORS.length];
}

function drawHistory(history) {
  const points = history.points;
  const perNetwork = (field) => state.networks.map((name) => ({
    name, color: colorOf(name), points: points.map((p) => [p.t, p.networks[name] ? p.networks[name][field] : null]),
  }));
  const chart = (name) => document.querySelector(`figure[data-chart="${name}"]`);
  // Alarms of this segment (all of them for the whole placement), at the point that took them.
  const marks = history.alarms.filter((a) => history.segment === "*" || a.segment === history.segment).map((a) => a.t);
  drawChart(chart("weights"), perNetwork("weight"), { yMin: 0, yMax: 1, format: (v) => pct(v, 0), marks });
  drawChart(chart("floors"), perNetwork("floor_cpm"), { yMin: 0, format: (v) => v.toFixed(2), marks });
  drawChart(chart("revenue"), [{ name: "revenue/request", color: COLORS[0],
    points: points.map((p) => [p.t, p.revenue_per_request]) }], { yMin: 0, format: (v) => v.toFixed(2), marks });
  drawChart(chart("fill"), [{ name: "fill rate", color: COLORS[2], points: points.map((p) => [p.t, p.fill_rate]) }],
    { yMin: 0, yMax: 1, format: (v) => pct(v, 0), marks });
  for (const figure of document.querySelectorAll("figure.chart")) {
    figure.dataset.segment = history.segment;
    figure.dataset.placement = history.placement;
  }
}

function drawHealth(history) {
  const h = history.health;
  const lastEvent = history.last_event_ts;
  const items = [
    ["log lag (events)", h.log_lag_events, h.log_lag_events > 10000],
    ["accepted", h.events_accepted_total, false],
    ["rejected", h.events_rejected_total, h.events_rejected_total > 0],
    ["duplicates", h.events_duplicate_total, false],
    ["last event time", lastEvent == null ? "none" : `${clock(lastEvent)} (${ago(h.now - lastEvent)})`,
      lastEvent == null || h.now - lastEvent > 600],
    ["last accepted", h.last_accepted_at == null ? "not since start" : ago(h.now - h.last_accepted_at), false],
    ["history every", history.every_s == null ? "off" : `${history.every_s} s`, history.every_s == null],
  ];
  const dl = $("health");
  dl.replaceChildren(...items.map(([label, value, bad]) => el("div", { "data-health": label },
    el("dt", {}, label), el("dd", { class: bad ? "bad" : null }, String(value)))));
}

function drawAlarms(history) {
  const rows = history.alarms.slice(-50).reverse().map((a) => el("tr", { "data-network": a.network, "data-segment": a.segment, "data-ts": a.ts },
    el("td", {}, when(a.ts)), el("td", {}, a.segment), el("td", {}, a.network),
    el("td", { class: a.relative < 0 ? "loss" : "win" }, signedPct(a.relative))));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 4 }, "no change detected in this range")));
  $("alarms").tBodies[0].replaceChildren(...rows);
}

// The live experiment over time: each variant's lift against the champion with its 95% CI as a band,
// from the placement's own history (points of an experiment carry its report of that time).
function drawLift(history, report, view = history) {
  const variants = Object.keys(report.variants).filter((name) => name !== report.champion);
  for (const p of history.points) {
    for (const name of Object.keys(p.experiment || {})) if (!variants.includes(name)) variants.push(name);
  }
  const series = variants.map((name, i) => ({
    name, color: COLORS[(i + 1) % COLORS.length],
    points: history.points.filter((p) => p.experiment && p.experiment[name]).map((p) => {
      const x = p.experiment[name];
      return [p.t, x.lift, x.ci_low, x.ci_high];
    }),
  }));
  const figure = document.querySelector('figure[data-chart="lift"]');
  const liftPct = (v) => (Math.abs(v) < 1e-12 ? "0%" : `${v > 0 ? "+" : ""}${(100 * v).toFixed(Math.abs(v) < 0.1 ? 1 : 0)}%`);
  drawChart(figure, series, { format: liftPct, zero: true });
  figure.dataset.placement = view.placement;
  figure.dataset.segment = view.segment; // the segment picked (the experiment is the whole placement's)
}

function drawExperiment(report) {
  const rows = Object.entries(report.variants).map(([name, v]) => {
    const champion = name === report.champion;
    const ci = v.ci_low == null ? "–" : `${signedPct(v.ci_low)} … ${signedPct(v.ci_high)}`;
    const decided = v.p_value_always_valid != null && v.p_value_always_valid < 0.05;
    return el("tr", { "data-variant": name },
      el("td", {}, champion && name !== "champion" ? `${name} (champion)` : name), el("td", {}, v.policy), el("td", {}, `${v.traffic}%`),
      el("td", {}, String(v.requests)), el("td", {}, cpm(v.revenue_per_request)),
      el("td", { class: v.lift == null ? null : decided ? (v.lift > 0 ? "win" : "loss") : null }, signedPct(v.lift)),
      el("td", {}, ci), el("td", {}, pval(v.p_value)), el("td", { "data-field": "p_value_always_valid" },
        pval(v.p_value_always_valid)));
  });
  $("experiment").tBodies[0].replaceChildren(...rows);
}

// A waterfall's or an auction's most probable plans now (GET allocation): each its probability and
// its offers in calling order; hidden for a single-network placement.
function drawPlans(allocation) {
  const panel = $("plans-panel");
  panel.hidden = allocation == null;
  if (allocation == null) return;
  const waterfall = allocation.mode === "waterfall";
  $("plans-title").textContent = waterfall ? "Waterfall plans (tiers in calling order)" : "Auction plans (networks called at once)";
  const rows = allocation.plans.map((plan) => el("tr", { "data-probability": plan.probability },
    el("td", {}, pct(plan.probability)),
    el("td", { class: "offers" }, ...plan.offers.flatMap((o, i) => [
      ...(i ? [waterfall ? " → " : " · "] : []),
      el("span", { "data-network": o.network, "data-floor": o.floor_cpm },
        `${o.network} ${o.floor_cpm.toFixed(2)}`),
    ]))));
  $("plans").tBodies[0].replaceChildren(...rows);
  const shown = allocation.plans.reduce((sum, plan) => sum + plan.probability, 0);
  $("plans-note").textContent = `${allocation.model_version} · segment ${allocation.segment} · the ${rows.length} most `
    + `probable plans, ${pct(shown)} of requests`;
  panel.dataset.placement = allocation.placement;
  panel.dataset.segment = state.segment;
}

// ------------------------------------------------------------------ pickers and refresh
function setOptions(select, values, selected, label = (v) => v) {
  const current = [...select.options].map((o) => o.value).join("\n");
  if (current !== values.join("\n")) {
    select.replaceChildren(...values.map((v) => el("option", { value: v }, label(v))));
  }
  select.value = values.includes(selected) ? selected : values[0];
}

function saveHash() {
  const params = new URLSearchParams({ placement: state.placement || "", segment: state.segment, range: $("range").value });
  history.replaceState(null, "", `#${params}`);
}

async function refresh() {
  if (state.loading) { state.again = true; return; } // a picker changed mid-load: load again after this one
  state.loading = true;
  state.again = false;
  try {
    const placements = (await api("/v1/placements")).placements;
    if (!placements.length) { $("status").textContent = "no placement yet"; return; }
    const ids = placements.map((p) => p.placement);
    if (!ids.includes(state.placement)) state.placement = ids[0];
    setOptions($("placement"), ids, state.placement);
    const config = placements.find((p) => p.placement === state.placement);
    state.networks = config.networks.map((n) => n.id);
    const planned = (config.mode || "single") !== "single";
    const p = encodeURIComponent(state.placement);
    const range = Number($("range").value);
    const sinceArg = range ? `&since=${(Date.now() / 1000 + state.serverOffset - range).toFixed(0)}` : "";
    const [history, report, whole, allocation] = await Promise.all([
      api(`/v1/placements/${p}/history?segment=${encodeURIComponent(state.segment)}${sinceArg}`),
      api(`/v1/placements/${p}/experiment`),
      // The experiment's history is the placement's (segment *): fetched apart when a segment is shown.
      state.segment === "*" ? null : api(`/v1/placements/${p}/history?segment=*${sinceArg}`),
      planned ? api(`/v1/placements/${p}/allocation?segment=${encodeURIComponent(state.segment)}`) : null,
    ]);
    if (history.placement !== state.placement || history.segment !== state.segment) return; // switched meanwhile
    setOptions($("segment"), history.segments.includes(state.segment) ? history.segments
      : [...history.segments, state.segment], state.segment, (s) => (s === "*" ? "* (all traffic)" : s));
    for (const name of history.networks) if (!state.networks.includes(name)) state.networks.push(name);
    drawHistory(history);
    drawHealth(history);
    drawAlarms(history);
    drawExperiment(report);
    drawPlans(allocation);
    drawLift(whole || history, report, history);
    state.everyS = history.every_s || 30;
    state.serverOffset = history.health.now - Date.now() / 1000;
    const status = $("status");
    status.classList.remove("error");
    status.textContent = `${history.points.length} points · updated ${clock(Date.now() / 1000)}`;
    document.body.dataset.loaded = String(Date.now());
    $("main").hidden = false;
  } catch (err) {
    if (err instanceof Unauthorized) {
      askKey(err.message);
    } else {
      $("status").textContent = `error: ${err.message}`;
      $("status").classList.add("error");
    }
  } finally {
    state.loading = false;
    if (state.again) refresh();
    else schedule();
  }
}

function schedule() {
  clearTimeout(state.timer);
  if (!$("keyform").hidden) return; // waiting for a key
  state.timer = setTimeout(refresh, 1000 * Math.min(Math.max(state.everyS, 2), 30));
}

function askKey(reason) {
  clearTimeout(state.timer);
  const stored = sessionStorage.getItem(KEY_STORAGE);
  $("key-reason").textContent = stored ? `The key was refused: ${reason}` : `This service needs a read key: ${reason}`;
  $("keyform").hidden = false;
  $("main").hidden = true;
  $("status").textContent = "needs a key";
  $("key").focus();
}

function start() {
  const params = new URLSearchParams(location.hash.slice(1));
  state.placement = params.get("placement") || null;
  state.segment = params.get("segment") || "*";
  if (params.get("range")) $("range").value = params.get("range");
  $("change-key").hidden = !sessionStorage.getItem(KEY_STORAGE);
  $("placement").addEventListener("change", (e) => {
    state.placement = e.target.value;
    state.segment = "*";
    saveHash();
    refresh();
  });
  $("segment").addEventListener("change", (e) => { state.segment = e.target.value; saveHash(); refresh(); });
  $("range").addEventListener("change", () => { saveHash(); refresh(); });
  $("keyform").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY_STORAGE, $("key").value.trim());
    $("key").value = "";
    $("keyform").hidden = true;
    $("change-key").hidden = false;
    refresh();
  });
  $("change-key").addEventListener("click", () => { sessionStorage.removeItem(KEY_STORAGE); askKey("enter a new key"); });
  refresh();
}

document.addEventListener("DOMContentLoaded", start);
