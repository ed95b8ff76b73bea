// comfybento playground: one form per workflow, generated from the service's OpenAPI document (/docs.json).
// Runs a request through POST /<workflow>/stream (Server-Sent Events) and batch jobs through POST /jobs and
// GET /jobs/{id}/events. Plain browser JavaScript, no build step.
"use strict";

const KEY_STORAGE = "comfybento.apiKey";
const OUTPUT_FIELDS = ["output_format", "output_quality", "output_delivery"];
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const $ = (id) => document.getElementById(id);

const state = { doc: null, workflows: {}, current: null, busy: false };

// ---- the API key and requests --------------------------------------------------------------------------------------

function apiHeaders(extra = {}) {
  const key = localStorage.getItem(KEY_STORAGE) || "";
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

function sameOrigin(url) {
  return new URL(url, location.href).origin === location.origin;
}

async function errorText(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    const detail = Array.isArray(body.detail)
      ? body.detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ")
      : "";
    const items = Array.isArray(body.items) ? body.items.map((i) => `item ${i.index}: ${i.error}`).join("; ") : "";
    return `${response.status}: ${[body.error, detail, items].filter(Boolean).join(" — ") || text}`;
  } catch {
    return `${response.status}: ${text.slice(0, 500)}`;
  }
}

// An integer beyond JavaScript's exact range (a seed up to 2^64-1) is kept as BIG_INT + its digits, never a Number:
// JSON.parse would round 18446744073709551615 to 18446744073709552000. toJson writes it back as the integer it was.
const BIG_INT = "\u0000int:";

function parseExact(text) {
  const marked = text.replace(/"(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?/g, (token) =>
    /^-?\d{16,}$/.test(token) && !Number.isSafeInteger(Number(token)) ? `"\\u0000int:${token}"` : token);
  return JSON.parse(marked);
}

// A value for display or a form attribute: a BIG_INT as its exact digits.
function exact(value) {
  return typeof value === "string" && value.startsWith(BIG_INT) ? value.slice(BIG_INT.length) : value;
}

function toJson(value) {
  return JSON.stringify(value).replace(/"\\u0000int:(-?\d+)"/g, "$1");
}

// Server-Sent Events from a fetch() answer (EventSource can neither POST nor send headers).
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let type = "message";
      const data = [];
      for (const line of frame.split("\n")) {
        if (line.startsWith(":")) continue; // keepalive comment
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") type = text;
        else if (field === "data") data.push(text);
      }
      if (data.length) onEvent(type, parseExact(data.join("\n")));
    }
  }
}

// ---- the schema ----------------------------------------------------------------------------------------------------

function resolve(schema) {
  let out = schema || {};
  while (out.$ref || (out.allOf && out.allOf.length === 1 && !out.properties)) {
    const base = out.$ref ? state.doc.components.schemas[out.$ref.split("/").pop()] : out.allOf[0];
    const rest = { ...out };
    delete rest.$ref;
    delete rest.allOf;
    out = { ...resolve(base), ...rest };
  }
  return out;
}

