"use strict";
// The charmt web page: talks only to the server it came from (relative URLs), renders text with textContent.

const $ = (id) => document.getElementById(id);
let info = { attention: false, max_beam: 1, max_texts: 64 };

// Spaces, tabs and other invisible source characters get a visible label in the heatmap.
function label(ch) {
  if (ch === " ") return "␣";
  if (/^\s$/.test(ch)) return "·";
  return ch;
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
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  if (!response.ok) throw new Error(await errorMessage(response));
  return response.json();
}

async function loadInfo() {
  try {
    const response = await fetch("health");
    if (!response.ok) throw new Error(await errorMessage(response));
    info = await response.json();
  } catch (err) {
    setStatus(`Cannot reach the server: ${err.message}`, true);
    return;
  } finally {
    $("translate").disabled = false;
  }
  $("model-info").textContent = `Model ${info.model} on ${info.device}` +
    (info.attention ? " · with attention" : "");
  const beam = $("beam");
  for (const size of [2, 3, 5, 10]) {
    if (size > info.max_beam) break;
    const option = document.createElement("option");
    option.value = String(size);
    option.textContent = String(size);
    beam.append(option);
  }
}

function renderResults(sources, translations) {
  const list = $("results");
  list.replaceChildren();
  $("attention").hidden = true;
  $("results-help").hidden = !info.attention;
  sources.forEach((source, i) => {
    const item = document.createElement("li");
    const box = document.createElement(info.attention ? "button" : "div");
    box.className = "result";
    if (info.attention) {
      box.type = "button";
      box.setAttribute("aria-pressed", "false");
      box.addEventListener("click", () => showAttention(box, source));
    }
    const src = document.createElement("span");
    src.className = "source";
    src.textContent = source;
    const arrow = document.createElement("span");
    arrow.className = "arrow";
    arrow.setAttribute("aria-hidden", "true");
    arrow.textContent = "→";
    const out = document.createElement("span");
    out.className = "translation";
    out.textContent = translations[i];
    box.append(src, arrow, out);
    item.append(box);
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
  try {
    const result = await postJSON("translate", { texts, beam: Number($("beam").value) });
    renderResults(texts, result.translations);
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
    drawHeatmap(await postJSON("attention", { text: source }));
  } catch (err) {
    setStatus(err.message, true);
  }
}

function drawHeatmap(data) {
  const table = $("heatmap");
  table.replaceChildren();
  $("heatmap-caption").textContent =
    `Attention of the greedy output "${data.translation}" on "${data.source.join("")}"`;
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
$("texts").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("translate-form").requestSubmit();
});
loadInfo();
