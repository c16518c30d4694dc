// The swarmless dashboard's only script: live updates (Server-Sent Events), charts drawn as
// SVG, keyboard shortcuts, local times, confirmations. No library, no build step; the pages
// work without it (they are server-rendered), only less live.
"use strict";

(function () {
  const body = document.body;
  const SVG = "http://www.w3.org/2000/svg";
  const HOUR = 3600 * 1000;
  const MINUTE = 60 * 1000;

  // -- local times ------------------------------------------------------------------------
  function localTimes(root) {
    for (const el of root.querySelectorAll("time[data-ms]")) {
      const ms = Number(el.dataset.ms);
      if (!ms) continue;
      const d = new Date(ms);
      el.title = d.toISOString();
      el.textContent = d.toLocaleString(undefined, {
        month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit",
      });
    }
  }

  // -- charts -----------------------------------------------------------------------------
  function el(name, attrs, text) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function fmtValue(v, unit) {
    if (unit === "ms") return v >= 1000 ? (v / 1000).toFixed(1) + " s" : Math.round(v) + " ms";
    return String(Math.round(v));
  }

  function fmtClock(ms) {
    const d = new Date(ms);
    return String(d.getHours()).padStart(2, "0") + ":" + String(d.getMinutes()).padStart(2, "0");
  }

  // Where the charts' time axis starts: an hour ago, or (on a young gateway) a little
  // before the first data, showing 10 minutes at least.
  function start(charts) {
    const now = Date.now();
    let first = now;
    const calls = charts.calls;
    calls.t.forEach((t, i) => { if (calls.calls[i] > 0 && t < first) first = t; });
    if (charts.containers.t.length) first = Math.min(first, charts.containers.t[0]);
    return Math.max(now - HOUR, Math.min(first - MINUTE, now - 10 * MINUTE));
  }

  // One line per series from t0 to now; a null value breaks its line.
  function drawChart(figure, times, series, unit, t0) {
    const svg = figure && figure.querySelector("svg");
    if (!svg) return;
    const H = 170, L = 56, R = 590, T = 12, B = 138;
    const now = Date.now(), span = now - t0;
    let max = 0;
    for (const s of series) for (const v of s.values) if (v !== null && v > max) max = v;
    max = max <= 0 ? 1 : max * 1.1;
    const x = (t) => L + ((t - t0) / span) * (R - L);
    const y = (v) => B - (v / max) * (B - T);
    svg.replaceChildren();
    svg.appendChild(el("line", { x1: L, x2: R, y1: B, y2: B, class: "axis" }));
    svg.appendChild(el("line", { x1: L, x2: R, y1: T, y2: T, class: "grid" }));
    svg.appendChild(el("text", { x: L - 8, y: T + 5, class: "tick", "text-anchor": "end" }, fmtValue(max, unit)));
    svg.appendChild(el("text", { x: L - 8, y: B + 5, class: "tick", "text-anchor": "end" }, "0"));
    for (const [i, t] of [[0, t0], [1, t0 + span / 2], [2, now]]) {
      const anchor = ["start", "middle", "end"][i];
      svg.appendChild(el("text", { x: x(t), y: H - 8, class: "tick", "text-anchor": anchor }, fmtClock(t)));
    }
    let points = 0;
    for (const s of series) {
      let run = [];
      const flush = () => {
        if (run.length === 1) {
          const [px, py] = run[0].split(",");
          svg.appendChild(el("circle", { cx: px, cy: py, r: 3, class: "dot k-" + s.key }));
        } else if (run.length > 1) {
          svg.appendChild(el("polyline", { points: run.join(" "), class: "line k-" + s.key }));
        }
        run = [];
      };
      s.values.forEach((v, i) => {
        const t = times[i];
        if (v === null || t < t0) { flush(); return; }
        run.push(x(t).toFixed(1) + "," + y(v).toFixed(1));
        points += 1;
      });
      flush();
    }
    if (!points) {
      svg.appendChild(el("text", { x: (L + R) / 2, y: (T + B) / 2, class: "nodata", "text-anchor": "middle" }, "no data yet"));
    }
  }

  function drawCharts(charts) {
    if (!charts) return;
    const calls = charts.calls, boxes = charts.containers, t0 = start(charts);
    drawChart(document.getElementById("chart-calls"), calls.t,
      [{ key: "calls", values: calls.calls }, { key: "errors", values: calls.errors }], "", t0);
    drawChart(document.getElementById("chart-latency"), calls.t,
      [{ key: "p50", values: calls.p50 }, { key: "p99", values: calls.p99 }], "ms", t0);
    drawChart(document.getElementById("chart-containers"), boxes.t,
      ["busy", "idle", "starting", "paused"].map((k) => ({ key: k, values: boxes[k] })), "", t0);
  }

  // -- live updates -----------------------------------------------------------------------
  function setCells(scope, values) {
    for (const [k, v] of Object.entries(values)) {
      const cell = scope.querySelector('[data-k="' + k + '"]');
      if (cell && cell.textContent !== String(v)) {
        cell.textContent = String(v);
        cell.classList.remove("changed");
        void cell.offsetWidth; // restart the highlight
        cell.classList.add("changed");
      }
    }
  }

  function scopesOf(name) {
    return document.querySelectorAll('[data-fn="' + CSS.escape(name) + '"]');
  }

  function rowFrom(html) {
    const t = document.createElement("template");
    t.innerHTML = html.trim();
    return t.content.firstElementChild;
  }

  function updateRows(rows) {
    const tbody = document.getElementById("rows");
    if (!tbody) return;
    const existing = new Map();
    for (const tr of tbody.children) existing.set(tr.dataset.id, tr);
    let cursor = tbody.firstElementChild;
    for (const r of rows) {
      let tr = existing.get(r.id);
      if (tr && tr.dataset.status !== r.status) {
        const fresh = rowFrom(r.html);
        fresh.classList.add("changed");
        localTimes(fresh);
        tr.replaceWith(fresh);
        if (cursor === tr) cursor = fresh;
        tr = fresh;
      } else if (!tr) {
        tr = rowFrom(r.html);
        tr.classList.add("new");
        localTimes(tr);
      }
      existing.delete(r.id);
      if (tr === cursor) cursor = cursor.nextElementSibling;
      else tbody.insertBefore(tr, cursor);
    }
    for (const tr of existing.values()) tr.remove();
    const empty = document.querySelector(".empty-rows");
    if (empty) empty.hidden = rows.length > 0;
  }

  function editing() {
    const a = document.activeElement;
    return a && (a.tagName === "TEXTAREA" || a.tagName === "INPUT" || a.tagName === "SELECT");
  }

  // Once a form is on its way (not stopped by its confirmation), the page is leaving: a
  // reload now would cancel the navigation to the form's answer (a deploy's redirect to its
  // function's page raced the list's reload on the "counts" event that deploy caused).
  let leaving = false;
  function mayReload() {
    return !leaving && !editing();
  }

  let lastFailures = null;

  function live() {
    const view = body.dataset.live;
    if (!view || !window.EventSource) return;
    const q = new URLSearchParams({ view: view });
    if (body.dataset.function) q.set("function", body.dataset.function);
    if (body.dataset.status) q.set("status", body.dataset.status);
    const source = new EventSource("/ui/events?" + q.toString());
    const badge = document.getElementById("live");
    source.onopen = () => { if (badge) badge.hidden = false; };
    source.onerror = () => { if (badge) badge.hidden = true; };
    source.addEventListener("counts", (e) => {
      const data = JSON.parse(e.data);
      if (view === "functions") {
        const shown = [...document.querySelectorAll("#functions tbody tr")].map((tr) => tr.dataset.fn);
        if (shown.join("\n") !== data.functions.join("\n") && mayReload()) {
          location.reload();
          return;
        }
      }
      for (const [name, values] of Object.entries(data.counts)) {
        for (const scope of scopesOf(name)) setCells(scope, values);
      }
    });
    source.addEventListener("stats", (e) => {
      const data = JSON.parse(e.data);
      for (const [name, values] of Object.entries(data.stats)) {
        for (const scope of scopesOf(name)) setCells(scope, values);
      }
      drawCharts(data.charts);
      const failures = document.getElementById("failures");
      if (failures && data.failures !== undefined && data.failures !== lastFailures) {
        lastFailures = data.failures;
        failures.innerHTML = data.failures;
      }
    });
    source.addEventListener("rows", (e) => updateRows(JSON.parse(e.data).rows));
    source.addEventListener("end", () => source.close());
  }

  // -- keyboard ---------------------------------------------------------------------------
  let pendingG = 0;
  function keys(e) {
    if (e.ctrlKey || e.metaKey || e.altKey || editing()) return;
    const help = document.getElementById("help");
    if (e.key === "?") {
      if (help && !help.open) help.showModal();
      e.preventDefault();
      return;
    }
    if (pendingG && Date.now() - pendingG < 1500) {
      pendingG = 0;
      const link = document.querySelector('nav a[data-key="' + e.key + '"]');
      if (link) { e.preventDefault(); location.href = link.getAttribute("href"); }
      return;
    }
    if (e.key === "g") { pendingG = Date.now(); return; }
    if (e.key === "j" || e.key === "k") {
      const rows = [...document.querySelectorAll("main [data-row]")];
      if (!rows.length) return;
      const at = rows.indexOf(document.activeElement);
      const next = e.key === "j" ? Math.min(at + 1, rows.length - 1) : Math.max(at - 1, 0);
      rows[at < 0 ? 0 : next].focus();
      e.preventDefault();
      return;
    }
    if (e.key === "/") {
      const field = document.querySelector("main select, main input:not([type=hidden]), main textarea");
      if (field) { field.focus(); e.preventDefault(); }
    }
  }

  // -- start ------------------------------------------------------------------------------
  document.addEventListener("DOMContentLoaded", () => {
    localTimes(document);
    const data = document.getElementById("charts-data");
    if (data) drawCharts(JSON.parse(data.textContent));
    for (const form of document.querySelectorAll("form[data-confirm]")) {
      form.addEventListener("submit", (e) => {
        if (!window.confirm(form.dataset.confirm)) e.preventDefault();
      });
    }
    document.addEventListener("keydown", keys);
    const reload = Number(body.dataset.reload);
    // after the forms' own listeners (a confirmation may stop the submit)
    document.addEventListener("submit", (e) => { if (!e.defaultPrevented) leaving = true; });
    if (reload) setTimeout(() => { if (mayReload()) location.reload(); }, reload);
    live();
  });
})();
