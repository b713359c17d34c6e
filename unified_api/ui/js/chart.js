// Line charts in SVG, drawn in the page (training curves, compare overlays). A chart keeps
// its series and redraws when points arrive, so a live run's curve grows as events come in.

const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563"];
const SIZE = { width: 640, height: 260, left: 56, right: 12, top: 14, bottom: 34 };

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function ticks(low, high, count = 5) {
  if (low === high) return [low];
  const step = 10 ** Math.floor(Math.log10((high - low) / count));
  const nice = [1, 2, 5, 10].map((f) => f * step).find((s) => (high - low) / s <= count) || step * 10;
  const result = [];
  for (let value = Math.ceil(low / nice) * nice; value <= high + nice * 1e-9; value += nice)
    result.push(value);
  return result;
}

function label(value) {
  const magnitude = Math.abs(value);
  if (magnitude >= 1e4 || (magnitude < 1e-2 && value !== 0)) return value.toExponential(1);
  return String(Number(value.toPrecision(3)));
}

export class LineChart {
  // xLabels: optional names for integer x positions (categorical axes such as compare rows).
  constructor({ title, xLabel = "", yLabel = "", xLabels = null }) {
    this.title = title;
    this.xLabel = xLabel;
    this.yLabel = yLabel;
    this.xLabels = xLabels;
    this.series = new Map(); // name -> [[x, y]]
    this.node = svg("svg", {
      viewBox: `0 0 ${SIZE.width} ${SIZE.height}`,
      class: "chart",
      role: "img",
      "aria-label": title,
    });
    this.draw();
  }

  add(name, x, y) {
    if (!Number.isFinite(x) || !Number.isFinite(y)) return;
    if (!this.series.has(name)) this.series.set(name, []);
    this.series.get(name).push([x, y]);
    this.draw();
  }

  reset() {
    this.series.clear();
    this.draw();
  }

  pointCount() {
    let total = 0;
    for (const points of this.series.values()) total += points.length;
    return total;
  }

  draw() {
    const node = this.node;
    node.setAttribute("data-points", String(this.pointCount())); // what tests and tools read
    const heading = this.yLabel ? `${this.title} (${this.yLabel})` : this.title;
    node.replaceChildren(svg("text", { x: SIZE.left, y: 11, class: "chart-title" }, heading));
    const all = [...this.series.values()].flat();
    if (!all.length) {
      node.append(
        svg("text", { x: SIZE.width / 2, y: SIZE.height / 2, class: "chart-empty" }, "no points yet"),
      );
      return;
    }
    const xs = all.map((p) => p[0]);
    const ys = all.map((p) => p[1]);
    let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
    let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
    if (x0 === x1) [x0, x1] = [x0 - 1, x1 + 1];
    if (y0 === y1) [y0, y1] = [y0 - Math.abs(y0 || 1) * 0.1, y1 + Math.abs(y1 || 1) * 0.1];
    const plotW = SIZE.width - SIZE.left - SIZE.right;
    const plotH = SIZE.height - SIZE.top - SIZE.bottom;
    const sx = (x) => SIZE.left + ((x - x0) / (x1 - x0)) * plotW;
    const sy = (y) => SIZE.top + (1 - (y - y0) / (y1 - y0)) * plotH;
    for (const value of ticks(y0, y1)) {
      node.append(
        svg("line", {
          x1: SIZE.left,
          x2: SIZE.width - SIZE.right,
          y1: sy(value),
          y2: sy(value),
          class: "grid",
        }),
      );
      node.append(svg("text", { x: SIZE.left - 4, y: sy(value) + 4, class: "tick y" }, label(value)));
    }
    const xTicks = this.xLabels ? this.xLabels.map((_, i) => i) : ticks(x0, x1);
    for (const value of xTicks) {
      const text = this.xLabels ? this.xLabels[value] : label(value);
      node.append(svg("text", { x: sx(value), y: SIZE.height - SIZE.bottom + 14, class: "tick x" }, text));
    }
    node.append(svg("text", { x: SIZE.left + plotW / 2, y: SIZE.height - 4, class: "axis" }, this.xLabel));
    [...this.series.entries()].forEach(([name, points], index) => {
      const color = COLORS[index % COLORS.length];
      const path = points
        .map(([x, y], i) => `${i ? "L" : "M"}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`)
        .join(" ");
      node.append(svg("path", { d: path, stroke: color, class: "line", "data-series": name }));
      for (const [x, y] of points.length <= 60 ? points : []) {
        node.append(svg("circle", { cx: sx(x), cy: sy(y), r: 2.5, fill: color }));
      }
      const legendY = SIZE.top + 12 + index * 14;
      node.append(svg("rect", { x: SIZE.width - 150, y: legendY - 8, width: 10, height: 3, fill: color }));
      node.append(svg("text", { x: SIZE.width - 136, y: legendY - 3, class: "legend" }, name));
    });
  }
}
