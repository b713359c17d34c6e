// The Hatchery dashboard: runs across components with live status, and a form to start one.
// Plain browser JavaScript (fetch + WebSocket), no build step and nothing from a CDN. Every
// value from the server is written with textContent, never parsed as HTML.
"use strict";

(() => {
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
  const REFRESH_MS = 4000;
  const MAX_SOCKETS = 8; // live followers at once; other runs update on the next refresh
  const MAX_EVENTS = 200; // events kept per followed run
  // The page lives at <base>/ui/; API paths hang off <base> (a proxy may add a prefix).
  const BASE = location.pathname.replace(/\/ui\/.*$/, "");
  const KEY_STORAGE = "hatchery.apiKey";

  // Request templates per component and kind (templates.json); "{model}" becomes the default.
  let templates = {};

  const state = {
    key: localStorage.getItem(KEY_STORAGE) || "",
    info: null,
    runs: new Map(), // id -> RunPublic
    sockets: new Map(), // id -> WebSocket
    events: new Map(), // id -> [event]
    lastSeq: new Map(), // id -> last seq seen
    selected: null,
  };
  const $ = (id) => document.getElementById(id);

  class ApiError extends Error {
    constructor(status, message, code) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(path, options = {}) {
    const headers = new Headers(options.headers || {});
    if (state.key) headers.set("Authorization", `Bearer ${state.key}`);
    if (options.body !== undefined) headers.set("Content-Type", "application/json");
    const response = await fetch(BASE + path, { ...options, headers });
    const text = await response.text();
    let body = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch (_) {
      body = { text };
    }
    if (!response.ok) {
      const error = (body && body.error) || {};
      throw new ApiError(response.status, error.message || response.statusText, error.code);
    }
    return body;
  }

  function randomKey() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes); // works on plain http too, unlike crypto.randomUUID
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function showError(error) {
    const box = $("error");
    if (!error) {
      box.hidden = true;
      return;
    }
    box.hidden = false;
    box.textContent =
      error.status === 401 ? "This server needs an API key: enter it above." : `Error: ${error.message}`;
  }

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  // Server info and health ----------------------------------------------------------------

  async function loadInfo() {
    try {
      const health = await api("/health");
      $("health").textContent = health.status;
      $("health").className = "badge health-ok";
    } catch (_) {
      $("health").textContent = "down";
      $("health").className = "badge health-down";
    }
    try {
      state.info = await api("/info");
    } catch (error) {
      showError(error);
      return;
    }
    const info = state.info;
    const models = info.models.map((m) => m.name + (m.loaded ? "*" : "")).join(", ") || "none";
    $("server-info").textContent =
      `v${info.version} · torch ${info.torch || "?"} · ${info.device}/${info.dtype} · ` +
      `executor ${info.executor} · models: ${models}`;
    fillComponents(info.components);
  }

  function fillComponents(components) {
    for (const select of [$("filter-component"), $("start-component")]) {
      const keep = select.id === "filter-component" ? [select.options[0]] : [];
      select.replaceChildren(...keep);
      for (const name of components) select.append(new Option(name, name));
    }
    fillTemplates();
  }

  function fillTemplates() {
    const kinds = templates[$("start-component").value] || {};
    $("start-template").replaceChildren(...Object.keys(kinds).map((k) => new Option(k, k)));
    fillBody();
  }

  async function loadTemplates() {
    try {
      const response = await fetch("templates.json"); // beside this page, no key needed
      templates = response.ok ? await response.json() : {};
    } catch (_) {
      templates = {};
    }
  }

  function fillBody() {
    const component = $("start-component").value;
    const template = (templates[component] || {})[$("start-template").value] || {};
    const model = (state.info && state.info.default_model) || "";
    $("start-body").value = JSON.stringify(template, null, 2).replaceAll("{model}", model);
  }

  // Runs table ------------------------------------------------------------------------------

  async function refreshRuns() {
    const params = new URLSearchParams({ limit: "50" });
    if ($("filter-component").value) params.set("component", $("filter-component").value);
    if ($("filter-status").value) params.set("status", $("filter-status").value);
    let page;
    try {
      page = await api(`/api/runs?${params}`);
    } catch (error) {
      showError(error);
      return;
    }
    showError(null);
    state.runs = new Map(page.data.map((run) => [run.id, run]));
    $("runs-count").textContent = `${page.data.length} of ${page.count}`;
    renderRuns();
    for (const run of page.data) {
      if (!TERMINAL.has(run.status)) follow(run);
    }
  }

  function renderRuns() {
    const rows = [];
    for (const run of state.runs.values()) rows.push(runRow(run));
    $("runs").tBodies[0].replaceChildren(...rows);
  }

  function runRow(run) {
    const row = el("tr");
    row.dataset.id = run.id;
    if (run.id === state.selected) row.classList.add("selected");
    row.append(
      el("td", new Date(run.created_at).toLocaleTimeString()),
      el("td", run.component),
      el("td", run.kind),
      el("td", run.model || "–"),
    );
    const status = el("td");
    status.append(el("span", run.status, `badge status-${run.status}`));
    const progress = el("td");
    const bar = el("progress");
    bar.max = 1;
    bar.value = run.progress || 0;
    progress.append(bar);
    const actions = el("td");
    if (!TERMINAL.has(run.status)) {
      const cancel = el("button", "cancel", "small");
      cancel.type = "button";
      cancel.addEventListener("click", (event) => {
        event.stopPropagation();
        cancelRun(run);
      });
      actions.append(cancel);
    }
    row.append(status, progress, el("td", run.message || "", "message"), actions);
    row.addEventListener("click", () => select(run.id));
    return row;
  }

  function updateRun(id, changes) {
    const run = state.runs.get(id);
    if (!run) return;
    Object.assign(run, changes);
    const old = $("runs").querySelector(`tr[data-id="${CSS.escape(id)}"]`);
    if (old) old.replaceWith(runRow(run));
    if (id === state.selected) renderDetail();
  }

  // Live updates over the run's WebSocket -----------------------------------------------------

  function wsUrl(run) {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const params = new URLSearchParams({ after: String(state.lastSeq.get(run.id) || 0) });
    if (state.key) params.set("api_key", state.key); // browsers cannot set WS headers
    return `${scheme}://${location.host}${BASE}/api/${run.component}/ws/${run.id}?${params}`;
  }

  function follow(run) {
    if (state.sockets.has(run.id) || state.sockets.size >= MAX_SOCKETS) return;
    const socket = new WebSocket(wsUrl(run));
    state.sockets.set(run.id, socket);
    socket.addEventListener("message", (message) => onEvent(run.id, JSON.parse(message.data)));
    // A dropped socket is reopened by the next refresh, from the last seq (no gap, no repeat).
    socket.addEventListener("close", () => state.sockets.delete(run.id));
  }

  function onEvent(id, event) {
    if (event.type === "pong" || typeof event.seq !== "number") return;
    state.lastSeq.set(id, event.seq);
    // A retry starts over: what the previous attempt streamed (tokens, metrics) no longer counts.
    const events = event.type === "attempt" ? [] : state.events.get(id) || [];
    events.push(event);
    if (events.length > MAX_EVENTS) events.splice(0, events.length - MAX_EVENTS);
    state.events.set(id, events);
    if (event.type === "status") updateRun(id, { status: event.data.status });
    else if (event.type === "attempt") {
      updateRun(id, { attempts: event.data.attempt, progress: 0, message: "" });
    } else if (event.type === "progress") {
      updateRun(id, { progress: event.data.progress, message: event.data.message });
    } else if (id === state.selected) renderDetail();
  }

  // Run detail --------------------------------------------------------------------------------

  function select(id) {
    state.selected = id;
    const run = state.runs.get(id);
    $("detail-section").hidden = false;
    for (const row of $("runs").tBodies[0].rows) {
      row.classList.toggle("selected", row.dataset.id === id);
    }
    if (run && !state.events.has(id)) {
      state.lastSeq.set(id, 0);
      follow(run); // replays the stored events (and closes at once for a finished run)
    }
    renderDetail();
  }

  function renderDetail() {
    const run = state.runs.get(state.selected);
    if (!run) return;
    $("detail-id").textContent = run.id;
    $("detail-status").textContent = run.status;
    $("detail-status").className = `badge status-${run.status}`;
    $("detail-message").textContent = run.message || "";
    $("detail-progress").value = run.progress || 0;
    $("detail-cancel").hidden = TERMINAL.has(run.status);
    const items = (state.events.get(run.id) || []).map((event) =>
      el("li", `${event.type} ${JSON.stringify(event.data)}`),
    );
    $("detail-events").replaceChildren(...items);
    if (TERMINAL.has(run.status)) loadResult(run);
    else $("detail-result").textContent = "not finished";
  }

  async function loadResult(run) {
    try {
      const results = await api(`/api/${run.component}/results/${run.id}`);
      if (state.selected === run.id) {
        $("detail-result").textContent = JSON.stringify(results.result ?? results.run.error, null, 2);
      }
    } catch (error) {
      $("detail-result").textContent = `could not load the result: ${error.message}`;
    }
  }

  async function cancelRun(run) {
    try {
      updateRun(run.id, await api(`/api/${run.component}/cancel/${run.id}`, { method: "POST" }));
    } catch (error) {
      showError(error);
    }
  }

  // Start a run -----------------------------------------------------------------------------

  async function startRun(event) {
    event.preventDefault();
    const component = $("start-component").value;
    let body;
    try {
      body = JSON.parse($("start-body").value);
    } catch (error) {
      $("start-result").textContent = `invalid JSON: ${error.message}`;
      return;
    }
    try {
      const run = await api(`/api/${component}/run`, {
        method: "POST",
        body: JSON.stringify(body),
        headers: { "Idempotency-Key": randomKey() },
      });
      $("start-result").textContent = `started ${run.id}`;
      await refreshRuns();
      select(run.id);
    } catch (error) {
      $("start-result").textContent = `refused (${error.status} ${error.code || ""}): ${error.message}`;
    }
  }

  // Wiring ------------------------------------------------------------------------------------

  $("api-key").value = state.key;
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("api-key").value.trim();
    localStorage.setItem(KEY_STORAGE, state.key);
    for (const socket of state.sockets.values()) socket.close();
    loadInfo().then(refreshRuns);
  });
  $("filter-component").addEventListener("change", refreshRuns);
  $("filter-status").addEventListener("change", refreshRuns);
  $("start-component").addEventListener("change", fillTemplates);
  $("start-template").addEventListener("change", fillBody);
  $("start-form").addEventListener("submit", startRun);
  $("detail-cancel").addEventListener("click", () => {
    const run = state.runs.get(state.selected);
    if (run) cancelRun(run);
  });

  loadTemplates().then(loadInfo).then(refreshRuns);
  setInterval(() => {
    if (!document.hidden) refreshRuns();
  }, REFRESH_MS);
})();
