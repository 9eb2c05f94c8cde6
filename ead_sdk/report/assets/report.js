// ead view: renders the embedded report data (JSON in #ead-data) with plotly.js, offline.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("ead-data").textContent);
  const BG = ["#bfdbfe", "#fdba74", "#d8b4fe", "#fca5a5"];
  const LINE = ["#2563eb", "#ea580c", "#9333ea", "#dc2626"];
  const models = data.models;
  const PROMPT_TAIL = 80; // characters of the prompt shown before the generated tokens
  const tooltip = document.getElementById("tooltip");
  const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
  const num = (v, d) => (v === null || v === undefined ? "–" : Number(v).toFixed(d));
  const el = (tag, attrs, html) => {
    const e = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => e.setAttribute(k, v));
    if (html !== undefined) e.innerHTML = html;
    return e;
  };

  function header() {
    const counts = models.map((m, i) => `${esc(m)} (${Number(data.param_counts[i]).toLocaleString()} parameters)`);
    document.getElementById("subtitle").textContent =
      `${data.source}: ${data.num_sequences} sequences, ${data.num_tokens} tokens; models ${counts.join(", ")}; ` +
      (data.tokenizer ? `text from the tokenizer at ${data.tokenizer}` : "token ids (no tokenizer)");
    const legend = document.getElementById("legend");
    models.forEach((m, i) => legend.appendChild(el("span", { style: `background:${BG[i % 4]}` }, `emitted by ${esc(m)}`)));
    legend.appendChild(el("span", { style: "box-shadow: inset 2px 0 0 #111827; background:#f1f5f9" }, "switch"));
  }

  function summary() {
    const cols = [
      ["large_share", "large share", 3, "summary"], ["cost_ratio", "cost ratio", 3, "summary"],
      ["switches_per_1k_tokens", "switches / 1k tokens", 1, "summary"], ["tokens", "tokens", 0, "summary"],
      ["wasted", "wasted forwards", 0, "summary"], ["agreement", "agreement", 3, "summary"],
      ["quality", "quality", 3, "summary"], ["apgr", "APGR", 3, "summary"],
    ].filter(([k, , , src]) => data.policies.some((p) => p[src][k] !== undefined && p[src][k] !== null));
    const table = el("table", { class: "summary", id: "summary-table" });
    let head = "<tr><th>policy</th>" + cols.map((c) => `<th>${c[1]}</th>`).join("");
    head += "<th>catch-up forwards</th>" + (data.policies[0].predicted_seconds !== undefined ? "<th>predicted s</th>" : "") + "</tr>";
    let rows = "";
    data.policies.forEach((p) => {
      const r = p.report;
      const cells = cols.map(([k, , d, src]) => {
        const v = p[src][k];
        return `<td>${Array.isArray(v) ? v.reduce((a, b) => a + b, 0) : num(v, d)}</td>`;
      });
      rows += `<tr><td>${esc(p.label)}</td>${cells.join("")}<td>${r.catchup.join(" / ")}</td>`;
      rows += (p.predicted_seconds !== undefined ? `<td>${num(p.predicted_seconds, 2)}</td>` : "") + "</tr>";
    });
    table.innerHTML = head + rows;
    document.getElementById("summary").appendChild(table);
  }

  function frontier() {
    const sw = data.sweep;
    if (!sw) return;
    document.getElementById("frontier-section").style.display = "";
    document.getElementById("frontier-title").textContent =
      `Sweep of ${sw.policy} (${sw.escalation}): ${sw.points.length} configurations, ${sw.quality} vs cost ratio`;
    const text = (p) => Object.entries(p.config).map(([k, v]) => `${k} = ${typeof v === "number" ? +v.toFixed(4) : v}`).join("<br>");
    const trace = (pts, name, mode, color) => ({
      x: pts.map((p) => p.cost_ratio), y: pts.map((p) => p.quality), mode, name, type: "scatter",
      marker: { color, size: 8 }, line: { color },
      text: pts.map((p) => text(p) + `<br>large share ${num(p.large_share, 3)}`),
      hovertemplate: `%{text}<br>cost ratio %{x:.3f}<br>${sw.quality} %{y:.4f}<extra>${name}</extra>`,
    });
    const front = sw.points.filter((p) => p.frontier).sort((a, b) => a.cost_ratio - b.cost_ratio);
    const layout = {
      margin: { t: 10, r: 10, b: 44, l: 56 }, xaxis: { title: { text: "cost ratio (cost / large model alone)" } },
      yaxis: { title: { text: sw.quality } }, legend: { orientation: "h", y: 1.08 }, hovermode: "closest",
    };
    Plotly.newPlot("frontier", [trace(sw.points, "configurations", "markers", "#94a3b8"),
      trace(front, "Pareto frontier", "lines+markers", "#dc2626")], layout, { responsive: true, displaylogo: false });
  }

  function fillPicker() {
    const select = document.getElementById("picker");
    data.sequences.forEach((s, k) => {
      const text = (Array.isArray(s.text) ? s.text.join("") : s.text).replace(/\s+/g, " ").slice(0, 60);
      select.appendChild(el("option", { value: k }, esc(`#${s.index} (${s.tokens.length} tokens) ${text}`)));
    });
    select.addEventListener("change", () => show(Number(select.value)));
    document.getElementById("prev").addEventListener("click", () => show(current - 1));
    document.getElementById("next").addEventListener("click", () => show(current + 1));
    document.getElementById("shown-note").textContent = data.sequences.length < data.num_sequences
      ? `${data.sequences.length} of ${data.num_sequences} sequences embedded (the cost summary covers all)` : "";
  }

  function tokenHtml(seq, routes, computed) {
    const parts = [];
    for (let t = 0; t < seq.tokens.length; t++) {
      const m = routes[t];
      const cls = ["tok"];
      if (t > 0 && routes[t - 1] !== m) cls.push("switch");
      if (computed[t] !== m) cls.push("retried");
      parts.push(`<span class="${cls.join(" ")}" data-t="${t}" style="background:${BG[m % 4]}">${esc(seq.text[t])}</span>`);
    }
    return parts.join("");
  }

  function chart(div, seq, pol, routes) {
    const x = seq.entropy.map((_, t) => t);
    const traces = models.map((m, j) => ({
      x, y: seq.entropy.map((row) => row[j]), type: "scatter", mode: "lines", name: `H ${m}`,
      line: { color: LINE[j % 4], width: 1.5 }, hovertemplate: `H ${esc(m)} %{y:.3f} nats<extra></extra>`,
    }));
    const win = pol.spec.params && Number.isInteger(pol.spec.params.window) ? pol.spec.params.window : null;
    if (win !== null) {
      const seen = pol.computed[current].map((m, t) => seq.entropy[t][m]);
      const mean = seen.map((_, t) => {
        const part = seen.slice(Math.max(0, t - win + 1), t + 1);
        return part.reduce((a, b) => a + b, 0) / part.length;
      });
      traces.push({
        x, y: mean, type: "scatter", mode: "lines", name: win > 1 ? `signal (mean of ${win})` : "signal",
        line: { color: "#111827", width: 2 }, hovertemplate: "policy's signal %{y:.3f} nats<extra></extra>",
      });
    }
    const sw = routes.map((m, t) => (t > 0 && routes[t - 1] !== m ? t : -1)).filter((t) => t >= 0);
    traces.push({
      x: sw, y: sw.map((t) => seq.entropy[t][routes[t]]), type: "scatter", mode: "markers", name: "switch",
      marker: { symbol: "triangle-up", size: 9, color: "#111827" },
      text: sw.map((t) => `${models[routes[t - 1]]} → ${models[routes[t]]}`), hovertemplate: "switch %{text}<extra></extra>",
    });
    pol.thresholds.forEach((th) => traces.push({
      x: [0, Math.max(x.length - 1, 1)], y: [th.nats, th.nats], type: "scatter", mode: "lines", name: `${th.name} ${+th.value.toFixed(3)}`,
      line: { color: "#6b7280", dash: "dash", width: 1 }, hovertemplate: `${th.name} %{y:.3f} nats<extra></extra>`,
    }));
    const layout = {
      margin: { t: 30, r: 8, b: 40, l: 48 }, hovermode: "x unified",
      legend: { orientation: "h", x: 0, y: 1.02, yanchor: "bottom", font: { size: 11 } },
      xaxis: { title: { text: "generated position" } }, yaxis: { title: { text: "entropy (nats)" }, rangemode: "tozero" },
    };
    Plotly.react(div, traces, layout, { responsive: true, displaylogo: false });
  }

  let current = 0;
  function show(k) {
    if (k < 0 || k >= data.sequences.length) return;
    current = k;
    document.getElementById("picker").value = String(k);
    const seq = data.sequences[k];
    const panels = document.getElementById("panels");
    panels.innerHTML = "";
    data.policies.forEach((pol, p) => {
      const routes = pol.routes[k];
      const big = routes.filter((m) => m === models.length - 1).length;
      const switches = routes.filter((m, t) => t > 0 && routes[t - 1] !== m).length;
      const panel = el("div", { class: "panel", "data-policy": p });
      panel.appendChild(el("h3", {}, esc(pol.label)));
      panel.appendChild(el("div", { class: "stats" },
        `this sequence: ${routes.length} tokens, large share ${num(routes.length ? big / routes.length : 0, 3)}, ${switches} switches`));
      const tail = seq.prompt.length > PROMPT_TAIL ? "…" + seq.prompt.slice(-PROMPT_TAIL) : seq.prompt;
      const toks = el("div", { class: "tokens", "data-policy": p },
        `<span class="prompt-text" title="prompt">${esc(tail)}</span>` + tokenHtml(seq, routes, pol.computed[k]));
      panel.appendChild(toks);
      panel.appendChild(el("div", { class: "chart" }));
      panels.appendChild(panel);
    });
    // Plot once every panel is in place, so each chart takes its own column's width.
    panels.querySelectorAll(".panel").forEach((panel, p) => {
      chart(panel.querySelector(".chart"), seq, data.policies[p], data.policies[p].routes[k]);
    });
  }

  function hover(ev) {
    const span = ev.target.closest && ev.target.closest(".tok");
    if (!span) { tooltip.style.display = "none"; return; }
    const p = Number(span.parentElement.dataset.policy), t = Number(span.dataset.t);
    const seq = data.sequences[current], pol = data.policies[p];
    const r = pol.routes[current][t], c = pol.computed[current][t];
    let html = `<div>position ${t}, token ${esc(JSON.stringify(seq.text[t]))} (id ${seq.tokens[t]})</div>`;
    html += `<div>route: <b>${esc(models[r])}</b>${c !== r ? ` (retried after ${esc(models[c])})` : ""}` +
      `${t > 0 && pol.routes[current][t - 1] !== r ? " — switch" : ""}</div><table><tr><td></td><td>entropy</td><td>log-prob</td></tr>`;
    models.forEach((m, j) => { html += `<tr><td>${esc(m)}</td><td>${num(seq.entropy[t][j], 3)}</td><td>${num(seq.logprob[t][j], 3)}</td></tr>`; });
    tooltip.innerHTML = html + "</table>";
    tooltip.style.display = "block";
    tooltip.style.left = Math.min(ev.clientX + 14, window.innerWidth - 370) + "px";
    tooltip.style.top = ev.clientY + 14 + "px";
  }

  header();
  summary();
  frontier();
  fillPicker();
  show(0);
  document.getElementById("panels").addEventListener("mousemove", hover);
  document.getElementById("panels").addEventListener("mouseleave", () => { tooltip.style.display = "none"; });
  document.addEventListener("keydown", (e) => {
    if (e.target.tagName === "SELECT") return;
    if (e.key === "ArrowRight") show(current + 1);
    if (e.key === "ArrowLeft") show(current - 1);
  });
  document.body.dataset.ready = "1";
})();
