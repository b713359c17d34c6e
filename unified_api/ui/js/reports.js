// What a run shows by kind: a test report table, training curves, benchmark tables with the
// server's plot and CSV, a text run's completions. Each view takes live events (onEvent),
// resets at an `attempt` event (the result comes from the final attempt only) and shows the
// final result (showResult).

import { blobUrl } from "./api.js";
import { LineChart } from "./chart.js";
import { badge, bytes, download, errorBox, h, number, replace, table } from "./dom.js";

const spread = (value) => (value && typeof value === "object" ? value.median : value);

function details(value) {
  const entries = Object.entries(value || {});
  if (!entries.length) return "";
  return h(
    "dl.details",
    entries.map(([key, item]) => [
      h("dt", key),
      h("dd", typeof item === "object" ? JSON.stringify(item) : String(item)),
    ]),
  );
}

export function testView() {
  const cases = [];
  const summary = h("div.summary");
  const holder = h("div");
  const failedOnly = h("input", { type: "checkbox", name: "failed-only", onchange: () => draw() });
  const draw = () => {
    const shown = failedOnly.checked
      ? cases.filter((c) => c.status === "failed" || c.status === "errored")
      : cases;
    replace(
      holder,
      shown.length
        ? table(
            [
              { label: "status", value: (c) => badge(c.status, "case-") },
              { label: "case", value: (c) => c.name },
              { label: "duration", value: (c) => `${number(c.duration_ms, 3)} ms`, className: "num" },
              { label: "details", value: (c) => details(c.details) },
            ],
            shown,
            { className: "grid report", rowClass: (c) => `case-${c.status}` },
          )
        : h("p.muted", failedOnly.checked ? "No failed cases." : "No cases yet."),
    );
  };
  draw();
  return {
    node: h(
      "section.card",
      h("div.heading", h("h3", "Test report"), h("label.inline", failedOnly, " failed only")),
      summary,
      holder,
    ),
    onEvent(event) {
      if (event.type === "attempt") cases.length = 0;
      if (event.type !== "case") return;
      cases.push(event.data);
      draw();
    },
    showResult(result) {
      cases.splice(0, cases.length, ...result.cases);
      const outcome = result.outcome || (result.failed || result.errored ? "failed" : "passed");
      replace(
        summary,
        badge(outcome, "outcome-"),
        ` ${result.passed} passed, ${result.failed} failed, ${result.skipped} skipped, ${result.errored} errored in ${number(result.duration_ms / 1000)} s`,
      );
      draw();
    },
  };
}

export function trainingView() {
  const loss = new LineChart({ title: "training loss", xLabel: "step", yLabel: "nats" });
  const bpb = new LineChart({ title: "validation bits per byte", xLabel: "step", yLabel: "bits/byte" });
  const speed = h("p.muted");
  const result = h("div");
  return {
    node: h(
      "section.card",
      h("h3", "Training"),
      h(
        "div.charts",
        h("div.chart-box", { dataset: { chart: "loss" } }, loss.node),
        h("div.chart-box", { dataset: { chart: "bpb" } }, bpb.node),
      ),
      speed,
      result,
    ),
    onEvent(event) {
      if (event.type === "attempt") {
        loss.reset();
        bpb.reset();
      }
      if (event.type !== "metric") return;
      const { name, value, step } = event.data;
      if (name === "loss") loss.add("loss", step, value);
      if (name === "val_bits_per_byte") bpb.add("validation", step, value);
      if (name === "tokens_per_s") speed.textContent = `${number(value, 4)} tokens/s at step ${step}`;
    },
    showResult(model) {
      const metrics = model.metrics || {};
      replace(
        result,
        table(
          [
            {
              label: "model",
              value: () => h("a", { href: `#/models?name=${encodeURIComponent(model.name)}` }, model.name),
            },
            { label: "template", value: () => model.template },
            { label: "parameters", value: () => number(model.parameters) },
            { label: "size", value: () => bytes(model.size_bytes) },
            { label: "final loss", value: () => number(metrics.final_loss) },
            { label: "val bits/byte", value: () => number(metrics.val_bits_per_byte) },
            { label: "tokens seen", value: () => number(metrics.tokens_seen) },
          ],
          [model],
        ),
        h(
          "p",
          h(
            "a",
            { href: `#/playground?model=${encodeURIComponent(model.name)}` },
            "Try it in the playground →",
          ),
        ),
      );
    },
  };
}

