// The playground: chat and completions against /v1, streamed token by token, with the
// sampling knobs. A conversation lives in this page only.

import { api, streamSse } from "./api.js";
import { errorBox, h, replace } from "./dom.js";

const KNOBS = [
  // name, label, default, min, max, step
  ["max_tokens", "max tokens", 128, 1, 4096, 1],
  ["temperature", "temperature", 0.8, 0, 2, 0.05],
  ["top_p", "top p", 1, 0.01, 1, 0.01],
  ["top_k", "top k", 0, -1, 256, 1],
  ["min_p", "min p", 0, 0, 1, 0.01],
  ["presence_penalty", "presence penalty", 0, -2, 2, 0.1],
  ["frequency_penalty", "frequency penalty", 0, -2, 2, 0.1],
  ["repetition_penalty", "repetition penalty", 1, 0.01, 2, 0.05],
];

export function mount(root, ctx, params) {
  const messages = [];
  let controller = null;
  const modelSelect = h("select", { name: "model" });
  const mode = h(
    "select",
    { name: "mode", onchange: () => layout() },
    h("option", { value: "chat" }, "chat"),
    h("option", { value: "completion" }, "completion"),
  );
  const stream = h("input", { type: "checkbox", name: "stream", checked: true });
  const seed = h("input", { type: "number", name: "seed", placeholder: "random", step: 1 });
  const stop = h("input", { type: "text", name: "stop", placeholder: "comma-separated" });
  const system = h("textarea", { name: "system", rows: 2, placeholder: "optional system message" });
  const prompt = h("textarea", { name: "prompt", rows: 4, placeholder: "Type a message", value: "ROMEO:" });
  const transcript = h("div.transcript");
  const usage = h("p.muted.usage");
  const problems = h("div");
  const send = h("button.primary", { type: "submit" }, "Send");
  const abort = h(
    "button",
    { type: "button", disabled: true, onclick: () => controller && controller.abort() },
    "Stop",
  );
  const clear = h(
    "button",
    {
      type: "button",
      onclick: () => {
        messages.length = 0;
        transcript.replaceChildren();
      },
    },
    "Clear",
  );
  const knobs = KNOBS.map(([name, label, value, min, max, step]) => {
    const input = h("input", { type: "range", name, min, max, step, value });
    const shown = h("output", String(value));
    input.addEventListener("input", () => (shown.value = input.value));
    return { name, input, node: h("label.knob", `${label} `, shown, input) };
  });
  const systemBox = h("label", "System ", system);

  function layout() {
    systemBox.hidden = mode.value !== "chat";
    prompt.placeholder = mode.value === "chat" ? "Type a message" : "Text to continue";
  }

  function sampling() {
    const body = {};
    for (const knob of knobs) body[knob.name] = Number(knob.input.value);
    if (seed.value !== "") body.seed = Number(seed.value);
    const stops = stop.value
      .split(",")
      .map((s) => s.trim())
      .filter(Boolean);
    if (stops.length) body.stop = stops;
    return body;
  }

  async function submit(event) {
    event.preventDefault();
    replace(problems);
    const chat = mode.value === "chat";
    const text = prompt.value;
    const body = { model: modelSelect.value, ...sampling(), stream: stream.checked };
    if (body.stream) body.stream_options = { include_usage: true };
    let reply;
    if (chat) {
      if (!messages.length && system.value.trim()) messages.push({ role: "system", content: system.value });
      messages.push({ role: "user", content: text });
      body.messages = [...messages];
      transcript.append(h("div.msg.user", h("span.role", "user"), h("pre", text)));
      reply = h("pre");
      transcript.append(h("div.msg.assistant", h("span.role", "assistant"), reply));
      prompt.value = "";
    } else {
      body.prompt = text;
      reply = h("pre.continuation");
      transcript.replaceChildren(h("div.msg.completion", h("pre.prompt", text), reply));
    }
    send.disabled = true;
    abort.disabled = false;
    controller = new AbortController();
    const path = chat ? "/v1/chat/completions" : "/v1/completions";
    try {
      if (body.stream) {
        await streamSse(
          path,
          body,
          (chunk) => {
            if (chunk.usage)
              usage.textContent = `${chunk.usage.prompt_tokens} prompt + ${chunk.usage.completion_tokens} completion tokens`;
            for (const choice of chunk.choices || []) {
              const piece = chat ? (choice.delta || {}).content : choice.text;
              if (piece) reply.textContent += piece;
              if (choice.finish_reason) reply.dataset.finish = choice.finish_reason;
            }
          },
          controller.signal,
        );
      } else {
        const answer = await api(path, { method: "POST", body });
        const choice = answer.choices[0];
        reply.textContent = chat ? choice.message.content : choice.text;
        reply.dataset.finish = choice.finish_reason;
        usage.textContent = `${answer.usage.prompt_tokens} prompt + ${answer.usage.completion_tokens} completion tokens`;
      }
      if (chat) messages.push({ role: "assistant", content: reply.textContent });
    } catch (error) {
      if (error.name !== "AbortError") replace(problems, errorBox(error));
      if (
        chat &&
        messages.length &&
        messages[messages.length - 1].role === "user" &&
        error.name !== "AbortError"
      )
        messages.pop();
    } finally {
      send.disabled = false;
      abort.disabled = true;
      controller = null;
    }
  }

  replace(
    root,
    h(
      "section.card.playground",
      h("h2", "Playground"),
      h(
        "div.toolbar",
        h("label", "Model ", modelSelect),
        h("label", "Mode ", mode),
        h("label.inline", stream, " stream"),
        h("label", "Seed ", seed),
        h("label", "Stop ", stop),
      ),
      h(
        "div.knobs",
        knobs.map((knob) => knob.node),
      ),
      systemBox,
      transcript,
      h("form.prompt", { onsubmit: submit }, prompt, h("div.toolbar", send, abort, clear)),
      usage,
      problems,
    ),
  );
  layout();

  (async () => {
    try {
      const models = (await api("/v1/models")).data.map((m) => m.id);
      const wanted = params.get("model") || ctx.info.default_model;
      replace(
        modelSelect,
        models.map((id) => h("option", { value: id, selected: id === wanted }, id)),
      );
    } catch (error) {
      replace(problems, errorBox(error));
    }
  })();
  return () => controller && controller.abort();
}
