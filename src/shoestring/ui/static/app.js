// shoestring ui: live updates for run and launch pages. The server renders every chart and
// table; this script only listens to the page's event stream and re-fetches the fragment.
"use strict";

function appendLog(text) {
  const pre = document.getElementById("log");
  if (!pre || !text) return;
  const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 40;
  pre.textContent += (pre.textContent && !pre.textContent.endsWith("\n") ? "\n" : "") + text;
  if (atBottom) pre.scrollTop = pre.scrollHeight;
}

function refreshPanel(url) {
  const panel = document.getElementById("run-panel");
  if (!panel || !url) return Promise.resolve();
  return fetch(url, { credentials: "same-origin", cache: "no-store" })
    .then((r) => (r.ok ? r.text() : null))
    .then((html) => { if (html !== null) panel.innerHTML = html; })
    .catch(() => {});
}

function setStatus(status) {
  const slot = document.getElementById("launch-status");
  if (!slot || !status) return;
  const span = document.createElement("span");
  span.className = "badge st-" + status;
  span.dataset.status = status;
  span.textContent = status;
  slot.replaceChildren(span);
}

function listen() {
  const body = document.body;
  const url = body.dataset.stream;
  if (!url || !window.EventSource) return;
  let fragment = body.dataset.fragment || "";
  let pending = null;
  const refresh = () => {  // coalesce bursts of events into one fetch at a time
    if (pending) return;
    pending = refreshPanel(fragment).finally(() => { pending = null; });
  };
  const es = new EventSource(url);
  es.addEventListener("run", (ev) => {
    const d = JSON.parse(ev.data);
    if (d.fragment) fragment = d.fragment;
    const link = document.getElementById("run-link");
    if (link && d.url && !link.querySelector("a")) {
      const a = document.createElement("a");
      a.href = d.url;
      a.textContent = "open the run page";
      link.replaceChildren(a);
    }
    refresh();
  });
  es.addEventListener("rows", refresh);
  es.addEventListener("log", (ev) => appendLog(JSON.parse(ev.data).text));
  es.addEventListener("end", (ev) => {
    es.close();
    const d = JSON.parse(ev.data);
    setStatus(d.status);
    document.querySelectorAll("#cancel").forEach((b) => b.remove());
    body.dataset.ended = d.status || "ended";
    refreshPanel(fragment);
  });
}

document.addEventListener("DOMContentLoaded", listen);