// A workflow is a path /<name> with a streaming form POST /<name>/stream; its fields are its request body's
// (JSON, or multipart when it takes files: the page sends JSON, files as data URIs).
function findWorkflows(doc) {
  const found = {};
  for (const path of Object.keys(doc.paths)) {
    const name = path.match(/^\/([^/{]+)\/stream$/)?.[1];
    if (!name || !doc.paths[path].post) continue;
    const ops = [doc.paths[path].post, doc.paths[`/${name}`]?.post].filter(Boolean);
    const body = ops.map((op) => Object.values(op.requestBody?.content || {})[0]?.schema).find(Boolean);
    if (!body) continue;
    const main = doc.paths[`/${name}`]?.post || ops[0];
    found[name] = { name, schema: resolve(body), summary: main.description || main.summary || "" };
  }
  return found;
}

// A model field that also takes a model by URL (anyOf: its models.lock names, or {url, sha256}): the form offers the names.
function namesOf(prop) {
  const names = (prop.anyOf || []).find((option) => Array.isArray(option.enum));
  return names && !Array.isArray(prop.enum) ? { ...prop, enum: names.enum } : prop;
}

function fieldKind(prop) {
  if (prop.format === "binary") return "file";
  if (Array.isArray(prop.enum)) return "enum";
  if (prop.type === "integer" || prop.type === "number") return "number";
  if (prop.type === "boolean") return "boolean";
  if (prop.type === "string" && (prop["x-multiline"] || (prop.maxLength || 0) > 1000)) return "text";
  return "string";
}

// ---- the form ------------------------------------------------------------------------------------------------------

function control(name, prop, required) {
  prop = namesOf(prop);
  const kind = fieldKind(prop);
  let input;
  if (kind === "enum") {
    input = document.createElement("select");
    if (prop.nullable) input.append(new Option("(none)", "", false, prop.default == null)); // e.g. preset: none chosen
    for (const option of prop.enum.filter((o) => o !== null)) input.append(new Option(option, option, false, option === prop.default));
    if (prop["x-presets"]) input.addEventListener("change", () => applyPreset(prop["x-presets"][input.value]));
  } else if (kind === "text") {
    input = document.createElement("textarea");
    input.rows = 3;
    input.value = prop.default ?? "";
  } else if (kind === "boolean") {
    input = document.createElement("input");
    input.type = "checkbox";
    input.checked = Boolean(prop.default);
  } else if (kind === "number") {
    input = document.createElement("input");
    input.type = "number";
    if (prop.minimum !== undefined) input.min = exact(prop.minimum);
    if (prop.maximum !== undefined) input.max = exact(prop.maximum);
    input.step = prop.multipleOf ?? (prop.type === "integer" ? 1 : "any");
    input.value = exact(prop.default) ?? "";
    if (prop.nullable) input.placeholder = "random";
  } else if (kind === "file") {
    return fileControl(name, prop, required);
  } else {
    input = document.createElement("input");
    input.type = "text";
    input.value = prop.default ?? "";
  }
  input.name = name;
  input.id = `field-${name}`;
  input.required = required;
  input.dataset.kind = kind;
  input.dataset.type = prop.type || "";
  return input;
}

// A preset chosen in the form fills the fields it sets (the request then sends them, as the preset would set them).
function applyPreset(values) {
  for (const [name, value] of Object.entries(values || {})) {
    const input = document.getElementById(`field-${name}`);
    if (!input || input.dataset.role === "file") continue;
    if (input.dataset.kind === "boolean") input.checked = Boolean(value);
    else input.value = String(value);
  }
}

function fileControl(name, prop, required) {
  const box = document.createElement("div");
  box.className = "file-field";
  const accept = prop["x-content-type"] || "";
  const file = Object.assign(document.createElement("input"), { type: "file", accept, id: `field-${name}` });
  const url = Object.assign(document.createElement("input"), { type: "url", placeholder: "or an http(s) URL" });
  file.dataset.role = "file";
  url.dataset.role = "url";
  box.dataset.field = name;
  box.dataset.kind = "file";
  box.dataset.required = required ? "1" : "";
  box.append(file, url);
  return box;
}

function fieldRow(name, prop, required) {
  const row = document.createElement("div");
  row.className = "field";
  const label = document.createElement("label");
  label.htmlFor = `field-${name}`;
  label.textContent = (prop.title || name) + (required ? " *" : "");
  const bounds = [prop.minimum !== undefined ? `min ${exact(prop.minimum)}` : "", prop.maximum !== undefined ? `max ${exact(prop.maximum)}` : ""];
  const hint = document.createElement("small");
  hint.textContent = [prop.description, bounds.filter(Boolean).join(", ")].filter(Boolean).join(" ");
  row.append(label, control(name, prop, required), hint);
  return row;
}

function renderForm(name) {
  const workflow = state.workflows[name];
  state.current = workflow;
  const form = $("params");
  form.replaceChildren();
  const required = new Set(workflow.schema.required || []);
  const main = document.createElement("fieldset");
  const output = document.createElement("fieldset");
  main.append(Object.assign(document.createElement("legend"), { textContent: "Parameters" }));
  output.append(Object.assign(document.createElement("legend"), { textContent: "Output" }));
  for (const [field, raw] of Object.entries(workflow.schema.properties || {})) {
    (OUTPUT_FIELDS.includes(field) ? output : main).append(fieldRow(field, resolve(raw), required.has(field)));
  }
  form.append(main, output);
  $("workflow-description").textContent = workflow.summary;
  $("job-field").textContent = promptField(workflow) || "(no text field)";
}

function promptField(workflow) {
  const props = workflow.schema.properties || {};
  if (props.prompt) return "prompt";
  return Object.keys(props).find((f) => fieldKind(resolve(props[f])) === "text") || null;
}

function readFile(file) {
  return new Promise((ok, fail) => {
    const reader = new FileReader();
    reader.onload = () => ok(reader.result); // a data: URI, base64
    reader.onerror = () => fail(reader.error);
    reader.readAsDataURL(file);
  });
}

function coerce(value, type) {
  if (type === "integer" && /^\s*\d{16,}\s*$/.test(value) && !Number.isSafeInteger(Number(value))) return BIG_INT + value.trim();
  if (type === "integer") return parseInt(value, 10);
  if (type === "number") return Number(value);
  if (type === "boolean") return value === true || /^(1|true|yes)$/i.test(String(value));
  return value;
}

async function formValues() {
  const values = {};
  for (const box of $("params").querySelectorAll("div.file-field")) {
    const file = box.querySelector("[data-role=file]").files[0];
    const url = box.querySelector("[data-role=url]").value.trim();
    if (file) values[box.dataset.field] = await readFile(file);
    else if (url) values[box.dataset.field] = url;
    else if (box.dataset.required) throw new Error(`${box.dataset.field}: choose a file or give a URL`);
  }
  for (const input of $("params").querySelectorAll("input[name], select[name], textarea[name]")) {
    if (input.dataset.kind === "boolean") values[input.name] = input.checked;
    else if (input.value === "" && input.dataset.kind === "number") continue; // nullable (seed): drawn by the server
    else if (input.value === "" && input.dataset.kind === "enum") continue; // nullable (preset): none
    else values[input.name] = input.dataset.kind === "number" ? coerce(input.value, input.dataset.type) : input.value;
  }
  return values;
}

// ---- outputs -------------------------------------------------------------------------------------------------------

async function outputSource(out) {
  if (out.data !== undefined && out.data !== null) return `data:${out.media_type};base64,${out.data}`;
  if (!sameOrigin(out.url)) return out.url; // a presigned URL: no key
  const response = await fetch(out.url, { headers: apiHeaders() });
  if (!response.ok) throw new Error(await errorText(response));
  return URL.createObjectURL(await response.blob());
}

async function outputElement(out) {
  const figure = document.createElement("figure");
  figure.className = `output output-${out.kind}`;
  const src = await outputSource(out);
  let media;
  if (out.kind === "image" || out.kind === "animation") {
    media = Object.assign(document.createElement("img"), { src, alt: out.name || out.output || "output" });
  } else if (out.kind === "video") {
    media = Object.assign(document.createElement("video"), { src, controls: true, loop: true, muted: true });
  } else if (out.kind === "audio") {
    media = Object.assign(document.createElement("audio"), { src, controls: true });
  } else if (out.kind === "text") {
    media = document.createElement("pre");
    media.textContent = await (await fetch(src)).text();
  } else {
    media = null; // any other file: the download link below is all there is to show
  }
  if (media && out.width) media.dataset.width = out.width;
  if (media && out.height) media.dataset.height = out.height;
  const caption = document.createElement("figcaption");
  const size = out.width ? ` ${out.width}×${out.height}` : "";
  caption.textContent = `${out.name || out.output} #${out.index} · ${out.media_type}${size} `;
  // a presigned URL of another origin opens in the browser instead (browsers ignore `download` across origins)
  caption.append(Object.assign(document.createElement("a"), { href: src, download: downloadName(out), className: "download",
                                                               textContent: "download" }));
  figure.append(...(media ? [media] : []), caption);
  return figure;
}

const EXTENSIONS = { "image/jpeg": "jpg", "audio/mpeg": "mp3", "text/plain": "txt", "image/svg+xml": "svg" };

// save_image-0.png: the output's name, its index, the extension of its media type
function downloadName(out) {
  const type = (out.media_type || "").toLowerCase();
  const ext = EXTENSIONS[type] || (type.split("/")[1] || "bin").split(/[;+]/)[0].replace(/^x-/, "").replace(/[^a-z0-9]/g, "") || "bin";
  const base = String(out.name || out.output || "output").replace(/[^A-Za-z0-9._-]+/g, "_");
  return `${base}-${out.index ?? 0}.${ext}`;
}

// ---- one run, streamed ---------------------------------------------------------------------------------------------

function setStatus(id, text, isError = false) {
  const el = $(id);
  el.textContent = text;
  el.classList.toggle("error", isError);
}

async function run() {
  const workflow = state.current;
  const bar = $("run-progress");
  $("gallery").replaceChildren();
  $("preview").replaceChildren();
  bar.hidden = true;
  bar.value = 0;
  delete bar.dataset.seen;
  delete $("run-status").dataset.outcome;
  let values;
  try {
    values = await formValues();
  } catch (error) {
    setStatus("run-status", error.message, true);
    return;
  }
  setStatus("run-status", "Sending…");
  const response = await fetch(`./${workflow.name}/stream`, {
    method: "POST",
    headers: apiHeaders({ "Content-Type": "application/json", Accept: "text/event-stream" }),
    body: toJson(values),
  });
  if (!response.ok) {
    setStatus("run-status", await errorText(response), true);
    return;
  }
  const pending = [];
  await readEvents(response, (type, data) => pending.push(onRunEvent(type, data, bar)));
  await Promise.all(pending);
}

async function onRunEvent(type, data, bar) {
  if (type === "queued") setStatus("run-status", `Queued, position ${data.position}`);
  else if (type === "started") setStatus("run-status", `Running (batch of ${data.batch_size}, waited ${Math.round(data.queue_ms)} ms)`);
  else if (type === "progress") {
    bar.hidden = false;
    bar.max = data.max;
    bar.value = data.value;
    bar.dataset.seen = "1";
    setStatus("run-status", `Step ${data.value}/${data.max}`);
  } else if (type === "preview") {
    const img = Object.assign(document.createElement("img"), { src: `data:${data.media_type};base64,${data.data}`, alt: "preview" });
    $("preview").replaceChildren(img);
  } else if (type === "output") {
    $("gallery").append(await outputElement(data));
  } else if (type === "done") {
    $("preview").replaceChildren();
    const t = data.timings || {};
    setStatus("run-status", `Done: seed ${exact(data.seed)}, ${Math.round(t.execution_ms)} ms (batch of ${t.batch_size})`);
    $("run-status").dataset.outcome = "done";
  } else if (type === "failed") {
    setStatus("run-status", `Failed (${data.error_kind}${data.node_id ? `, node ${data.node_id}` : ""}): ${data.error}`, true);
    $("run-status").dataset.outcome = "failed";
  }
}

// ---- batch jobs ----------------------------------------------------------------------------------------------------

function parseCsv(text) {
  const rows = [[]];
  let field = "", quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') { field += '"'; i++; }
      else if (c === '"') quoted = false;
      else field += c;
    } else if (c === '"') quoted = true;
    else if (c === ",") { rows[rows.length - 1].push(field); field = ""; }
    else if (c === "\n" || c === "\r") {
      if (c === "\r" && text[i + 1] === "\n") i++;
      rows[rows.length - 1].push(field);
      field = "";
      rows.push([]);
    } else field += c;
  }
  rows[rows.length - 1].push(field);
  return rows.filter((r) => r.some((cell) => cell !== ""));
}

