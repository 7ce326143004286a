// cnnlens explore: a little plain JavaScript, no libraries, no network beyond this server.
"use strict";

function $(id) { return document.getElementById(id); }

// -- scan progress: poll /api/status and reload when the store is ready --------------------
(function scanProgress() {
  const box = $("scan-progress");
  if (!box) return;
  const tick = () => fetch(box.dataset.statusUrl).then(r => r.json()).then(s => {
    box.querySelector(".bar").style.width = (100 * s.done / Math.max(1, s.total)).toFixed(1) + "%";
    $("scan-text").textContent = s.state === "error" ? "the scan failed: " + s.error
      : s.done + " of " + s.total + " samples";
    if (s.state === "ready") location.reload();
    else if (s.state !== "error") setTimeout(tick, 400);
  }).catch(() => setTimeout(tick, 1000));
  tick();
})();

// -- confusion matrix: raw / normalised toggle, hover tip ---------------------------------
(function matrix() {
  const table = $("confusion");
  if (!table) return;
  const tip = $("tip");
  function show(mode) {
    for (const td of table.querySelectorAll("td")) {
      const v = td.querySelector(".v");
      const raw = Number(td.dataset.raw);
      if (raw) v.textContent = mode === "raw" ? td.dataset.raw : Number(td.dataset.norm).toFixed(2);
      const bg = mode === "raw" ? td.dataset.bgRaw : td.dataset.bgNorm;
      td.style.background = bg;
      td.classList.toggle("dark", darkBg(bg));
    }
    for (const b of document.querySelectorAll(".toggle button")) b.classList.toggle("on", b.dataset.mode === mode);
  }
  function darkBg(rgb) { const m = rgb.match(/\d+/g).map(Number); return 0.299 * m[0] + 0.587 * m[1] + 0.114 * m[2] < 150; }
  for (const b of document.querySelectorAll(".toggle button")) b.addEventListener("click", () => show(b.dataset.mode));
  table.addEventListener("mouseover", e => {
    const td = e.target.closest("td");
    if (!td || !tip) return;
    tip.textContent = td.title;
    tip.hidden = false;
  });
  table.addEventListener("mousemove", e => { if (tip) { tip.style.left = (e.pageX + 14) + "px"; tip.style.top = (e.pageY + 14) + "px"; } });
  table.addEventListener("mouseleave", () => { if (tip) tip.hidden = true; });
  show("raw");
})();

// -- sortable tables and the class search ---------------------------------------------------
(function tables() {
  for (const table of document.querySelectorAll("table.sortable")) {
    table.querySelectorAll("th").forEach((th, col) => {
      th.addEventListener("click", () => {
        const body = table.tBodies[0];
        const rows = Array.from(body.rows);
        const asc = th.dataset.dir !== "asc";
        th.dataset.dir = asc ? "asc" : "desc";
        const key = tr => { const td = tr.cells[col]; return th.dataset.type === "num" ? Number(td.dataset.v) : td.textContent.trim().toLowerCase(); };
        rows.sort((a, b) => { const x = key(a), y = key(b); return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1); });
        rows.forEach(r => body.appendChild(r));
      });
    });
  }
  const search = $("class-search");
  if (search) {
    // every class of the model can be found, also one the tables leave out (no sample, never predicted)
    const all = JSON.parse($("class-index").textContent), found = $("class-found");
    search.addEventListener("input", () => {
      const q = search.value.trim().toLowerCase();
      let shown = 0;
      for (const tr of document.querySelectorAll("tr[data-names]")) {
        tr.hidden = q !== "" && !tr.dataset.names.split("|").some(n => n.includes(q));
        if (!tr.hidden) shown++;
      }
      if (q === "") { found.textContent = ""; return; }
      const hits = all.map((n, i) => [n, i]).filter(([n]) => n.toLowerCase().includes(q));
      const absent = hits.filter(([n]) => !document.querySelector('#per-class tr[data-names="' + CSS.escape(n.toLowerCase()) + '"]'));
      found.textContent = hits.length === 0 ? "no class name contains “" + search.value.trim() + "”"
        : absent.length ? absent.slice(0, 5).map(([n, i]) => n + " (class " + i + ")").join(", ")
          + (absent.length > 5 ? " and " + (absent.length - 5) + " more" : "")
          + ": no sample in the data and never predicted" : "";
    });
  }
})();

