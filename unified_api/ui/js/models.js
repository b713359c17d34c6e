// Models: the registry (template, size, state memory per sequence, evaluation, provenance),
// the templates, and a form that creates a model from a template; the new run's page shows
// its training curves live.

import { api } from "./api.js";
import { bytes, errorBox, h, number, replace, table } from "./dom.js";
import { requestForm, template } from "./start.js";

// The registry as the generator publishes it (/api/generator/models), else what /info says.
export async function listModels(ctx) {
  try {
    const answer = await api("/api/generator/models");
    return answer.data || answer;
  } catch (error) {
    if (error.status !== 404) throw error;
    return (await api("/info")).models || [];
  }
}

function evaluation(model) {
  const figures = model.evaluation || (model.metrics ? model.metrics : null);
  if (!figures || typeof figures !== "object") return "—";
  return h(
    "dl.details",
    Object.entries(figures)
      .filter(([, v]) => typeof v !== "object")
      .map(([k, v]) => [h("dt", k), h("dd", number(v))]),
  );
}

function provenance(model) {
  const source = model.provenance || model.training || null;
  if (!source) return model.description || "—";
  return h(
    "details",
    h("summary", model.description || "training"),
    h("pre", JSON.stringify(source, null, 1)),
  );
}

const stateBytes = (m) =>
  m.state_bytes_per_sequence ?? (m.state_mb_per_sequence != null ? m.state_mb_per_sequence * 2 ** 20 : null);

function actions(model) {
  const name = encodeURIComponent(model.name);
  return h(
    "span.links",
    h("a", { href: `#/start?component=test&kind=smoke&model=${name}` }, "test"),
    " · ",
    h("a", { href: `#/start?component=benchmark&kind=engine&model=${name}` }, "benchmark"),
    " · ",
    h("a", { href: `#/playground?model=${name}` }, "playground"),
    " · ",
    h("a", { href: `#/runs?model=${name}` }, "runs"),
  );
}

export function mount(root, ctx, params) {
  const registry = h("div", h("p.muted", "loading…"));
  const templates = h("div");
  const create = h("div");
  replace(
    root,
    h("section.card", h("h2", "Models"), registry),
    h(
      "section.card",
      h("h3", "Create a model"),
      h(
        "p.muted",
        "Build a model from a template and train it on a corpus (the built-in shakespeare, a file in the data directory, or text pasted here).",
      ),
      create,
    ),
    h("section.card", h("h3", "Templates"), templates),
  );

  (async () => {
    try {
      const models = await listModels(ctx);
      const highlight = params.get("name");
      replace(
        registry,
        models.length
          ? table(
              [
                { label: "name", value: (m) => h("strong", m.name) },
                { label: "template", value: (m) => m.template || "—" },
                { label: "parameters", value: (m) => number(m.parameters), className: "num" },
                { label: "size", value: (m) => bytes(m.size_bytes), className: "num" },
                { label: "state / sequence", value: (m) => bytes(stateBytes(m)), className: "num" },
                { label: "evaluation", value: evaluation },
                { label: "provenance", value: provenance },
                { label: "loaded", value: (m) => (m.loaded ? "yes" : "no") },
                { label: "", value: actions },
              ],
              models,
              { rowClass: (m) => (m.name === highlight ? "highlight" : "") },
            )
          : h("p.muted", "No models in the registry yet: create one below."),
      );
    } catch (error) {
      replace(registry, errorBox(error));
    }
    try {
      const answer = await api("/api/generator/templates");
      replace(
        templates,
        table(
          [
            { label: "template", value: (t) => t.name },
            { label: "parameters", value: (t) => number(t.parameters), className: "num" },
            { label: "size", value: (t) => bytes(t.size_mb * 2 ** 20), className: "num" },
            {
              label: "state / sequence",
              value: (t) => bytes(t.state_mb_per_sequence * 2 ** 20),
              className: "num",
            },
            { label: "description", value: (t) => t.description },
          ],
          answer.data,
        ),
      );
    } catch (error) {
      replace(templates, errorBox(error));
    }
  })();

  if (ctx.schemas.generator && ctx.schemas.generator.model) {
    replace(
      create,
      requestForm(ctx, {
        component: "generator",
        kind: "model",
        path: "/api/generator/model",
        initial: template(ctx, "generator", "model"),
        submitLabel: "Create and train",
        onStarted: (run) => (location.hash = `#/run/generator/${run.id}`),
      }),
    );
  } else {
    replace(create, h("p.muted", "This server has no Generator component."));
  }
  return () => {};
}
