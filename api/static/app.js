// kb web page: plain JavaScript over the service's own HTTP API (no build step, no network beyond it).
"use strict";

const $ = (sel) => document.querySelector(sel);
const keyInput = $("#api-key");
keyInput.value = localStorage.getItem("kb-api-key") || "";
keyInput.addEventListener("change", () => {
  localStorage.setItem("kb-api-key", keyInput.value);
  refreshAll();
});

function headers(extra = {}) {
  const h = { ...extra };
  if (keyInput.value) h["Authorization"] = `Bearer ${keyInput.value}`;
  return h;
}

function setStatus(text, isError = false) {
  const el = $("#status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

async function api(path, options = {}) {
  const res = await fetch(path, { ...options, headers: headers(options.headers || {}) });
  if (!res.ok) {
    let message = `${res.status} ${res.statusText}`;
    try {
      const body = await res.json();
      message = (body.error && body.error.message) || body.detail || message;
    } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return res.headers.get("content-type")?.includes("json") ? res.json() : res;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
  return node;
}

// ---- tabs -----------------------------------------------------------------------------------

document.querySelectorAll(".tab").forEach((tab) =>
  tab.addEventListener("click", () => {
    document.querySelectorAll(".tab").forEach((t) => t.setAttribute("aria-selected", String(t === tab)));
    document.querySelectorAll(".panel").forEach((p) => (p.hidden = p.id !== tab.dataset.tab));
    if (tab.dataset.tab === "documents") loadDocuments();
    if (tab.dataset.tab === "training") loadTraining();
  }),
);

// ---- collections ----------------------------------------------------------------------------

async function loadCollections() {
  try {
    const { collections, default: fallback } = await api("/collections");
    for (const select of document.querySelectorAll(".collection-picker")) {
      const current = select.value;
      select.replaceChildren(...collections.map((c) => el("option", { value: c.name }, `${c.name} (${c.documents} docs)`)));
      if (!collections.some((c) => c.name === fallback)) select.append(el("option", { value: fallback }, `${fallback} (empty)`));
      // keep what the user picked; otherwise start on the service's default collection
      const options = [...select.options].map((o) => o.value);
      select.value = current && options.includes(current) ? current : fallback;
    }
  } catch (err) {
    setStatus(`Could not list collections: ${err.message}`, true);
  }
}

// ---- ask ------------------------------------------------------------------------------------

let passagesByMode = {}; // mode -> citations list ([n] -> passage)

function answerCard(mode) {
  const card = el("article", { class: "answer", "data-mode": mode },
    el("h2", {}, mode), el("p", { class: "model" }), el("div", { class: "text" }), el("p", { class: "meta" }));
  $("#answers").append(card);
  return card;
}

function cardFor(mode) {
  return document.querySelector(`.answer[data-mode="${CSS.escape(mode)}"]`) || answerCard(mode);
}

function appendWithCitations(box, text, mode) {
  const cites = passagesByMode[mode] || passagesByMode["*"] || [];
  for (const part of text.split(/(\[\d+\])/g)) {
    const m = part.match(/^\[(\d+)\]$/);
    const cite = m && cites.find((c) => c.n === Number(m[1]));
    if (cite) {
      box.append(el("a", { href: "#", class: "cite", "data-n": m[1], "aria-label": `citation ${m[1]}: ${cite.source}`,
        onclick: (e) => { e.preventDefault(); showPassage(cite); } }, part));
    } else box.append(part);
  }
}

// the answer, each checked sentence in a span: unsupported ones are marked and say why
function renderAnswerText(card, text, mode, support) {
  const box = card.querySelector(".text");
  box.replaceChildren();
  const sentences = (support && support.sentences) || [];
  // offsets index the checked text, which is the answer only when it was kept or flagged
  if (!sentences.length || !["kept", "flagged"].includes(support.action)) {
    appendWithCitations(box, text, mode);
    return;
  }
  let at = 0;
  for (const s of sentences) {
    if (s.start > at) box.append(text.slice(at, s.start));
    const cls = !s.claim ? "sent" : s.supported ? "sent supported" : "sent unsupported";
    const why = !s.claim ? "" : s.supported
      ? `supported by passage [${s.passage}] (score ${s.score})`
      : `not supported by the passages` + (s.missing.length ? `: passage [${s.passage}] lacks ${s.missing.join(", ")}` : ` (best score ${s.score})`);
    const span = el("span", { class: cls, title: why });
    appendWithCitations(span, text.slice(s.start, s.end), mode);
    box.append(span);
    at = s.end;
  }
  if (at < text.length) box.append(text.slice(at));
}

function supportNote(result) {
  if (!result.grounded) return " · ungrounded: no passages, nothing checked it";
  const s = result.support;
  if (!s) return result.mode === "extract" && !result.not_covered ? " · quoted from the passages" : "";
  const share = s.supported_share === null ? "" : ` · ${Math.round(100 * s.supported_share)}% of claims supported`;
  const actions = {
    kept: "",
    flagged: " · unsupported sentences marked",
    dropped: " · unsupported sentences removed",
    fallback: " · the model's answer was not supported: quoted from the passages instead",
    not_covered: " · nothing supported was left",
  };
  const removed = s.removed_citations.length ? ` · removed citations ${s.removed_citations.map((n) => `[${n}]`).join("")} to passages not given` : "";
  return share + (actions[s.action] || "") + removed;
}

function showPassage(cite) {
  $("#passage-view").hidden = false;
  $("#passage-title").textContent = `[${cite.n}] ${cite.source}`;
  const where = cite.page ? `page ${cite.page}` : `characters ${cite.start}–${cite.end}`;
  $("#passage-where").textContent = `${where} · chunk ${cite.chunk_id}`;
  $("#passage-text").textContent = cite.text || cite.snippet || "";
  $("#passage-view").scrollIntoView({ block: "nearest" });
}
$("#passage-close").addEventListener("click", () => ($("#passage-view").hidden = true));

function citationsWithText(citations, passages) {
  return (citations || []).map((c) => {
    const p = (passages || []).find((x) => x.chunk_id === c.chunk_id);
    return { ...c, text: p ? p.text : c.snippet };
  });
}

function renderSources(citations) {
  $("#sources-box").hidden = !citations.length;
  $("#sources").replaceChildren(...citations.map((c) =>
    el("li", {}, el("a", { href: "#", onclick: (e) => { e.preventDefault(); showPassage(c); } }, c.source),
      ` ${c.page ? "p. " + c.page : ""}`)));
}

function finishCard(result) {
  const card = cardFor(result.mode);
  const cites = citationsWithText(result.citations, result.passages);
  if (cites.length) passagesByMode[result.mode] = cites;
  renderAnswerText(card, result.answer || "", result.mode, result.support);
  if (result.model) card.querySelector(".model").textContent = `${result.model.name} · ${result.model.model_id}`;
  const t = result.timings || {};
  const usage = result.usage || {};
  card.querySelector(".meta").textContent =
    `${usage.completion_tokens || 0} tokens · ${(t.total || 0).toFixed(2)} s` + (result.not_covered ? " · not covered by the documents" : "") + supportNote(result);
}

async function ask(event) {
  event.preventDefault();
  const question = $("#question").value.trim();
  if (!question) return;
  const mode = document.querySelector('input[name="mode"]:checked').value;
  const body = { question, mode, k: Number($("#ask-k").value || 5), collection: $("#ask-collection").value || null, stream: true };
  if ($("#ask-support").value) body.support = $("#ask-support").value;
  $("#answers").replaceChildren();
  $("#unavailable").hidden = true;
  $("#passage-view").hidden = true;
  passagesByMode = {};
  $("#ask-button").disabled = true;
  setStatus("Thinking…");
  try {
    const res = await api("/query", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    await readEvents(res, handleEvent);
    setStatus("");
  } catch (err) {
    setStatus(err.message, true);
  } finally {
    $("#ask-button").disabled = false;
  }
}
$("#ask-form").addEventListener("submit", ask);

function handleEvent(type, data) {
  if (type === "passages") {
    const cites = citationsWithText(data.citations, data.passages);
    if (data.mode === "compare" || data.modes) {
      passagesByMode["*"] = cites;
      (data.modes || []).forEach((m) => cardFor(m));
      if (data.unavailable && data.unavailable.length) {
        $("#unavailable").hidden = false;
        $("#unavailable").textContent = data.unavailable.map((u) => `${u.mode}: ${u.reason}`).join(" · ");
      }
    } else {
      passagesByMode[data.mode] = cites;
      const card = cardFor(data.mode);
      if (data.model) card.querySelector(".model").textContent = `${data.model.name} · ${data.model.model_id}`;
    }
    renderSources(cites);
  } else if (type === "delta") {
    const card = cardFor(data.mode);
    const box = card.querySelector(".text");
    box.textContent += data.text;
  } else if (type === "result") {
    finishCard(data);
  } else if (type === "done") {
    if (data.mode === "compare") (data.answers || []).forEach(finishCard);
    else finishCard(data);
  } else if (type === "error") {
    setStatus((data.error && data.error.message) || "error", true);
  }
}

async function readEvents(res, onEvent) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let type = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) type = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (data.length) onEvent(type, JSON.parse(data.join("\n")));
    }
  }
}