// -- sample page: run a method (or the attack) in the worker, poll its progress ------------
function poll(url, parts, done, fail) {
  const { progress, status, img } = parts;
  progress.hidden = false;
  img.hidden = true;
  status.textContent = "queued…";
  status.classList.remove("error");
  let stopped = false;
  const tick = () => fetch(url).then(r => r.json().then(j => [r.status, j])).then(([code, j]) => {
    if (stopped) return;
    if (code >= 400 || j.status === "error") {
      progress.hidden = true;
      status.textContent = j.error || ("error " + code);
      status.classList.add("error");
      if (fail) fail(j);
      return;
    }
    progress.querySelector(".bar").style.width = (100 * (j.progress || 0)).toFixed(0) + "%";
    if (j.status === "done") {
      progress.hidden = true;
      img.onload = () => { img.hidden = false; };
      img.src = j.png;
      done(j);
    } else {
      status.textContent = j.status + "… " + (100 * (j.progress || 0)).toFixed(0) + " %";
      setTimeout(tick, 300);
    }
  }).catch(() => { if (!stopped) setTimeout(tick, 1000); });
  tick();
  return () => { stopped = true; };
}

(function samplePage() {
  const box = $("explain");
  if (!box) return;
  const ref = box.dataset.ref;
  const names = JSON.parse($("class-data").textContent);
  const method = $("method"), target = $("target"), pick = $("class-pick"), input = $("class-input");
  const parts = { progress: $("method-progress"), status: $("method-status"), img: $("method-img") };
  let stop = null;
  function targetValue() {
    if (target.value !== "class") return target.value;
    const i = names.indexOf(input.value.trim());
    return i >= 0 ? String(i) : null;
  }
  function run() {
    const t = targetValue();
    if (t === null) { parts.status.textContent = "type or pick a class name from the list"; return; }
    if (stop) stop();
    $("method-aucs").textContent = "";
    $("method-objects").textContent = "";
    const url = "/api/sample/" + encodeURIComponent(ref) + "/method/" + encodeURIComponent(method.value) + "?target=" + encodeURIComponent(t);
    stop = poll(url, parts, j => {
      parts.status.textContent = method.value.replace(/_/g, " ") + " toward " + j.class_name + " (" + j.target + ")" + (j.layer ? ", layer " + j.layer : "") + ", " + j.seconds + " s";
      $("method-aucs").textContent = (j.auc_note ? j.auc_note
        : "deletion AUC " + j.deletion_auc.toFixed(3) + " · insertion AUC " + j.insertion_auc.toFixed(3))
        + (j.note ? " · ⚠ " + j.note : "");
      $("method-objects").textContent = j.objects || "";
      parts.img.alt = method.value + " toward " + j.class_name;
    });
  }
  method.addEventListener("change", run);

  // every method toward the chosen target, one after the other (the worker runs one job at a time anyway)
  $("run-all").addEventListener("click", async () => {
    const t = targetValue();
    if (t === null) { parts.status.textContent = "type or pick a class name from the list"; return; }
    const grid = $("all-methods");
    grid.textContent = "";
    for (const opt of method.options) {
      const card = document.createElement("div");
      card.className = "card";
      card.innerHTML = '<h3></h3><div class="progress"><div class="bar"></div></div><p class="status"></p><img alt="" hidden><p class="aucs"></p>';
      card.querySelector("h3").textContent = opt.textContent;
      grid.appendChild(card);
      const p = { progress: card.querySelector(".progress"), status: card.querySelector(".status"), img: card.querySelector("img") };
      const url = "/api/sample/" + encodeURIComponent(ref) + "/method/" + encodeURIComponent(opt.value) + "?target=" + encodeURIComponent(t);
      await new Promise(resolve => poll(url, p, j => {
        p.status.textContent = "toward " + j.class_name + " (" + j.target + "), " + j.seconds + " s";
        card.querySelector(".aucs").textContent = (j.auc_note ? j.auc_note
          : "deletion " + j.deletion_auc.toFixed(3) + " · insertion " + j.insertion_auc.toFixed(3))
          + (j.iou != null ? " · box IoU " + j.iou.toFixed(2) : "")
          + (j.note ? " · ⚠ " + j.note : "");
        p.img.alt = opt.value + " toward " + j.class_name;
        resolve();
      }, resolve));
    }
  });
  target.addEventListener("change", () => { pick.hidden = target.value !== "class"; if (target.value !== "class") run(); else input.focus(); });
  input.addEventListener("change", run);
  run();

  for (const att of [$("run-attack"), $("run-attack-away")]) {
    if (!att) continue;
    att.addEventListener("click", () => {
      const url = "/api/sample/" + encodeURIComponent(ref) + "/attack/" + encodeURIComponent(att.dataset.target || "second");
      const p = { progress: $("attack-progress"), status: $("attack-status"), img: $("attack-img") };
      poll(url, p, j => {
        p.status.textContent = j.success
          ? "ε = " + j.eps_255.toFixed(2) + "/255 turns it into " + j.pred_after_name + " (" + j.seconds + " s)"
          : "no ε up to 1 reached " + j.toward_name;
        p.img.alt = "attack toward " + j.toward_name;
      });
    });
  }
})();

