// The search page: plain JavaScript over the JSON API of clip_hitchhiker/search/server.py.
// Each result card shows the peak frame, the video, the score, the moment and a strip of the
// query-scoring weight of every sampled frame over the video's duration, the moment shaded.
"use strict";

const K = 12;
const $ = (selector) => document.querySelector(selector);
const player = $("#player");
const state = { hits: [], selected: -1, playing: null, request: 0, play: 0 };
const SVG = "http://www.w3.org/2000/svg";

function clock(seconds) {
  const minutes = Math.floor(seconds / 60);
  const rest = seconds - 60 * minutes;
  return `${minutes}:${rest.toFixed(1).padStart(4, "0")}`;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;  // never innerHTML: names come from disk
  return node;
}

function svgElement(tag, attributes) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  return node;
}

async function api(url, options) {
  const response = await fetch(url, options);
  let body;
  try { body = await response.json(); } catch (e) { body = {}; }
  if (!response.ok) throw new Error(body.error || `the server answered ${response.status}`);
  return body;
}

function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = !message;
}

function momentQuery(hit) {
  return `start=${hit.start}&end=${hit.end}`;
}

// ---------------------------------------------------------------------------------------------
// Searching

async function runSearch(request, label) {
  const number = ++state.request;
  showError("");
  $("#summary").textContent = "Searching…";
  try {
    const report = await request;
    if (number !== state.request) return;  // a later search has started: its answer wins
    render(report.queries[0].hits, label);
  } catch (error) {
    if (number !== state.request) return;
    $("#summary").textContent = "";
    $("#results").textContent = "";  // the last search's cards would pass for this one's
    Object.assign(state, { hits: [], selected: -1 });
    showError(error.message);
  }
}

function searchText() {
  const text = $("#query").value.trim();
  if (!text) return;
  runSearch(api(`/api/search?q=${encodeURIComponent(text)}&k=${K}`), [`“${text}”`]);
}

function searchImage(file) {
  if (!file || !file.type.startsWith("image/")) {
    showError(`${file ? file.name : "that"} is not an image: drop a JPEG, PNG or WebP`);
    return;
  }
  const chip = element("span", "chip");
  const preview = element("img");
  preview.src = URL.createObjectURL(file);
  preview.alt = "";
  chip.append(preview, element("span", "", file.name));
  runSearch(api(`/api/search?k=${K}`, { method: "POST", body: file,
                                        headers: { "Content-Type": file.type } }), [chip]);
}

function searchSimilar(hit) {
  const label = `more like ${baseName(hit.video)} ${clock(hit.start)}–${clock(hit.end)}`;
  runSearch(api(`/api/similar/${hit.id}?${momentQuery(hit)}&k=${K}`), [label]);
}

function baseName(path) {
  return path.split(/[\\/]/).pop();
}

function folderName(path) {
  const folder = path.split(/[\\/]/).slice(0, -1).join("/") || "/";
  return folder.length > 64 ? `…${folder.slice(-63)}` : folder;  // the end says the most
}

// ---------------------------------------------------------------------------------------------
// Results

function render(hits, label) {
  state.hits = hits;
  state.selected = -1;
  const summary = $("#summary");
  summary.textContent = "";
  summary.append(`${hits.length} result${hits.length === 1 ? "" : "s"} for `, ...label);
  const list = $("#results");
  list.textContent = "";
  hits.forEach((hit, index) => list.append(card(hit, index)));
  if (hits.length) select(0, false);
}

function card(hit, index) {
  const item = element("li", "card");
  item.tabIndex = 0;
  Object.assign(item.dataset, { id: hit.id, start: hit.start, end: hit.end, peak: hit.peak,
                                video: hit.video, rank: hit.rank });
  const thumb = element("div", "thumb");
  const image = element("img");
  image.loading = "lazy";
  image.alt = `the frame at ${clock(hit.peak)}`;
  image.src = `/api/thumbnail/${hit.id}?t=${hit.peak}`;
  thumb.append(image, element("span", "rank", `#${hit.rank}`), element("span", "at", clock(hit.peak)));
  const body = element("div", "body");
  const title = element("div", "title");
  title.append(element("span", "name", baseName(hit.video)),
               element("span", "score", hit.score.toFixed(3)));
  title.querySelector(".name").title = hit.video;
  const folder = element("div", "folder", folderName(hit.video));
  folder.title = hit.video;
  const when = element("div", "when");
  when.append(element("b", "", `${clock(hit.start)} – ${clock(hit.end)}`),
              element("span", "", `  ·  peak ${clock(hit.peak)}  ·  of ${clock(hit.duration)}`));
  const actions = element("div", "actions");
  const similar = element("button", "similar", "More like this");
  similar.type = "button";
  similar.addEventListener("click", (event) => { event.stopPropagation(); searchSimilar(hit); });
  const download = element("a", "download", "Download clip");
  download.href = `/api/clip/${hit.id}?${momentQuery(hit)}`;
  download.addEventListener("click", (event) => event.stopPropagation());
  actions.append(similar, download);
  body.append(title, folder, when, strip(hit, index), actions);
  item.append(thumb, body);
  item.addEventListener("click", () => play(index));
  item.addEventListener("keydown", (event) => { if (event.key === "Enter") play(index); });
  return item;
}

