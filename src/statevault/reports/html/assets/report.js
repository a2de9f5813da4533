/* statevault report: draws the views from the JSON in #report-data.
 * Every string from the checkpoint reaches the DOM through textContent, title or
 * setAttribute, never innerHTML. Uses uPlot (plots) and d3-hierarchy (treemap layout). */
"use strict";
(function () {
  const D = JSON.parse(document.getElementById("report-data").textContent);
  const T = D.rows.map((row, index) => {
    const t = { index };
    D.columns.forEach((column, i) => { t[column] = row[i]; });
    t.numel = t.shape.reduce((a, b) => a * b, 1);
    t.severity = t.flags.some((f) => f[1] === "damaged") ? "damaged" : t.flags.length ? "warning" : "";
    return t;
  });

  // -- formatting for people ------------------------------------------------------------
  function fmtNum(x) {
    if (x === null || x === undefined) return "";
    if (typeof x === "string") return x; // "inf": a sum beyond float64
    if (x === 0) return "0";
    const a = Math.abs(x);
    if (a >= 1e-3 && a < 1e4) return String(Number(x.toPrecision(4)));
    const [mantissa, exponent] = x.toExponential(3).split("e");
    return mantissa.replace(/\.?0+$/, "") + "e" + Number(exponent);
  }
  function fmtBytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let v = n, u = 0;
    while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; }
    return u === 0 ? `${v} B` : `${v.toFixed(1)} ${units[u]}`;
  }
  const fmtInt = (n) => n.toLocaleString("en-US");
  const fmtPct = (x) => (x === null ? "" : `${(100 * x).toFixed(1)}%`);
  const fmtShape = (s) => `[${s.join(", ")}]`;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const child of children) node.append(child);
    return node;
  }
  const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#76b7b2", "#edc948", "#9c755f"];

  // -- tabs (arrow keys, Home, End, as the WAI-ARIA tabs pattern) --------------------------
  const tabs = Array.from(document.querySelectorAll("[role=tab]"));
  const drawn = {};
  function select(tab) {
    for (const t of tabs) {
      const on = t === tab;
      t.setAttribute("aria-selected", String(on));
      t.tabIndex = on ? 0 : -1;
      document.getElementById(t.getAttribute("aria-controls")).hidden = !on;
    }
    const view = tab.id.slice(4);
    if (!drawn[view] && DRAW[view]) { DRAW[view](); drawn[view] = true; }
  }
  tabs.forEach((tab, i) => {
    tab.addEventListener("click", () => select(tab));
    tab.addEventListener("keydown", (e) => {
      const next = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[e.key];
      if (next === undefined) return;
      e.preventDefault();
      const target = tabs[(next + tabs.length) % tabs.length];
      target.focus();
      select(target);
    });
  });
  const tabFor = (view) => document.getElementById(`tab-${view}`);

  // -- overview ---------------------------------------------------------------------------
  function card(value, label, id) {
    return el("div", { class: "card", id }, el("span", { class: "value", text: value }), el("span", { class: "label", text: label }));
  }
  function drawOverview() {
    const damaged = T.filter((t) => t.severity === "damaged").length;
    const warned = T.filter((t) => t.severity === "warning").length;
    const bytes = T.reduce((s, t) => s + t.nbytes, 0);
    const params = T.reduce((s, t) => s + t.numel, 0);
    document.getElementById("verdict").textContent = damaged
      ? `DAMAGED: ${fmtInt(damaged)} of ${fmtInt(T.length)} tensors hold NaN/Inf or bad bytes`
      : warned ? `OK with warnings: ${fmtInt(warned)} of ${fmtInt(T.length)} tensors flagged`
      : `OK: ${fmtInt(T.length)} tensors, nothing flagged`;
    document.getElementById("summary").append(
      card(fmtInt(T.length), "tensors", "card-tensors"),
      card(fmtInt(params), "elements", "card-elements"),
      card(fmtBytes(bytes), "tensor data", "card-bytes"),
      card(fmtInt(damaged), "damaged", "card-damaged"),
      card(fmtInt(warned), "with warnings", "card-warnings"),
      card(D.checksummed ? "yes" : "no", "checksums verified", "card-checksums"),
    );
    const list = document.getElementById("flag-list");
    const flagged = T.filter((t) => t.flags.length).sort((a, b) => (a.severity === "damaged" ? 0 : 1) - (b.severity === "damaged" ? 0 : 1));
    if (!flagged.length) list.append(el("li", { text: "Nothing flagged." }));
    for (const t of flagged) {
      for (const [kind, severity, reason] of t.flags) {
        list.append(el("li", { class: severity },
          el("button", { class: "linklike", text: t.name, onclick: () => openHistogram(t) }),
          " ", el("span", { class: "kind", text: `${severity}: ${kind}` }), el("span", { text: ` — ${reason}` })));
      }
    }
    drawTreemap();
  }

  const DTYPE_COLOURS = {
    float32: "#4e79a7", bfloat16: "#f28e2b", float16: "#59a14f", float64: "#b07aa1",
    int64: "#9c755f", int32: "#bab0ac", int8: "#d37295", uint8: "#ff9da7", bool: "#edc948",
  };
  const dtypeColour = (dtype) => DTYPE_COLOURS[dtype] || (dtype.startsWith("float8") ? "#76b7b2" : "#8c8c8c");

  function moduleTree() {
    const root = { name: "", path: "", children: new Map() };
    for (const t of T) {
      let node = root;
      const parts = t.name.split(".");
      parts.slice(0, -1).forEach((part, i) => {
        if (!node.children.has(part)) node.children.set(part, { name: part, path: parts.slice(0, i + 1).join("."), children: new Map() });
        node = node.children.get(part);
      });
      node.children.set(`\u0000${t.index}`, { name: parts[parts.length - 1], tensor: t });
    }
    return root;
  }

  function drawTreemap() {
    const box = document.getElementById("treemap");
    const width = box.clientWidth || 1000, height = box.clientHeight || 420;
    const hierarchy = d3.hierarchy(moduleTree(), (n) => (n.children ? Array.from(n.children.values()) : null))
      .sum((n) => (n.tensor ? Math.max(n.tensor.nbytes, 1) : 0))
      .sort((a, b) => b.value - a.value);
    let labelled = 1; // label the first level that splits the model into several modules
    for (let node = hierarchy; node.children && node.children.length === 1 && node.children[0].children; node = node.children[0]) labelled++;
    d3.treemap().tile(d3.treemapSquarify).size([width, height]).paddingInner(1)
      .paddingTop((n) => (n.depth === labelled && n.y1 - n.y0 > 40 ? 16 : 0)).round(true)(hierarchy);
    const dtypes = new Map();
    for (const leaf of hierarchy.leaves()) {
      const t = leaf.data.tensor;
      if (!t) continue;
      dtypes.set(t.dtype, (dtypes.get(t.dtype) || 0) + t.nbytes);
      const tile = el("div", { class: `tile${t.severity ? " flagged" : ""}`, "data-name": t.name, "data-bytes": String(t.nbytes), "data-dtype": t.dtype });
      tile.title = `${t.name}\n${t.dtype} ${fmtShape(t.shape)}\n${fmtBytes(t.nbytes)}`;
      Object.assign(tile.style, { left: `${leaf.x0}px`, top: `${leaf.y0}px`, width: `${leaf.x1 - leaf.x0}px`, height: `${leaf.y1 - leaf.y0}px`, background: dtypeColour(t.dtype) });
      if (leaf.x1 - leaf.x0 > 60 && leaf.y1 - leaf.y0 > 18) tile.append(el("span", { class: "tile-label", text: leaf.data.name }));
      tile.addEventListener("click", () => openHistogram(t));
      box.append(tile);
    }
    for (const node of hierarchy.descendants()) {
      if (node.depth !== labelled || !node.children || node.x1 - node.x0 < 30 || node.y1 - node.y0 < 30) continue;
      const label = el("button", { class: "module-label", "data-module": node.data.path, text: `${node.data.name} · ${fmtBytes(node.value)}` });
      label.title = `${node.data.path}: ${fmtBytes(node.value)}; show its tensors in the table`;
      Object.assign(label.style, { left: `${node.x0}px`, top: `${node.y0}px`, maxWidth: `${node.x1 - node.x0}px` });
      label.addEventListener("click", () => filterTo(node.data.path + "."));
      box.append(label);
    }
    const legend = document.getElementById("treemap-legend");
    for (const [dtype, bytes] of [...dtypes].sort((a, b) => b[1] - a[1])) {
      legend.append(el("span", { "data-dtype": dtype }, el("span", { class: "swatch", style: `background:${dtypeColour(dtype)}` }), `${dtype} ${fmtBytes(bytes)}`));
    }
  }

  // -- tensor table -------------------------------------------------------------------------
  const TABLE_COLUMNS = [
    ["name", "tensor", (t) => t.name], ["dtype", "dtype", (t) => t.dtype],
    ["shape", "shape", (t) => t.numel], ["nbytes", "size", (t) => t.nbytes],
    ["min", "min", (t) => t.min], ["max", "max", (t) => t.max], ["mean", "mean", (t) => t.mean],
    ["std", "std", (t) => t.std], ["norm", "L2 norm", (t) => t.norm], ["zeros", "zeros", (t) => t.zeros],
    ["nonfinite", "NaN / Inf", (t) => t.nan + t.inf], ["flags", "flags", (t) => (t.severity === "damaged" ? 2 : t.severity ? 1 : 0)],
  ];
  const MAX_ROWS = 2000;
  let sortKey = null, sortDir = 1;
  const filterBox = document.getElementById("filter");
  const onlyFlagged = document.getElementById("only-flagged");

  function drawTableHead() {
    const head = document.getElementById("tensor-head");
    for (const [key, label] of TABLE_COLUMNS) {
      const th = el("th", { scope: "col", "data-key": key, class: key === "name" ? "name" : "" },
        el("button", { text: label, onclick: () => sortBy(key) }));
      th.setAttribute("aria-sort", "none");
      head.append(th);
    }
  }
  function sortBy(key) {
    sortDir = sortKey === key ? -sortDir : 1;
    sortKey = key;
    for (const th of document.querySelectorAll("#tensor-head th")) {
      th.setAttribute("aria-sort", th.dataset.key === key ? (sortDir > 0 ? "ascending" : "descending") : "none");
    }
    drawRows();
  }
  function compare(a, b) {
    if (a === b) return 0;
    if (a === null || a === undefined) return 1; // blanks last either way
    if (b === null || b === undefined) return -1;
    if (typeof a === "string" && typeof b === "string") return sortDir * a.localeCompare(b, "en", { numeric: true });
    const x = typeof a === "string" ? Infinity : a, y = typeof b === "string" ? Infinity : b;
    return sortDir * (x < y ? -1 : x > y ? 1 : 0);
  }
  function drawRows() {
    const needle = filterBox.value.trim().toLowerCase();
    let rows = T.filter((t) => (!needle || t.name.toLowerCase().includes(needle)) && (!onlyFlagged.checked || t.flags.length));
    if (sortKey) {
      const get = TABLE_COLUMNS.find((c) => c[0] === sortKey)[2];
      rows = rows.slice().sort((a, b) => compare(get(a), get(b)) || a.index - b.index);
    }
    const body = document.getElementById("tensor-body");
    body.replaceChildren();
    for (const t of rows.slice(0, MAX_ROWS)) {
      const tr = el("tr", { class: t.severity, "data-index": String(t.index) });
      tr.append(
        el("td", { class: "name" }, el("button", { class: "linklike", text: t.name, title: "Show the histogram", onclick: () => openHistogram(t) })),
        el("td", { class: "dtype", text: t.dtype }), el("td", { text: fmtShape(t.shape) }), el("td", { text: fmtBytes(t.nbytes) }),
        el("td", { text: fmtNum(t.min) }), el("td", { text: fmtNum(t.max) }), el("td", { text: fmtNum(t.mean) }),
        el("td", { text: fmtNum(t.std) }), el("td", { text: fmtNum(t.norm) }), el("td", { text: fmtPct(t.zeros) }),
        el("td", { text: t.nan + t.inf ? `${fmtInt(t.nan)} / ${fmtInt(t.inf)}` : "" }),
        el("td", { class: "flag-cell", text: t.flags.map((f) => f[0]).join(", "), title: t.flags.map((f) => f[2]).join("\n") }),
      );
      body.append(tr);
    }
    const shown = Math.min(rows.length, MAX_ROWS);
    document.getElementById("row-count").textContent =
      `${fmtInt(shown)} of ${fmtInt(T.length)} tensors` + (rows.length > MAX_ROWS ? ` (first ${fmtInt(MAX_ROWS)} of ${fmtInt(rows.length)} matches; filter to narrow)` : "");
  }
  function drawTensors() {
    drawTableHead();
    filterBox.addEventListener("input", drawRows);
    onlyFlagged.addEventListener("change", drawRows);
    drawRows();
  }
  function filterTo(prefix) {
    filterBox.value = prefix;
    select(tabFor("tensors"));
    drawRows();
    filterBox.focus();
  }

  // -- plots ----------------------------------------------------------------------------------
  function plotOptions(title, width, series, log) {
    const axis = { stroke: css("--fg"), grid: { stroke: css("--line") }, ticks: { stroke: css("--line") } };
    return {
      title, width, height: 300, series,
      scales: { x: { time: false }, y: log ? { distr: 3 } : {} },
      axes: [Object.assign({ label: series[0].label }, axis), Object.assign({ values: (u, v) => v.map(fmtNum) }, axis)],
    };
  }
  const plots = {};
  function drawDepth() {
    const depth = D.depth;
    const width = Math.max(320, document.getElementById("plot-norm").clientWidth || 900);
    if (!depth.series.length) {
      for (const id of ["plot-norm", "plot-std"]) document.getElementById(id).append(el("p", { class: "muted", text: "No layer type appears at two or more depths (no numbered layers in the names)." }));
      return;
    }
    for (const [field, id] of [["norm", "plot-norm"], ["std", "plot-std"]]) {
      const series = [{ label: "depth" }, ...depth.series.map((s, i) => ({ label: s.type, stroke: PALETTE[i % PALETTE.length], width: 2, points: { show: true }, spanGaps: true, value: (u, v) => fmtNum(v) }))];
      const data = [depth.depths, ...depth.series.map((s) => s[field].map((v) => (typeof v === "number" && v > 0 ? v : null)))];
      const options = plotOptions(field === "norm" ? "L2 norm by depth" : "std by depth", width, series, true);
      options.axes[0].incrs = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]; // whole layers only
      plots[field] = new uPlot(options, data, document.getElementById(id));
    }
    const table = el("table", { id: "depth-table" });
    const head = el("tr", {}, el("th", { scope: "col", text: "layer type" }), el("th", { scope: "col", text: "values" }));
    depth.depths.forEach((d) => head.append(el("th", { scope: "col", text: String(d) })));
    table.append(el("thead", {}, head));
    const body = el("tbody");
    for (const s of depth.series) {
      for (const field of ["norm", "std"]) {
        const tr = el("tr", {}, el("td", { class: "name", text: s.type }), el("td", { text: field }));
        s[field].forEach((v) => tr.append(el("td", { text: fmtNum(v) })));
        body.append(tr);
      }
    }
    table.append(body);
    document.getElementById("depth-table-wrap").append(table);
  }

  let histPlot = null;
  function openHistogram(t) {
    const dialog = document.getElementById("hist-dialog");
    document.getElementById("hist-title").textContent = t.name;
    document.getElementById("hist-facts").textContent =
      `${t.dtype} ${fmtShape(t.shape)} · ${fmtBytes(t.nbytes)} · min ${fmtNum(t.min)} · max ${fmtNum(t.max)} · mean ${fmtNum(t.mean)} · std ${fmtNum(t.std)} · L2 ${fmtNum(t.norm)} · zeros ${fmtPct(t.zeros)}` +
      (t.nan + t.inf ? ` · NaN ${fmtInt(t.nan)} · Inf ${fmtInt(t.inf)}` : "");
    const flags = document.getElementById("hist-flags");
    flags.replaceChildren(...t.flags.map(([kind, severity, reason]) => el("li", { class: severity }, el("span", { class: "kind", text: `${severity}: ${kind}` }), el("span", { text: ` — ${reason}` }))));
    const plotBox = document.getElementById("hist-plot"), tableBox = document.getElementById("hist-table-wrap");
    if (histPlot) { histPlot.destroy(); histPlot = null; }
    plotBox.replaceChildren();
    tableBox.replaceChildren();
    dialog.showModal();
    const hist = D.histograms[String(t.index)];
    if (!hist) {
      plotBox.append(el("p", { class: "muted", text: "No histogram: no finite values, or the report was made without histograms." }));
      return;
    }
    const [low, high, counts] = hist;
    const step = (high - low) / counts.length;
    const centres = counts.map((_, i) => (low === high ? low + i - Math.floor(counts.length / 2) : low + (i + 0.5) * step));
    const series = [{ label: "value" }, { label: "count", fill: PALETTE[0] + "99", stroke: PALETTE[0], paths: uPlot.paths.bars({ size: [0.95, 100] }), points: { show: false }, value: (u, v) => (v === null ? "" : fmtInt(v)) }];
    const options = plotOptions(`${fmtInt(counts.reduce((a, b) => a + b, 0))} finite values in ${counts.length} bins`, Math.max(300, plotBox.clientWidth || 800), series, false);
    options.axes[0].values = (u, v) => v.map(fmtNum);
    histPlot = new uPlot(options, [centres, counts], plotBox);
    const table = el("table", { id: "hist-table" }, el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "from" }), el("th", { scope: "col", text: "to" }), el("th", { scope: "col", text: "count" }))));
    const body = el("tbody");
    counts.forEach((c, i) => body.append(el("tr", {}, el("td", { text: fmtNum(low + i * step) }), el("td", { text: fmtNum(low + (i + 1) * step) }), el("td", { text: fmtInt(c) }))));
    table.append(body);
    tableBox.append(table);
  }

  // -- diff -------------------------------------------------------------------------------------
  function heatColour(rel) {
    if (rel === null || rel === undefined) return css("--line");
    if (rel === 0) return css("--panel");
    const x = Math.min(1, Math.max(0, (Math.log10(typeof rel === "string" ? 1e3 : rel) + 8) / 9)); // 1e-8 .. 10
    return `hsl(${Math.round(220 - 220 * x)}, 75%, ${Math.round(65 - 20 * x)}%)`;
  }
  function drawDiff() {
    const diff = D.diff;
    const changed = diff.changes.filter((c) => c[1] !== 0);
    document.getElementById("diff-summary").append(
      card(fmtInt(diff.changes.length), "compared", "card-compared"),
      card(fmtInt(changed.length), "changed", "card-changed"),
      card(fmtInt(diff.only_a.length), "only in A", "card-only-a"),
      card(fmtInt(diff.only_b.length), "only in B", "card-only-b"),
      card(fmtInt(diff.shape_changes.length + diff.dtype_changes.length), "shape/dtype changes", "card-structure"),
    );
    const layered = diff.changes.filter((c) => c[3] !== null);
    const types = [...new Set(layered.map((c) => c[2]))].sort((a, b) => a.localeCompare(b, "en", { numeric: true }));
    const depths = [...new Set(layered.map((c) => c[3]))].sort((a, b) => a - b);
    const legend = document.getElementById("heatmap-legend");
    for (const [label, rel] of [["equal", 0], ["1e-8", 1e-8], ["1e-5", 1e-5], ["1e-2", 1e-2], ["≥ 10", 10], ["bitwise only", null]]) {
      legend.append(el("span", {}, el("span", { class: "swatch", style: `background:${heatColour(rel)}` }), label));
    }
    const grid = el("div", { class: "heatmap", id: "heatmap-grid", role: "table", "aria-label": "Relative change by layer type and depth" });
    grid.style.gridTemplateColumns = `max-content repeat(${depths.length}, minmax(0.9rem, 1fr))`;
    grid.append(el("div", { role: "columnheader", class: "row-label", text: "type \\ depth" }));
    depths.forEach((d) => grid.append(el("div", { class: "col-label", role: "columnheader", text: String(d) })));
    const cells = new Map(layered.map((c) => [`${c[2]}\u0000${c[3]}`, c]));
    for (const type of types) {
      grid.append(el("div", { class: "row-label", role: "rowheader", text: type }));
      for (const d of depths) {
        const c = cells.get(`${type}\u0000${d}`);
        const cell = el("div", { class: "cell", role: "cell" });
        if (c) {
          cell.dataset.name = c[0];
          cell.dataset.rel = String(c[1]);
          cell.title = `${c[0]}: ${c[1] === null ? "compared bit for bit" : fmtNum(c[1])}`;
          cell.setAttribute("aria-label", cell.title);
          cell.style.background = heatColour(c[1]);
        }
        grid.append(cell);
      }
    }
    if (!types.length) grid.append(el("p", { class: "muted", text: "No numbered layers in the names." }));
    document.getElementById("heatmap").append(grid);
    const others = diff.changes.filter((c) => c[3] === null && c[1] !== 0).sort((a, b) => (b[1] === null ? -1 : b[1]) - (a[1] === null ? -1 : a[1]));
    const table = el("table", { id: "diff-other-table" }, el("thead", {}, el("tr", {}, el("th", { scope: "col", class: "name", text: "tensor" }), el("th", { scope: "col", text: "relative change" }))));
    const body = el("tbody");
    others.forEach((c) => body.append(el("tr", {}, el("td", { class: "name", text: c[0] }), el("td", { text: c[1] === null ? "differs (bitwise)" : fmtNum(c[1]) }))));
    if (!others.length) body.append(el("tr", {}, el("td", { text: "none", class: "name" }), el("td")));
    table.append(body);
    document.getElementById("diff-other").append(table);
    const structure = document.getElementById("diff-structure");
    const section = (id, title, items) => {
      structure.append(el("h3", { text: `${title} (${fmtInt(items.length)})` }));
      structure.append(el("ul", { id }, ...(items.length ? items : [el("li", { class: "muted", text: "none" })])));
    };
    const li = (...parts) => el("li", {}, ...parts.map((p, i) => (i % 2 ? el("code", { text: p }) : p)));
    section("only-a", "Only in A", diff.only_a.map((n) => li("", n)));
    section("only-b", "Only in B", diff.only_b.map((n) => li("", n)));
    section("shape-changes", "Shape changes", diff.shape_changes.map(([n, a, b]) => li("", n, ": ", fmtShape(a), " → ", fmtShape(b))));
    section("dtype-changes", "Dtype changes", diff.dtype_changes.map(([n, a, b]) => li("", n, ": ", a, " → ", b)));
    section("state-changes", "Non-tensor state changes", diff.state_changes.map(([p, a, b]) => li("", p, ": ", a, " → ", b)));
  }

  const DRAW = { overview: drawOverview, tensors: drawTensors, depth: drawDepth, diff: drawDiff };
  select(tabs[0]);
  window.statevaultReport = { data: D, tensors: T, plots, histogram: () => histPlot, openHistogram, fmtNum, fmtBytes };
})();
