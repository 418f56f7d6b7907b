"""Table of the spi-alpaca100 run as it stands (SPI-2 may cover only the first prompts)."""
import json, sys
from spi_align.scoring.similarity import ReferenceSimilarity
from spi_align.data import load_prompts
from spi_align.config import DataConfig
from spi_align.report import win_tie_rate, bootstrap_ci, markdown_table
run = sys.argv[1]
ps = {p.id: p for p in load_prompts(DataConfig(split="eval", limit=100))}
sim = ReferenceSimilarity()
scores, rm, cost, ids = {}, {}, {}, {}
for m in ["sample", "bon-16", "spi-1", "spi-2"]:
    recs = [json.loads(l) for l in open(f"{run}/eval-{m}.jsonl")]
    ids[m] = [r["id"] for r in recs]
    scores[m] = dict(zip(ids[m], sim.score([ps[r["id"]] for r in recs], [r["response"] for r in recs])))
    rm[m] = {r["id"]: r["score"] for r in recs}
    cost[m] = json.load(open(f"{run}/eval-{m}.cost.json"))["cost"]
rows = []
for m in scores:
    for subset_name, subset in (("all done", ids[m]), ("first 64", ids["spi-2"])):
        if m != "spi-2" and subset_name == "first 64" and False:
            pass
    sub = ids[m]
    ev = [scores[m][i] for i in sub]
    lo, hi = bootstrap_ci(ev)
    base = [scores["bon-16"][i] for i in sub]
    rms = [rm[m][i] for i in sub if rm[m][i] is not None]
    rows.append([m, len(sub), f"{sum(rms)/len(rms):.3f}" if rms else "-", f"{sum(ev)/len(ev):.4f} [{lo:.4f}, {hi:.4f}]",
                 f"{win_tie_rate(ev, base):.1%}", cost[m]["tokens_generated"]])
common = ids["spi-2"]
rows2 = []
for m in scores:
    ev = [scores[m][i] for i in common]
    lo, hi = bootstrap_ci(ev)
    rows2.append([m, len(common), f"{sum(ev)/len(ev):.4f} [{lo:.4f}, {hi:.4f}]", f"{win_tie_rate(ev, [scores['bon-16'][i] for i in common]):.1%}"])
h = ["method", "eval prompts", "reward model (chosen)", "evaluator [95% CI]", "win+½tie vs bon-16", "tokens generated"]
print(markdown_table(h, rows))
print(f"\nOn the {len(common)} prompts SPI-2 reached:\n")
print(markdown_table(["method", "eval prompts", "evaluator [95% CI]", "win+½tie vs bon-16"], rows2))
