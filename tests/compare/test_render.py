"""Writing a comparison out: strict JSON, the markdown table and its figure links, a self-contained HTML
page, real PNG figures, and failed variants shown with their error."""

from __future__ import annotations

import base64
import copy
import json
import re

import matplotlib.image
import pytest

from vitquant.compare import write_report
from vitquant.compare.figures import DPI
from vitquant.compare.render import COLUMNS, table_rows
from vitquant.errors import VitQuantError

FIGURES = ("attention_levels", "point_sqnr", "post_gelu_grids", "accuracy_vs_bits")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ERROR = "quantized logits: 6 of 6 rows contain NaN or inf values"


def _no_nan(name: str) -> None:
    raise AssertionError(f"results.json holds {name}")


@pytest.fixture(scope="module")
def written(tiny_compare, tmp_path_factory):
    """The tiny comparison (two variants, one failed) written out once: (results, folder, paths)."""
    results = {**tiny_compare[0], "command": "vitquant compare --recipes repq-vit,bitlog2-half-17 --out x"}
    folder = tmp_path_factory.mktemp("report") / "out"  # made by write_report
    return results, folder, write_report(results, folder)


def test_paths_written(written):
    _, folder, paths = written
    assert set(paths) == {"json", "markdown", "html", *FIGURES}
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in paths.values())


def test_results_json_is_strict_json_with_every_row(written):
    results, _, paths = written
    data = json.loads(paths["json"].read_text(), parse_constant=_no_nan)
    assert [r["variant"] for r in data["rows"]] == [r["variant"] for r in results["rows"]]
    assert data["figures"] == {name: f"{name}.png" for name in FIGURES}
    assert data["fp"] == results["fp"] and data["rows"][0]["top1"] == results["rows"][0]["top1"]
    assert data["rows"][0]["figures"]["attention"]["grid"] == results["rows"][0]["figures"]["attention"]["grid"]
    assert data["rows"][2] == results["rows"][2] and data["rows"][2]["error"] == ERROR


def test_markdown_table_links_and_failures(written):
    results, folder, paths = written
    text = paths["markdown"].read_text()
    lines = text.splitlines()
    header = lines.index("| " + " | ".join(COLUMNS) + " |")
    table = lines[header + 2: header + 6]
    assert [row.split(" | ")[0] for row in table] == ["| FP32", "| repq-vit W4A4", "| bitlog2-half-17 W4A4", "| repq-vit W3A3"]
    assert table[0] == f"| FP32 | {results['fp']['top1']:.2f} | {results['fp']['top5']:.2f} | 100.00 | 0.0000 | - | 1.00x | - | - |"
    assert f"| {results['rows'][0]['top1']:.2f} | " in table[1]
    assert table[3] == "| repq-vit W3A3 | failed | - | - | - | - | - | - | - |"
    assert f"- repq-vit W3A3: {ERROR}" in lines
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links == [f"{name}.png" for name in FIGURES]  # relative, next to the report
    assert all((folder / link).is_file() for link in links)
    assert "Command: `vitquant compare --recipes repq-vit,bitlog2-half-17 --out x`" in text


def test_html_is_self_contained(written):
    _, folder, paths = written
    page = paths["html"].read_text()
    inlined = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(inlined) == page.count("data:image/png;base64,") == len(FIGURES)
    assert [base64.b64decode(data) for data in inlined] == [(folder / f"{n}.png").read_bytes() for n in FIGURES]
    for external in ("src=\"http", "src='http", "href=", "<script", "<link", "url(", "://"):
        assert external not in page, external
    assert "<td>repq-vit W3A3</td><td>failed</td>" in page and f"<li>repq-vit W3A3: {ERROR}</li>" in page
    assert page.count("<tr>") == 1 + 4  # header, FP, three variants


def test_figures_are_real_pngs(written):
    _, _, paths = written
    sizes = {"point_sqnr": (13, 7.5), "accuracy_vs_bits": (7, 4.2),  # inches, at DPI
             "attention_levels": (9, 1.9 * 2 + 1.0), "post_gelu_grids": (3.3 * 2, 2.0 * 2 + 1.0)}  # two variants, two layers
    for name in FIGURES:
        raw = paths[name].read_bytes()
        assert raw.startswith(PNG_MAGIC) and 10_000 < len(raw) < 1_000_000, name
        image = matplotlib.image.imread(paths[name])
        width, height = sizes[name]
        assert image.shape[:2] == (round(height * DPI), round(width * DPI)), name
        assert image[..., :3].std() > 0.05, name  # drawn on, not a blank page


def test_a_results_dict_without_successful_variants_has_no_figures(written, tmp_path):
    results = copy.deepcopy(written[0])
    results["rows"] = [r for r in results["rows"] if r["status"] != "ok"]
    paths = write_report(results, tmp_path)
    assert set(paths) == {"json", "markdown", "html"}
    assert "data:image/png" not in paths["html"].read_text() and "![" not in paths["markdown"].read_text()
    assert table_rows(results)[1] == ["repq-vit W3A3", "failed", "-", "-", "-", "-", "-", "-", "-"]


def test_an_unwritable_folder_is_a_vitquant_error(written, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(VitQuantError, match="cannot write the comparison to"):
        write_report(written[0], tmp_path / "file")