async function jobItems(base) {
  const workflow = state.current;
  const csv = $("job-csv").files[0];
  if (csv) {
    const [header, ...rows] = parseCsv(await csv.text());
    const props = workflow.schema.properties || {};
    const unknown = header.filter((h) => !(h in props));
    if (unknown.length) throw new Error(`CSV columns that are not fields of ${workflow.name}: ${unknown.join(", ")}`);
    return rows.map((row) => Object.fromEntries([...Object.entries(base),
      ...header.map((h, i) => [h, coerce(row[i] ?? "", resolve(props[h]).type)])]));
  }
  const field = promptField(workflow);
  const lines = $("job-prompts").value.split("\n").map((l) => l.trim()).filter(Boolean);
  if (!field) throw new Error(`${workflow.name} has no text field: upload a CSV`);
  return lines.map((line) => ({ ...base, [field]: line }));
}

async function submitJob() {
  const workflow = state.current;
  $("job-items").replaceChildren();
  let items;
  try {
    const base = await formValues();
    delete base.output_delivery; // batch jobs always store their outputs
    items = await jobItems(base);
  } catch (error) {
    setStatus("job-status", error.message, true);
    return;
  }
  if (!items.length) {
    setStatus("job-status", "Give at least one line, or a CSV file.", true);
    return;
  }
  const response = await fetch("./jobs", {
    method: "POST",
    headers: apiHeaders({ "Content-Type": "application/json" }),
    body: toJson({ workflow: workflow.name, items }),
  });
  if (!response.ok) {
    setStatus("job-status", await errorText(response), true);
    return;
  }
  const job = await response.json();
  for (let i = 0; i < job.total; i++) $("job-items").append(itemCard(i));
  showJob(job);
  await followJob(job.id);
}

