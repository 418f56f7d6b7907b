"""`spi inspect RUN_DIR`: one self-contained HTML page showing what a run's search did, prompt by prompt.

The page is one file: its CSS and JavaScript are inline and its data is embedded as JSON, so it opens from `file://`
with no network. It shows

- the run's table (`results.json`: each method's reward and evaluator means with 95% bootstrap intervals, its
  win+½tie rate against the run's best-of-N, tokens) and the value functions' ranking tables;
- one row per prompt: the method's outcome against best-of-N by the evaluator (win / tie / loss) and the evaluator
  difference; sortable by any column and filterable by outcome (plain JavaScript);
- per prompt, the search tree the method recorded (`SearchResult.trace`, `search/trace.py`) drawn as inline SVG:
  one box per chunk with its guidance value, kept and pruned chunks styled apart, ended chunks with their reward,
  the answer marked (with its evaluator score); best-of-N's candidates beside it with their rewards. Hovering a
  box shows its chunk; clicking shows the whole response up to it and every value function's term.

Runs written before searches recorded their trees still open: their prompts show the candidates only.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

from spi_align.core.errors import SpiError
from spi_align.experiment.outputs import list_methods, load_records, open_run, pick_methods
from spi_align.experiment.report import bootstrap_ci, results_table, value_table_rows, win_tie_loss
from spi_align.runs.files import atomic_write_text
from spi_align.search.registry import spi_rounds

BEST_OF_N = re.compile(r"bon-(\d+)")
OUTCOMES = {1.0: "win", 0.5: "tie", 0.0: "loss"}


def inspect_run(run_dir: str | Path, method: str | None = None, out: str | Path | None = None) -> Path:
    """Write the page of `method` (default: the run's last spi-k, else its first method) to `out` (default:
    RUN_DIR/inspect-<method>.html); SpiError for a folder that is no run or a method it does not hold."""
    run = open_run(run_dir)
    chosen = method or default_method(list_methods(run))
    pick_methods(run, [chosen])
    path = Path(out) if out else run / f"inspect-{chosen}.html"
    if path.is_dir():
        raise SpiError(f"--out {path} is a folder: name the HTML file to write")
    atomic_write_text(path, render_page(run_view(run, chosen)))
    return path


def default_method(methods: list[str]) -> str:
    """The highest round's `spi-k` (the most improved policy), else the first method."""
    spi = spi_rounds(methods)
    return spi[-1][1] if spi else methods[0]


def best_of_n(methods: list[str]) -> str | None:
    """The run's best-of-N baseline (the largest N), or None."""
    found = [(int(m.group(1)), m.group(0)) for m in map(BEST_OF_N.fullmatch, methods) if m]
    return max(found)[1] if found else None


def run_view(run: Path, method: str) -> dict[str, Any]:
    """Everything the page shows, as JSON-ready data."""
    saved = json.loads((run / "results.json").read_text(encoding="utf-8")) if (run / "results.json").is_file() else {}
    results: dict[str, dict[str, Any]] = saved.get("results", {})
    baseline = best_of_n(list_methods(run))
    records = load_records(run, method)
    judge = aligned(results.get(method, {}).get("evaluator"), records)
    reward = aligned(results.get(method, {}).get("reward"), records)
    base: dict[str, dict[str, Any]] = {}
    base_judge: dict[str, float] = {}
    if baseline is not None and baseline != method:
        base_records = load_records(run, baseline)
        base = {str(r["id"]): r for r in base_records}
        base_judge = aligned(results.get(baseline, {}).get("evaluator"), base_records)
    prompts = []
    for i, record in enumerate(records):
        rid = str(record["id"])
        ours, theirs = judge.get(rid), base_judge.get(rid)
        outcome = diff = None
        if ours is not None and theirs is not None:
            outcome, diff = OUTCOMES[win_tie_loss([ours], [theirs])[0]], ours - theirs
        trace = record.get("trace")
        prompts.append(
            {
                "index": i,
                "id": rid,
                "prompt": record["prompt"],
                "judge": ours,
                "reward": reward.get(rid, record.get("score")),
                "base_judge": theirs,
                "outcome": outcome,
                "diff": diff,
                "tree": None if trace is None else {k: v for k, v in trace.items() if k != "tokens"},
                "cands": None if trace is not None else candidates(record),
                "base": candidates(base[rid]) if rid in base else None,
            }
        )
    (length_headers, length_rows), (fact_headers, fact_rows) = value_table_rows(
        {int(k): v for k, v in saved.get("values", {}).items()}
    )
    return {
        "run": run.name,
        "method": method,
        "baseline": baseline if baseline != method else None,
        "results": methods_table(results, baseline) if results else None,
        "values": [
            {"headers": h, "rows": r} for h, r in ((length_headers, length_rows), (fact_headers, fact_rows)) if r
        ],
        "prompts": prompts,
    }