export function textView() {
  const live = new Map(); // choice -> text so far
  const holder = h("div");
  const drawLive = () =>
    replace(
      holder,
      [...live.entries()].map(([choice, text]) =>
        h("div.completion", h("span.muted", `choice ${choice}`), h("pre", text)),
      ),
    );
  return {
    node: h("section.card", h("h3", "Completions"), holder),
    onEvent(event) {
      if (event.type === "attempt") live.clear();
      if (event.type !== "token") return;
      live.set(event.data.choice, (live.get(event.data.choice) || "") + event.data.text);
      drawLive();
    },
    showResult(result) {
      replace(
        holder,
        table(
          [
            { label: "prompt", value: (c) => c.prompt_index },
            { label: "choice", value: (c) => c.index },
            { label: "text", value: (c) => h("pre", c.text) },
            { label: "finish", value: (c) => c.finish_reason || "—" },
            {
              label: "tokens",
              value: (c) => `${c.usage.prompt_tokens} + ${c.usage.completion_tokens}`,
              className: "num",
            },
          ],
          result.completions,
        ),
      );
    },
  };
}

const ENGINE_COLUMNS = [
  { label: "mode", value: (r) => r.mode },
  { label: "batch", value: (r) => r.batch_size, className: "num" },
  { label: "context", value: (r) => r.context, className: "num" },
  { label: "new", value: (r) => r.new_tokens, className: "num" },
  { label: "dtype", value: (r) => r.dtype },
  { label: "status", value: (r) => (r.status === "measured" ? "measured" : `${r.status}: ${r.note || ""}`) },
  { label: "prefill tok/s", value: (r) => number(spread(r.prefill_tokens_per_s)), className: "num" },
  { label: "TTFT ms", value: (r) => number(spread(r.ttft_ms)), className: "num" },
  { label: "TPOT ms", value: (r) => number(spread(r.tpot_ms)), className: "num" },
  { label: "decode tok/s", value: (r) => number(spread(r.decode_tokens_per_s)), className: "num" },
  { label: "peak MB", value: (r) => number(r.peak_memory_mb), className: "num" },
  {
    label: "roofline",
    value: (r) => (r.roofline_fraction == null ? "—" : `${number(r.roofline_fraction * 100)} %`),
    className: "num",
  },
];

const latency = (name, part) => ({
  label: `${name} ${part}`,
  value: (l) => number(l[`${name.toLowerCase()}_ms`][part]),
  className: "num",
});
const SERVING_COLUMNS = [
  { label: "concurrency", value: (l) => l.concurrency ?? "∞", className: "num" },
  { label: "rate req/s", value: (l) => l.request_rate ?? "max", className: "num" },
  { label: "done", value: (l) => `${l.completed}/${l.num_requests}`, className: "num" },
  { label: "errors", value: (l) => l.errors, className: "num" },
  { label: "req/s", value: (l) => number(l.request_throughput), className: "num" },
  { label: "out tok/s", value: (l) => number(l.output_tokens_per_s), className: "num" },
  latency("TTFT", "mean"),
  latency("TTFT", "p99"),
  latency("TPOT", "mean"),
  latency("ITL", "p50"),
  latency("E2E", "p99"),
];

export function benchmarkView(run) {
  const holder = h("div", h("p.muted", "Tables and plot appear when the run ends."));
  const progress = h("ul.metric-log");
  return {
    node: h("section.card", h("h3", "Benchmark"), progress, holder),
    onEvent(event) {
      if (event.type === "attempt") progress.replaceChildren();
      if (event.type !== "metric") return;
      const { name, value, unit } = event.data;
      progress.append(h("li", `${name}: ${number(value)} ${unit || ""}`));
      while (progress.childElementCount > 8) progress.firstChild.remove();
    },
    async showResult(result) {
      progress.replaceChildren();
      const image = h("img.plot", { alt: `plot of benchmark ${run.id}` });
      const csvButton = h("button", { type: "button", onclick: () => saveCsv(run, holder) }, "Download CSV");
      const rows =
        result.kind === "engine" ? table(ENGINE_COLUMNS, result.rows) : table(SERVING_COLUMNS, result.levels);
      const env = result.environment || {};
      replace(
        holder,
        h("div.toolbar", csvButton, h("a.button", { href: `#/compare?ids=${run.id}` }, "Compare with…")),
        h(
          "p.muted",
          `${env.device_name || env.device || ""} · torch ${env.torch_version || "?"} · ${env.cores || "?"} cores${env.bandwidth_gb_s ? ` · copy bandwidth ${number(env.bandwidth_gb_s)} GB/s` : ""}`,
        ),
        image,
        h("div.scroll", rows),
      );
      try {
        image.src = await blobUrl(`/api/benchmark/results/${run.id}/plot.png`);
      } catch (error) {
        image.replaceWith(errorBox(error));
      }
    },
  };
}

async function saveCsv(run, holder) {
  try {
    download(await blobUrl(`/api/benchmark/results/${run.id}.csv`), `benchmark-${run.id}.csv`);
  } catch (error) {
    holder.prepend(errorBox(error));
  }
}

export function viewFor(run) {
  if (run.component === "test") return testView();
  if (run.component === "benchmark") return benchmarkView(run);
  if (run.kind === "model") return trainingView();
  if (run.kind === "text") return textView();
  return null;
}
