// A small SVG line chart for the training curves: a few hundred points per series, redrawn on every poll.
// Hand-written (about 80 lines) rather than a charting library: served from the package, no CDN, no build step.
"use strict";
(function () {
  const NS = "http://www.w3.org/2000/svg";
  const PAD = { left: 44, right: 12, top: 22, bottom: 26 };

  function el(name, attrs, parent) {
    const node = document.createElementNS(NS, name);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
    if (parent) parent.appendChild(node);
    return node;
  }

  function ticks(lo, hi, count) {
    const span = hi - lo || 1;
    const raw = span / count;
    const magnitude = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map((m) => m * magnitude).find((s) => span / s <= count) || magnitude * 10;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
    return out;
  }

  function label(value) {
    const abs = Math.abs(value);
    if (abs >= 10000) return (value / 1000).toFixed(0) + "k";
    if (abs >= 100 || value === Math.round(value)) return String(Math.round(value));
    return value.toFixed(abs >= 1 ? 1 : 2);
  }

  // series: [{name, color, points: [[x, y], ...]}]
  function draw(svg, series, fixedRange, emptyText) {
    const box = svg.viewBox.baseVal;
    const width = box.width, height = box.height;
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const all = series.flatMap((s) => s.points);
    if (all.length === 0) {
      el("text", { x: width / 2, y: height / 2, "text-anchor": "middle" }, svg).textContent = emptyText || "no progress records yet";
      return;
    }
    const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]).filter(Number.isFinite);
    const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
    let y0 = fixedRange ? fixedRange[0] : Math.min(...ys), y1 = fixedRange ? fixedRange[1] : Math.max(...ys);
    if (y1 - y0 < 1e-9) { y0 -= 0.5; y1 += 0.5; }
    const sx = (x) => PAD.left + (x - x0) / (x1 - x0) * (width - PAD.left - PAD.right);
    const sy = (y) => height - PAD.bottom - (y - y0) / (y1 - y0) * (height - PAD.top - PAD.bottom);
    for (const t of ticks(y0, y1, 4)) {
      el("line", { x1: PAD.left, x2: width - PAD.right, y1: sy(t), y2: sy(t), class: "grid" }, svg);
      el("text", { x: PAD.left - 4, y: sy(t) + 3, "text-anchor": "end" }, svg).textContent = label(t);
    }
    for (const t of ticks(x0, x1, 5)) {
      el("text", { x: sx(t), y: height - PAD.bottom + 14, "text-anchor": "middle" }, svg).textContent = label(t);
    }
    el("line", { x1: PAD.left, x2: PAD.left, y1: PAD.top, y2: height - PAD.bottom, class: "axis" }, svg);
    el("line", { x1: PAD.left, x2: width - PAD.right, y1: height - PAD.bottom, y2: height - PAD.bottom, class: "axis" }, svg);
    el("text", { x: width - PAD.right, y: height - 2, "text-anchor": "end" }, svg).textContent = "step";
    let legendX = PAD.left;
    for (const s of series) {
      const points = s.points.filter((p) => Number.isFinite(p[1])).map((p) => sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1));
      el("polyline", { points: points.join(" "), stroke: s.color, "data-series": s.name }, svg);
      el("rect", { x: legendX, y: 6, width: 10, height: 10, fill: s.color }, svg);
      el("text", { x: legendX + 14, y: 15 }, svg).textContent = s.name;
      legendX += 24 + 7 * s.name.length;
    }
  }

  window.AugmentChart = { draw: draw };
})();