// -- upload ---------------------------------------------------------------------------------
(function upload() {
  const input = $("file"), drop = $("drop");
  if (!input) return;
  const status = $("upload-status");
  function send(file) {
    status.textContent = "uploading " + file.name + "…";
    status.classList.remove("error");
    fetch("/api/upload", { method: "POST", body: file, headers: { "Content-Type": "application/octet-stream" } })
      .then(r => r.json().then(j => [r.status, j]))
      .then(([code, j]) => {
        if (code >= 400) { status.textContent = j.error; status.classList.add("error"); }
        else location.href = j.url;
      });
  }
  input.addEventListener("change", () => { if (input.files.length) send(input.files[0]); });
  drop.addEventListener("dragover", e => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", e => { e.preventDefault(); drop.classList.remove("over"); if (e.dataTransfer.files.length) send(e.dataTransfer.files[0]); });
})();

// -- a "computing" page: poll the job and reload when it is done --------------------------
(function computingPage() {
  const box = $("job-progress");
  if (!box) return;
  const tick = () => fetch(box.dataset.jobUrl).then(r => r.json().then(j => [r.status, j])).then(([code, j]) => {
    if (j.status === "done") { location.reload(); return; }
    if (j.status === "error" || (code >= 400 && code !== 503)) { $("job-text").textContent = j.error || ("error " + code); return; }
    box.querySelector(".bar").style.width = (100 * (j.progress || 0)).toFixed(0) + "%";
    $("job-text").textContent = (j.status || "running") + "… " + (100 * (j.progress || 0)).toFixed(0) + " %";
    setTimeout(tick, 400);
  }).catch(() => setTimeout(tick, 1000));
  tick();
})();

// -- sample page: building blocks over a grid of the image ---------------------------------
(function blocksPage() {
  const box = $("blocks");
  if (!box) return;
  const ref = box.dataset.ref, select = $("blocks-layer"), grid = $("blocks-grid");
  const status = $("blocks-status"), list = $("blocks-list");
  let data = null;
  function show(i, j, btn) {
    for (const b of grid.querySelectorAll("button")) b.classList.toggle("on", b === btn);
    list.textContent = "";
    const cell = data.cells[i][j];
    status.textContent = "row " + i + ", column " + j + " of " + data.layer + ": " +
      (cell.length ? "channels that fire most, contribution to " + data.class_name : "no channel fires here");
    for (const [ch, act, con] of cell) {
      const tr = list.insertRow();
      const a = document.createElement("a");
      a.href = "/unit/" + encodeURIComponent(data.layer) + "/" + ch;
      a.textContent = "channel " + ch;
      tr.insertCell().appendChild(a);
      tr.insertCell().textContent = "activation " + act.toFixed(3);
      tr.insertCell().textContent = "contribution " + (con >= 0 ? "+" : "") + con.toFixed(3);
    }
  }
  function load() {
    status.textContent = "computing…";
    grid.textContent = "";
    list.textContent = "";
    fetch("/api/sample/" + ref + "/blocks?layer=" + encodeURIComponent(select.value))
      .then(r => r.json().then(j => [r.status, j])).then(([code, j]) => {
        if (code >= 400) { status.textContent = j.error || ("error " + code); return; }
        data = j;
        const [h, w] = j.grid;
        grid.style.gridTemplateRows = "repeat(" + h + ", 1fr)";
        grid.style.gridTemplateColumns = "repeat(" + w + ", 1fr)";
        for (let i = 0; i < h; i++) for (let k = 0; k < w; k++) {
          const b = document.createElement("button");
          b.type = "button";
          b.title = "row " + i + ", column " + k + ": total contribution " + j.total[i][k].toFixed(3);
          b.dataset.i = i; b.dataset.j = k;
          b.addEventListener("click", () => show(i, k, b));
          grid.appendChild(b);
        }
        status.textContent = "click a position (" + h + "×" + w + " grid of " + j.layer + ")";
      }).catch(e => { status.textContent = String(e); });
  }
  select.addEventListener("change", load);
  load();
})();

// -- leaderboard: run it in the worker on request, poll, reload when done -------------------
(function leaderboardPage() {
  const btn = $("run-leaderboard");
  if (!btn) return;
  const bar = $("leaderboard-progress"), status = $("leaderboard-status");
  const tick = () => fetch("/leaderboard.json").then(r => r.json()).then(j => {
    if (j.status === "done") { location.reload(); return; }
    if (j.status === "error") { status.textContent = j.error; status.classList.add("error"); bar.hidden = true; return; }
    bar.querySelector(".bar").style.width = (100 * (j.progress || 0)).toFixed(0) + "%";
    status.textContent = j.status + "… " + (100 * (j.progress || 0)).toFixed(0) + " %";
    setTimeout(tick, 500);
  }).catch(() => setTimeout(tick, 1000));
  btn.addEventListener("click", () => {
    btn.disabled = true;
    bar.hidden = false;
    fetch("/leaderboard.json", { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" }).then(() => tick());
  });
})();

// -- unit page: the feature visualisation, computed lazily in the worker ------------------
(function featureVis() {
  const box = $("fv");
  if (!box) return;
  poll(box.dataset.url, { progress: $("fv-progress"), status: $("fv-status"), img: $("fv-img") },
    j => { $("fv-status").textContent = "mean activation " + j.activation.toFixed(3); });
})();

// -- layer page: every channel's feature visualisation, rendered in the worker on request ----------
(function layerFeatureVis() {
  const box = $("layer-fv");
  if (!box) return;
  const url = box.dataset.url, btn = $("fv-start"), cancel = $("fv-cancel");
  const bar = $("layer-fv-progress"), status = $("layer-fv-status");
  const imgs = {};
  document.querySelectorAll("#channels img.fv").forEach(img => { imgs[img.dataset.channel] = img; });
  const left = s => s < 90 ? "about " + Math.max(1, Math.round(s)) + " s left"
    : s < 5400 ? "about " + Math.round(s / 60) + " min left" : "about " + (s / 3600).toFixed(1) + " h left";
  const show = j => {
    let failed = null;
    j.channels.forEach(r => {
      const img = imgs[r.channel];
      if (r.status === "done" && img && !img.src) { img.onload = () => { img.hidden = false; }; img.src = r.png; }
      if (r.status === "error") failed = r.error;
    });
    bar.querySelector(".bar").style.width = (100 * j.done / Math.max(1, j.total)).toFixed(0) + "%";
    const running = j.pending > 0 && !failed;
    status.textContent = j.done + " of " + j.total + " feature visualisations"
      + (running ? " · " + (j.eta == null ? "estimating the time left…" : left(j.eta)) : "")
      + (!running && j.cancelled ? " · cancelled" : "") + (failed ? " · failed: " + failed : "");
    status.classList.toggle("error", !!failed);
    cancel.hidden = !running;
    return running;
  };
  const tick = () => fetch(url).then(r => r.json()).then(j => {
    if (j.error) { status.textContent = j.error; status.classList.add("error"); return; }
    if (show(j)) { bar.hidden = false; setTimeout(tick, 1000); }
    else { bar.hidden = true; btn.hidden = j.done === j.total; btn.disabled = false; }
  }).catch(() => setTimeout(tick, 2000));
  btn.addEventListener("click", () => {
    btn.disabled = true;
    bar.hidden = false;
    fetch(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" })
      .then(r => r.json()).then(j => { if (j.error) { status.textContent = j.error; status.classList.add("error"); } else { tick(); } });
  });
  cancel.addEventListener("click", () => {
    cancel.disabled = true;
    fetch(url + "/cancel", { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" })
      .then(r => r.json()).then(() => { cancel.disabled = false; tick(); });
  });
  tick();
})();

// -- unit page: the plain feature visualisation and a diversity set, on request ----------------------
(function featureViews() {
  const box = $("views");
  if (!box) return;
  const btn = $("views-start");
  const go = () => {
    btn.hidden = true;
    poll(box.dataset.url, { progress: $("views-progress"), status: $("views-status"), img: $("views-img") },
      j => { $("views-status").textContent = "first the plain one (mean activation " + j.plain_activation.toFixed(3)
        + "), then the diversity set (" + j.diverse_activations.map(v => v.toFixed(3)).join(", ") + ")"; });
  };
  btn.addEventListener("click", go);
  if (box.dataset.done === "1") go();  // computed before: shown at once
})();