// The strip: one bar per sampled frame, as wide as the cell of time the frame stands for (from
// the midpoints with its neighbours, as the moment rule counts them) and as tall as its weight;
// the moment shaded, its bars in the accent colour; the peak marked. Clicking it seeks there.
function strip(hit, index) {
  const box = element("div", "strip");
  box.title = "query-scoring weight of each frame over the video; click to play from there";
  const svg = svgElement("svg", { viewBox: "0 0 1000 26", preserveAspectRatio: "none" });
  const x = (t) => (1000 * t) / Math.max(hit.duration, 1e-9);
  svg.append(svgElement("rect", { x: 0, y: 0, width: 1000, height: 26, fill: "#eef1f5", rx: 3 }));
  svg.append(svgElement("rect", { x: x(hit.start), y: 0, width: Math.max(2, x(hit.end) - x(hit.start)),
                                  height: 26, fill: "rgba(37, 99, 235, .16)" }));
  const top = Math.max(...hit.weights, 1e-12);
  hit.times.forEach((time, i) => {
    const left = i === 0 ? 0 : (hit.times[i - 1] + time) / 2;
    const right = i === hit.times.length - 1 ? hit.duration : (time + hit.times[i + 1]) / 2;
    const height = Math.max(1, (24 * hit.weights[i]) / top);
    const inside = time >= hit.start && time <= hit.end;
    svg.append(svgElement("rect", { x: x(left) + 0.6, y: 26 - height,
                                    width: Math.max(0.6, x(right) - x(left) - 1.2), height,
                                    fill: inside ? "#2563eb" : "#b8c0cc" }));
  });
  for (const edge of [hit.start, hit.end]) {
    svg.append(svgElement("line", { x1: x(edge), x2: x(edge), y1: 0, y2: 26, stroke: "#1d4ed8",
                                    "stroke-width": 1.5, "vector-effect": "non-scaling-stroke" }));
  }
  svg.append(svgElement("line", { x1: x(hit.peak), x2: x(hit.peak), y1: 0, y2: 26, stroke: "#f59e0b",
                                  "stroke-width": 2.5, "vector-effect": "non-scaling-stroke" }));
  const head = svgElement("line", { class: "playhead", x1: 0, x2: 0, y1: -2, y2: 28, stroke: "#111827",
                                    "stroke-width": 2, "vector-effect": "non-scaling-stroke",
                                    visibility: "hidden" });
  svg.append(head);
  const axis = element("div", "axis");
  const legend = element("span", "legend");
  const key = (colour, text) => {
    const swatch = element("i");
    swatch.style.background = colour;
    legend.append(swatch, text);
  };
  key("#2563eb", "moment");
  key("#f59e0b", "peak");
  key("#b8c0cc", "weight of each frame");
  axis.append(element("span", "", "0:00.0"), legend, element("span", "", clock(hit.duration)));
  box.append(svg, axis);
  box.addEventListener("click", (event) => {
    event.stopPropagation();
    const bounds = svg.getBoundingClientRect();
    const fraction = Math.min(1, Math.max(0, (event.clientX - bounds.left) / bounds.width));
    play(index, Math.round(fraction * hit.duration * 1000) / 1000);  // ms, as clips are cached
  });
  return box;
}

function select(index, scroll = true) {
  const cards = document.querySelectorAll(".card");
  if (index < 0 || index >= cards.length) return;
  cards.forEach((node, i) => node.classList.toggle("selected", i === index));
  state.selected = index;
  if (scroll) cards[index].scrollIntoView({ block: "nearest" });
}

// ---------------------------------------------------------------------------------------------
// Playing: from the moment's start (or where the strip was clicked); paused at the moment's end
// when played from before it. Videos a browser cannot play come as a clip, whose time 0 is
// `offset` seconds into the video: of the moment, or, for a click on the strip outside the
// moment, of as long a stretch from there.

function clipSpan(hit, from) {
  if (from >= hit.start && from <= hit.end) return hit;
  const length = hit.end - hit.start;
  const start = Math.max(0, Math.min(from, hit.duration - length));
  return { start, end: Math.min(hit.duration, start + length) };
}

async function play(index, at) {
  const hit = state.hits[index];
  if (!hit) return;
  select(index);
  const number = ++state.play;
  const from = at === undefined ? hit.start : at;
  let where;
  try {
    where = await api(`/api/play/${hit.id}?${momentQuery(clipSpan(hit, from))}`);
  } catch (error) {
    showError(error.message);
    return;
  }
  if (number !== state.play) return;
  showError("");
  state.playing = { hit, index, offset: where.offset, stopAtEnd: from < hit.end };
  player.dataset.offset = where.offset;
  player.dataset.id = hit.id;
  $("#player-pane").classList.remove("idle");
  if (player.dataset.url !== where.url) {
    player.dataset.url = where.url;
    player.src = where.url;
    if (!(await loaded(player)) || number !== state.play) return;  // errors: see below
  }
  player.currentTime = Math.max(0, from - where.offset);
  showNow(hit, index, where);
  player.play().catch(() => {});  // refused autoplay: the controls are there
}

