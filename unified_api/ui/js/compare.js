// Compare benchmark runs: pick two or more finished runs of one kind, get the server's
// compare table (rows matched by parameters, ratios to the first run) and an overlay plot.

import { api } from "./api.js";
import { LineChart } from "./chart.js";
import { errorBox, h, number, replace, when } from "./dom.js";

const rowLabel = (params) =>
  Object.entries(params)
    .filter(([, v]) => v !== null)
    .map(([k, v]) => `${k.replace("_size", "").replace("new_tokens", "new")}=${v}`)
    .join(" ");
const runLabel = (run) => `${run.model || "?"} ${run.id.slice(0, 6)}`;

export function mount(root, ctx, params) {
  const chosen = new Set((params.get("ids") || "").split(",").filter(Boolean));
  const picker = h("div.scroll.picker");
  const output = h("div");
  const button = h("button.primary", { type: "button", onclick: () => compare() }, "Compare");
  replace(
    root,
    h(
      "section.card",
      h("h2", "Compare benchmark runs"),
      h("p.muted", "Pick two or more finished runs of the same kind; the first picked is the baseline."),
      picker,
      h("div.toolbar", button),
    ),
    output,
  );

  async function listRuns() {
    try {
      const page = await api("/api/runs?component=benchmark&status=succeeded&limit=100");
      replace(
        picker,
        page.data.length
          ? h(
              "table.grid",
              h(
                "thead",
                h(
                  "tr",
                  ["", "kind", "model", "run", "created"].map((label) => h("th", label)),
                ),
              ),
              h(
                "tbody",
                page.data.map((run) =>
                  h(
                    "tr",
                    h(
                      "td",
                      h("input", {
                        type: "checkbox",
                        value: run.id,
                        checked: chosen.has(run.id),
                        onchange: (e) => (e.target.checked ? chosen.add(run.id) : chosen.delete(run.id)),
                      }),
                    ),
                    h("td", run.kind),
                    h("td", run.model || "—"),
                    h("td", h("a", { href: `#/run/benchmark/${run.id}` }, run.id.slice(0, 8))),
                    h("td.muted", when(run.created_at)),
                  ),
                ),
              ),
            )
          : h("p.muted", "No finished benchmark runs yet."),
      );
    } catch (error) {
      replace(picker, errorBox(error));
    }
  }

  async function compare() {
    const ids = [...chosen];
    history.replaceState(null, "", `#/compare?ids=${ids.join(",")}`);
    try {
      draw(await api(`/api/benchmark/compare?ids=${encodeURIComponent(ids.join(","))}`));
    } catch (error) {
      replace(output, h("section.card", errorBox(error)));
    }
  }

  function draw(result) {
    const metricSelect = h(
      "select",
      { name: "metric", onchange: () => render() },
      result.metrics.map((m) => h("option", { value: m }, m)),
    );
    const chartBox = h("div.chart-box", { dataset: { chart: "compare" } });
    const tableBox = h("div.scroll");
    const render = () => {
      const metric = metricSelect.value;
      const labels = result.rows.map((row) => rowLabel(row.params));
      const chart = new LineChart({
        title: metric,
        xLabel: "row (see the table)",
        xLabels: labels.map((_, i) => String(i + 1)),
      });
      for (const run of result.runs) {
        result.rows.forEach((row, index) => {
          const value = (row.values[run.id] || {})[metric];
          if (value !== null && value !== undefined) chart.add(runLabel(run), index, value);
        });
      }
      replace(chartBox, chart.node);
      replace(
        tableBox,
        h(
          "table.grid.compare",
          h(
            "thead",
            h(
              "tr",
              h("th", "#"),
              h("th", "parameters"),
              result.runs.map((run) =>
                h("th", runLabel(run), run.id === result.baseline ? " (baseline)" : ""),
              ),
            ),
          ),
          h(
            "tbody",
            result.rows.map((row, index) =>
              h(
                "tr",
                h("td", index + 1),
                h("td", labels[index]),
                result.runs.map((run) => {
                  const value = (row.values[run.id] || {})[metric];
                  const ratio = (row.ratios[run.id] || {})[metric];
                  return h(
                    "td.num",
                    number(value),
                    ratio != null ? h("span.ratio", ` ×${number(ratio, 3)}`) : null,
                  );
                }),
              ),
            ),
          ),
        ),
      );
    };
    replace(
      output,
      h(
        "section.card",
        h("div.heading", h("h3", `${result.kind} comparison`), h("label", "Metric ", metricSelect)),
        chartBox,
        tableBox,
      ),
    );
    render();
  }

  listRuns();
  if (chosen.size >= 2) compare();
  return () => {};
}