function itemCard(index) {
  const card = document.createElement("div");
  card.className = "item";
  card.id = `item-${index}`;
  card.dataset.state = "queued";
  const title = Object.assign(document.createElement("div"), { className: "item-title", textContent: `#${index} queued` });
  const bar = Object.assign(document.createElement("progress"), { max: 1, value: 0 });
  card.append(title, bar);
  return card;
}

function showJob(job) {
  const counts = Object.entries(job.counts || {}).filter(([, n]) => n).map(([s, n]) => `${n} ${s}`).join(", ");
  setStatus("job-status", `Job ${job.id}: ${job.state} — ${counts} of ${job.total}${job.eta_s ? `, about ${Math.round(job.eta_s)} s left` : ""}`);
  $("job-status").dataset.state = job.state;
  for (const item of job.items || []) {
    const card = $(`item-${item.index}`);
    if (card && card.dataset.state !== "succeeded" && card.dataset.state !== "failed" && item.state !== card.dataset.state) {
      card.dataset.state = item.state;
      card.querySelector(".item-title").textContent = `#${item.index} ${item.state}`;
    }
  }
}

async function showItem(index, status, outputs, error) {
  const card = $(`item-${index}`);
  if (!card || card.dataset.shown) return;
  card.dataset.state = status;
  card.querySelector(".item-title").textContent = `#${index} ${status}`;
  if (status === "failed") {
    card.dataset.shown = "1";
    card.append(Object.assign(document.createElement("p"), { className: "error", textContent: typeof error === "string" ? error : error?.message || error?.error || "failed" }));
  } else if (status === "succeeded") {
    card.dataset.shown = "1";
    card.querySelector("progress").value = card.querySelector("progress").max;
    for (const out of outputs || []) card.append(await outputElement(out));
  }
}

