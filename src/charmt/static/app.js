"use strict";
// The charmt web page: talks only to the server it came from (relative URLs), renders text with textContent.
// It uses charmt's own API (/api/translate, /api/attention) for beam search, alternatives and attention.

const $ = (id) => document.getElementById(id);
let info = { models: [], max_beam: 1, api_keys: false };

// The model of the chosen language pair (its value is "source:target").
function chosenModel() {
  const [source, target] = $("pair").value.split(":");
  return info.models.find((m) => m.source === source && m.target === target);
}

// Spaces, tabs and other invisible source characters get a visible label in the heatmap.
function label(unit) {  // a character, or a subword piece with its spaces written out
  if (/^\s$/.test(unit) && unit !== " ") return "·";
  return unit.replaceAll(" ", "␣");
}

// Text in a language: its lang attribute, and its direction (right to left for Arabic, Hebrew, ...).
function inLanguage(element, code, rtl) {
  element.lang = code;
  element.dir = rtl ? "rtl" : "ltr";
  return element;
}

function setStatus(message, isError = false) {
  $("status").textContent = message;
  $("status").classList.toggle("error", isError);
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (typeof body.detail === "string") return body.detail;
    return JSON.stringify(body.detail ?? body);
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

async function postJSON(path, body) {
  const model = chosenModel();
  const request = { ...body, source: model.source, target: model.target };
  if (info.api_keys) request.api_key = $("api-key").value;
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(request),
  });
  if (!response.ok) throw new Error(await errorMessage(response));
  return response.json();
}

function addOptions(select, values, text) {
  for (const value of values) {
    const option = document.createElement("option");
    option.value = String(value);
    option.textContent = text(value);
    select.append(option);
  }
}

async function loadInfo() {
  try {
    const response = await fetch("health");
    if (!response.ok) throw new Error(await errorMessage(response));
    info = await response.json();
  } catch (err) {
    setStatus(`Cannot reach the server: ${err.message}`, true);
    return;
  }
  for (const model of info.models) {
    addOptions($("pair"), [`${model.source}:${model.target}`], () => `${model.source_name} → ${model.target_name}`);
  }
  const sizes = [2, 3, 5, 10].filter((size) => size <= info.max_beam);
  addOptions($("beam"), sizes, String);
  addOptions($("n-best"), [2, 3, 4].filter((n) => n <= info.max_beam), (n) => String(n - 1));
  $("key-field").hidden = !info.api_keys;
  choosePair();
  $("translate").disabled = false;
}

function choosePair() {
  const model = chosenModel();
  $("model-info").textContent = `Model ${model.name} (${model.source_name} → ${model.target_name}) on ` +
    `${model.device}` + (model.attention ? " · with attention" : "");
  inLanguage($("texts"), model.source, model.source_rtl);
  $("results").replaceChildren();
  $("attention").hidden = true;
}

function renderResults(sources, result, model) {
  const list = $("results");
  list.replaceChildren();
  $("attention").hidden = true;
  $("results-help").hidden = !model.attention;
  sources.forEach((source, i) => {
    const item = document.createElement("li");
    const box = document.createElement(model.attention ? "button" : "div");
    box.className = "result";
    if (model.attention) {
      box.type = "button";
      box.setAttribute("aria-pressed", "false");
      box.addEventListener("click", () => showAttention(box, source));
    }
    const src = inLanguage(document.createElement("span"), model.source, model.source_rtl);
    src.className = "source";
    src.textContent = source;
    const arrow = document.createElement("span");
    arrow.className = "arrow";
    arrow.setAttribute("aria-hidden", "true");
    arrow.textContent = "→";
    const out = inLanguage(document.createElement("span"), model.target, model.target_rtl);
    out.className = "translation";
    out.textContent = result.translations[i];
    box.append(src, arrow, out);
    item.append(box);
    const others = (result.n_best?.[i] ?? []).slice(1);
    if (others.length) {
      const alternatives = document.createElement("ol");
      alternatives.className = "alternatives";
      alternatives.setAttribute("aria-label", "Alternatives");
      for (const hypothesis of others) {
        const li = inLanguage(document.createElement("li"), model.target, model.target_rtl);
        li.textContent = hypothesis.text;
        alternatives.append(li);
      }
      item.append(alternatives);
    }
    list.append(item);
  });
}

async function translate(event) {
  event.preventDefault();
  const texts = $("texts").value.split("\n").map((line) => line.trim()).filter((line) => line !== "");
  if (texts.length === 0) {
    setStatus("Type at least one sentence.", true);
    return;
  }
  const button = $("translate");
  button.disabled = true;
  $("results").setAttribute("aria-busy", "true");
  setStatus("Translating…");
  const model = chosenModel();
  const n_best = Number($("n-best").value);
  try {
    const result = await postJSON("api/translate", { texts, beam: Math.max(Number($("beam").value), n_best), n_best });
    renderResults(texts, result, model);
    const done = `${texts.length} translated.`;
    setStatus(result.warnings.length ? `${done} Note: ${result.warnings.join(" ")}` : done);
  } catch (err) {
    setStatus(err.message, true);
  } finally {
    button.disabled = false;
    $("results").setAttribute("aria-busy", "false");
  }
}

async function showAttention(box, source) {
  for (const other of document.querySelectorAll("button.result")) {
    other.setAttribute("aria-pressed", String(other === box));
  }
  try {
    drawHeatmap(await postJSON("api/attention", { text: source }));
  } catch (err) {
    setStatus(err.message, true);
  }
}

function drawHeatmap(data) {
  const table = $("heatmap");
  table.replaceChildren();
  $("heatmap-caption").textContent =
    `Attention of the greedy output "${data.translation}" on "${data.source.join("").trim()}" (${data.shown})`;
  const head = document.createElement("tr");
  const corner = document.createElement("th");
  corner.setAttribute("aria-label", "output character / source character");
  head.append(corner);
  for (const ch of data.source) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = label(ch);
    head.append(th);
  }
  table.append(head);
  data.weights.forEach((row, i) => {
    const tr = document.createElement("tr");
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = label(data.output[i]);
    tr.append(th);
    row.forEach((weight, j) => {
      const td = document.createElement("td");
      td.style.backgroundColor = `rgba(var(--heat), ${weight.toFixed(3)})`;
      td.title = `${JSON.stringify(data.output[i])} on ${JSON.stringify(data.source[j])}: ${weight.toFixed(2)}`;
      td.setAttribute("aria-label", td.title);
      tr.append(td);
    });
    table.append(tr);
  });
  $("attention").hidden = false;
}

$("translate-form").addEventListener("submit", translate);
$("pair").addEventListener("change", choosePair);
$("texts").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("translate-form").requestSubmit();
});
loadInfo();
