// Turning API answers into readable DOM: task outputs, the fleet tables, the curl command.
// Text always goes in through textContent, never as HTML.
"use strict";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") node.textContent = v;
    else if (k === "class") node.className = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fmtBytes(n) {
  if (typeof n !== "number") return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function fmtSeconds(s) {
  if (typeof s !== "number") return "–";
  return s < 10 ? `${s.toFixed(2)} s` : `${s.toFixed(1)} s`;
}

function fmtTime(epoch) {
  if (typeof epoch !== "number") return "–";
  return new Date(epoch * 1000).toLocaleTimeString();
}

function runningText(w) {
  // A worker runs up to max_concurrency jobs at once: name the first, count the rest.
  const running = w.running_jobs || (w.current_job ? [w.current_job] : []);
  if (!running.length) return "idle";
  const more = running.length > 1 ? ` +${running.length - 1}` : "";
  const cap = w.max_concurrency > 1 ? ` (${running.length}/${w.max_concurrency})` : "";
  return `${shortId(running[0])}${more}${cap}`;
}

function shortId(id) {
  return id ? String(id).slice(0, 8) : "–";
}

// ---- task outputs -------------------------------------------------------------------

function norm(v) {
  return Math.sqrt(v.reduce((s, x) => s + x * x, 0));
}

function cosine(a, b) {
  let dot = 0;
  for (let i = 0; i < a.length; i++) dot += a[i] * b[i];
  return dot / (norm(a) * norm(b) || 1);
}

function renderEmbed(output, texts) {
  const vectors = output.embeddings || [];
  const box = el("div", { class: "embed" });
  box.append(el("p", { text: `${vectors.length} vector(s) of ${output.dimensions} dimensions` }));
  const rows = vectors.map((v, i) =>
    el(
      "tr",
      {},
      el("td", { text: texts[i] !== undefined ? texts[i] : `#${i + 1}` }),
      el("td", { text: norm(v).toFixed(3) }),
      el("td", { class: "mono", text: `[${v.slice(0, 6).map((x) => x.toFixed(3)).join(", ")}, …]` })
    )
  );
  box.append(
    el(
      "div",
      { class: "table-wrap" },
      el(
        "table",
        {},
        el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "Text" }),
          el("th", { scope: "col", text: "Norm" }), el("th", { scope: "col", text: "First values" }))),
        el("tbody", {}, ...rows)
      )
    )
  );
  if (vectors.length > 1) {
    const head = el("tr", {}, el("th", { scope: "col", text: "Cosine similarity" }),
      ...vectors.map((_, j) => el("th", { scope: "col", text: `#${j + 1}` })));
    const body = vectors.map((a, i) =>
      el("tr", {}, el("th", { scope: "row", text: `#${i + 1}` }),
        ...vectors.map((b) => el("td", { text: cosine(a, b).toFixed(3) })))
    );
    box.append(el("div", { class: "table-wrap" },
      el("table", { class: "matrix" }, el("thead", {}, head), el("tbody", {}, ...body))));
  }
  return box;
}

function labelBars(labels) {
  const list = el("ul", { class: "bars" });
  for (const { label, score } of labels || []) {
    const pct = Math.max(0, Math.min(1, score)) * 100;
    list.append(
      el("li", {},
        el("span", { class: "bar-label", text: label }),
        el("span", { class: "bar", role: "img", "aria-label": `${label} ${pct.toFixed(1)}%` },
          el("span", { class: "bar-fill", style: `width:${pct.toFixed(1)}%` })),
        el("span", { class: "bar-score", text: score.toFixed(3) }))
    );
  }
  return list;
}

function renderClassify(output, texts) {
  const box = el("div", { class: "classify" });
  const results = output.results || [{ labels: output.labels }];
  results.forEach((r, i) => {
    box.append(el("h4", { text: texts[i] !== undefined ? texts[i] : `#${i + 1}` }), labelBars(r.labels));
  });
  return box;
}

function renderTranscribe(output) {
  const facts = [];
  if (output.language) facts.push(`language: ${output.language}`);
  if (typeof output.duration === "number") facts.push(`duration: ${fmtSeconds(output.duration)}`);
  return el("div", {}, el("p", { class: "text", text: output.text || "" }),
    facts.length ? el("p", { class: "hint", text: facts.join(" · ") }) : null);
}