async function followJob(jobId) {
  let last = null;
  for (let failures = 0; failures < 5 && !(last && TERMINAL.has(last.state));) {
    try {
      const response = await fetch(`./jobs/${jobId}/events`, { headers: apiHeaders({ Accept: "text/event-stream" }) });
      if (!response.ok) throw new Error(await errorText(response));
      const pending = [];
      await readEvents(response, (type, data) => {
        failures = 0;
        if (type === "job") { last = data; showJob(data); $("job-status").dataset.followed = "events"; }
        else if (type === "progress") {
          const bar = $(`item-${data.index}`)?.querySelector("progress");
          if (bar) { bar.max = data.max; bar.value = data.value; }
        } else if (type === "item") pending.push(showItem(data.index, data.status, data.outputs, data.error));
      });
      await Promise.all(pending);
      if (!(last && TERMINAL.has(last.state))) throw new Error("it ended early");
    } catch (error) {
      failures++;
      setStatus("job-status", `Lost the job's event stream (${error.message}); trying again…`, true);
      await sleep(1000);
    }
  }
  while (!(last && TERMINAL.has(last.state))) { // no event stream: poll the job's status
    const response = await fetch(`./jobs/${jobId}`, { headers: apiHeaders() });
    if (!response.ok) throw new Error(await errorText(response));
    last = await response.json();
    showJob(last);
    $("job-status").dataset.followed = "polling";
    if (!TERMINAL.has(last.state)) await sleep(1000);
  }
  await fillResults(jobId, last);
}

