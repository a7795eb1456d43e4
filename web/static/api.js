// conveyor's public HTTP API, as the page uses it: the key, JSON calls and a job's events.
// The key lives in sessionStorage (this tab only) and travels only in the Authorization
// header: never in a URL, never in a log line.
"use strict";

const KEY_STORE = "conveyor.apiKey";

class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.type = err.type || "";
    this.body = body;
  }
}

class Api {
  constructor(base) {
    this.base = base;
    let stored = null;
    try {
      stored = window.sessionStorage.getItem(KEY_STORE);
    } catch (_) {
      stored = null; // storage may be off; the key then lives in memory only
    }
    this.key = stored;
    this.onUnauthorized = () => {};
  }

  setKey(key) {
    this.key = key || null;
    try {
      if (this.key) window.sessionStorage.setItem(KEY_STORE, this.key);
      else window.sessionStorage.removeItem(KEY_STORE);
    } catch (_) {
      // memory only
    }
  }

  headers(extra) {
    const h = Object.assign({ Accept: "application/json" }, extra || {});
    if (this.key) h.Authorization = `Bearer ${this.key}`;
    return h;
  }

  async request(method, path, { body, headers, signal } = {}) {
    const resp = await fetch(this.base + path, {
      method,
      body,
      signal,
      headers: this.headers(headers),
      credentials: "omit",
      cache: "no-store",
    });
    let data = null;
    const text = await resp.text();
    try {
      data = text ? JSON.parse(text) : null;
    } catch (_) {
      data = { error: { message: text.slice(0, 300) } };
    }
    if (resp.status === 401) this.onUnauthorized();
    if (!resp.ok && resp.status !== 202) throw new ApiError(resp.status, data);
    return data;
  }

  get(path, opts) {
    return this.request("GET", path, opts);
  }

  postJson(path, payload, opts = {}) {
    return this.request("POST", path, {
      ...opts,
      body: JSON.stringify(payload),
      headers: { "Content-Type": "application/json" },
    });
  }

  // Submit a job: JSON, or multipart with the body in a `request` part and one file part
  // per media field (the API's documented form) when files are attached.
  submit(payload, files, opts = {}) {
    const names = Object.keys(files);
    if (!names.length) return this.postJson("/v1/jobs", payload, opts);
    const form = new FormData();
    form.append("request", JSON.stringify(payload));
    for (const name of names) form.append(name, files[name], files[name].name);
    return this.request("POST", "/v1/jobs", { ...opts, body: form });
  }

  // Follow a job's Server-Sent Events with fetch() and a stream reader (EventSource cannot
  // send an Authorization header). Calls onEvent({id, event, data}) for each frame; resolves
  // when the stream ends (after the job's terminal status) and reconnects from the last id
  // if the connection drops before that.
  async follow(jobId, onEvent, signal) {
    let lastId = null;
    let ended = false;
    for (let attempt = 0; !ended && attempt < 20; attempt++) {
      const headers = { Accept: "text/event-stream" };
      if (lastId) headers["Last-Event-ID"] = lastId;
      let resp;
      try {
        resp = await fetch(`${this.base}/v1/jobs/${encodeURIComponent(jobId)}/events`, {
          headers: this.headers(headers),
          signal,
          credentials: "omit",
          cache: "no-store",
        });
      } catch (err) {
        if (signal && signal.aborted) return;
        await sleep(1000);
        continue;
      }
      if (resp.status === 401) this.onUnauthorized();
      if (!resp.ok) {
        let body = null;
        try {
          body = await resp.json();
        } catch (_) {
          body = null;
        }
        throw new ApiError(resp.status, body);
      }
      try {
        await readEvents(resp.body, (frame) => {
          if (frame.id) lastId = frame.id;
          if (frame.event === "status" && isTerminal(frame.data && frame.data.status)) ended = true;
          onEvent(frame);
        });
      } catch (err) {
        if (signal && signal.aborted) return;
      }
      if (!ended) await sleep(500);
    }
  }
}

const TERMINAL = new Set(["succeeded", "failed", "canceled"]);

function isTerminal(status) {
  return TERMINAL.has(status);
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// Parse an SSE byte stream into frames {id, event, data}; comments (heartbeats) are dropped.
async function readEvents(stream, onFrame) {
  const reader = stream.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const frame = parseFrame(block);
      if (frame) onFrame(frame);
    }
  }
}

function parseFrame(block) {
  const frame = { id: null, event: "message", data: null };
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "id") frame.id = value;
    else if (field === "event") frame.event = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return null;
  try {
    frame.data = JSON.parse(data.join("\n"));
  } catch (_) {
    frame.data = data.join("\n");
  }
  return frame;
}

window.conveyor = { Api, ApiError, isTerminal };