def aligned(scores: list[float] | None, records: list[dict[str, Any]]) -> dict[str, float]:
    """Per prompt id, a `results.json` score list (in the method's record order); empty when it does not match."""
    if not scores or len(scores) != len(records):
        return {}
    return {str(r["id"]): float(s) for r, s in zip(records, scores, strict=True)}


def candidates(record: dict[str, Any]) -> dict[str, Any]:
    """A record's candidates (text, reward, ended by the policy) and which one was chosen."""
    cands = record.get("candidates", [])
    chosen = next((i for i, c in enumerate(cands) if c["text"] == record["response"]), None)
    return {
        "list": [{"text": c["text"], "score": c.get("score"), "finished": c.get("finished")} for c in cands],
        "chosen": chosen,
    }


def methods_table(results: dict[str, dict[str, Any]], baseline: str | None) -> dict[str, Any]:
    """The report's results table (`results_table`), the reward mean given its 95% interval too."""
    headers, rows = results_table(results, baseline or "")
    for row, name in zip(rows, results, strict=True):
        lo, hi = bootstrap_ci(results[name]["reward"])
        row[1] = f"{row[1]:.4f} [{lo:.4f}, {hi:.4f}]"
    headers[1] = "reward (picks) [95% CI]"
    return {"headers": headers, "rows": rows}


