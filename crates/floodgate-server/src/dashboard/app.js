// floodgate's dashboard: reads /v1/stats every second, /v1/top every 5 s and /v1/config on
// each new version. Keys are attacker-chosen text: every value is set with textContent or
// as an attribute, never parsed as HTML. The admin token, when one is needed, lives in this
// variable only (never in storage or the URL).
"use strict";

let token = null;
let version = null;
let policyNames = [];
const SVG = "http://www.w3.org/2000/svg";

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

async function api(path, options) {
  const headers = Object.assign({}, (options && options.headers) || {});
  if (token) headers["Authorization"] = "Bearer " + token;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) throw new Error("unauthorized");
  if (!response.ok) throw new Error(path + ": HTTP " + response.status);
  return response.json();
}

function showLogin(message) {
  document.getElementById("login").hidden = false;
  document.getElementById("data").hidden = true;
  document.getElementById("login-error").textContent = message || "";
  document.getElementById("status").textContent = "admin token needed";
}

function showData() {
  document.getElementById("login").hidden = true;
  document.getElementById("data").hidden = false;
}

function fmt(n) {
  if (n === null || n === undefined) return "–";
  if (typeof n !== "number") return String(n);
  if (n >= 1e6) return (n / 1e6).toFixed(1) + " M";
  if (n >= 1e4) return (n / 1e3).toFixed(1) + " k";
  return String(Math.round(n * 100) / 100);
}

function chart(allowed, denied) {
  const width = 300, height = 100;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 " + width + " " + height);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("class", "chart");
  svg.setAttribute("role", "img");
  const max = Math.max(1, ...allowed, ...denied);
  const points = (series) => {
    const n = series.length;
    return series.map((v, i) => {
      const x = n <= 1 ? width : (i / (n - 1)) * width;
      const y = height - 4 - (v / max) * (height - 8);
      return x.toFixed(1) + "," + y.toFixed(1);
    }).join(" ");
  };
  const axis = document.createElementNS(SVG, "line");
  axis.setAttribute("x1", "0"); axis.setAttribute("x2", String(width));
  axis.setAttribute("y1", String(height - 4)); axis.setAttribute("y2", String(height - 4));
  axis.setAttribute("stroke", "#e4e7ec");
  svg.appendChild(axis);
  for (const [series, color] of [[allowed, "#2e7d32"], [denied, "#c62828"]]) {
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", points(series));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", color);
    line.setAttribute("stroke-width", "2");
    line.setAttribute("vector-effect", "non-scaling-stroke");
    svg.appendChild(line);
  }
  const title = document.createElementNS(SVG, "title");
  title.textContent = "allowed (green) and denied (red) per second, last " + allowed.length + " s, peak " + max + "/s";
  svg.appendChild(title);
  return svg;
}

function policyCard(name) {
  const id = "policy-" + encodeURIComponent(name).replace(/[^A-Za-z0-9_-]/g, "_");
  let card = document.getElementById(id);
  if (card) return card;
  card = el("section", null, "card policy");
  card.id = id;
  card.dataset.policy = name;
  card.appendChild(el("h2", name));
  card.appendChild(el("div", "", "now"));
  const legend = el("div", null, "legend");
  legend.appendChild(el("span", "allowed", "allowed"));
  legend.appendChild(el("span", "denied", "denied"));
  card.appendChild(legend);
  card.appendChild(el("div", null, "chart-box"));
  card.appendChild(el("h3", "Most denied keys"));
  const table = el("table", null, "top");
  const head = el("tr");
  for (const h of ["key", "denied", "decisions", "±"]) head.appendChild(el("th", h));
  const thead = el("thead"); thead.appendChild(head);
  table.appendChild(thead);
  table.appendChild(el("tbody"));
  card.appendChild(table);
  document.getElementById("policies").appendChild(card);
  return card;
}

function renderStats(stats) {
  const uptime = stats.uptime_s;
  document.getElementById("status").textContent =
    "config v" + stats.version + " · up " + uptime + " s · reloads " + stats.reloads.applied + " ok, " + stats.reloads.failed + " failed";
  const store = document.getElementById("store");
  store.replaceChildren();
  const s = stats.store;
  const rows = [
    ["kind", s.kind],
    ["latency p50 ≤", s.latency_ms_p50_at_most === null ? "–" : fmt(s.latency_ms_p50_at_most) + " ms"],
    ["latency p99 ≤", s.latency_ms_p99_at_most === null ? "–" : fmt(s.latency_ms_p99_at_most) + " ms"],
    ["errors", s.errors],
    ["fallbacks (open / closed / local)", s.fallback_decisions.fail_open + " / " + s.fallback_decisions.fail_closed + " / " + s.fallback_decisions.local],
    ["deny-cache hits", s.deny_cache_hits],
  ];
  if (s.breaker !== null) rows.push(["circuit breaker", s.breaker]);
  if (s.permit_calls !== undefined) rows.push(["permit calls (operations)", s.permit_calls + " (" + s.permit_operations + ")"]);
  if (s.permits_reclaimed) rows.push(["permits reclaimed at lease end", s.permits_reclaimed]);
  if (s.lease_tokens) rows.push(["lease tokens (leased / spent / expired)", s.lease_tokens.leased + " / " + s.lease_tokens.spent + " / " + s.lease_tokens.expired]);
  if (stats.reloads.last_failed) rows.push(["last failed reload", stats.reloads.last_failed.at + ": " + stats.reloads.last_failed.error]);
  for (const [k, v] of rows) { store.appendChild(el("dt", k)); store.appendChild(el("dd", v)); }
  for (const p of stats.policies) {
    const card = policyCard(p.name);
    const allowed = p.allowed_per_second, denied = p.denied_per_second;
    const last = (a) => a.length ? a[a.length - 1] : 0;
    card.querySelector(".now").textContent =
      "now: " + fmt(last(allowed)) + " allowed/s, " + fmt(last(denied)) + " denied/s";
    card.querySelector(".chart-box").replaceChildren(chart(allowed, denied));
  }
  renderConcurrency(stats.concurrency || []);
  markOverflow();
}

