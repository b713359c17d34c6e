// Talking to the API: the key (kept in this tab's sessionStorage), JSON calls with the API's
// error body, authenticated blobs (plot images, CSV), run sockets and SSE-over-fetch streams.

const KEY_STORAGE = "hatchery.apiKey";
// The page lives at <base>/ui/; API paths hang off <base> (a proxy may add a prefix).
export const BASE = location.pathname.replace(/\/ui\/.*$/, "");

let key = sessionStorage.getItem(KEY_STORAGE) || "";

export function apiKey() {
  return key;
}

export function setApiKey(value) {
  key = value.trim();
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
}

export class ApiError extends Error {
  constructor(status, message, code, param) {
    super(message);
    this.status = status;
    this.code = code || null;
    this.param = param || null;
  }
}

function headers(extra = {}, json = false) {
  const result = new Headers(extra);
  if (key) result.set("Authorization", `Bearer ${key}`);
  if (json) result.set("Content-Type", "application/json");
  return result;
}

async function raise(response) {
  let error = {};
  try {
    error = (await response.json()).error || {};
  } catch (_) {
    // not JSON: keep the status text
  }
  throw new ApiError(response.status, error.message || response.statusText, error.code, error.param);
}

export async function api(path, { method = "GET", body, headers: extra } = {}) {
  const response = await fetch(BASE + path, {
    method,
    headers: headers(extra, body !== undefined),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) await raise(response);
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

// A same-origin blob: URL for a route behind auth (an <img src> cannot send the key).
export async function blobUrl(path) {
  const response = await fetch(BASE + path, { headers: headers() });
  if (!response.ok) await raise(response);
  return URL.createObjectURL(await response.blob());
}

export function randomKey() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes); // works on plain http too, unlike crypto.randomUUID
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

// Follows one run's events over its WebSocket (links.ws), resuming after the last seq seen
// when the socket drops; onEvent gets every event once. Returns a handle with close().
export function followRun(run, onEvent, { onClose } = {}) {
  let lastSeq = 0;
  let socket = null;
  let closed = false;
  let retries = 0;
  const open = () => {
    const url = new URL(BASE + run.links.ws, location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("after", String(lastSeq));
    if (key) url.searchParams.set("api_key", key);
    socket = new WebSocket(url);
    socket.onmessage = (message) => {
      const event = JSON.parse(message.data);
      if (typeof event.seq !== "number" || event.seq <= lastSeq) return; // pong, errors
      lastSeq = event.seq;
      retries = 0;
      onEvent(event);
    };
    socket.onclose = (close) => {
      if (closed) return;
      // 1000: the run ended and the stream is complete; 4401/4404: no point retrying.
      if (close.code === 1000 || close.code === 4401 || close.code === 4404 || retries >= 5) {
        closed = true;
        if (onClose) onClose(close.code);
        return;
      }
      retries += 1;
      setTimeout(open, 500 * retries);
    };
  };
  open();
  return {
    close() {
      closed = true;
      if (socket) socket.close();
    },
    cancel() {
      if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "cancel" }));
    },
  };
}

// POSTs a streaming OpenAI request and calls onData with each parsed `data:` payload.
export async function streamSse(path, body, onData, signal) {
  const response = await fetch(BASE + path, {
    method: "POST",
    headers: headers({ Accept: "text/event-stream" }, true),
    body: JSON.stringify(body),
    signal,
  });
  if (!response.ok) await raise(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (!data || data === "[DONE]") continue;
      onData(JSON.parse(data));
    }
  }
}

// The OpenAPI document, fetched once: start forms are generated from its request schemas.
let openapi = null;
export async function openApi() {
  if (!openapi) {
    // A refusal (no key yet) is not kept: the next call, with a key, asks again.
    openapi = api("/openapi.json").catch((error) => {
      openapi = null;
      throw error;
    });
  }
  return openapi;
}