// Items that finished while no stream was open, from GET /jobs/{id}/results.
async function fillResults(jobId, job) {
  const response = await fetch(`./jobs/${jobId}/results`, { headers: apiHeaders() });
  if (!response.ok) throw new Error(await errorText(response));
  for (const item of (await response.json()).items || []) {
    if (TERMINAL.has(item.state)) await showItem(item.index, item.state, item.outputs, item.error?.message);
  }
  showJob(job);
}

const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));

// ---- start ---------------------------------------------------------------------------------------------------------

function selectTab(name) {
  for (const tab of ["run", "job"]) {
    $(`tab-${tab}`).setAttribute("aria-selected", String(tab === name));
    $(`panel-${tab}`).hidden = tab !== name;
  }
}

async function guarded(button, action) {
  if (state.busy) return;
  state.busy = true;
  button.disabled = true;
  try {
    await action();
  } catch (error) {
    setStatus(button.id === "run" ? "run-status" : "job-status", `Error: ${error.message}`, true);
  } finally {
    state.busy = false;
    button.disabled = false;
  }
}

async function start() {
  const key = $("api-key");
  key.value = localStorage.getItem(KEY_STORAGE) || "";
  key.addEventListener("change", () => localStorage.setItem(KEY_STORAGE, key.value.trim()));
  $("tab-run").addEventListener("click", () => selectTab("run"));
  $("tab-job").addEventListener("click", () => selectTab("job"));
  $("run").addEventListener("click", () => guarded($("run"), run));
  $("submit-job").addEventListener("click", () => guarded($("submit-job"), submitJob));
  const response = await fetch("./docs.json");
  if (!response.ok) {
    setStatus("run-status", `Could not read the API schema: ${await errorText(response)}`, true);
    return;
  }
  state.doc = parseExact(await response.text());
  state.workflows = findWorkflows(state.doc);
  const select = $("workflow");
  for (const name of Object.keys(state.workflows).sort()) select.append(new Option(name, name));
  select.addEventListener("change", () => renderForm(select.value));
  if (select.options.length) renderForm(select.value);
  document.body.dataset.ready = "1";
}

start();
