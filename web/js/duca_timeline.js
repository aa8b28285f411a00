// Shows what the last run did on each node of the pack: a step timeline (one cell per
// step, coloured by action) and the figures behind it. The server sends the run's
// statistics as a "duca.stats" message when sampling ends (glue/ui.py).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const EVENT = "duca.stats";
const CATEGORY = "DuCa Accelerate"; // nodes/base.py: every node of the pack is filed under it
const NODE_TYPES = new Set(); // the pack's node types, filled as their definitions register
const SHOW_SETTING = "DuCa.Timeline.Show";
// partial: a cache schedule computed some blocks of the step and reused the others;
// forecast: the model was not called, its output forecast from the computed steps
const COLORS = { full: "#4c8bf5", conservative: "#f2a93b", aggressive: "#43b581", partial: "#a77bd8",
  forecast: "#2fb5a3" };
const LABELS = { full: "computed", conservative: "refreshed", aggressive: "reused", partial: "scheduled",
  forecast: "forecast" };
const PAD = 8;
const STRIP = 12;
const LINE = 15;
const PANEL_HEIGHT = STRIP + 2 * LINE + 12;

function showTimeline() {
  const settings = app.extensionManager?.setting;
  return settings ? settings.get(SHOW_SETTING) !== false : true;
}

function countActions(steps) {
  const counts = Object.fromEntries(Object.keys(LABELS).map((action) => [action, 0]));
  for (const step of steps) {
    if (step.action in counts) counts[step.action] += 1;
  }
  return counts;
}

function mebibytes(bytes) {
  const mib = bytes / 2 ** 20;
  return mib >= 1024 ? `${(mib / 1024).toFixed(1)} GiB` : `${mib.toFixed(1)} MiB`;
}

// The lines under the strip: the speedup the compute saving allows, the step counts, memory.
function describe(stats) {
  const counts = countActions(stats.steps);
  const speedup = stats.compute_fraction > 0 ? 1 / stats.compute_fraction : 0;
  const first = `up to ${speedup.toFixed(2)}x · compute ${(100 * stats.compute_fraction).toFixed(0)}% · ` +
    `model ${stats.wall_seconds.toFixed(1)} s`;
  const shown = Object.keys(LABELS).filter((a) => a === "full" || counts[a] > 0);  // and what ran
  const second = shown.map((a) => `${LABELS[a]} ${counts[a]}`).join(" · ") +
    ` · cache ${mebibytes(stats.peak_cache_bytes)}`;
  return [first, second];
}

function drawPanel(node, ctx) {
  const stats = node.ducaStats;
  if (!stats || node.flags?.collapsed || !showTimeline()) return;
  const top = node.size[1] - PANEL_HEIGHT + 4;
  const width = node.size[0] - 2 * PAD;
  const cell = width / Math.max(stats.num_steps, stats.steps.length, 1);
  ctx.save();
  for (const step of stats.steps) {
    ctx.fillStyle = COLORS[step.action] || "#777";
    ctx.fillRect(PAD + step.step * cell, top, Math.max(cell - 1, 1), STRIP);
  }
  ctx.fillStyle = window.LiteGraph?.NODE_TEXT_COLOR || "#ccc";
  ctx.font = "11px sans-serif";
  ctx.textBaseline = "top";
  describe(stats).forEach((line, i) => ctx.fillText(line, PAD, top + STRIP + 4 + i * LINE, width));
  ctx.restore();
}

// Node ids inside subgraphs arrive as a path, "outer:inner": walk it from the root graph.
function findNode(id) {
  let graph = app.rootGraph ?? app.graph;
  let node = null;
  for (const part of String(id).split(":")) {
    if (!graph) return null;
    node = graph.getNodeById(Number(part)) ?? graph.getNodeById(part);
    graph = node?.subgraph;
  }
  return node ?? null;
}

function makeRoom(node) {
  const needed = node.computeSize()[1] + PANEL_HEIGHT;
  if (node.size[1] < needed) node.setSize([node.size[0], needed]);
}

app.registerExtension({
  name: "duca.accelerate.timeline",
  settings: [
    {
      id: SHOW_SETTING,
      category: ["DuCa Accelerate", "Timeline", "Show"],
      name: "Show the step timeline on DuCa nodes after a run",
      tooltip: "Blue: computed, orange: partly recomputed (refreshed), green: reused, teal: forecast, " +
        "purple: scheduled per block.",
      type: "boolean",
      defaultValue: true,
      onChange: () => app.canvas?.setDirty(true, false),
    },
  ],
  setup() {
    api.addEventListener(EVENT, ({ detail }) => {
      const node = findNode(detail?.node);
      if (!node || !NODE_TYPES.has(node.type) || !detail.stats?.steps) return;
      node.ducaStats = detail.stats;
      if (showTimeline()) makeRoom(node);
      app.canvas?.setDirty(true, false);
    });
  },
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (!String(nodeData.category ?? "").startsWith(CATEGORY)) return;
    NODE_TYPES.add(nodeData.name);
    const draw = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      draw?.apply(this, arguments);
      drawPanel(this, ctx);
    };
  },
});