// ---- documents ------------------------------------------------------------------------------

function docCollection() {
  return $("#doc-new-collection").value.trim() || $("#doc-collection").value || "default";
}

async function loadDocuments() {
  const name = docCollection();
  const tbody = $("#doc-table tbody");
  try {
    const { documents } = await api(`/collections/${encodeURIComponent(name)}/documents`);
    tbody.replaceChildren(...documents.map((d) => el("tr", { "data-source": d.source },
      el("td", {}, d.source), el("td", {}, d.title || ""), el("td", {}, d.chunks),
      el("td", {}, el("button", { type: "button", class: "secondary", "aria-label": `delete ${d.source}`,
        onclick: () => deleteDocument(name, d) }, "Delete")))));
  } catch (err) {
    tbody.replaceChildren(el("tr", {}, el("td", { colspan: "4" }, err.message)));
  }
}

async function deleteDocument(name, doc) {
  if (!confirm(`Delete ${doc.source}?`)) return;
  try {
    await api(`/collections/${encodeURIComponent(name)}/documents/${encodeURIComponent(doc.id)}`, { method: "DELETE" });
    setStatus(`Deleted ${doc.source}`);
    loadDocuments();
    loadCollections();
  } catch (err) {
    setStatus(err.message, true);
  }
}

$("#doc-collection").addEventListener("change", loadDocuments);

