// Draws what the last run did on each "Accelerate (DuCa)" node: one cell per
// step, coloured by action, plus the block compute and model time.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const COLORS = { full: "#4c8bf5", conservative: "#f2a93b", aggressive: "#43b581" };
const NODE_TYPES = new Set(["DuCaAccelerate", "DuCaDeepCache"]);
const STRIP_HEIGHT = 34;

function drawTimeline(node, ctx) {
  const stats = node.ducaStats;
  if (!stats || node.flags?.collapsed) return;
  const pad = 8;
  const top = node.size[1] - STRIP_HEIGHT;
  const width = node.size[0] - 2 * pad;
  const cell = width / Math.max(stats.steps.length, 1);
  stats.steps.forEach((step, i) => {
    ctx.fillStyle = COLORS[step.action] || "#777";
    ctx.fillRect(pad + i * cell, top, Math.max(cell - 1, 1), 10);
  });
  const speedup = stats.compute_fraction > 0 ? 1 / stats.compute_fraction : 0;
  ctx.fillStyle = "#ccc";
  ctx.font = "11px sans-serif";
  ctx.fillText(
    `compute ${(100 * stats.compute_fraction).toFixed(0)}% (up to ${speedup.toFixed(2)}x) · ` +
      `${stats.wall_seconds.toFixed(1)} s · cache ${(stats.peak_cache_bytes / 2 ** 20).toFixed(0)} MiB`,
    pad, top + 24);
}

app.registerExtension({
  name: "duca.accelerate.timeline",
  setup() {
    api.addEventListener("duca.stats", ({ detail }) => {
      const node = app.graph?.getNodeById(Number(detail.node));
      if (!node) return;
      node.ducaStats = detail.stats;
      if (node.size[1] < node.computeSize()[1] + STRIP_HEIGHT) {
        node.setSize([node.size[0], node.computeSize()[1] + STRIP_HEIGHT]);
      }
      app.graph.setDirtyCanvas(true, false);
    });
  },
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (!NODE_TYPES.has(nodeData.name)) return;
    const draw = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      draw?.apply(this, arguments);
      drawTimeline(this, ctx);
    };
  },
});