function renderConcurrency(limits) {
  document.getElementById("concurrency-card").hidden = limits.length === 0;
  const body = document.querySelector("#concurrency-table tbody");
  body.replaceChildren();
  for (const c of limits) {
    const tr = el("tr");
    tr.appendChild(el("td", c.name));
    tr.appendChild(el("td", c.in_flight + " of " + c.max, "num"));
    for (const k of ["acquired", "denied", "expired", "store_error"]) tr.appendChild(el("td", fmt(c[k]), "num"));
    body.appendChild(tr);
  }
}

// A self-check for the layout (and its test): whether the page scrolls sideways.
function markOverflow() {
  const root = document.documentElement;
  root.dataset.horizontalOverflow = String(root.scrollWidth > root.clientWidth);
}

async function refreshTop() {
  for (const card of document.querySelectorAll("section.policy")) {
    const name = card.dataset.policy;
    const rows = await api("/v1/top?policy=" + encodeURIComponent(name) + "&by=denied&n=10");
    const body = card.querySelector("table.top tbody");
    body.replaceChildren();
    const denied = rows.filter((r) => r.denied > 0);
    if (!denied.length) {
      const tr = el("tr"); const td = el("td", "no denials yet", "muted"); td.colSpan = 4;
      tr.appendChild(td); body.appendChild(tr);
    }
    for (const r of denied) {
      const tr = el("tr");
      tr.appendChild(el("td", r.key, "key"));
      tr.appendChild(el("td", fmt(r.denied), "num"));
      tr.appendChild(el("td", fmt(r.decisions), "num"));
      tr.appendChild(el("td", fmt(r.error), "num"));
      body.appendChild(tr);
    }
  }
  markOverflow();
}

function renderConfig(config) {
  const body = document.querySelector("#config-table tbody");
  body.replaceChildren();
  const row = (name, limits, mode) => {
    const tr = el("tr");
    tr.appendChild(el("td", name)); tr.appendChild(el("td", limits)); tr.appendChild(el("td", mode));
    body.appendChild(tr);
  };
  const limitText = (limits) => limits.map((l) => l.limit).join("; ");
  for (const p of config.policies) row(p.name, limitText(p.limits), "on_error " + p.on_error + (p.shadow ? ", shadow" : ""));
  for (const c of config.concurrency || []) row(c.name, "at most " + c.max + " in flight, lease " + c.lease_ms + " ms", "on_error " + c.on_error);
  for (const g of config.login) row("login " + g.name, "ip " + limitText(g.per_ip) + "; user " + limitText(g.per_user), "on_error " + g.on_error);
  for (const d of config.envoy.domains) {
    for (const r of d.rules) {
      const modes = [r.action];
      if (r.shadow_mode) modes.push("shadow");
      if (r.quota_mode) modes.push("quota");
      if (r.charge) modes.push("charge");
      row(r.key, limitText(r.limits) || (r.requests_per_unit + "/" + (r.unit || "–")), modes.join(", "));
    }
  }
  policyNames = config.policies.map((p) => p.name);
  const select = document.getElementById("try-policy");
  select.replaceChildren(...policyNames.map((n) => { const o = el("option", n); o.value = n; return o; }));
}

async function tick() {
  try {
    const stats = await api("/v1/stats");
    showData();
    renderStats(stats);
    if (stats.version !== version) {
      renderConfig(await api("/v1/config"));
      version = stats.version;
    }
  } catch (e) {
    if (e.message === "unauthorized") { showLogin(token ? "That token was refused." : ""); token = null; return; }
    document.getElementById("status").textContent = "cannot reach the server: " + e.message;
  }
}

let topRunning = false;
async function topTick() {
  if (topRunning || document.getElementById("data").hidden) return;
  topRunning = true;
  try { await refreshTop(); } catch (e) { /* shown by tick */ } finally { topRunning = false; }
}

function start() {
  document.getElementById("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = document.getElementById("token");
    token = input.value;
    input.value = "";
    tick().then(topTick);
  });
  document.getElementById("try-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const out = document.getElementById("try-result");
    const policy = document.getElementById("try-policy").value;
    const key = document.getElementById("try-key").value;
    try {
      const response = await fetch("/v1/peek", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ policy, key }) });
      const body = await response.json();
      out.textContent = response.ok
        ? (body.allowed ? "would be allowed" : "would be denied") + " · " + body.remaining + " of " + body.limit + " left" + (body.allowed ? "" : " · retry in " + body.retry_after_ms + " ms")
        : (body.detail || ("HTTP " + response.status));
    } catch (e) { out.textContent = "peek failed: " + e.message; }
  });
  tick().then(topTick);
  setInterval(tick, 1000);
  setInterval(topTick, 5000);
}

start();