$("#upload-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const files = $("#upload-files").files;
  if (!files.length) return setStatus("Choose one or more files first.", true);
  const form = new FormData();
  for (const f of files) form.append("files", f);
  try {
    const job = await api(`/collections/${encodeURIComponent(docCollection())}/documents`, { method: "POST", body: form });
    watchJob(job.id);
  } catch (err) {
    setStatus(err.message, true);
  }
});

$("#folder-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    const job = await api(`/collections/${encodeURIComponent(docCollection())}/ingest`, {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ path: $("#folder-path").value, prune: $("#folder-prune").checked }),
    });
    watchJob(job.id);
  } catch (err) {
    setStatus(err.message, true);
  }
});

async function watchJob(id) {
  const box = $("#ingest-job");
  box.hidden = false;
  $("#job-title").textContent = `Job ${id}`;
  for (;;) {
    let job;
    try {
      job = await api(`/jobs/${encodeURIComponent(id)}`);
    } catch (err) {
      setStatus(err.message, true);
      return;
    }
    const p = job.progress || {};
    $("#job-state").textContent = job.state;
    $("#job-progress").max = p.files_total || 1;
    $("#job-progress").value = p.files_done || 0;
    $("#job-counts").textContent = `files ${p.files_done || 0}/${p.files_total ?? "?"} · chunks embedded ${p.chunks_embedded || 0} · failed ${p.failed || 0} · skipped ${p.skipped || 0}`;
    $("#job-failures").replaceChildren(...(job.events || []).filter((e) => e.level !== "info").map((e) => el("li", {}, e.message)));
    if (["succeeded", "failed", "cancelled"].includes(job.state)) {
      if (job.error) setStatus(job.error, true);
      loadDocuments();
      loadCollections();
      return;
    }
    await new Promise((r) => setTimeout(r, 500));
  }
}

