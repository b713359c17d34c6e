// The dashboard's shell: the API key form, server info, navigation and the hash router.
// Each page module exports mount(root, ctx, params, args) and returns a cleanup function.

import { BASE, api, apiKey, openApi, setApiKey } from "./api.js";
import * as compare from "./compare.js";
import * as detail from "./detail.js";
import { $, errorBox, h, replace } from "./dom.js";
import * as models from "./models.js";
import * as playground from "./playground.js";
import * as runs from "./runs.js";
import { requestSchemas } from "./schemaform.js";
import * as start from "./start.js";

const ROUTES = {
  runs: runs.mount,
  run: detail.mount,
  start: start.mount,
  compare: compare.mount,
  models: models.mount,
  playground: playground.mount,
};

let ctx = null;
let cleanup = () => {};

async function loadContext() {
  const [info, openapi, templates] = await Promise.all([
    api("/info"),
    openApi(),
    fetch(`${BASE}/ui/templates.json`).then((r) => r.json()),
  ]);
  const schemas = {};
  const kinds = {};
  for (const component of info.components) {
    schemas[component] = requestSchemas(openapi, component);
    kinds[component] = Object.keys(schemas[component]);
  }
  const listing = openapi.paths["/api/runs"];
  const parameters = (listing && listing.get && listing.get.parameters) || [];
  let templateNames = [];
  if (info.components.includes("generator")) {
    templateNames = (await api("/api/generator/templates").catch(() => ({ data: [] }))).data.map(
      (t) => t.name,
    );
  }
  return {
    info,
    openapi,
    templates,
    schemas,
    kinds,
    components: info.components,
    // The outcome filter is shown where the API publishes it (test outcomes, issue 15).
    outcomeFilter: parameters.some((p) => p.name === "outcome"),
    modelNames: (info.models || []).map((m) => m.name),
    templateNames,
  };
}

function drawHeader() {
  const info = ctx && ctx.info;
  $("#server-info").textContent = info
    ? `${info.name} ${info.version} · ${info.components.join(", ")} · model ${info.default_model}`
    : "";
  $("#nav-models").hidden = !(info && info.components.includes("generator"));
  $("#nav-playground").hidden = !(info && info.features.openai);
  $("#nav-compare").hidden = !(info && info.components.includes("benchmark"));
}

async function health() {
  const badgeNode = $("#health");
  try {
    const ready = await fetch(`${BASE}/ready`, {
      headers: apiKey() ? { Authorization: `Bearer ${apiKey()}` } : {},
    });
    badgeNode.textContent = ready.ok ? "ready" : ready.status === 401 ? "locked" : "not ready";
    badgeNode.className = `badge ${ready.ok ? "succeeded" : "queued"}`;
  } catch (_) {
    badgeNode.textContent = "offline";
    badgeNode.className = "badge failed";
  }
}

function route() {
  cleanup();
  cleanup = () => {};
  const root = $("#page");
  const [path, query = ""] = location.hash.replace(/^#\/?/, "").split("?");
  const [name, ...args] = path.split("/").filter(Boolean);
  const page = ROUTES[name] ? name : "runs";
  document
    .querySelectorAll("nav a")
    .forEach((link) =>
      link.classList.toggle("active", link.dataset.page === (page === "run" ? "runs" : page)),
    );
  if (!ctx) return;
  cleanup = ROUTES[page](root, ctx, new URLSearchParams(query), args) || (() => {});
}

async function init() {
  const root = $("#page");
  try {
    ctx = await loadContext();
  } catch (error) {
    ctx = null;
    replace(root, h("section.card", errorBox(error)));
    drawHeader();
    if (error.status === 401) $("#api-key").focus();
    return;
  }
  drawHeader();
  route();
}

$("#api-key").value = apiKey();
$("#key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  setApiKey($("#api-key").value);
  health();
  init();
});
window.addEventListener("hashchange", route);
health();
setInterval(() => document.visibilityState === "visible" && health(), 15000);
init();
