// Forms generated from the request schemas the API publishes in /openapi.json, with the
// API's own validation errors (error.param) shown next to the field they name.

import { h } from "./dom.js";

let uid = 0;

export function resolver(openapi) {
  const resolve = (schema) => {
    while (schema && schema.$ref) {
      const path = schema.$ref.replace(/^#\//, "").split("/");
      schema = path.reduce((node, part) => node[part], openapi);
    }
    return schema || {};
  };
  return resolve;
}

// kind -> request schema for POST /api/{component}/run (a union discriminated on kind).
export function requestSchemas(openapi, component) {
  const resolve = resolver(openapi);
  const operation = openapi.paths[`/api/${component}/run`];
  if (!operation || !operation.post) return {};
  const body = resolve(operation.post.requestBody.content["application/json"].schema);
  const options = body.oneOf || body.anyOf || [body];
  const schemas = {};
  for (const option of options.map(resolve)) {
    const kind = option.properties && option.properties.kind;
    const name = kind && (kind.const || (kind.enum && kind.enum[0]) || kind.default);
    if (name) schemas[name] = option;
  }
  return schemas;
}

// {nullable, schema}: anyOf [X, null] is an optional X.
function unwrap(schema, resolve) {
  schema = resolve(schema);
  const options = schema.anyOf || schema.oneOf;
  if (!options) return { nullable: false, schema };
  const real = options.map(resolve).filter((option) => option.type !== "null");
  const nullable = real.length < options.length;
  if (real.length === 1) return { nullable, schema: { ...real[0], ...pick(schema) } };
  // "One or many" (X or a list of X): edited as the list, which a single value also is.
  const list = real.find((option) => option.type === "array");
  if (real.length === 2 && list && resolve(list.items || {}).type === real.find((o) => o !== list).type) {
    return { nullable, schema: { ...list, ...pick(schema) } };
  }
  return { nullable, schema: { ...schema, anyOf: real } };
}

function pick(schema) {
  const kept = {};
  for (const name of ["title", "description", "default"]) if (name in schema) kept[name] = schema[name];
  return kept;
}

function isPrimitive(schema) {
  return ["string", "integer", "number", "boolean"].includes(schema.type) || schema.enum;
}

// One input for a schema; returns {node, read(): value|undefined, errors: Map(path -> el)}.
function field(name, rawSchema, initial, resolve, path, errors, hints) {
  const { nullable, schema } = unwrap(rawSchema, resolve);
  const id = `f${(uid += 1)}`;
  const value = initial !== undefined ? initial : schema.default;
  const error = h("span.field-error", { role: "alert" });
  errors.set(path.join("."), error);
  const title = schema.title || name;
  const help = schema.description ? h("small.help", schema.description) : null;
  const wrap = (control, extra) =>
    h(
      "div.field",
      { dataset: { field: path.join(".") } },
      h("label", { htmlFor: id }, title),
      control,
      extra,
      help,
      error,
    );

  if (schema.const !== undefined) return { node: null, read: () => schema.const };
  if (schema.type === "boolean") {
    const box = h("input", { id, type: "checkbox", name, checked: Boolean(value) });
    return { node: wrap(box), read: () => box.checked };
  }
  if (schema.enum) {
    const select = h(
      "select",
      { id, name },
      nullable || value === undefined ? h("option", { value: "" }, "(default)") : null,
      schema.enum.map((option) =>
        h("option", { value: String(option), selected: option === value }, String(option)),
      ),
    );
    return {
      node: wrap(select),
      read: () => (select.value === "" ? undefined : schema.enum.find((o) => String(o) === select.value)),
    };
  }
  if (schema.type === "integer" || schema.type === "number") {
    const input = h("input", {
      id,
      name,
      type: "number",
      step: schema.type === "integer" ? "1" : "any",
      value: value ?? "",
      placeholder: nullable ? "default" : "",
    });
    for (const [bound, attr] of [
      ["minimum", "min"],
      ["maximum", "max"],
    ])
      if (schema[bound] !== undefined) input.setAttribute(attr, schema[bound]);
    return { node: wrap(input), read: () => (input.value === "" ? undefined : Number(input.value)) };
  }
  if (schema.type === "string") {
    const long = (schema.maxLength || 0) > 2000 || ["text", "prompt"].includes(name);
    const input = long
      ? h("textarea", { id, name, rows: 3, value: value ?? "" })
      : h("input", { id, name, type: "text", value: value ?? "", placeholder: nullable ? "default" : "" });
    if (hints[name]) {
      const list = h(
        "datalist",
        { id: `${id}-list` },
        hints[name].map((option) => h("option", { value: option })),
      );
      input.setAttribute("list", list.id);
      return { node: wrap(input, list), read: () => (input.value === "" ? undefined : input.value) };
    }
    return {
      node: wrap(input),
      read: () => (input.value === "" && (nullable || !schema.minLength) ? undefined : input.value),
    };
  }
  if (schema.type === "array" && isPrimitive(resolve(schema.items || {}))) {
    return listField(name, schema, value, resolve, id, wrap);
  }
  if (schema.type === "array") {
    return objectList(title, resolve(schema.items), value, resolve, path, errors, hints, error, help);
  }
  if (schema.type === "object" && schema.properties) {
    const form = objectForm(schema, value || {}, resolve, path, errors, hints);
    return { node: h("fieldset.nested", h("legend", title), help, form.node, error), read: form.read };
  }
  // Free-form values (dicts, unions of objects): edited as JSON, the one place left for it.
  const area = h("textarea.json", {
    id,
    name,
    rows: 3,
    value: value === undefined ? "" : JSON.stringify(value, null, 1),
  });
  return {
    node: wrap(area),
    read: () => {
      if (area.value.trim() === "") return undefined;
      try {
        return JSON.parse(area.value);
      } catch (_) {
        throw Object.assign(new Error(`${title}: not valid JSON`), { param: path.join(".") });
      }
    },
  };
}

// A list of primitives: strings one per line, numbers separated by commas.
function listField(name, schema, value, resolve, id, wrap) {
  const item = resolve(schema.items);
  const strings = item.type === "string" && !item.enum;
  const text = Array.isArray(value) ? value.join(strings ? "\n" : ", ") : "";
  const input = strings
    ? h("textarea", { id, name, rows: 2, value: text, placeholder: "one per line" })
    : h("input", { id, name, type: "text", value: text, placeholder: "comma-separated" });
  const read = () => {
    const parts = input.value
      .split(strings ? "\n" : ",")
      .map((part) => (strings ? part : part.trim()))
      .filter((part) => part !== "");
    if (!parts.length) return undefined;
    return item.type === "integer" || item.type === "number" ? parts.map(Number) : parts;
  };
  return { node: wrap(input), read };
}

// A list of objects (e.g. prompt cases): one sub-form per item, with add and remove.
function objectList(title, itemSchema, value, resolve, path, errors, hints, error, help) {
  const items = [];
  const holder = h("div.items");
  const add = (initial) => {
    const index = items.length;
    const form = objectForm(itemSchema, initial || {}, resolve, [...path, String(index)], errors, hints);
    const entry = { form, node: null };
    entry.node = h(
      "fieldset.item",
      h("legend", `${itemSchema.title || "item"} ${index + 1}`),
      form.node,
      h("button.small", { type: "button", onclick: () => remove(entry) }, "remove"),
    );
    items.push(entry);
    holder.append(entry.node);
  };
  const remove = (entry) => {
    items.splice(items.indexOf(entry), 1);
    entry.node.remove();
  };
  (Array.isArray(value) && value.length ? value : []).forEach(add);
  const node = h(
    "fieldset.nested",
    h("legend", title),
    help,
    holder,
    h("button.small", { type: "button", onclick: () => add({}) }, `add ${itemSchema.title || "item"}`),
    error,
  );
  return { node, read: () => (items.length ? items.map((entry) => entry.form.read()) : undefined) };
}

function objectForm(schema, initial, resolve, path, errors, hints, { advanced = false } = {}) {
  const required = new Set(schema.required || []);
  const fields = [];
  const main = h("div.fields");
  const more = h("div.fields");
  for (const [name, property] of Object.entries(schema.properties || {})) {
    const made = field(name, property, initial[name], resolve, [...path, name], errors, hints);
    fields.push([name, made]);
    if (!made.node) continue;
    const prominent = !advanced || required.has(name) || name in initial;
    (prominent ? main : more).append(made.node);
  }
  const node = more.childElementCount
    ? h("div", main, h("details.more", h("summary", "More options"), more))
    : main;
  const read = () => {
    const result = {};
    for (const [name, made] of fields) {
      const value = made.read();
      if (value !== undefined) result[name] = value;
    }
    return result;
  };
  return { node, read };
}

// A whole request form: {node, read(), showError(ApiError|Error) -> bool, clear()}.
export function schemaForm(openapi, schema, initial = {}, hints = {}) {
  const resolve = resolver(openapi);
  const errors = new Map();
  const form = objectForm(resolve(schema), initial, resolve, [], errors, hints, { advanced: true });
  const clear = () => {
    for (const node of errors.values()) node.textContent = "";
    form.node.querySelectorAll(".invalid").forEach((node) => node.classList.remove("invalid"));
  };
  const showError = (error) => {
    const param = (error.param || "").replace(/^body\./, "");
    const parts = param.split(".");
    // The deepest field the API's param names (a message about cases.0.expect lands there).
    for (let end = parts.length; end > 0; end -= 1) {
      const target = errors.get(parts.slice(0, end).join("."));
      if (target) {
        target.textContent = error.message;
        target.parentElement.classList.add("invalid");
        const details = target.closest("details");
        if (details) details.open = true;
        return true;
      }
    }
    return false;
  };
  return { node: form.node, read: form.read, showError, clear };
}
