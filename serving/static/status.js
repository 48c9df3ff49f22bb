// The status page: polls /tide/status every 2 s, keeps 10 minutes per model, draws live charts.
import { ApiError, apiFetch, errorFromResponse, mountKeyField } from "/static/api.js";
import { drawChart } from "/static/charts.js";
import { FIELDS, History, formatValue } from "/static/series.js";

const POLL_MS = 2000;
const WINDOW_S = 600;
const STATS = ["waiting", "engine_running", "tokens_per_s", "ttft_p50_ms", "kv_cache_usage", "held", "expected_start_s"];
// Each chart: [field, colour, dashed, legend word]; a one-line chart needs no legend.
const CHARTS = [
  { id: "replicas", title: "Replicas", lines: [["running", "#2563eb", false, "running"], ["desired", "#ea580c", true, "desired"]] },
  { id: "queue", title: "Queue depth", lines: [["waiting", "#dc2626", false, "waiting"], ["engine_running", "#16a34a", true, "in engine"]] },
  { id: "tokens", title: "Tokens/s", lines: [["tokens_per_s", "#7c3aed", false]], format: "tokens_per_s" },
  { id: "ttft", title: "TTFT p50", lines: [["ttft_p50_ms", "#0891b2", false]], format: "ttft_p50_ms" },
];
const MIN_SPAN_S = 60;  // until 10 minutes have been seen, the x axis spans what has (at least a minute)

const $ = (id) => document.getElementById(id);
const histories = new Map();   // model -> History
const cards = new Map();       // model -> card element
let timer = null;

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

function stat(field, label) {
  return el("div", {}, el("dt", { textContent: label }), el("dd", { textContent: "–", className: "f-" + field }));
}

function card(name) {
  const article = el("article", { className: "model" });
  article.dataset.model = name;
  const title = el("h2", {}, el("span", { textContent: name }), el("span", { className: "state" }));
  const stats = el("dl", { className: "stats" }, stat("replicas", "Replicas (run / want)"),
    ...STATS.map((f) => stat(f, FIELDS[f].label)));
  const charts = el("div", { className: "charts" }, ...CHARTS.map((c) => {
    const legend = el("span", {}, ...c.lines.filter((l) => l[3]).map(([, color, dash, word]) => {
      const key = el("span", { className: dash ? "key dashed" : "key", textContent: word });
      key.style.setProperty("--c", color);  // CSSOM, which the page's CSP allows (inline style attributes it does not)
      return key;
    }));
    const canvas = el("canvas", { className: "chart" });
    canvas.dataset.chart = c.id;
    canvas.dataset.points = "0";
    return el("figure", {}, el("figcaption", {}, el("b", { textContent: c.title }), legend), canvas);
  }));
  article.append(title, el("p", { className: "decision muted" }), stats, charts);
  $("models").append(article);
  return article;
}

function stateOf(s) {
  if (typeof s.state === "string" && s.state) return s.state;
  if (s.running > 0) return "ready";
  return s.replicas === 0 ? "scaled_to_zero" : "starting";
}

function show(name, status, sample) {
  const article = cards.get(name) ?? cards.set(name, card(name)).get(name);
  const state = stateOf(status);
  const badge = article.querySelector(".state");
  badge.textContent = state.replace(/_/g, " ");
  badge.dataset.state = state;
  article.querySelector(".f-replicas").textContent =
    `${formatValue("running", sample.running)} / ${formatValue("desired", sample.desired)}`;
  for (const f of STATS) article.querySelector(".f-" + f).textContent = formatValue(f, sample[f]);
  article.querySelector(".decision").textContent = describeDecision(status.last_decision, status.time);
}

/** The autoscaler's last decision in words, e.g. "Last decision 12 s ago: scale_up (demand 16 ...)". */
function describeDecision(decision, serverNow) {
  if (!decision || typeof decision.action !== "string") return "";
  const age = Number.isFinite(serverNow) && Number.isFinite(decision.time) ? Math.max(0, serverNow - decision.time) : null;
  const when = age === null ? "" : ` ${age < 90 ? Math.round(age) + " s" : Math.round(age / 60) + " min"} ago`;
  return `Last autoscaler decision${when}: ${decision.action}${decision.reason ? " (" + decision.reason + ")" : ""}`;
}

function redraw(now = Date.now() / 1000) {
  for (const [name, article] of cards) {
    const history = histories.get(name);
    const oldest = history.samples[0]?.t ?? now;
    const windowS = Math.min(WINDOW_S, Math.max(MIN_SPAN_S, now - oldest));
    for (const c of CHARTS) {
      const canvas = article.querySelector(`canvas[data-chart="${c.id}"]`);
      const lines = c.lines.map(([f, color, dash]) => ({ points: history.series(f), color, dash }));
      const format = c.format ? (v) => formatValue(c.format, v) : String;
      canvas.dataset.points = String(drawChart(canvas, lines, { now, windowS, format }));
    }
  }
}

async function poll() {
  try {
    const r = await apiFetch("/tide/status", { cache: "no-store" });
    if (!r.ok) throw await errorFromResponse(r);
    const data = await r.json();
    const now = Date.now() / 1000;
    const models = data.models || {};
    for (const [name, status] of Object.entries(models)) {
      if (!histories.has(name)) histories.set(name, new History(WINDOW_S));
      show(name, { ...status, time: data.time }, histories.get(name).add(now, status));
    }
    for (const name of [...cards.keys()]) {  // a model no longer served: drop its card and memory
      if (!(name in models)) { cards.get(name).remove(); cards.delete(name); histories.delete(name); }
    }
    redraw(now);
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    $("notice").hidden = true;
  } catch (e) {
    $("notice").textContent = e instanceof ApiError ? e.message : `Could not reach Tide: ${e.message}`;
    $("notice").hidden = false;
  } finally {
    timer = setTimeout(poll, POLL_MS);
  }
}

mountKeyField($("api-key"), () => { clearTimeout(timer); poll(); });
window.addEventListener("resize", () => redraw());
poll();
