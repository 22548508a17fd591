"""The README's headline table, built from the results files of the other benchmarks (no run of its own).

Each row is one row of a results JSON under ``results/`` (which records its commit and configuration);
the table names the file. ``tests/test_docs.py`` checks that the README holds exactly this table.

    python benchmarks/headline.py
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"

# (results file, row name, bits, label): calibration-only recipes, reconstruction, the integer program
RECIPES = "recipes_deit_tiny.json"
RECON_W4 = "reconstruction_deit_tiny_256_images.json"
RECON_W3 = "reconstruction_deit_tiny_256_images_w3a3.json"
INTEGER = "integer_deit_tiny.json"
COMPENSATION = "compensation_deit_tiny.json"
ROWS = [
    *[(RECIPES, recipe, bits, label)
      for bits in (4, 3)
      for recipe, label in (("repq-vit", "`repq-vit`: RepQ-ViT"),
                            ("bitlog2-half-17", "`bitlog2-half-17`: RepQ-ViT with BitLog2 (the default)"),
                            ("adalog", "`adalog`: AdaLog"),
                            ("ptq4vit", "`ptq4vit`: PTQ4ViT"))],
    (COMPENSATION, "adalog:+ QwT", 4, "`adalog-qwt`: AdaLog + QwT compensation (no gradient steps)"),
    (RECON_W4, "bitlog2-recon + reconstruction", 4, "`bitlog2-recon` + block reconstruction"),
    (RECON_W3, "bitlog2-recon + reconstruction", 3, "`bitlog2-recon` + block reconstruction"),
    (INTEGER, "W8A8", 8, "integer program (`repq-vit`, uniform attention map, mixed integer kernels)"),
    (INTEGER, "W4A4", 4, "integer program (`bitlog2-half-17`, mixed integer kernels)"),
]
HEADER = ("| W/A | method | calibration images | evaluated on | FP top-1 % | top-1 % | agreement % | mean KL | results file |\n"
          "|---|---|---:|---:|---:|---:|---:|---:|---|")


def _load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def _row(name: str, row_name: str, bits: int) -> dict:
    """The row ``row_name`` at ``bits``; ``recipe:stage`` names a row of a file with stages."""
    recipe, _, stage = row_name.partition(":")
    rows = [r for r in _load(name)["rows"] if r["row"] == recipe and r["bits"] == bits and r.get("stage", stage) == stage]
    if len(rows) != 1:
        raise ValueError(f"{name}: {len(rows)} rows named {row_name!r} at {bits} bits")
    return rows[0]


def headline_table() -> str:
    """The markdown table, every figure read from ``results/``."""
    lines = [HEADER]
    for name, row_name, bits, label in ROWS:
        data, row = _load(name), _row(name, row_name, bits)
        if name == INTEGER:  # the integer program's logits, against FP on the same images
            fp, top1, agreement, kl = data["fp_top1"], row["int_top1"], row["int_agreement_fp"], row["int_kl_fp"]
        elif "all" in row:  # figures per image set: all of them here
            fp = next(r["all"]["top1"] for r in data["rows"] if r["row"] == "FP32")
            top1, agreement, kl = row["all"]["top1"], row["all"]["agreement"], row["all"]["mean_kl"]
        else:
            fp = next(r["top1"] for r in data["rows"] if r["row"] == "FP32")
            top1, agreement, kl = row["top1"], row["agreement"], row["mean_kl"]
        lines.append(f"| W{bits}A{bits} | {label} | {data['calibration_images']} | {data['evaluation_images']} | "
                     f"{fp:.2f} | {top1:.2f} | {agreement:.2f} | {kl:.4f} | `{name}` |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(headline_table())
