// Start a run: pick a component and kind, fill the form generated from the API's request
// schema (prefilled from templates.json), submit; the API's validation errors land next to
// the field they name.

import { api, randomKey } from "./api.js";
import { errorBox, h, replace } from "./dom.js";
import { schemaForm } from "./schemaform.js";

export function template(ctx, component, kind) {
  const raw = ((ctx.templates || {})[component] || {})[kind] || { kind };
  return JSON.parse(JSON.stringify(raw).replaceAll("{model}", ctx.info.default_model || ""));
}

// A form for one request schema, with its submit button and error handling. onStarted gets
// the new run. Used by the start page and by the models page's create-model form.
export function requestForm(ctx, { component, kind, initial, submitLabel = "Start", onStarted, path }) {
  const form = schemaForm(ctx.openapi, ctx.schemas[component][kind], initial, {
    model: ctx.modelNames,
    template: ctx.templateNames,
  });
  const general = h("div");
  const button = h("button.primary", { type: "submit" }, submitLabel);
  let idempotency = randomKey(); // the same key while the form is unchanged: a resubmit is no second run
  // noValidate: the API is the one judge of a request, and its errors name the field.
  const node = h(
    "form.request",
    {
      noValidate: true,
      oninput: () => (idempotency = randomKey()),
      onsubmit: async (event) => {
        event.preventDefault();
        form.clear();
        replace(general);
        let body;
        try {
          body = { ...form.read(), kind };
        } catch (error) {
          if (!form.showError(error)) replace(general, errorBox(error));
          return;
        }
        button.disabled = true;
        try {
          const run = await api(path || `/api/${component}/run`, {
            method: "POST",
            body,
            headers: { "Idempotency-Key": idempotency },
          });
          onStarted(run);
        } catch (error) {
          if (!form.showError(error)) replace(general, errorBox(error));
          else replace(general, h("p.error", "The server refused the request: see the marked field."));
        } finally {
          button.disabled = false;
        }
      },
    },
    form.node,
    general,
    h("div.toolbar", button),
  );
  return node;
}

export function mount(root, ctx, params) {
  const components = ctx.components.filter((c) => Object.keys(ctx.schemas[c] || {}).length);
  let component = params.get("component") || components[0];
  if (!components.includes(component)) component = components[0];
  const holder = h("div");
  const componentSelect = h(
    "select",
    { name: "component", onchange: () => pick(componentSelect.value) },
    components.map((c) => h("option", { value: c, selected: c === component }, c)),
  );
  const kindSelect = h("select", { name: "kind", onchange: () => draw() });

  function pick(value) {
    component = value;
    const kinds = Object.keys(ctx.schemas[component]);
    const wanted = params.get("kind");
    replace(
      kindSelect,
      kinds.map((k) => h("option", { value: k, selected: k === wanted }, k)),
    );
    draw();
  }

  function draw() {
    const kind = kindSelect.value;
    const schema = ctx.schemas[component][kind];
    const initial = template(ctx, component, kind);
    if (params.get("model") && schema.properties && "model" in schema.properties)
      initial.model = params.get("model");
    replace(
      holder,
      schema.description ? h("p.muted", schema.description) : null,
      requestForm(ctx, {
        component,
        kind,
        initial,
        onStarted: (run) => (location.hash = `#/run/${run.component}/${run.id}`),
      }),
    );
  }

  if (!components.length) {
    replace(
      root,
      h("section.card", h("h2", "Start a run"), h("p.muted", "This server publishes no run requests.")),
    );
    return () => {};
  }
  replace(
    root,
    h(
      "section.card",
      h("h2", "Start a run"),
      h("div.toolbar", h("label", "Component ", componentSelect), h("label", "Kind ", kindSelect)),
      holder,
    ),
  );
  pick(component);
  return () => {};
}
