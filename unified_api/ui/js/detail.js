// One run: its status live from the run's WebSocket, a view by kind (reports.js), attempts,
// the collapsible event log, cancel, and the request it was started with.

import { TERMINAL, api, followRun } from "./api.js";
import { badge, errorBox, h, number, replace, seconds, when } from "./dom.js";
import { viewFor } from "./reports.js";

const MAX_LOG = 500; // events kept in the log (the stream itself is complete)

function describe(event) {
  const data = event.data || {};
  switch (event.type) {
    case "status":
      return data.status;
    case "progress":
      return `${number((data.progress || 0) * 100)} % ${data.message || ""}`;
    case "log":
      return `[${data.level}] ${data.message}`;
    case "token":
      return JSON.stringify(data.text);
    case "metric":
      return `${data.name} = ${number(data.value)} ${data.unit || ""} (step ${data.step ?? "—"})`;
    case "case":
      return `${data.name}: ${data.status}`;
    case "attempt":
      return `attempt ${data.attempt} starts: ${data.reason || ""}`;
    case "error":
      return `${data.code}: ${data.message}`;
    default:
      return JSON.stringify(data);
  }
}

export function mount(root, ctx, params, [component, id]) {
  let run = null;
  let follower = null;
  let view = null;
  let logged = 0;
  const header = h("div");
  const attempts = h("ol.attempts");
  const log = h("ol.events");
  const logSummary = h("summary", "Event log");
  const problems = h("div");
  const body = h("div");
  replace(
    root,
    h(
      "section.card",
      header,
      problems,
      h("details.attempts-box", { hidden: true }, h("summary", "Attempts"), attempts),
    ),
    body,
    h("section.card", h("details.log", logSummary, log)),
  );

  function drawHeader() {
    const cancel = TERMINAL.has(run.status)
      ? null
      : h("button.danger", { type: "button", onclick: () => doCancel() }, "Cancel");
    replace(
      header,
      h(
        "div.heading",
        h("h2", `${run.component} · ${run.kind}`),
        h("code", run.id),
        badge(run.status),
        run.outcome ? badge(run.outcome, "outcome-") : null,
        cancel,
      ),
      h("p", h("progress", { max: 1, value: run.progress || 0 }), " ", run.message || ""),
      h(
        "p.muted",
        `model ${run.model || "default"} · created ${when(run.created_at)} · elapsed ${seconds(run.elapsed_s)}${run.eta_s ? ` · eta ${seconds(run.eta_s)}` : ""} · attempt ${run.attempts || 1}`,
      ),
      run.error ? h("p.error", `${run.error.code}: ${run.error.message}`) : null,
      h("details", h("summary", "Request"), h("pre", JSON.stringify(run.params, null, 2))),
    );
  }

  function addEvent(event) {
    if (event.type === "status") run.status = event.data.status;
    if (event.type === "progress")
      Object.assign(run, { progress: event.data.progress, message: event.data.message });
    if (event.type === "attempt") {
      run.attempts = event.data.attempt;
      attempts.append(
        h("li", `attempt ${event.data.attempt} from event ${event.seq}: ${event.data.reason || "retried"}`),
      );
      attempts.closest("details").hidden = false;
    }
    if (["status", "progress", "attempt"].includes(event.type)) drawHeader();
    if (view) view.onEvent(event);
    logged += 1;
    log.append(
      h(
        `li.event.${event.type}`,
        h("span.seq", event.seq),
        h("span.type", event.type),
        event.attempt > 1 ? h("span.muted", `#${event.attempt}`) : null,
        h("span.text", describe(event)),
      ),
    );
    while (log.childElementCount > MAX_LOG) log.firstChild.remove();
    logSummary.textContent = `Event log (${logged} events)`;
    if (event.type === "status" && TERMINAL.has(event.data.status)) finish();
  }

  async function finish() {
    try {
      const results = await api(`/api/${component}/results/${id}`);
      run = results.run;
      drawHeader();
      if (view && results.result) await view.showResult(results.result);
    } catch (error) {
      problems.append(errorBox(error));
    }
  }

  async function doCancel() {
    try {
      run = await api(`/api/${component}/cancel/${id}`, { method: "POST" });
      drawHeader();
    } catch (error) {
      problems.append(errorBox(error));
    }
  }

  (async () => {
    try {
      run = await api(`/api/${component}/status/${id}`);
    } catch (error) {
      replace(header, errorBox(error));
      return;
    }
    drawHeader();
    view = viewFor(run);
    if (view) body.append(view.node);
    // The socket replays every stored event, then streams live ones: one path for both.
    follower = followRun(run, addEvent, { onClose: (code) => code !== 1000 && finishIfDone() });
  })();

  async function finishIfDone() {
    run = await api(`/api/${component}/status/${id}`);
    drawHeader();
    if (TERMINAL.has(run.status)) finish();
  }

  return () => follower && follower.close();
}
