"""The accuracy goals (as a fraction of FP top-1) and the best model of each kind so far, read from the
results files of the other benchmarks (no run of its own). Writes ``results/goals_<model>.{md,json}``.

    python benchmarks/goals.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from attention_schemes import commit_note, provenance, write_results

RESULTS = Path(__file__).parent / "results"

#: (goal, target % of FP, label of the model, results file, row, stage or None, bits)
GOALS = [
    ("W4A4, calibration only", 93.0, "`adalog-qwt`", "compensation_deit_tiny.json", "adalog", "+ QwT", 4),
    ("W3A3, calibration only", 62.0, "`bitlog2-recon --no-reconstruct`", "compensation_deit_tiny_recon.json",
     "bitlog2-recon", "calibration", 3),
    ("W4A4, with reconstruction", 96.0, "`bitlog2-recon`, 256 images", "reconstruction_deit_tiny_256_images.json",
     "bitlog2-recon + reconstruction", None, 4),
    ("W3A3, with reconstruction", 86.0, "`bitlog2-recon`, 256 images", "reconstruction_deit_tiny_256_images_w3a3.json",
     "bitlog2-recon + reconstruction", None, 3),
]


def _figures(row: dict) -> float:
    return row["all"]["top1"] if "all" in row else row["top1"]


def run(results: Path) -> dict:
    rows = []
    for goal, target, label, name, row_name, stage, bits in GOALS:
        data = json.loads((results / name).read_text())
        fp = _figures(next(r for r in data["rows"] if r["row"] == "FP32"))
        found = [r for r in data["rows"] if r["row"] == row_name and r["bits"] == bits and r.get("stage") == stage]
        if len(found) != 1:
            raise ValueError(f"{name}: {len(found)} rows {row_name!r} ({stage}) at {bits} bits")
        top1 = _figures(found[0])
        rows.append({"goal": goal, "target_percent_of_fp": target, "model": label, "results_file": name,
                     "fp_top1": fp, "top1": top1, "percent_of_fp": 100.0 * top1 / fp,
                     "gap": target - 100.0 * top1 / fp, "evaluation_images": data["evaluation_images"]})
    return {"command": "python benchmarks/goals.py " + " ".join(sys.argv[1:]), **provenance(), "rows": rows}


def to_markdown(res: dict) -> str:
    lines = [
        f"The accuracy goals against the best model of each kind, read from the results files named; {commit_note(res)}.",
        "",
        "| goal | target, % of FP | best so far | images | FP top-1 % | top-1 % | % of FP | gap (points of % of FP) | results file |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in res["rows"]:
        lines.append(f"| {r['goal']} | {r['target_percent_of_fp']:.0f} | {r['model']} | {r['evaluation_images']} | "
                     f"{r['fp_top1']:.2f} | {r['top1']:.2f} | {r['percent_of_fp']:.1f} | {r['gap']:.1f} | `{r['results_file']}` |")
    lines += ["", f"Command: `{res['command'].strip()}`"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--model", default="deit_tiny")
    args = p.parse_args(argv)
    res = run(RESULTS)
    write_results(res, args.out, f"goals_{args.model}", to_markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
