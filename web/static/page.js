// The page: API key prompt, playground (submit, stream, cancel) and the live fleet view.
"use strict";

(() => {
  const { Api, ApiError, isTerminal } = window.conveyor;
  const R = window.render;
  const $ = (id) => document.getElementById(id);

  const BASE = window.location.origin;
  const FLEET_EVERY_MS = 2000;
  // Which media each backend takes (the registry's backends); tasks that need one say so.
  const MEDIA_BY_BACKEND = {
    echo: ["image", "audio", "video"],
    qwen_vl: ["image", "video"],
    qwen_audio: ["audio"],
    qwen_omni: ["image", "audio", "video"],
    blip_vqa: ["image"],
    whisper: ["audio"],
  };
  const MEDIA_BY_TASK = { vqa: ["image"], transcribe: ["audio"], embed: [], classify: [], complete: [] };

  const api = new Api(BASE);
  const authRequired = document.body.dataset.authRequired === "true";
  const state = { models: [], job: null, abort: null, fleetTimer: null, messageSeq: 0 };

  // ---- API key ----------------------------------------------------------------------

  function askForKey(message) {
    stopFleet();
    $("key-panel").hidden = false;
    $("key-status").hidden = true;
    const error = $("key-error");
    error.hidden = !message;
    error.textContent = message || "";
    $("key-input").focus();
  }

  api.onUnauthorized = () => {
    api.setKey(null);
    askForKey("The server refused that key (401). Enter a valid one.");
  };

  $("key-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const input = $("key-input");
    const key = input.value.trim();
    if (!key) return;
    api.setKey(key);
    input.value = "";
    if (await start()) {
      $("key-panel").hidden = true;
      $("model").focus();
    }
  });

  $("key-forget").addEventListener("click", () => {
    api.setKey(null);
    askForKey("");
  });

  function showKeyState() {
    $("key-status").hidden = !api.key;
  }

  // ---- models and tasks ---------------------------------------------------------------

  function modelLabel(m) {
    return `${m.id} — ${m.tasks.join(", ")} — workers: ${R.workersText(m)}`;
  }

  function fillModels(models) {
    const select = $("model");
    const chosen = select.value;
    state.models = models;
    select.replaceChildren(...models.map((m) => R.el("option", { value: m.id, text: modelLabel(m) })));
    const online = models.find((m) => m.workers_online && m.loaded);
    const preferred = models.find((m) => m.id === chosen) || online || models.find((m) => m.default) || models[0];
    if (preferred) select.value = preferred.id;
    onModelChange(preferred && preferred.id === chosen);
  }

  function refreshModelLabels(models) {
    state.models = models;
    for (const option of $("model").options) {
      const m = models.find((x) => x.id === option.value);
      if (m) option.textContent = modelLabel(m);
    }
    describeModel();
  }

  function currentModel() {
    return state.models.find((m) => m.id === $("model").value) || null;
  }

  function describeModel() {
    const m = currentModel();
    if (!m) return;
    const startable = m.on_demand && (m.on_demand.startable || m.on_demand.worker);
    let live = `${m.workers_online} worker(s) online${m.loaded ? "" : ", loading"}`;
    if (!m.workers_online) {
      live = startable
        ? "no worker online yet: a job starts one (it loads the model first)"
        : `no worker online: jobs wait in the queue (start one: conveyor worker --model ${m.id})`;
    }
    const info = `${m.description || m.backend}. Tasks: ${m.tasks.join(", ")}. ${live}. Queue: ${m.queue_depth}.`;
    if ($("model-info").textContent !== info) $("model-info").textContent = info; // announced once
  }

  function onModelChange(keepTask) {
    const m = currentModel();
    const task = $("task");
    const before = task.value;
    task.replaceChildren(...(m ? m.tasks : []).map((t) => R.el("option", { value: t, text: t })));
    if (keepTask && m && m.tasks.includes(before)) task.value = before;
    describeModel();
    onTaskChange();
  }

  function mediaFor(m, task) {
    if (!m) return [];
    return MEDIA_BY_TASK[task] || MEDIA_BY_BACKEND[m.backend] || [];
  }

  function onTaskChange() {
    const task = $("task").value;
    for (const node of document.querySelectorAll("[data-for]")) {
      node.hidden = !node.dataset.for.split(" ").includes(task);
    }
    const media = mediaFor(currentModel(), task);
    $("media").hidden = media.length === 0;
    for (const node of document.querySelectorAll("[data-media]")) {
      node.hidden = !media.includes(node.dataset.media);
    }
  }

  $("model").addEventListener("change", () => onModelChange(true));
  $("task").addEventListener("change", onTaskChange);

  // ---- chat messages --------------------------------------------------------------------

  function addMessage(role, content) {
    const n = ++state.messageSeq;
    const roleId = `msg-role-${n}`;
    const textId = `msg-text-${n}`;
    const roleSelect = R.el("select", { id: roleId, class: "msg-role" },
      ...["user", "assistant"].map((r) => R.el("option", { value: r, text: r })));
    roleSelect.value = role;
    const text = R.el("textarea", { id: textId, class: "msg-text", rows: "3" });
    text.value = content || "";
    const remove = R.el("button", { type: "button", class: "msg-remove", text: "Remove" });
    const item = R.el("li", { class: "message" },
      R.el("div", { class: "msg-head" },
        R.el("label", { for: roleId, text: `Message ${n} role` }), roleSelect, remove),
      R.el("label", { for: textId, class: "sr-only", text: `Message ${n} text` }), text);
    remove.addEventListener("click", () => {
      if ($("messages").children.length > 1) item.remove();
    });
    $("messages").append(item);
    return text;
  }

  $("add-message").addEventListener("click", () => {
    const rows = $("messages").querySelectorAll(".msg-role");
    const last = rows.length ? rows[rows.length - 1].value : "assistant";
    addMessage(last === "user" ? "assistant" : "user", "").focus();
  });

  // ---- building the job -----------------------------------------------------------------

  function num(id) {
    const v = $(id).value.trim();
    return v === "" ? undefined : Number(v);
  }

  function lines(id) {
    return $(id).value.split("\n").map((s) => s.trim()).filter(Boolean);
  }

  function sampling(task) {
    const out = { max_tokens: num("max-tokens") };
    if (task === "chat" || task === "complete") {
      Object.assign(out, {
        temperature: num("temperature"),
        top_p: num("top-p"),
        top_k: num("top-k"),
        repeat_penalty: num("repeat-penalty"),
        seed: num("seed"),
      });
      const stop = lines("stop");
      if (stop.length) out.stop = stop;
    }
    return out;
  }

  function clean(obj) {
    return Object.fromEntries(Object.entries(obj).filter(([, v]) => v !== undefined && v !== ""));
  }

  class FormProblem extends Error {}

  function buildJob() {
    const m = currentModel();
    if (!m) throw new FormProblem("Pick a model first.");
    const task = $("task").value;
    const files = {};
    for (const name of mediaFor(m, task)) {
      const file = $(`file-${name}`).files[0];
      if (file) files[name] = file;
    }
    let input;
    const context = {};
    if (task === "chat") {
      const messages = [...$("messages").querySelectorAll(".message")]
        .map((li) => ({ role: li.querySelector(".msg-role").value, content: li.querySelector(".msg-text").value }))
        .filter((msg) => msg.content.trim() !== "");
      if (!messages.length) throw new FormProblem("Write a message first.");
      input = { messages, system_prompt: $("system-prompt").value.trim() || undefined, ...sampling(task) };
    } else if (task === "complete") {
      if (!$("prompt").value) throw new FormProblem("Write a prompt first.");
      input = { prompt: $("prompt").value, ...sampling(task) };
    } else if (task === "embed" || task === "classify") {
      const texts = lines("texts");
      if (!texts.length) throw new FormProblem("Write at least one text.");
      context.texts = texts;
      input = task === "embed" ? { texts, normalize: $("normalize").checked } : { texts, top_k: num("classify-top-k") };
    } else if (task === "vqa") {
      if (!files.image) throw new FormProblem("Attach an image to ask about.");
      input = { question: $("question").value.trim() || "What is in the picture?", max_tokens: num("max-tokens") };
    } else if (task === "transcribe") {
      if (!files.audio) throw new FormProblem("Attach an audio file to transcribe.");
      input = { language: $("language").value.trim() || undefined, prompt: $("transcribe-prompt").value.trim() || undefined, max_tokens: num("max-tokens") };
    } else {
      try {
        input = JSON.parse($("echo-input").value || "{}");
      } catch (err) {
        throw new FormProblem(`The input is not valid JSON: ${err.message}`);
      }
      if (typeof input !== "object" || input === null || Array.isArray(input)) {
        throw new FormProblem("The input must be a JSON object.");
      }
    }
    return { payload: { model: m.id, task, input: clean(input) }, files, context };
  }

  // ---- running a job --------------------------------------------------------------------

  function setStatus(text, kind) {
    const node = $("job-status");
    node.textContent = text;
    node.className = `status ${kind || ""}`;
  }

  function showError(text) {
    const node = $("form-error");
    node.hidden = !text;
    node.textContent = text || "";
  }

  function showRecord(job) {
    $("stat-job").textContent = job.id;
    $("job-json").textContent = JSON.stringify(job, null, 2);
    const metrics = job.metrics || {};
    if (typeof metrics.queue_seconds === "number") $("stat-queue").textContent = R.fmtSeconds(metrics.queue_seconds);
    if (typeof metrics.tokens_per_second === "number") $("stat-tps").textContent = metrics.tokens_per_second.toFixed(1);
    if (typeof metrics.completion_tokens === "number") $("stat-tokens").textContent = String(metrics.completion_tokens);
  }

  async function run() {
    if (state.job) return;
    showError("");
    let built;
    try {
      built = buildJob();
    } catch (err) {
      if (err instanceof FormProblem) return showError(err.message);
      throw err;
    }
    const { payload, files, context } = built;
    const run = { id: null, tokens: 0, events: 0, submitAt: performance.now(), runningAt: null, firstTokenAt: null, status: "submitting", text: null, queueTimer: null };
    state.job = run;
    state.abort = new AbortController();
    $("run").disabled = true;
    $("result").hidden = false;
    for (const id of ["stat-job", "stat-queue", "stat-tps", "stat-tokens"]) $(id).textContent = "–";
    $("stat-events").textContent = "0";
    $("job-json").textContent = "";
    $("curl").textContent = R.curlCommand(BASE, payload, files, Boolean(api.key));
    const output = $("output");
    output.replaceChildren();
    output.setAttribute("aria-busy", "true");
    setStatus("submitting…", "queued");
    try {
      const job = await api.submit(payload, files, { signal: state.abort.signal });
      run.id = job.id;
      showRecord(job);
      $("cancel").disabled = false;
      if (job.notice) showError(job.notice);
      setStatus(job.status, job.status);
      run.queueTimer = setInterval(() => {
        if (!run.runningAt && !isTerminal(run.status)) {
          const waited = R.fmtSeconds((performance.now() - run.submitAt) / 1000);
          const ahead = typeof job.queue_position === "number" ? `, ${job.queue_position} ahead at submit` : "";
          $("stat-queue").textContent = `${waited} so far${ahead}`;
        }
      }, 250);
      await api.follow(job.id, (frame) => onEvent(run, frame, payload.task), state.abort.signal);
      const final = await api.get(`/v1/jobs/${encodeURIComponent(job.id)}`);
      finish(run, final, payload.task, context);
    } catch (err) {
      if (err instanceof ApiError) {
        setStatus(err.status === 401 ? "unauthorized" : "error", "failed");
        showError(`${err.status} ${err.type ? `${err.type}: ` : ""}${err.message}`);
        if (err.body) $("job-json").textContent = JSON.stringify(err.body, null, 2);
      } else if (!(state.abort && state.abort.signal.aborted)) {
        setStatus("error", "failed");
        showError(`Could not reach the server: ${err.message}`);
      }
    } finally {
      clearInterval(run.queueTimer);
      output.removeAttribute("aria-busy");
      state.job = null;
      $("run").disabled = false;
      $("cancel").disabled = true;
      refreshFleet();
    }
  }

  function onEvent(run, frame, task) {
    run.events += 1;
    $("stat-events").textContent = String(run.events);
    const data = frame.data || {};
    if (frame.event === "status") {
      run.status = data.status;
      if (data.status === "running" && !run.runningAt) {
        run.runningAt = performance.now();
        $("stat-queue").textContent = R.fmtSeconds((run.runningAt - run.submitAt) / 1000);
      }
      setStatus(data.status + (data.error ? ` (${data.error.type || "error"})` : ""), data.status);
    } else if (frame.event === "token") {
      if (!run.text) {
        run.text = R.el("p", { class: "text streaming" });
        $("output").replaceChildren(run.text);
        run.firstTokenAt = performance.now();
      }
      run.text.textContent += data.text || "";
      run.tokens += 1;
      $("stat-tokens").textContent = String(run.tokens);
      const secs = (performance.now() - run.firstTokenAt) / 1000;
      if (secs > 0.05) $("stat-tps").textContent = `${(run.tokens / secs).toFixed(1)} (live)`;
    } else if (frame.event === "progress") {
      const total = data.total || 0;
      $("output").replaceChildren(
        R.el("label", { for: "job-progress", text: `Progress ${data.done}/${total}` }),
        R.el("progress", { id: "job-progress", max: String(total || 1), value: String(data.done || 0) })
      );
    }
  }

  function finish(run, job, task, context) {
    showRecord(job);
    setStatus(job.status + (job.error ? `: ${job.error.type}` : ""), job.status);
    const output = $("output");
    if (job.status === "succeeded") {
      output.replaceChildren(R.renderOutput(task, job.output, context));
      if (task === "chat" && job.output && typeof job.output.text === "string") offerContinue(job.output.text);
    } else {
      const parts = [];
      if (job.output) parts.push(R.renderOutput(task, job.output, context));
      if (job.error) parts.push(R.el("p", { class: "error", text: `${job.error.type}: ${job.error.message}` }));
      if (job.status === "canceled") parts.push(R.el("p", { class: "hint", text: "Canceled." }));
      output.replaceChildren(...parts);
    }
  }

  function offerContinue(answer) {
    const button = R.el("button", { type: "button", class: "continue", text: "Continue the conversation" });
    button.addEventListener("click", () => {
      addMessage("assistant", answer);
      addMessage("user", "").focus();
      button.remove();
    });
    $("output").append(button);
  }

  async function cancel() {
    const run = state.job;
    if (!run || !run.id) return;
    $("cancel").disabled = true;
    setStatus("canceling…", "running");
    try {
      const job = await api.request("POST", `/v1/jobs/${encodeURIComponent(run.id)}/cancel`);
      showRecord(job);
    } catch (err) {
      showError(`Cancel failed: ${err.message}`);
    }
  }

  $("job-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    run();
  });
  $("job-form").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) {
      ev.preventDefault();
      run();
    }
  });
  $("cancel").addEventListener("click", cancel);
  $("copy-curl").addEventListener("click", async () => {
    const button = $("copy-curl");
    try {
      await navigator.clipboard.writeText($("curl").textContent);
      button.textContent = "Copied";
    } catch (_) {
      const range = document.createRange();
      range.selectNodeContents($("curl"));
      window.getSelection().removeAllRanges();
      window.getSelection().addRange(range);
      button.textContent = "Selected: press Ctrl+C";
    }
    setTimeout(() => {
      button.textContent = "Copy curl command";
    }, 2000);
  });

  // ---- fleet ------------------------------------------------------------------------------

  async function refreshFleet() {
    if (authRequired && !api.key) return;
    try {
      const [models, memory, jobs] = await Promise.all([
        api.get("/v1/models"),
        api.get("/admin/memory"),
        api.get("/v1/jobs?limit=15"),
      ]);
      R.renderFleet(models.data, memory.workers || [], jobs.data || []);
      refreshModelLabels(models.data);
      $("fleet-error").hidden = true;
      $("fleet-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) return;
      $("fleet-error").hidden = false;
      $("fleet-error").textContent = `Fleet: ${err.message}`;
    }
  }

  function startFleet() {
    stopFleet();
    state.fleetTimer = setInterval(() => {
      if (!document.hidden) refreshFleet();
    }, FLEET_EVERY_MS);
  }

  function stopFleet() {
    clearInterval(state.fleetTimer);
    state.fleetTimer = null;
  }

  // ---- start ------------------------------------------------------------------------------

  async function start() {
    try {
      const models = await api.get("/v1/models");
      fillModels(models.data);
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) return false;
      showError(`Could not load the models: ${err.message}`);
      return false;
    }
    showKeyState();
    await refreshFleet();
    startFleet();
    return true;
  }

  addMessage("user", "");
  onTaskChange();
  if (authRequired && !api.key) askForKey("");
  else start();
})();
