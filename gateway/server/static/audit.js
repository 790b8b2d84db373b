// The audit page of idem-gateway: plain JavaScript, no build step, no dependency.
//
// Everything shown that came from agents or downstreams (keys, tools, arguments, results) is
// written with textContent or as SVG text nodes: never parsed as HTML. The bearer token lives in
// sessionStorage (this tab only) and travels in the Authorization header, never in a URL.
"use strict";

(() => {
  const TOKEN_KEY = "idem-gateway.audit.token";
  const OUTCOMES = [
    "executed", "replayed", "conflict", "in_progress", "unknown", "missing_key", "invalid",
    "expired", "store_unavailable", "downstream_unavailable", "resolved",
    "approved", "approval_declined", "approval_unavailable",
  ];
  const state = { me: null, principal: null, operator: false, range: "day", filters: {} };
  const $ = (id) => document.getElementById(id);

  // ---- DOM helpers: text only ------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const SVG_NS = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.firstChild.remove();
    return node;
  }

  function outcomeBadge(outcome) {
    const badge = el("span", { class: "badge", "data-outcome": outcome }, outcome);
    if (OUTCOMES.includes(outcome)) badge.classList.add(`outcome-${outcome}`);
    return badge;
  }

  const when = (iso) => (iso ? String(iso).replace("T", " ").replace(/\.\d+/, "").replace("Z", "") : "–");
  const json = (value) => JSON.stringify(value, null, 2);
  const money = (x) => (Number(x) || 0).toFixed(2);

  function say(text, kind) {
    const status = $("status");
    status.textContent = text || "";
    status.className = `status ${kind || ""}`;
  }

  // ---- the API ---------------------------------------------------------------------------------

  class Unauthorized extends Error {}

  async function api(path, { method = "GET", params = {}, body } = {}) {
    const url = new URL(path, window.location.origin);
    for (const [name, value] of Object.entries(params)) if (value) url.searchParams.set(name, value);
    if (state.principal && state.me && state.principal !== state.me) url.searchParams.set("principal", state.principal);
    const headers = { Accept: "application/json" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit",
      cache: "no-store",
      referrerPolicy: "no-referrer",
    });
    if (response.status === 401) {
      showLogin(token ? "The gateway does not know this token." : "");
      throw new Unauthorized();
    }
    let data = {};
    try {
      data = await response.json();
    } catch (_) {
      data = { message: `${response.status} ${response.statusText}` };
    }
    if (!response.ok) throw new Error(data.message || `${response.status} ${response.statusText}`);
    return data;
  }

  // ---- login -----------------------------------------------------------------------------------

  function showLogin(message) {
    $("main").hidden = true;
    $("who").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    $("token").focus();
  }

  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("token");
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    input.value = "";
    start();
  });

  $("forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    state.me = state.principal = null;
    showLogin("");
  });

  async function start() {
    let me;
    try {
      me = await api("/audit/api/me");
    } catch (error) {
      if (!(error instanceof Unauthorized)) showLogin(error.message);
      return;
    }
    state.me = me.principal;
    state.principal = state.principal || me.principal;
    state.operator = Boolean(me.operator);
    $("login").hidden = true;
    $("main").hidden = false;
    $("who").hidden = false;
    $("who-principal").textContent = state.principal;
    $("who-operator").hidden = !state.operator;
    $("principal-form").hidden = !state.operator;
    if (state.operator) loadPrincipals();
    await refresh();
  }

  async function refresh() {
    try {
      await Promise.all([loadStats(), loadChart(), loadUnknown(), loadEvents()]);
    } catch (error) {
      if (!(error instanceof Unauthorized)) say(error.message, "error");
    }
  }

  // ---- principal (operators) -------------------------------------------------------------------

  async function loadPrincipals() {
    const data = await api("/audit/api/principals");
    const list = clear($("principal-list"));
    for (const name of data.principals) list.append(el("option", { value: name }));
    $("principal-input").value = state.principal;
  }

  $("principal-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.principal = $("principal-input").value.trim() || state.me;
    $("who-principal").textContent = state.principal;
    $("story-panel").hidden = true;
    say("");
    refresh();
  });

  // ---- at a glance -----------------------------------------------------------------------------

  async function loadStats() {
    const stats = await api("/audit/api/stats");
    const cards = [
      ["duplicates_prevented", "duplicates prevented", stats.duplicates_prevented],
      ["spend_prevented", "spend prevented", money(stats.spend_prevented)],
      ["unknown_open", "unknown outcomes open", stats.unknown_open],
      ["executed", "executed", stats.by_outcome.executed || 0],
      ["conflict", "conflicts refused", stats.by_outcome.conflict || 0],
      ["last_day", "duplicates prevented today", stats.last_day.duplicates_prevented],
    ];
    const summary = clear($("summary"));
    for (const [name, label, value] of cards) {
      summary.append(el("div", { class: "card", "data-stat": name }, el("div", { class: "value" }, value), el("div", { class: "label" }, label)));
    }
    const tools = $("filter-tool");
    const chosen = tools.value;
    clear(tools).append(el("option", { value: "" }, "any"));
    for (const tool of Object.keys(stats.by_tool)) tools.append(el("option", { value: tool, selected: tool === chosen }, tool));
  }

  // ---- the chart: inline SVG, drawn here ---------------------------------------------------------

  async function loadChart() {
    const data = await api("/audit/api/series", { params: { range: state.range } });
    drawChart($("chart"), data);
  }

  function drawChart(figure, data) {
    const W = 760, H = 220, L = 44, R = 56, T = 14, B = 30;
    const buckets = data.buckets;
    const maxD = Math.max(1, ...buckets.map((b) => b.duplicates));
    const maxS = Math.max(0.01, ...buckets.map((b) => b.spend));
    const bw = (W - L - R) / buckets.length;
    const y = (v, max) => H - B - (v / max) * (H - T - B);
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-labelledby": "chart-title" });
    const totalD = buckets.reduce((n, b) => n + b.duplicates, 0);
    const totalS = buckets.reduce((n, b) => n + b.spend, 0);
    const caption = `${totalD} duplicates and ${money(totalS)} spend prevented in the last ${data.range}`;
    root.append(svg("title", { id: "chart-title" }, caption));
    root.append(svg("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }));
    root.append(svg("text", { class: "tick", x: L - 6, y: y(maxD, maxD) + 4, "text-anchor": "end" }, String(maxD)));
    root.append(svg("text", { class: "tick", x: L - 6, y: H - B + 4, "text-anchor": "end" }, "0"));
    root.append(svg("text", { class: "tick spend", x: W - R + 6, y: y(maxS, maxS) + 4 }, money(maxS)));
    root.append(svg("line", { class: "grid", x1: L, y1: y(maxD, maxD), x2: W - R, y2: y(maxD, maxD) }));
    const every = Math.ceil(buckets.length / 8);
    const points = [];
    buckets.forEach((b, i) => {
      const x = L + i * bw;
      const top = y(b.duplicates, maxD);
      const label = data.range === "day" ? b.start.slice(11, 16) : b.start.slice(5, 10);
      const bar = svg("rect", { class: "bar", x: x + 2, y: top, width: Math.max(1, bw - 4), height: H - B - top, "data-duplicates": b.duplicates });
      bar.append(svg("title", {}, `${when(b.start)}: ${b.duplicates} duplicates, ${money(b.spend)} spend prevented`));
      root.append(bar);
      points.push(`${x},${y(b.spend, maxS)}`, `${x + bw},${y(b.spend, maxS)}`);  // a step per bucket
      if (i % every === 0) root.append(svg("text", { class: "tick", x: x + bw / 2, y: H - B + 16, "text-anchor": "middle" }, label));
    });
    root.append(svg("polyline", { class: "spend-line", points: points.join(" ") }));
    clear(figure).append(root, el("figcaption", {}, caption));
  }

  $("range").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-range]");
    if (!button) return;
    state.range = button.dataset.range;
    for (const b of $("range").querySelectorAll("button")) b.setAttribute("aria-pressed", String(b === button));
    loadChart().catch((error) => say(error.message, "error"));
  });

  // ---- unknown outcomes, and resolving them ------------------------------------------------------

  async function loadUnknown() {
    const data = await api("/audit/api/unknown");
    const box = clear($("unknown"));
    if (!data.keys.length) {
      box.append(el("p", { class: "empty" }, "No unknown outcomes."));
      return;
    }
    const table = el("table", { class: "unknown" }, el("thead", {}, el("tr", {}, ["key", "tool", "since (UTC)", "reason", "arguments", ""].map((h) => el("th", {}, h)))));
    const body = el("tbody");
    for (const item of data.keys) body.append(unknownRow(item));
    table.append(body);
    box.append(table);
    if (!state.operator) box.append(el("p", { class: "hint" }, "Only an operator can resolve these; read a key's story for what is known."));
  }

  function unknownRow(item) {
    const actions = el("td", { class: "actions" });
    if (state.operator) {
      const release = el("button", { type: "button", class: "release" }, "Release: it did not happen");
      const store = el("button", { type: "button", class: "store" }, "Store a result: it happened");
      release.addEventListener("click", () => confirmRelease(item, actions));
      store.addEventListener("click", () => storeResult(item, actions));
      actions.append(release, store);
    }
    return el("tr", { "data-key": item.key },
      el("td", {}, keyButton(item.key)),
      el("td", {}, item.tool),
      el("td", {}, when(item.since)),
      el("td", {}, item.reason || "–"),
      el("td", {}, el("code", {}, JSON.stringify(item.arguments || {}))),
      actions);
  }

  function confirmRelease(item, actions) {
    const yes = el("button", { type: "button", class: "confirm danger" }, "Confirm release");
    const no = el("button", { type: "button", class: "quiet" }, "Cancel");
    no.addEventListener("click", () => loadUnknown());
    yes.addEventListener("click", () => resolve(item.key, "failed"));
    clear(actions).append(el("span", {}, "A retry will run the call again. "), yes, no);
  }

  function storeResult(item, actions) {
    const area = el("textarea", { rows: 6, cols: 48, spellcheck: "false", "aria-label": "CallToolResult JSON" });
    area.value = json({ content: [{ type: "text", text: "" }], isError: false });
    const save = el("button", { type: "button", class: "confirm" }, "Store and replay it");
    const no = el("button", { type: "button", class: "quiet" }, "Cancel");
    no.addEventListener("click", () => loadUnknown());
    save.addEventListener("click", () => {
      let result;
      try {
        result = JSON.parse(area.value);
      } catch (error) {
        say(`Not JSON: ${error.message}`, "error");
        return;
      }
      resolve(item.key, "completed", result);
    });
    clear(actions).append(area, el("br"), save, no);
  }

  async function resolve(key, as, result) {
    try {
      const body = { key, as, principal: state.principal };
      if (result !== undefined) body.result = result;
      await api("/audit/api/resolve", { method: "POST", body });
      say(as === "failed"
        ? `Resolved ${key} as failed: the key is released and a retry executes.`
        : `Resolved ${key} as completed: a retry replays the stored result.`, "ok");
      await refresh();
    } catch (error) {
      if (!(error instanceof Unauthorized)) say(error.message, "error");
    }
  }

  // ---- recent events -----------------------------------------------------------------------------

  for (const outcome of OUTCOMES) $("filter-outcome").append(el("option", { value: outcome }, outcome));

  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    state.filters = { tool: $("filter-tool").value, outcome: $("filter-outcome").value, key: $("filter-key").value.trim(), limit: $("filter-limit").value };
    loadEvents().catch((error) => say(error.message, "error"));
  });
  $("filters").addEventListener("reset", () => {
    state.filters = {};
    setTimeout(() => loadEvents().catch((error) => say(error.message, "error")));
  });

  async function loadEvents() {
    const data = await api("/audit/api/events", { params: state.filters });
    const body = clear($("events").tBodies[0]);
    if (!data.events.length) body.append(el("tr", {}, el("td", { colspan: 6, class: "empty" }, "No events.")));
    for (const e of data.events) {
      body.append(el("tr", { "data-outcome": e.outcome },
        el("td", {}, when(e.at)),
        el("td", {}, e.key ? keyButton(e.key) : "–"),
        el("td", {}, e.tool),
        el("td", {}, outcomeBadge(e.outcome)),
        el("td", { class: "num" }, e.duration_ms === null ? "–" : Math.round(e.duration_ms)),
        el("td", {}, el("code", {}, JSON.stringify(e.arguments || {})))));
    }
  }

  // ---- one key's story ---------------------------------------------------------------------------

  function keyButton(key) {
    const button = el("button", { type: "button", class: "key", title: "this key's story" }, key);
    button.addEventListener("click", () => showStory(key));
    return button;
  }

  async function showStory(key) {
    let data;
    try {
      data = await api(`/audit/api/keys/${encodeURIComponent(key)}`);
    } catch (error) {
      if (!(error instanceof Unauthorized)) say(error.message, "error");
      return;
    }
    $("story-key").textContent = key;
    const story = clear($("story"));
    const r = data.record;
    if (r) {
      const rows = [
        ["state", r.state], ["tool", r.tool], ["server", r.server], ["first executed at", when(r.first_executed_at)],
        ["created at", when(r.created_at)], ["kept until", when(r.expires_at)], ["tool error", r.is_error ? "yes" : "no"],
      ];
      story.append(el("table", { class: "record" }, el("tbody", {}, rows.map(([k, v]) => el("tr", { "data-field": k }, el("th", {}, k), el("td", {}, v))))));
      if (r.result !== null && r.result !== undefined) {
        story.append(el("h3", {}, "Stored result (replayed to every retry; redacted fields masked)"), el("pre", { class: "result" }, json(r.result)));
      }
    } else {
      story.append(el("p", { class: "hint" }, "No record: released, purged, or never stored. Its events:"));
    }
    story.append(el("h3", {}, "Calls with this key"));
    const list = el("ol", { class: "timeline" });
    for (const e of [...data.events].reverse()) {
      const detail = Object.keys(e.detail || {}).length ? ` ${JSON.stringify(e.detail)}` : "";
      list.append(el("li", { "data-outcome": e.outcome }, el("span", { class: "at" }, when(e.at)), " ", outcomeBadge(e.outcome),
        e.duration_ms === null ? "" : ` ${Math.round(e.duration_ms)} ms`, detail));
    }
    story.append(list);
    $("story-panel").hidden = false;
    $("story-panel").scrollIntoView({ block: "nearest" });
  }

  $("story-close").addEventListener("click", () => {
    $("story-panel").hidden = true;
  });

  start();
})();