def render_page(view: dict[str, Any]) -> str:
    """The page: inline CSS and JavaScript, `view` embedded as JSON (every '<' escaped, so no text ends the script)."""
    data = json.dumps(view, ensure_ascii=False, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
    title = html.escape(f"spi inspect: {view['run']} / {view['method']}")
    return PAGE.replace("__TITLE__", title).replace("__CSS__", CSS).replace("__DATA__", data).replace("__JS__", JS)


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>__CSS__</style>
</head>
<body>
<header><h1 id="title"></h1><p id="subtitle" class="note"></p></header>
<main>
<section id="summary"></section>
<section id="values"></section>
<section><h2>Prompts</h2><div id="filters"></div>
<table id="prompts" class="grid"><thead></thead><tbody></tbody></table></section>
<section id="detail" hidden></section>
</main>
<script type="application/json" id="data">__DATA__</script>
<script>__JS__</script>
</body>
</html>
"""

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1a202c;background:#fafafa}
header{padding:12px 20px;background:#1a365d;color:#fff}header h1{margin:0;font-size:20px}header .note{color:#cbd5e0}
main{padding:8px 20px 40px}h2{font-size:16px;margin:18px 0 6px}.note{color:#4a5568;font-size:13px;margin:4px 0}
table.grid{border-collapse:collapse;background:#fff;font-size:13px}
.grid th,.grid td{border:1px solid #e2e8f0;padding:3px 7px;text-align:left;vertical-align:top}
.grid th{background:#edf2f7;position:sticky;top:0}.grid tr.current td{background:#ebf8ff;font-weight:600}
#prompts th{cursor:pointer;user-select:none}#prompts th.sorted::after{content:" \\25be"}
#prompts th.sorted.up::after{content:" \\25b4"}#prompts tbody tr{cursor:pointer}
#prompts tbody tr:hover td{background:#f7fafc}#prompts tbody tr.open td{background:#fefcbf}
td.num{text-align:right;font-variant-numeric:tabular-nums}td.text{max-width:420px;overflow:hidden;
text-overflow:ellipsis;white-space:nowrap}
.win{color:#22543d;background:#c6f6d5}.loss{color:#742a2a;background:#fed7d7}.tie{color:#4a5568;background:#e2e8f0}
.badge{border-radius:3px;padding:0 5px;font-size:12px}
#filters button{margin:0 4px 6px 0;border:1px solid #a0aec0;background:#fff;border-radius:3px;padding:2px 9px;
cursor:pointer}#filters button.on{background:#2b6cb0;color:#fff;border-color:#2b6cb0}
#detail{margin-top:14px;background:#fff;border:1px solid #cbd5e0;border-radius:4px;padding:10px 14px}
.prompt-text{white-space:pre-wrap;background:#f7fafc;border-left:3px solid #2b6cb0;padding:6px 9px;margin:6px 0}
.columns{display:flex;gap:18px;align-items:flex-start;flex-wrap:wrap}.tree-box{overflow:auto;max-height:70vh;
border:1px solid #e2e8f0;background:#fff;max-width:100%}.side{min-width:280px;max-width:420px;flex:1}
.cands{list-style:none;padding:0;margin:0}.cands li{border:1px solid #e2e8f0;border-radius:3px;padding:4px 6px;
margin:0 0 4px;cursor:pointer;font-size:12.5px}.cands li:hover{background:#f7fafc}
.cands li.chosen{border:2px solid #c53030}.cands .snip{color:#4a5568;white-space:nowrap;overflow:hidden;
text-overflow:ellipsis}
#info{margin-top:10px;border-top:1px solid #e2e8f0;padding-top:8px}#info .text{white-space:pre-wrap;
background:#f7fafc;padding:6px 9px;font-size:13px}#info mark{background:#fefcbf;outline:1px solid #d69e2e}
svg.tree text{font:10.5px system-ui,sans-serif;pointer-events:none}svg.tree .node{cursor:pointer}
svg.tree .edge{stroke:#a0aec0;fill:none}svg.tree .edge.path{stroke:#c53030;stroke-width:2.2}
.node.kept rect{fill:#2b6cb0;stroke:#1a365d}.node.kept text{fill:#fff}
.node.pruned rect{fill:#f7fafc;stroke:#a0aec0;stroke-dasharray:3 2}.node.pruned text{fill:#718096}
.node.finished rect{fill:#c6f6d5;stroke:#2f855a}.node.cut rect{fill:#fefcbf;stroke:#b7791f}
.node.open rect{fill:#e2e8f0;stroke:#718096}.node.root rect{fill:#1a202c}.node.root text{fill:#fff}
.node.chosen rect{stroke:#c53030;stroke-width:3}.node.selected rect{stroke:#d53f8c;stroke-width:3}
.legend span{display:inline-block;margin-right:12px;font-size:12px}.legend i{display:inline-block;width:14px;
height:10px;margin-right:4px;vertical-align:middle;border:1px solid}
"""

JS = r"""
"use strict";
const DATA = JSON.parse(document.getElementById("data").textContent);
const SVGNS = "http://www.w3.org/2000/svg";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}
function svgEl(tag, attrs, ...children) {
  const node = document.createElementNS(SVGNS, tag);
  setAttrs(node, attrs);
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}
function setAttrs(node, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== null && value !== undefined) node.setAttribute(key, String(value));
  }
}
function fmt(x, digits) {
  if (x === null || x === undefined) return "\u2014";
  return typeof x === "number" ? x.toFixed(digits === undefined ? 3 : digits) : String(x);
}
function signed(x) { return x === null || x === undefined ? "\u2014" : (x > 0 ? "+" : "") + x.toFixed(3); }

function grid(headers, rows, current) {
  const body = rows.map(row => el("tr", {class: current !== undefined && row[0] === current ? "current" : null},
    ...row.map(cell => el("td", {class: typeof cell === "number" ? "num" : null},
      fmt(cell, Number.isInteger(cell) ? 0 : 3)))));  // counts (tokens, prompts, lengths) without decimals
  return el("table", {class: "grid"}, el("thead", {}, el("tr", {}, ...headers.map(h => el("th", {}, h)))),
    el("tbody", {}, ...body));
}

function renderHeader() {
  document.getElementById("title").textContent = `${DATA.run}: ${DATA.method}`;
  const against = DATA.baseline ? ` against ${DATA.baseline}` : "";
  document.getElementById("subtitle").textContent =
    `${DATA.prompts.length} prompts${against}; click a prompt to see its search tree.`;
}

function renderSummary() {
  const box = document.getElementById("summary");
  box.append(el("h2", {}, "Methods"));
  if (!DATA.results) {
    box.append(el("p", {class: "note"}, "No results.json: the run has not finished its report."));
    return;
  }
  box.append(grid(DATA.results.headers, DATA.results.rows, DATA.method));
  box.append(el("p", {class: "note"}, "Intervals: 95% bootstrap over prompts (paired for the differences)."));
}

function renderValues() {
  const box = document.getElementById("values");
  if (!DATA.values.length) return;
  box.append(el("h2", {}, "Value functions"), el("p", {class: "note"},
    "Within-prompt Spearman of each value with the final reward, by prefix length (heldout_*: prompts no " +
    "choice saw; choice_*: the prompts settings were chosen on)."));
  for (const table of DATA.values) box.append(grid(table.headers, table.rows), el("br"));
}

const COLUMNS = [
  {key: "index", label: "#", num: true},
  {key: "id", label: "id"},
  {key: "prompt", label: "prompt", text: true},
  {key: "outcome", label: DATA.baseline ? `vs ${DATA.baseline}` : "outcome"},
  {key: "diff", label: "\u0394 evaluator", num: true, show: signed},
  {key: "judge", label: "evaluator", num: true},
  {key: "base_judge", label: `evaluator (${DATA.baseline || "base"})`, num: true},
  {key: "reward", label: "reward", num: true},
  {key: "nodes", label: "tree nodes", num: true},
];
const state = {sort: "index", dir: 1, filter: "all", open: null};

function cellValue(p, key) { return key === "nodes" ? (p.tree ? p.tree.parent.length : null) : p[key]; }

function renderFilters() {
  const box = document.getElementById("filters");
  box.replaceChildren();
  const counts = {all: DATA.prompts.length, win: 0, tie: 0, loss: 0};
  for (const p of DATA.prompts) if (p.outcome) counts[p.outcome] += 1;
  for (const name of ["all", "win", "tie", "loss"]) {
    box.append(el("button", {class: state.filter === name ? "on" : null, "data-filter": name,
      onclick: () => { state.filter = name; renderFilters(); renderRows(); }}, `${name} (${counts[name]})`));
  }
}

function renderHead() {
  const row = el("tr");
  for (const col of COLUMNS) {
    const sorted = state.sort === col.key;
    row.append(el("th", {class: sorted ? (state.dir > 0 ? "sorted up" : "sorted") : null, "data-key": col.key,
      onclick: () => {
        state.dir = state.sort === col.key ? -state.dir : (col.num ? -1 : 1);
        state.sort = col.key;
        renderHead();
        renderRows();
      }}, col.label));
  }
  document.querySelector("#prompts thead").replaceChildren(row);
}

function compare(a, b) {
  const x = cellValue(a, state.sort), y = cellValue(b, state.sort);
  if (x === y) return a.index - b.index;
  if (x === null || x === undefined) return 1;
  if (y === null || y === undefined) return -1;
  return (x < y ? -1 : 1) * state.dir;
}

function renderRows() {
  const shown = DATA.prompts.filter(p => state.filter === "all" || p.outcome === state.filter).sort(compare);
  const rows = shown.map(p => el("tr", {"data-index": p.index, class: state.open === p.index ? "open" : null,
      onclick: () => showPrompt(p.index)},
    ...COLUMNS.map(col => {
      const value = cellValue(p, col.key);
      if (col.key === "outcome") return el("td", {}, value ? el("span", {class: `badge ${value}`}, value) : "\u2014");
      const shownValue = col.show ? col.show(value) : (col.num && col.key !== "index" && col.key !== "nodes" ?
        fmt(value) : fmt(value, 0));
      return el("td", {class: col.num ? "num" : (col.text ? "text" : null), title: col.text ? value : null},
        col.num ? shownValue : String(value));
    })));
  document.querySelector("#prompts tbody").replaceChildren(...rows);
}

function layout(tree) {
  const n = tree.parent.length, kids = Array.from({length: n}, () => []), roots = [];
  tree.parent.forEach((p, i) => (p < 0 ? roots : kids[p]).push(i));
  const depth = new Array(n).fill(0), row = new Array(n).fill(0);
  let next = 0;
  const stack = roots.slice().reverse().map(i => [i, 0, false]);
  while (stack.length) {  // depth first, children in order; a parent sits between its first and last child
    const [i, d, done] = stack.pop();
    if (done) { row[i] = (row[kids[i][0]] + row[kids[i][kids[i].length - 1]]) / 2; continue; }
    depth[i] = d;
    if (!kids[i].length) { row[i] = next++; continue; }
    stack.push([i, d, true]);
    for (let k = kids[i].length - 1; k >= 0; k--) stack.push([kids[i][k], d + 1, false]);
  }
  return {kids, roots, depth, row, rows: Math.max(next, 1)};
}

function pathOf(tree, node) {
  const out = [];
  for (let i = node; i !== null && i >= 0; i = tree.parent[i]) out.push(i);
  return out.reverse();
}

function nodeKind(tree, i) {
  if (tree.finished[i] === 1) return "finished";
  if (tree.finished[i] === 0) return "cut";
  if (tree.kept[i] === 1) return "kept";
  if (tree.kept[i] === 0) return "pruned";
  return "open";
}

function nodeLabel(tree, i) {
  if (tree.candidate[i] !== null) return tree.score[i] === null ? "end" : `r ${fmt(tree.score[i], 2)}`;
  return tree.value[i] === null ? "\u00b7" : fmt(tree.value[i], 2);
}

function drawTree(p) {
  const tree = p.tree, lay = layout(tree);
  const W = 56, H = 18, GX = 22, GY = 5, PAD = 8, ROOT = 44;
  const x = i => PAD + ROOT + GX + lay.depth[i] * (W + GX);
  const y = i => PAD + lay.row[i] * (H + GY);
  const columns = Math.max(0, ...lay.depth) + 1;
  const width = PAD * 2 + ROOT + columns * (W + GX), height = PAD * 2 + lay.rows * (H + GY);
  const onPath = new Set(tree.chosen === null ? [] : pathOf(tree, tree.chosen));
  const svg = svgEl("svg", {class: "tree", width, height, viewBox: `0 0 ${width} ${height}`,
    "data-nodes": tree.parent.length});
  const rootY = lay.roots.length ?
    (Math.min(...lay.roots.map(y)) + Math.max(...lay.roots.map(y))) / 2 : PAD;
  for (let i = 0; i < tree.parent.length; i++) {
    const p0 = tree.parent[i];
    const x0 = p0 < 0 ? PAD + ROOT : x(p0) + W, y0 = (p0 < 0 ? rootY : y(p0)) + H / 2;
    const x1 = x(i), y1 = y(i) + H / 2, mid = (x0 + x1) / 2;
    svg.append(svgEl("path", {class: onPath.has(i) ? "edge path" : "edge",
      d: `M${x0},${y0} C${mid},${y0} ${mid},${y1} ${x1},${y1}`}));
  }
  svg.append(svgEl("g", {class: "node root"}, svgEl("rect", {x: PAD, y: rootY, width: ROOT, height: H, rx: 3}),
    svgEl("text", {x: PAD + ROOT / 2, y: rootY + 12.5, "text-anchor": "middle"}, "prompt")));
  for (let i = 0; i < tree.parent.length; i++) {
    const chosen = i === tree.chosen;
    const title = `${nodeKind(tree, i)}${chosen ? " (the answer)" : ""}: ${nodeLabel(tree, i)}\n${tree.text[i]}`;
    svg.append(svgEl("g", {class: `node ${nodeKind(tree, i)}${chosen ? " chosen" : ""}`, "data-node": i,
        onclick: () => showNode(p, i)},
      svgEl("title", {}, title),
      svgEl("rect", {x: x(i), y: y(i), width: W, height: H, rx: 3}),
      svgEl("text", {x: x(i) + W / 2, y: y(i) + 12.5, "text-anchor": "middle"}, (chosen ? "\u2605 " : "") +
        nodeLabel(tree, i))));
  }
  return svg;
}

function legend() {
  const item = (cls, label, style) => el("span", {}, el("i", {class: cls, style}), label);
  return el("div", {class: "legend note"},
    item("", "kept (value)", "background:#2b6cb0;border-color:#1a365d"),
    item("", "pruned (value)", "background:#f7fafc;border-color:#a0aec0;border-style:dashed"),
    item("", "ended: end of turn (reward)", "background:#c6f6d5;border-color:#2f855a"),
    item("", "ended: cut at max tokens (reward)", "background:#fefcbf;border-color:#b7791f"),
    item("", "\u2605 the answer (path in red)", "background:#fff;border-color:#c53030;border-width:2px"));
}

function candidateList(p, cands, label, judge) {
  const order = cands.list.map((c, i) => i).sort((a, b) => (cands.list[b].score ?? -Infinity) -
    (cands.list[a].score ?? -Infinity));
  const items = order.map(i => {
    const c = cands.list[i], chosen = i === cands.chosen;
    const head = `r ${fmt(c.score)}${chosen ? ` \u2605 answer, evaluator ${fmt(judge)}` : ""}` +
      (c.finished === false ? " (cut)" : "");
    return el("li", {class: chosen ? "chosen" : null, "data-candidate": i,
        onclick: () => showText(`${label}: candidate ${i}`, c.text, [["reward", fmt(c.score)],
          ["evaluator", chosen ? fmt(judge) : "not judged (only the answer is)"]])},
      el("div", {}, head), el("div", {class: "snip"}, c.text));
  });
  return el("ul", {class: "cands"}, ...items);
}

function showPrompt(index) {
  state.open = index;
  renderRows();
  const p = DATA.prompts[index], box = document.getElementById("detail");
  box.hidden = false;
  const outcome = p.outcome ? el("span", {class: `badge ${p.outcome}`}, p.outcome) : null;
  const head = el("div", {}, el("h2", {}, `Prompt ${p.index}: ${p.id} `, outcome),
    el("div", {class: "prompt-text"}, p.prompt),
    el("p", {class: "note"}, `${DATA.method}: evaluator ${fmt(p.judge)}, reward ${fmt(p.reward)}` +
      (DATA.baseline ? `; ${DATA.baseline}: evaluator ${fmt(p.base_judge)}; difference ${signed(p.diff)}` : "")));
  const left = el("div", {class: "main"});
  if (p.tree) {
    const weights = p.tree.weights ? Object.entries(p.tree.weights).map(([k, w]) => `${w}\u00b7${k}`).join(" + ") : "";
    left.append(el("h3", {}, `${DATA.method}: the search tree (${p.tree.parent.length} chunks)`),
      el("p", {class: "note"}, "Each box is a chunk with the guidance value that ranked it" +
        (weights ? ` (${weights})` : "") + "; ended chunks show their reward. Hover for the text, click for details."),
      legend(), el("div", {class: "tree-box"}, drawTree(p)));
  } else if (p.cands) {
    left.append(el("h3", {}, `${DATA.method}: candidates`), el("p", {class: "note"},
      "No search tree was recorded for this record (a run written before searches recorded their trees, or a " +
      "method without one): its candidates only."), candidateList(p, p.cands, DATA.method, p.judge));
  }
  const columns = el("div", {class: "columns"}, left);
  if (p.base) {
    columns.append(el("div", {class: "side"}, el("h3", {}, `${DATA.baseline}: its ${p.base.list.length} candidates`),
      el("p", {class: "note"}, "By reward, highest first; the reward picks the answer."),
      candidateList(p, p.base, DATA.baseline, p.base_judge)));
  }
  const info = el("div", {id: "info"}, el("p", {class: "note"}, "Click a chunk or a candidate."));
  box.replaceChildren(head, columns, info);
  if (location.hash !== `#p=${index}`) history.replaceState(null, "", `#p=${index}`);
}

function showText(title, text, facts, mark) {
  const body = el("div", {class: "text"});
  if (mark !== undefined) body.append(text.slice(0, mark), el("mark", {}, text.slice(mark)));
  else body.append(text);
  const table = el("table", {class: "grid"}, ...facts.map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v))));
  document.getElementById("info").replaceChildren(el("h3", {}, title), table, el("br"), body);
}

function showNode(p, i) {
  const tree = p.tree, nodes = pathOf(tree, i);
  for (const g of document.querySelectorAll("svg.tree .node.selected")) g.classList.remove("selected");
  const g = document.querySelector(`svg.tree .node[data-node="${i}"]`);
  if (g) g.classList.add("selected");
  const before = nodes.slice(0, -1).map(n => tree.text[n]).join("");
  const facts = [["step", nodes.length], ["state", nodeKind(tree, i)], ["guidance value", fmt(tree.value[i])]];
  if (tree.terms) for (const [name, w] of Object.entries(tree.weights))
    facts.push([`${name} (weight ${w})`, fmt(tree.terms[name][i])]);
  if (tree.cluster[i] !== null) facts.push(["diversity cluster", tree.cluster[i] === i ? "its own (first)" :
    `with chunk ${tree.cluster[i]}`]);
  if (tree.candidate[i] !== null) {
    facts.push(["reward", fmt(tree.score[i])]);
    facts.push(["evaluator", i === tree.chosen ? fmt(p.judge) : "not judged (only the answer is)"]);
  }
  showText(`Chunk ${i}${i === tree.chosen ? " (the answer)" : ""}`, before + tree.text[i], facts, before.length);
}

renderHeader();
renderSummary();
renderValues();
renderFilters();
renderHead();
renderRows();
const wanted = /^#p=(\d+)$/.exec(location.hash);
if (wanted && DATA.prompts[Number(wanted[1])]) showPrompt(Number(wanted[1]));
"""