// true once the video's metadata is in; false if it fails to load (the error event says why).
function loaded(media) {
  return new Promise((resolve) => {
    const finish = (ok) => {
      media.removeEventListener("loadedmetadata", yes);
      media.removeEventListener("error", no);
      resolve(ok);
    };
    const yes = () => finish(true);
    const no = () => finish(false);
    media.addEventListener("loadedmetadata", yes);
    media.addEventListener("error", no);
  });
}

// A video that fails to load or to play on: the server's reason (its JSON error), else the
// browser's.
player.addEventListener("error", async () => {
  const url = player.dataset.url;
  const browserSays = (player.error && player.error.message) || "it cannot be decoded";
  let reason = `the browser cannot play this video (${browserSays})`;
  try {
    const answer = await fetch(url, { headers: { Range: "bytes=0-0" } });
    if (!answer.ok) reason = (await answer.json()).error || reason;
  } catch (error) { /* the network's error: keep the browser's */ }
  player.dataset.url = "";  // the next click loads it again
  if (url === player.getAttribute("src")) showError(reason);
});

function videoTime() {
  return player.currentTime + (state.playing ? state.playing.offset : 0);
}

function showNow(hit, index, where) {
  $("#now").hidden = false;
  const title = $("#now-title");
  title.textContent = "";
  title.append(element("b", "", baseName(hit.video)),
               ` ${clock(hit.start)} – ${clock(hit.end)}`,
               element("span", "state", where.method === "original" ? "" : "(played from a clip of the moment)"));
  const now = $("#now-strip");
  now.replaceWith(Object.assign(strip(hit, index), { id: "now-strip" }));
  const actions = $("#now-actions");
  actions.textContent = "";
  actions.className = "actions";
  const similar = element("button", "", "More like this");
  similar.addEventListener("click", () => searchSimilar(hit));
  const download = element("a", "", "Download clip");
  download.href = `/api/clip/${hit.id}?${momentQuery(hit)}`;
  const original = element("a", "", "Open the video");
  original.href = `/api/video/${hit.id}`;
  original.target = "_blank";
  actions.append(similar, download, original);
}

function followPlayback() {
  const playing = state.playing;
  if (playing) {
    const time = videoTime();
    if (playing.stopAtEnd && time >= playing.hit.end) {
      player.pause();
      playing.stopAtEnd = false;  // played again, it goes on
      $("#now-title .state").textContent = "end of the moment";
    }
    const boxes = [document.querySelectorAll(".card .strip")[playing.index], $("#now-strip")];
    for (const box of boxes) {
      const head = box && box.querySelector(".playhead");
      if (!head) continue;
      const x = (1000 * time) / Math.max(playing.hit.duration, 1e-9);
      head.setAttribute("x1", x);
      head.setAttribute("x2", x);
      head.setAttribute("visibility", "visible");
    }
  }
  if (!player.paused) requestAnimationFrame(followPlayback);
}
player.addEventListener("play", () => requestAnimationFrame(followPlayback));
player.addEventListener("seeked", followPlayback);

// ---------------------------------------------------------------------------------------------
// Keys, the form, dropped images, the header

$("#search").addEventListener("submit", (event) => { event.preventDefault(); searchText(); });
$("#image").addEventListener("change", (event) => searchImage(event.target.files[0]));

document.addEventListener("keydown", (event) => {
  if (event.key !== "ArrowDown" && event.key !== "ArrowUp") return;
  if (!state.hits.length || event.target === player) return;
  event.preventDefault();
  const step = event.key === "ArrowDown" ? 1 : -1;
  const next = Math.min(state.hits.length - 1, Math.max(0, state.selected + step));
  document.querySelectorAll(".card")[next].focus({ preventScroll: true });
  play(next);
});

let dragDepth = 0;
const dragsFiles = (event) => Array.from(event.dataTransfer.types || []).includes("Files");
window.addEventListener("dragenter", (event) => {
  if (!dragsFiles(event)) return;
  dragDepth += 1;
  $("#drop").hidden = false;
});
window.addEventListener("dragleave", () => {
  dragDepth = Math.max(0, dragDepth - 1);
  if (!dragDepth) $("#drop").hidden = true;
});
window.addEventListener("dragover", (event) => { if (dragsFiles(event)) event.preventDefault(); });
window.addEventListener("drop", (event) => {
  event.preventDefault();
  dragDepth = 0;
  $("#drop").hidden = true;
  searchImage(event.dataTransfer.files[0]);
});

api("/api/info").then((info) => {
  const model = String(info.config.model).split(/[\\/]/).pop();
  $("#about").textContent = `${info.num_videos} videos · ${info.num_frames} frames · ${model}`;
}).catch((error) => showError(error.message));

window.hitchhiker = { videoTime, state };