// ---- fine-tuning and evaluation -------------------------------------------------------------

async function loadTraining() {
  try {
    const { models } = await api("/models");
    $("#model-table tbody").replaceChildren(...models.map((m) => el("tr", {},
      el("td", {}, m.name), el("td", {}, m.kind), el("td", {}, m.backend), el("td", {}, m.model_id))));
  } catch (err) { setStatus(err.message, true); }
  try {
    const { jobs } = await api("/jobs");
    $("#job-table tbody").replaceChildren(...jobs.map((j) => el("tr", {},
      el("td", {}, j.id), el("td", {}, j.kind), el("td", {}, j.state),
      el("td", {}, progressText(j.progress)),
      el("td", {}, ["queued", "running"].includes(j.state)
        ? el("button", { type: "button", class: "secondary", onclick: () => cancelJob(j.id) }, "Cancel") : ""))));
  } catch (err) { setStatus(err.message, true); }
  try {
    const { evals } = await api("/evals");
    $("#evals").replaceChildren(...evals.map((e) => el("article", { class: "answer" },
      el("h3", {}, `${e.kind} · ${e.id}`),
      el("p", { class: "meta" }, `${e.created_at || ""} ${e.collection ? "· " + e.collection : ""}`),
      el("p", {}, el("a", { href: "#", onclick: (ev) => { ev.preventDefault(); openEval(e.id); } }, "report")),
      chartImage(e.id))));
    if (!evals.length) $("#evals").textContent = "No evaluations yet: run `kb eval retrieval` or POST /eval.";
  } catch (err) { setStatus(err.message, true); }
}

function chartImage(id) {
  // fetched with the API key header (an <img src> could not send it), shown from a blob URL
  const img = el("img", { class: "chart", alt: `chart of evaluation ${id}` });
  api(`/evals/${encodeURIComponent(id)}/chart.png`)
    .then((res) => res.blob())
    .then((blob) => (img.src = URL.createObjectURL(blob)))
    .catch(() => img.remove());
  return img;
}

async function openEval(id) {
  try {
    const res = await api(`/evals/${encodeURIComponent(id)}/report.html`);
    const html = await res.text();
    const w = window.open("", "_blank");
    if (w) { w.document.write(html); w.document.close(); }
  } catch (err) { setStatus(err.message, true); }
}

function progressText(p) {
  if (!p) return "";
  if (p.files_total !== undefined) return `${p.files_done || 0}/${p.files_total} files`;
  if (p.step !== undefined) return `step ${p.step}${p.total_steps ? "/" + p.total_steps : ""}${p.loss !== undefined ? " · loss " + Number(p.loss).toFixed(3) : ""}`;
  return Object.entries(p).slice(0, 3).map(([k, v]) => `${k} ${v}`).join(" · ");
}

async function cancelJob(id) {
  try { await api(`/jobs/${encodeURIComponent(id)}/cancel`, { method: "POST" }); loadTraining(); }
  catch (err) { setStatus(err.message, true); }
}

function refreshAll() {
  loadCollections().then(() => {
    if (!$("#documents").hidden) loadDocuments();
  });
}

refreshAll();
