// osr-serve demo page: model card from v1/model, images to v1/classify, one result card per image.
// Relative URLs, so the page also works behind a path prefix. Text from the server or from file
// names only ever goes into textContent, never into HTML.
"use strict";

const KEY_STORAGE = "osr-api-key";
let apiKey = sessionStorage.getItem(KEY_STORAGE) || "";

function authHeaders() {
  return apiKey ? { "X-API-Key": apiKey } : {};
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function fmt(value, digits = 3) {
  return typeof value === "number" ? value.toFixed(digits) : "n/a";
}

function pct(value) {
  return typeof value === "number" ? (100 * value).toFixed(1) + " %" : "n/a";
}

async function errorText(response) {
  try {
    const body = await response.json();
    return body.detail || body.error || response.statusText;
  } catch (_) {
    return response.statusText;
  }
}

function askForKey(message) {
  const form = document.getElementById("key-form");
  form.hidden = false;
  document.getElementById("card-status").textContent = message;
}

// -- model card ----------------------------------------------------------------------------------

async function loadCard() {
  const status = document.getElementById("card-status");
  const response = await fetch("v1/model", { headers: authHeaders() });
  if (response.status === 401) return askForKey(await errorText(response));
  if (response.status === 503) {
    status.textContent = (await errorText(response)) + " (retrying)";
    setTimeout(loadCard, 1000);
    return;
  }
  if (!response.ok) {
    status.textContent = "cannot read the model card: " + (await errorText(response));
    return;
  }
  renderCard(await response.json());
}

function renderCard(card) {
  document.getElementById("card-status").textContent = `${card.name}, version ${card.version}`;
  const facts = document.getElementById("card-facts");
  facts.replaceChildren();
  const test = card.test || {};
  const rows = [
    ["alpha (target false rejection)", fmt(card.alpha, 3)],
    ["expected known flagged unknown", card.expected_unknown_rate === null ? "per class" : pct(card.expected_unknown_rate)],
    ["test false-rejection rate (FRR)", pct(test.false_rejection_rate)],
    ["test AUROC known vs unknown", fmt(test.auroc, 3)],
    ["test closed-set accuracy", pct(test.accuracy)],
    ["test unknowns flagged unknown", pct(test.unknown_rejected_rate)],
    ["calibration images", card.n_calibration],
    ["score (higher = more known)", card.score_function],
    ["input", `${card.image_size} x ${card.image_size} RGB`],
  ];
  for (const [term, value] of rows) {
    facts.append(el("dt", null, term), el("dd", null, value));
  }
  facts.hidden = false;
  const classes = document.getElementById("card-classes");
  classes.replaceChildren(...card.classes.map((name) => el("span", "chip", name)));
  classes.hidden = false;
}

// -- classification ------------------------------------------------------------------------------

async function classify(files) {
  const status = document.getElementById("upload-status");
  const images = Array.from(files);
  if (!images.length) return;
  const form = new FormData();
  for (const file of images) form.append("files", file, file.name);
  const topK = Math.max(0, parseInt(document.getElementById("top-k").value, 10) || 0);
  status.textContent = `classifying ${images.length} image(s)…`;
  const response = await fetch(`v1/classify?top_k=${topK}`, { method: "POST", body: form, headers: authHeaders() });
  if (response.status === 401) {
    status.textContent = "";
    return askForKey(await errorText(response));
  }
  if (!response.ok) {
    status.textContent = `error ${response.status}: ${await errorText(response)}`;
    return;
  }
  const body = await response.json();
  status.textContent = `${body.results.length} result(s) from ${body.model} version ${body.version}`;
  const results = document.getElementById("results");
  for (let i = body.results.length - 1; i >= 0; i--) {  // newest batch on top, in upload order
    results.prepend(renderRow(body.results[i], images[i]));
  }
}

function renderRow(row, file) {
  const card = el("article", "result " + (row.status !== "ok" ? "error" : row.unknown ? "unknown" : "known"));
  card.dataset.testid = "result";
  card.dataset.path = row.path;
  const thumb = el("img", "thumb");
  thumb.alt = row.path;
  if (file) thumb.src = URL.createObjectURL(file);
  card.append(thumb);
  const text = el("div", "text");
  text.append(el("div", "path", row.path));
  if (row.status !== "ok") {
    text.append(el("div", "class-name", "error"), el("div", "reason", row.error));
    card.append(text);
    return card;
  }
  text.append(el("div", "class-name", row.unknown ? "unknown" : row.class_name));
  const facts = el("div", "facts");
  facts.append(el("span", "p-value", `p-value ${fmt(row.p_value, 4)}`), el("span", "score", `score ${fmt(row.score, 3)}`));
  text.append(facts);
  if (row.top_k.length) {
    const table = el("table", "top-k");
    const head = el("tr");
    head.append(el("th", null, "class"), el("th", null, "logit"));
    table.append(head);
    for (const entry of row.top_k) {
      const line = el("tr");
      line.append(el("td", null, entry.class_name), el("td", "num", fmt(entry.logit, 3)));
      table.append(line);
    }
    text.append(table);
  }
  card.append(text);
  return card;
}

// -- wiring --------------------------------------------------------------------------------------

document.getElementById("files").addEventListener("change", (event) => {
  classify(event.target.files).finally(() => { event.target.value = ""; });
});

const drop = document.getElementById("drop");
for (const name of ["dragenter", "dragover"]) {
  drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
}
for (const name of ["dragleave", "drop"]) {
  drop.addEventListener(name, () => drop.classList.remove("over"));
}
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  classify(event.dataTransfer.files);
});

document.getElementById("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  apiKey = document.getElementById("api-key").value.trim();
  sessionStorage.setItem(KEY_STORAGE, apiKey);
  document.getElementById("key-form").hidden = true;
  loadCard();
});

loadCard();
