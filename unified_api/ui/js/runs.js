// The runs page: filters (component, kind, status, outcome, model), paging, live status from
// each active run's WebSocket (the list itself is fetched once per change, not per run), cancel
// and picking benchmark runs to compare.

import { TERMINAL, api, followRun } from "./api.js";
import { badge, errorBox, h, number, replace, when } from "./dom.js";

const PAGE = 25;
const MAX_FOLLOWED = 12; // sockets at once; the rest update on the next list fetch
const REFRESH_MS = 10000; // picks up runs started elsewhere
const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"];

function select(name, label, options, value) {
  return h(
    "label",
    label,
    h(
      "select",
      { name },
      h("option", { value: "" }, "all"),
      options.map((option) => h("option", { value: option, selected: option === value }, option)),
    ),
  );
}

export function mount(root, ctx, params) {
  const filters = {
    component: params.get("component") || "",
    kind: params.get("kind") || "",
    status: params.get("status") || "",
    outcome: params.get("outcome") || "",
    model: params.get("model") || "",
  };
  let offset = Number(params.get("offset") || 0);
  const followers = new Map(); // run id -> socket handle
  const rows = new Map(); // run id -> {run, cells}
  const picked = new Set();
  const body = h("tbody");
  const count = h("span.muted");
  const status = h("div");
  const compareButton = h(
    "button",
    {
      type: "button",
      disabled: true,
      onclick: () => (location.hash = `#/compare?ids=${[...picked].join(",")}`),
    },
    "Compare selected",
  );
  const pager = h("div.pager");

  const kinds = [...new Set(Object.values(ctx.kinds).flat())];
  const form = h(
    "form.toolbar",
    { onchange: () => apply(), onsubmit: (event) => (event.preventDefault(), apply()) },
    select("component", "Component", ctx.components, filters.component),
    select("kind", "Kind", kinds, filters.kind),
    select("status", "Status", STATUSES, filters.status),
    ctx.outcomeFilter ? select("outcome", "Outcome", ["passed", "failed"], filters.outcome) : null,
    h(
      "label",
      "Model",
      h("input", { name: "model", type: "search", value: filters.model, placeholder: "any", size: 14 }),
    ),
    h("button", { type: "button", onclick: () => load() }, "Refresh"),
    compareButton,
  );

  function apply() {
    for (const name of Object.keys(filters)) {
      const input = form.elements.namedItem(name);
      if (input) filters[name] = input.value.trim();
    }
    offset = 0;
    syncHash();
    load();
  }

  function syncHash() {
    const query = new URLSearchParams(Object.entries(filters).filter(([, v]) => v));
    if (offset) query.set("offset", String(offset));
    history.replaceState(null, "", `#/runs${query.toString() ? `?${query}` : ""}`);
  }

  async function load() {
    const query = new URLSearchParams(Object.entries(filters).filter(([, v]) => v));
    query.set("limit", String(PAGE));
    query.set("offset", String(offset));
    try {
      const page = await api(`/api/runs?${query}`);
      render(page);
      replace(status);
    } catch (error) {
      replace(status, errorBox(error));
    }
  }

  function render(page) {
    const seen = new Set(page.data.map((run) => run.id));
    for (const [id, handle] of followers) {
      if (!seen.has(id)) {
        handle.close();
        followers.delete(id);
      }
    }
    rows.clear();
    replace(
      body,
      page.data.length
        ? page.data.map(row)
        : h("tr", h("td.muted", { colSpan: 10 }, "No runs match. Start one from the Start page.")),
    );
    const last = Math.min(offset + page.data.length, page.count);
    count.textContent = page.count ? `${offset + 1}–${last} of ${page.count}` : "0 runs";
    replace(
      pager,
      h("button", { type: "button", disabled: offset === 0, onclick: () => turn(-PAGE) }, "← Newer"),
      h(
        "span.muted",
        `page ${Math.floor(offset / PAGE) + 1} of ${Math.max(1, Math.ceil(page.count / PAGE))}`,
      ),
      h("button", { type: "button", disabled: last >= page.count, onclick: () => turn(PAGE) }, "Older →"),
    );
    for (const run of page.data) if (!TERMINAL.has(run.status)) follow(run);
  }

  function turn(delta) {
    offset = Math.max(0, offset + delta);
    syncHash();
    load();
  }

  function row(run) {
    const cells = {
      status: h("td"),
      outcome: h("td"),
      progress: h("progress", { max: 1, value: run.progress || 0 }),
      message: h("td.message"),
      action: h("td.actions"),
    };
    rows.set(run.id, { run, cells });
    const pick =
      run.component === "benchmark" && run.status === "succeeded"
        ? h("input", {
            type: "checkbox",
            title: "pick for compare",
            checked: picked.has(run.id),
            onchange: (event) => toggle(run.id, event.target.checked),
          })
        : null;
    const tr = h(
      "tr",
      { dataset: { run: run.id } },
      h("td", pick),
      h("td", h("a", { href: `#/run/${run.component}/${run.id}` }, when(run.created_at))),
      h("td", run.component),
      h("td", run.kind),
      h("td", run.model || "—"),
      cells.status,
      cells.outcome,
      h("td", cells.progress),
      cells.message,
      cells.action,
    );
    update(run);
    return tr;
  }

  function toggle(id, on) {
    if (on) picked.add(id);
    else picked.delete(id);
    compareButton.disabled = picked.size < 2;
    compareButton.textContent = picked.size ? `Compare selected (${picked.size})` : "Compare selected";
  }

  function update(run) {
    const entry = rows.get(run.id);
    if (!entry) return;
    entry.run = run;
    const { cells } = entry;
    replace(
      cells.status,
      badge(run.status),
      run.attempts > 1 ? h("span.muted", ` attempt ${run.attempts}`) : null,
    );
    replace(cells.outcome, run.outcome ? badge(run.outcome, "outcome-") : h("span.muted", "—"));
    cells.progress.value = run.progress || 0;
    cells.progress.title = `${number((run.progress || 0) * 100, 3)} %`;
    cells.message.textContent = run.error ? `${run.error.code}: ${run.error.message}` : run.message || "";
    replace(
      cells.action,
      TERMINAL.has(run.status)
        ? null
        : h("button.small.danger", { type: "button", onclick: () => cancel(run) }, "Cancel"),
    );
  }

  async function cancel(run) {
    try {
      update(await api(run.links.status.replace("/status/", "/cancel/"), { method: "POST" }));
    } catch (error) {
      replace(status, errorBox(error));
    }
  }

  function follow(run) {
    if (followers.has(run.id) || followers.size >= MAX_FOLLOWED) return;
    const handle = followRun(
      run,
      (event) => {
        const entry = rows.get(run.id);
        if (!entry) return;
        const current = { ...entry.run };
        if (event.type === "status") current.status = event.data.status;
        if (event.type === "progress")
          Object.assign(current, { progress: event.data.progress, message: event.data.message });
        if (event.type === "attempt") current.attempts = event.data.attempt;
        update(current);
        if (event.type === "status" && TERMINAL.has(event.data.status)) refresh(run);
      },
      { onClose: () => followers.delete(run.id) },
    );
    followers.set(run.id, handle);
  }

  async function refresh(run) {
    try {
      update(await api(run.links.status)); // the final outcome, error and timings
    } catch (_) {
      // the next list fetch shows it
    }
  }

  const timer = setInterval(() => {
    if (document.visibilityState === "visible") load();
  }, REFRESH_MS);
  replace(
    root,
    h(
      "section.card",
      h("div.heading", h("h2", "Runs"), count, h("a.button", { href: "#/start" }, "Start a run")),
      form,
      status,
      h(
        "div.scroll",
        h(
          "table.grid.runs",
          h(
            "thead",
            h(
              "tr",
              [
                "",
                "created",
                "component",
                "kind",
                "model",
                "status",
                "outcome",
                "progress",
                "message",
                "",
              ].map((label) => h("th", label)),
            ),
          ),
          body,
        ),
      ),
      pager,
    ),
  );
  load();
  return () => {
    clearInterval(timer);
    for (const handle of followers.values()) handle.close();
  };
}
