// The zdk job dashboard: polls the job server's REST API with the user's token.
// Text from jobs (names, errors) is only ever set through textContent.
"use strict";

const state = { token: sessionStorage.getItem("zdk-token") || "", selected: null, plot: null, plotKey: "",
                epochPlot: null, epochPlotKey: "" };
const $ = (id) => document.getElementById(id);

async function api(path) {
  const response = await fetch(path, { headers: { Authorization: "Bearer " + state.token } });
  if (response.status === 401) throw new Error("the token was refused");
  if (!response.ok) throw new Error((await response.json()).error || response.statusText);
  return response.json();
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.appendChild(td);
  return td;
}

function number(value, digits) {
  return value === null || value === undefined ? "-" : Number(value).toFixed(digits);
}

async function refreshList() {
  const { jobs } = await api("/api/jobs");
  const body = $("jobs").querySelector("tbody");
  body.replaceChildren();
  for (const job of jobs.slice().reverse()) {
    const row = document.createElement("tr");
    row.dataset.id = job.id;
    row.className = job.id === state.selected ? "selected" : "";
    cell(row, job.id);
    cell(row, job.name);
    cell(row, job.owner);
    cell(row, job.spec.trainer.class);
    const badge = document.createElement("span");
    badge.className = "state " + job.state;
    badge.textContent = job.state;
    cell(row, "").appendChild(badge);
    const p = job.progress || {};
    cell(row, p.steps === undefined ? "-" : p.total ? `${p.steps}/${p.total}` : String(p.steps));
    cell(row, new Date(job.created * 1000).toLocaleTimeString());
    row.addEventListener("click", () => { state.selected = job.id; refresh(); });
    body.appendChild(row);
  }
  $("list").hidden = false;
  if (!state.selected && jobs.length) state.selected = jobs[jobs.length - 1].id;
}

function lossData(series) {
  // uPlot wants one x array: the union of every worker's steps, gaps where a worker has none.
  const workers = Object.keys(series).sort((a, b) => a - b);
  const steps = [...new Set(workers.flatMap((w) => series[w].map((p) => p[1])))].sort((a, b) => a - b);
  const index = new Map(steps.map((s, i) => [s, i]));
  const columns = workers.map((w) => {
    const column = new Array(steps.length).fill(null);
    for (const [, step, loss] of series[w]) column[index.get(step)] = loss;
    return column;
  });
  return { workers, data: [steps, ...columns] };
}

const COLORS = ["#1565c0", "#c62828", "#2e7d32", "#ef6c00", "#6a1b9a", "#00838f", "#4e342e", "#ad1457"];
// The per-epoch figures plotted, when the job reports them.
const EPOCH_SERIES = [["loss", "training loss", "#1565c0"], ["val_loss", "validation loss", "#ef6c00"]];

function plotWidth(beside) {
  return beside ? Math.min(520, (window.innerWidth - 100) / 2) : Math.min(900, window.innerWidth - 60);
}

function emptyPlot(target, text) {
  target.replaceChildren();
  const p = document.createElement("p");
  p.className = "empty";
  p.textContent = text;
  target.appendChild(p);
}

// Draws the uPlot kept in state[slot] (its key in state[slot + "Key"]), or updates its data when
// the same lines are shown at the same width; an empty text when there is no line.
function showPlot(slot, target, emptyText, xLabel, lines, data, width) {
  if (!lines.length) {
    if (state[slot]) { state[slot].destroy(); state[slot] = null; }
    emptyPlot(target, emptyText);
    return;
  }
  const key = state.selected + ":" + lines.map((l) => l.label).join(",") + ":" + width;
  if (state[slot] && state[slot + "Key"] === key) { state[slot].setData(data); return; }
  if (state[slot]) state[slot].destroy();
  target.replaceChildren();
  const options = {
    width, height: 280,
    scales: { x: { time: false } },
    axes: [{ label: xLabel }, { label: "loss" }],
    series: [{ label: xLabel }, ...lines.map((line) => ({ spanGaps: true, ...line }))],
  };
  state[slot] = new uPlot(options, data, target);
  state[slot + "Key"] = key;
}

function drawPlot(series, beside) {
  const { workers, data } = lossData(series || {});
  const lines = workers.map((w, k) => ({ label: "worker " + w, stroke: COLORS[k % COLORS.length], width: 1.5 }));
  showPlot("plot", $("loss-plot"), "no loss reported yet", "step", lines, data, plotWidth(beside));
}

function drawEpochPlot(epochs) {
  // epochs: [{epoch, loss, val_loss, ...}] from the progress snapshots, then the final epoch history.
  const shown = EPOCH_SERIES.filter(([name]) => epochs.some((e) => e[name] !== undefined && e[name] !== null));
  const data = [epochs.map((e) => e.epoch + 1), ...shown.map(([name]) => epochs.map((e) => e[name] ?? null))];
  const lines = shown.map(([, label, color]) => ({ label, stroke: color, width: 2, points: { show: true } }));
  showPlot("epochPlot", $("epoch-plot"), "no epoch has ended yet", "epoch", lines, data, plotWidth(true));
}

async function refreshDetail() {
  if (!state.selected) { $("detail").hidden = true; return; }
  const job = await api("/api/jobs/" + state.selected);
  const p = job.progress || {};
  $("detail").hidden = false;
  $("detail-name").textContent = job.name;
  $("detail-id").textContent = job.id;
  $("state").textContent = job.state;
  $("state").className = "state " + job.state;
  $("steps").textContent = p.steps === undefined ? "-" : p.total ? `${p.steps} / ${p.total}` : String(p.steps);
  $("epoch").textContent = p.epoch === undefined ? "-" : String(p.epoch + 1);
  $("rate").textContent = number(p.samples_per_s, 0);
  $("loss").textContent = number(p.loss, 4);
  $("elapsed").textContent = p.elapsed === undefined ? "-" : number(p.elapsed, 1) + " s";
  $("val-loss").textContent = number(p.val_loss, 4);
  $("error").hidden = !job.error || job.state === "finished";
  $("error").textContent = job.error || "";
  const shards = $("shards").querySelector("tbody");
  shards.replaceChildren();
  for (const s of p.shards || []) {
    const row = document.createElement("tr");
    for (const v of [s.shard, s.version, number(s.updates_per_s, 1), number(s.staleness, 2), s.connected, s.errors]) {
      cell(row, String(v));
    }
    shards.appendChild(row);
  }
  $("downloads").replaceChildren();
  if (job.has_model) $("downloads").textContent = "model and history: zdk job fetch " + job.id;
  const spec = job.spec || {};
  const watched = (spec.validation !== undefined && spec.validation !== null) || (spec.callbacks || []).length > 0;
  $("epochs").hidden = !watched;
  drawPlot(p.series, watched);
  if (watched) drawEpochPlot(p.epoch_logs || []);
}

async function refresh() {
  try {
    await refreshList();
    await refreshDetail();
    $("message").textContent = "";
  } catch (error) {
    $("message").textContent = error.message;
  }
}

async function signIn(event) {
  if (event) event.preventDefault();
  state.token = $("token").value.trim() || state.token;
  try {
    const me = await api("/api/whoami");
    sessionStorage.setItem("zdk-token", state.token);
    $("whoami").textContent = "signed in as " + me.user;
    await refresh();
  } catch (error) {
    $("message").textContent = error.message;
  }
}

$("login").addEventListener("submit", signIn);
if (state.token) signIn();
setInterval(() => { if ($("whoami").textContent) refresh(); }, 1000);