function renderOutput(task, output, context) {
  if (output === null || output === undefined) return el("p", { class: "hint", text: "(no output)" });
  if (task === "embed" && output.embeddings) return renderEmbed(output, context.texts || []);
  if (task === "classify" && (output.labels || output.results)) return renderClassify(output, context.texts || []);
  if (task === "transcribe") return renderTranscribe(output);
  if (typeof output.text === "string") {
    const box = el("div", {}, el("p", { class: "text", text: output.text }));
    if (output.finish_reason) box.append(el("p", { class: "hint", text: `finish_reason: ${output.finish_reason}` }));
    return box;
  }
  return el("pre", { class: "json", text: JSON.stringify(output, null, 2) });
}

// ---- fleet ------------------------------------------------------------------------------

// How many workers serve a model, or what happens to a job for it when none does.
function workersText(m) {
  const od = (m.on_demand && m.on_demand.worker) || null;
  if (m.workers_online) {
    const text = `${m.workers_online} ${m.loaded ? "loaded" : "loading"}`;
    if (!od) return text;
    if (od.stops_at) {
      const left = Math.max(0, Math.round(od.stops_at - Date.now() / 1000));
      return `${text}, on demand: stops in ${left} s if idle`;
    }
    return `${text}, on demand`;
  }
  if (od) return od.state === "stopping" ? "stopping (idle)" : "starting on demand";
  if (m.on_demand && m.on_demand.startable) return "0, starts on demand";
  return "0 online";
}

function fill(tbody, rows, empty) {
  tbody.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: "9", class: "hint", text: empty }))]));
}

function renderFleet(models, workers, jobs) {
  fill(
    document.getElementById("fleet-models"),
    [...models].sort((a, b) => (b.workers_online > 0) - (a.workers_online > 0)).map((m) =>
      el("tr", { "data-model": m.id },
        el("td", {}, el("strong", { text: m.id }),
          m.workers_online && m.description ? el("div", { class: "hint", text: m.description }) : null),
        el("td", { text: (m.tasks || []).join(", ") }),
        el("td", { text: String(m.queue_depth ?? "–") }),
        el("td", {}, el("span", { class: m.workers_online ? "dot on" : "dot off", "aria-hidden": "true" }),
          ` ${workersText(m)}`))
    ),
    "no models"
  );
  fill(
    document.getElementById("fleet-workers"),
    workers.map((w) =>
      el("tr", { "data-worker": w.worker || "" },
        el("td", { class: "mono", text: `${w.worker || "?"}${w.pid ? ` (pid ${w.pid})` : ""}` }),
        el("td", { text: w.model || "–" }),
        el("td", { text: fmtBytes((w.memory || {}).rss_bytes) }),
        el("td", { class: "mono", text: runningText(w) }),
        el("td", { text: String(w.jobs_done ?? 0) }))
    ),
    "no worker online — start one with: conveyor worker --model <id>"
  );
  fill(
    document.getElementById("fleet-jobs"),
    jobs.map((j) =>
      el("tr", { "data-job": j.id },
        el("td", { class: "mono", title: j.id, text: shortId(j.id) }),
        el("td", { text: j.model }),
        el("td", { text: j.task }),
        el("td", {}, el("span", { class: `badge ${j.status}`, text: j.status })),
        el("td", { text: fmtTime(j.created_at) }))
    ),
    "no jobs yet"
  );
}

// ---- curl -----------------------------------------------------------------------------

function shellQuote(s) {
  return `'${String(s).replace(/'/g, `'"'"'`)}'`;
}

// The curl command that submits the same job; the key is never written out, only the
// variable that holds it.
function curlCommand(base, payload, files, withKey) {
  const lines = [`curl -s ${base}/v1/jobs`];
  if (withKey) lines.push(`-H "Authorization: Bearer $CONVEYOR_API_KEY"`);
  const names = Object.keys(files);
  if (names.length) {
    lines.push(`-F ${shellQuote(`request=${JSON.stringify(payload)}`)}`);
    for (const name of names) lines.push(`-F ${shellQuote(`${name}=@${files[name].name}`)}`);
  } else {
    lines.push("-H 'Content-Type: application/json'");
    lines.push(`-d ${shellQuote(JSON.stringify(payload))}`);
  }
  return lines.join(" \\\n  ");
}

window.render = { el, renderOutput, renderFleet, curlCommand, fmtSeconds, shortId, workersText };
