// Conclave status page: polls /v1/status.json (same origin, no API key) and draws the pipeline.
// Only DOM APIs and textContent: nothing from the server is ever parsed as HTML.
"use strict";
(function () {
  const POLL_MS = 2000;
  const SVG = "http://www.w3.org/2000/svg";
  const BOX_W = 200, BOX_H = 156, GAP = 44, PAD = 16, BAND_H = 22;
  const PALETTE = ["#3559c7", "#1f9d55", "#b4541f", "#7b3fb8", "#0f8b8d", "#c2185b", "#5d6d1e", "#8d6e63"];

  function $(id) { return document.getElementById(id); }
  function text(v) { return v === null || v === undefined || v === "" ? "-" : String(v); }
  function layers(s) { return s.layers[0] + "-" + s.layers[1]; }
  function gpus(s) { return s.gpus.attested + "/" + s.gpus.required; }

  function age(seconds) {
    if (seconds === null || seconds === undefined) return "-";
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m" + (s % 60) + "s";
    return Math.floor(s / 3600) + "h" + Math.floor((s % 3600) / 60) + "m";
  }

  function stateOf(s) {
    if (!s.admitted) {
      const last = s.events.length ? s.events[s.events.length - 1] : null;
      return { label: last && last.event === "evicted" ? "evicted" : "not admitted", cls: "state-bad" };
    }
    const life = s.lifecycle ? s.lifecycle.state : null;
    // a worker's last lifecycle state is ray_joined (the head is the one that serves)
    if (!life || life === "serving" || life === "ray_joined") return { label: life || "admitted", cls: "state-ok" };
    return { label: life, cls: life === "degraded" ? "state-bad" : "state-warn" };
  }

  function el(name, attrs, content) {
    const node = document.createElementNS(SVG, name);
    for (const k in attrs) node.setAttribute(k, attrs[k]);
    if (content !== undefined) node.textContent = content;
    return node;
  }

  function drawPipeline(doc) {
    const stages = doc.stages;
    const width = PAD * 2 + stages.length * BOX_W + (stages.length - 1) * GAP;
    const height = PAD * 2 + BOX_H + 18 + BAND_H + 16;
    const svg = el("svg", { width: width, height: height, viewBox: "0 0 " + width + " " + height,
                            role: "img", "aria-label": "pipeline stages", id: "pipeline-svg" });
    svg.appendChild(el("title", {}, "Pipeline: " + stages.map(s => s.node + " layers " + layers(s)).join(", ")));
    const defs = el("defs", {});
    const marker = el("marker", { id: "arrowhead", markerWidth: 10, markerHeight: 8, refX: 9, refY: 4, orient: "auto" });
    marker.appendChild(el("path", { d: "M0,0 L10,4 L0,8 z", class: "arrow-head" }));
    defs.appendChild(marker);
    svg.appendChild(defs);
    const total = Math.max(1, ...stages.map(s => s.layers[1]));
    stages.forEach((s, i) => {
      const x = PAD + i * (BOX_W + GAP), y = PAD;
      const st = stateOf(s);
      const g = el("g", { class: "stage", "data-node": s.node, "data-layers": layers(s),
                          "data-state": st.label, transform: "translate(" + x + "," + y + ")" });
      g.appendChild(el("rect", { class: "stage-box", width: BOX_W, height: BOX_H, rx: 10 }));
      g.appendChild(el("rect", { width: 6, height: BOX_H, rx: 3, fill: PALETTE[i % PALETTE.length] }));
      g.appendChild(el("text", { class: "stage-name", x: 16, y: 24 }, s.node));
      g.appendChild(el("text", { class: "stage-line", x: 16, y: 44 }, s.role + " \u00b7 owner " + s.owner));
      g.appendChild(el("text", { class: "stage-line", x: 16, y: 62 }, "TEE " + text(s.tee) + " \u00b7 GPUs " + gpus(s)));
      g.appendChild(el("text", { class: "stage-layers", x: 16, y: 84 }, "layers " + layers(s)));
      g.appendChild(el("text", { class: "stage-line", x: 16, y: 104 },
                       "evidence " + age(s.evidence_age_s) + " (" + s.freshness + ")"));
      g.appendChild(el("text", { class: "stage-line", x: 16, y: 122 }, "TCB " + text(s.tcb_status)));
      g.appendChild(el("rect", { class: st.cls, x: 16, y: 132, width: BOX_W - 32, height: 18, rx: 9 }));
      g.appendChild(el("text", { class: "stage-state", x: BOX_W / 2, y: 145, "text-anchor": "middle" }, st.label));
      svg.appendChild(g);
      if (i < stages.length - 1) {
        const ay = y + BOX_H / 2;
        svg.appendChild(el("line", { class: "arrow", x1: x + BOX_W + 4, y1: ay, x2: x + BOX_W + GAP - 6, y2: ay,
                                     "marker-end": "url(#arrowhead)" }));
      }
    });
    // the model's layers as one band, each stage's share in its colour
    const bandY = PAD + BOX_H + 18, bandW = width - PAD * 2;
    svg.appendChild(el("text", { class: "layer-band-label", x: PAD, y: bandY - 4 }, "model layers 0-" + total));
    stages.forEach((s, i) => {
      const x0 = PAD + bandW * s.layers[0] / total, w = bandW * (s.layers[1] - s.layers[0]) / total;
      const seg = el("rect", { class: "layer-seg", x: x0, y: bandY, width: Math.max(1, w), height: BAND_H,
                               fill: PALETTE[i % PALETTE.length], "data-node": s.node });
      seg.appendChild(el("title", {}, s.node + ": layers " + layers(s)));
      svg.appendChild(seg);
    });
    const holder = $("pipeline");
    holder.replaceChildren(svg);
  }

  function drawTable(doc) {
    const body = $("nodes").tBodies[0];
    const rows = doc.stages.map(s => {
      const tr = document.createElement("tr");
      tr.dataset.node = s.node;
      tr.dataset.layers = layers(s);
      const life = s.lifecycle ? s.lifecycle.state + (s.lifecycle.reasons.length ? " (" + s.lifecycle.reasons.join(", ") + ")" : "")
                               : stateOf(s).label;
      const events = s.events.slice(-3).reverse().map(e => e.event + (e.reason ? " (" + e.reason + ")" : "") + " " + e.at).join("; ");
      [s.node, s.role, s.owner, text(s.tee), gpus(s), layers(s), age(s.evidence_age_s) + " " + s.freshness,
       text(s.tcb_status), life, events || "-"].forEach((v, k) => {
        const td = document.createElement("td");
        td.textContent = v;
        if (k === 9) td.className = "events";
        tr.appendChild(td);
      });
      return tr;
    });
    body.replaceChildren(...rows);
  }

  function drawFigures(doc) {
    const f = doc.figures;
    $("fig-requests").textContent = text(f.requests_total);
    $("fig-in-flight").textContent = text(f.requests_in_flight);
    $("fig-tokens-per-s").textContent = text(f.tokens_per_s);
    $("fig-ttft").textContent = text(f.ttft_ms.p50);
    $("fig-tokens").textContent = text(f.completion_tokens_total);
    $("fig-failed").textContent = text(f.requests_failed);
    const pill = $("serving-state");
    pill.textContent = doc.serving.state === "serving" ? "serving"
      : "not serving" + (doc.serving.missing.length ? ": " + doc.serving.missing.join(", ") + " missing" : "");
    pill.className = "pill pill-" + doc.serving.state;
    $("updated").textContent = "updated " + doc.at;
    $("manifest-digest").textContent = doc.manifest_digest;
    $("model-digest").textContent = doc.model_digest;
  }

  function render(doc) {
    drawFigures(doc);
    drawPipeline(doc);
    drawTable(doc);
    document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
    $("error").hidden = true;
  }

  function poll() {
    fetch("/v1/status.json", { cache: "no-store", credentials: "omit" })
      .then(r => { if (!r.ok) throw new Error("status " + r.status); return r.json(); })
      .then(render)
      .catch(err => { const e = $("error"); e.textContent = "cannot load /v1/status.json: " + err.message; e.hidden = false; })
      .finally(() => setTimeout(poll, POLL_MS));
  }

  poll();
})();
