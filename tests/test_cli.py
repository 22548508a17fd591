"""The command line: subcommands, the seed-compatible form, error exits and the JSON report."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from vitquant import cli
from vitquant.paths import default_sample_images, default_weights


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = cli.main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_schemes_lists_all_six_with_levels(capsys):
    rc, out, _ = _run(["schemes"], capsys)
    assert rc == 0
    for name, levels in [("sqrt2-16", 16), ("sqrt2-17", 17), ("bitlog2-single-16", 16),
                         ("bitlog2-single-17", 17), ("bitlog2-half-16", 16), ("bitlog2-half-17", 17)]:
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert f"{levels} levels at 4 bit" in line


def test_recipes_lists_every_recipe(capsys):
    from vitquant.recipes import recipe_names

    rc, out, _ = _run(["recipes"], capsys)
    assert rc == 0
    listed = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert listed == recipe_names()
    assert {"repq-vit", "adalog", "ptq4vit", "bitlog2-half-17"} <= set(listed)


def test_models_lists_short_names(capsys):
    rc, out, _ = _run(["models"], capsys)
    assert rc == 0 and "deit_tiny" in out and "swin_small_patch4_window7_224" in out


@pytest.fixture()
def tiny_folder(tmp_path: Path) -> Path:
    """A flat labels.csv folder with three generated images."""
    from PIL import Image

    folder = tmp_path / "tiny"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (40, 40), (60 * i, 100, 200)).save(folder / f"img{i}.png")
    (folder / "labels.csv").write_text("file,label\n" + "".join(f"img{i}.png,{i}\n" for i in range(3)))
    return folder


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["quantize", "--w-bits", "1"], "--w-bits must be between 2 and 8"),
        (["quantize", "--a-bits", "9"], "--a-bits must be between 2 and 8"),
        (["quantize", "--attn-quant", "bitlog2-third-17"], "unknown attention quantizer 'bitlog2-third-17'"),
        (["quantize", "--a-bits", "8", "--attn-bits", "7"], "BitLog2 Half supports at most 6 bits (use --attn-bits"),
        (["quantize", "--ends-bits", "9"], "--ends-bits must be between 2 and 8"),
        (["quantize", "--recipe", "nope"], "unknown recipe 'nope'"),
        (["quantize", "--post-gelu", "nope"], "unknown post-GELU quantizer 'nope'"),
        (["quantize", "--search", "nope"], "unknown search 'nope'"),
        (["quantize", "--metric", "nope"], "unknown metric 'nope'"),
        (["quantize", "--model", "not_a_model_xyz"], "unknown model"),
        (["quantize", "--model", "resnet18"], "unsupported model class ResNet"),
        (["quantize", "--weights", "/nonexistent/w.safetensors"], "weights file not found"),
        (["quantize", "--calib-data", "/nonexistent/images"], "does not exist"),
        (["quantize", "--calib-size", "0"], "empty calibration set"),
        (["--model", "deit_tiny", "--w_bit", "12"], "between 2 and 8"),
        (["quantize", "--reconstruct", "--recon-iters", "0"], "--recon-iters must be a positive integer, got 0"),
        (["quantize", "--reconstruct", "--recon-batch-size", "0"], "--recon-batch-size must be a positive integer"),
        (["quantize", "--reconstruct", "--recon-images", "5"], "--recon-images 5: only 1 calibration images"),
        (["quantize", "--reconstruct", "--qdrop", "1"], "--qdrop must be in [0, 1)"),
        (["quantize", "--recon-iters", "5", "--qdrop"], "--recon-iters, --qdrop only apply with --reconstruct"),
        (["quantize", "--recon-loss", "fisher"], "--recon-loss only applies with --reconstruct"),
        (["quantize", "--recipe", "bitlog2-recon", "--no-reconstruct", "--recon-iters", "5"],
         "--recon-iters only applies with --reconstruct"),
        (["quantize", "--no-recon-ends"], "--recon-ends only applies with --reconstruct"),
    ],
)
def test_bad_input_exits_2_with_message(argv, message, tiny_folder, capsys):
    if argv[0] == "quantize" and "--calib-data" not in argv:  # images, so model errors are reached
        argv = argv + ["--calib-data", str(tiny_folder)]
        if "--calib-size" not in argv:
            argv = argv + ["--calib-size", "1"]
    rc, _, err = _run(argv + ["-q"], capsys)
    assert rc == 2
    assert message in err


def test_seed_form_is_recognised():
    assert cli._is_seed_form(["--model", "deit_tiny", "--dataset", "x", "--log_quant_scheme", "Sqrt2_17"])
    assert not cli._is_seed_form(["quantize", "--model", "deit_tiny"])
    assert not cli._is_seed_form(["--version"])
    args = cli._seed_parser().parse_args(
        ["--model", "deit_small", "--dataset", "d", "--w_bit", "3", "--a_bits", "5", "--log_quant_scheme",
         "BitLog2_Single_16", "--calib_batchsize", "16"]
    )
    assert (args.model, args.w_bits, args.a_bits, args.attn_quant, args.calib_size) == (
        "deit_small", 3, 5, "BitLog2_Single_16", 16)
    assert args.dataset == Path("d")


def _small_dataset(tmp_path: Path, n: int) -> Path:
    """A flat labels.csv folder with symlinks to the first n shared sample images."""
    src = default_sample_images()
    folder = tmp_path / "small"
    folder.mkdir()
    lines = (src / "labels.csv").read_text().splitlines()
    (folder / "labels.csv").write_text("\n".join(lines[: n + 1]) + "\n")
    for line in lines[1 : n + 1]:
        name = line.split(",")[0]
        (folder / name).symlink_to(src / name)
    return folder


@pytest.mark.real_model
@pytest.mark.skipif(
    default_sample_images() is None or default_weights("deit_tiny_patch16_224") is None,
    reason="needs the shared DeiT-Tiny weights and sample images",
)
@pytest.mark.parametrize("form", ["quantize", "seed"])
def test_main_job_writes_report(form, tmp_path, capsys):
    out = tmp_path / "report.json"
    if form == "quantize":
        argv = ["quantize", "--calib-size", "8", "--eval-size", "16", "--batch-size", "8",
                "--attn-quant", "BitLog2_Half_17", "--json", str(out), "-q", "--levels"]
    else:
        argv = ["--model", "deit_tiny", "--dataset", str(_small_dataset(tmp_path, 24)), "--w_bit", "4", "--a_bit", "4",
                "--log_quant_scheme", "Sqrt2_16", "--calib_batchsize", "8", "--val_batchsize", "8",
                "--json", str(out), "-q"]
    rc, stdout, _ = _run(argv, capsys)
    assert rc == 0
    assert "top-1" in stdout and "attention map" in stdout
    summary = stdout.splitlines()[0]
    attention = "BitLog2_Half_17" if form == "quantize" else "Sqrt2_16"
    assert f"recipe bitlog2-half-17  attention {attention}  post-GELU uniform" in summary
    report = json.loads(out.read_text())
    for key in ("fp", "quantized"):
        for field in ("top1", "top5", "images", "images_per_second"):
            assert isinstance(report[key][field], (int, float))
        assert 0.0 <= report[key]["top1"] <= report[key]["top5"] <= 100.0
    assert report["calibration_seconds"] > 0
    assert report["config"]["timm_model"] == "deit_tiny_patch16_224"
    assert report["config"]["w_bits"] == 4 and report["config"]["a_bits"] == 4
    levels = report["attention_levels"]
    expected = 17 if form == "quantize" else 16
    assert levels["max_levels"] == expected
    assert 1 <= levels["levels_used_min"] <= levels["levels_used_max"] <= expected
    if form == "quantize":
        assert report["fp"]["images"] == 16 and report["calibration"]["images"] == 8
        assert "quantization points" in stdout
    else:
        assert report["fp"]["images"] == 24 - 8


def test_json_path_checked_before_work(tmp_path, capsys):
    rc, _, err = _run(["quantize", "--json", str(tmp_path), "-q"], capsys)
    assert rc == 2 and "is a directory" in err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc, _, err = _run(["quantize", "--json", str(blocker / "r.json"), "-q"], capsys)
    assert rc == 2 and "is not a directory" in err


def test_seed_form_with_leading_quiet_flag():
    assert cli._is_seed_form(["-q", "--model", "deit_tiny", "--dataset", "x"])
    assert not cli._is_seed_form(["-h"])


def test_worker_traceback_is_trimmed():
    from vitquant.errors import DataError

    exc = DataError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
                    '  File "x.py", line 1\nvitquant.errors.DataError: cannot decode image /a/b.JPEG: bad')
    assert cli._error_text(exc) == "vitquant.errors.DataError: cannot decode image /a/b.JPEG: bad"
    assert cli._error_text(DataError("plain")) == "plain"


def test_labels_checked_against_model_classes(tmp_path):
    """A label beyond the model's classes is a clear DataError (here: a 10-class model)."""
    import timm

    from vitquant.data import ImageRecord
    from vitquant.errors import DataError
    from vitquant.workflow import JobData, check_labels

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, depth=1)
    good = JobData([], [ImageRecord(tmp_path / "a.png", 3)], tmp_path, tmp_path)
    check_labels(good, model)
    bad = JobData([], [ImageRecord(tmp_path / "a.png", 999)], tmp_path, tmp_path)
    with pytest.raises(DataError, match="not a class of this 10-class model"):
        check_labels(bad, model)


@pytest.mark.parametrize("value", ["0", "1.5", "nan"])
def test_bad_crop_pct_fails_before_loading(value, tiny_folder, capsys):
    rc, _, err = _run(["quantize", "--crop-pct", value, "--calib-data", str(tiny_folder), "--calib-size", "1",
                       "--weights", "/nonexistent/w.pth", "-q"], capsys)
    assert rc == 2 and "crop_pct must be in (0, 1]" in err  # not the (later) missing-weights error


# --------------------------------------------------------------------------- non-linear kernels


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--nonlinear", "bogus"], "unknown --nonlinear 'bogus'; choose one of float, ivit, ibert, fqvit, mixed"),
        (["--nonlinear", "mixed", "--mixed-rule", "bogus"], "unknown mixed rule 'bogus'; choose one of sqnr-diff, output-sqnr"),
        (["--mixed-rule", "bogus"], "unknown mixed rule 'bogus'"),
        (["--nonlinear", "ivit", "--nonlinear-bits", "17"], "--nonlinear-bits must be between 2 and 16, got 17"),
        (["--nonlinear-bits", "1"], "--nonlinear-bits must be between 2 and 16, got 1"),
        (["--nonlinear", "ivit", "--softmax-bits", "24"], "--softmax-bits must be between 2 and 16, got 24"),
    ],
)
def test_bad_nonlinear_options_exit_2_before_loading(argv, message, tiny_folder, capsys):
    # a missing weights file would be the (later) error if the options were not checked first
    rc, _, err = _run(["quantize", *argv, "--calib-data", str(tiny_folder), "--calib-size", "1",
                       "--weights", "/nonexistent/w.pth", "-q"], capsys)
    assert rc == 2
    assert message in err and "weights" not in err


def test_nonlinear_options_in_help(capsys):
    with pytest.raises(SystemExit):
        cli.main(["quantize", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "--nonlinear NAME" in out and "--mixed-rule RULE" in out and "--nonlinear-bits N" in out
    assert "--softmax-bits N" in out
    assert "float, ivit, ibert, fqvit, mixed" in out


def _use_tiny_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The main job and the comparison build the tiny random ViT of ``conftest.tiny_job_model`` instead of
    loading weights."""
    from conftest import tiny_job_model
    from vitquant import workflow
    from vitquant.compare import session

    monkeypatch.setattr(workflow, "create_model", tiny_job_model)
    monkeypatch.setattr(session, "create_model", tiny_job_model)


def test_main_job_with_ends_bits_on_a_tiny_model(tiny_folder, tmp_path, capsys, monkeypatch):
    """--ends-bits 8 at W3A3: the report's levels give the ends their own roles, at 8 bits."""
    _use_tiny_model(monkeypatch)
    out = tmp_path / "report.json"
    rc, _, _ = _run(["quantize", "--w-bits", "3", "--a-bits", "3", "--recipe", "bitlog2-single-17", "--ends-bits", "8",
                     "--calib-data", str(tiny_folder), "--calib-size", "1", "--batch-size", "2", "--json", str(out), "-q"],
                    capsys)
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["config"]["ends_bits"] == 8
    roles = report["config"]["qconfig"]["roles"]
    assert {roles[r]["bits"] for r in ("patch_embed_weight", "head_weight", "head_input")} == {8}
    assert roles["weight"]["bits"] == 3 and roles["linear_input"]["bits"] == 3
    levels = report["levels"]
    assert levels["head_weight"]["points"] == 1 and levels["patch_embed_weight"]["points"] == 1
    assert 1 <= levels["head_input"]["levels_used_min"] <= levels["head_input"]["max_levels"] == 256


@pytest.mark.parametrize(("recipe", "attention", "widest"), [("bitlog2-half-17", "BitLog2_Half_17", 6),
                                                               ("bitlog2-single-17", "BitLog2_Single_17", 5)])
def test_w8a8_with_a_bitlog2_recipe_quantizes_the_attention_map_at_its_widest(
    recipe, attention, widest, tiny_folder, tmp_path, capsys, monkeypatch
):
    """--w-bits 8 --a-bits 8 (no --attn-bits): a working W8A8 model whose BitLog2 attention map is at the
    widest width BitLog2 supports, and the output says so (stdout and the warning on stderr)."""
    _use_tiny_model(monkeypatch)
    out = tmp_path / "report.json"
    rc, stdout, err = _run(["quantize", "--w-bits", "8", "--a-bits", "8", "--recipe", recipe, "--calib-data",
                            str(tiny_folder), "--calib-size", "1", "--batch-size", "2", "--json", str(out), "-q"], capsys)
    assert rc == 0, err
    assert f"W8A8  recipe {recipe}  attention {attention} at {widest} bits  post-GELU uniform" in stdout.splitlines()[0]
    assert f"note: {attention} supports at most {widest} bits: the attention map is quantized at {widest} bits" in stdout
    assert f"{attention} supports at most {widest} bits: the attention map is quantized at {widest} bits, not 8" in err
    report = json.loads(out.read_text())
    roles = report["config"]["qconfig"]["roles"]
    assert roles["post_softmax"]["bits"] == widest and roles["linear_input"]["bits"] == 8 and roles["weight"]["bits"] == 8
    assert report["config"]["attn_bits"] is None
    levels = report["attention_levels"]
    assert 1 <= levels["levels_used_min"] <= levels["levels_used_max"] <= levels["max_levels"]
    assert report["quantized"]["images"] == 2 and 0.0 <= report["fidelity"]["top1_agreement"] <= 100.0
    # an explicit width is taken as given, and one beyond BitLog2's is still an error
    rc, stdout, _ = _run(["quantize", "--w-bits", "8", "--a-bits", "8", "--attn-bits", "4", "--recipe", recipe,
                          "--calib-data", str(tiny_folder), "--calib-size", "1", "--batch-size", "2", "-q"], capsys)
    assert rc == 0 and f"attention {attention} at 4 bits" in stdout and "note:" not in stdout
    rc, _, err = _run(["quantize", "--a-bits", "8", "--attn-bits", str(widest + 1), "--recipe", recipe,
                       "--calib-data", str(tiny_folder), "--calib-size", "1", "-q"], capsys)
    assert rc == 2 and f"supports at most {widest} bits" in err


def test_main_job_prints_its_calibration_stages(tiny_folder, tmp_path, capsys, monkeypatch):
    """The report line of where calibration time went: one forward pass for the default recipe's fits."""
    _use_tiny_model(monkeypatch)
    out = tmp_path / "report.json"
    rc, stdout, _ = _run(["quantize", "--calib-data", str(tiny_folder), "--calib-size", "2", "--batch-size", "2",
                          "--json", str(out), "-q"], capsys)
    assert rc == 0
    calibration = json.loads(out.read_text())["calibration"]
    assert calibration["passes"] == 1
    assert set(calibration["activation_seconds"]) == {"passes", "searches"}
    assert all(t >= 0 for t in calibration["activation_seconds"].values())
    line = next(line for line in stdout.splitlines() if line.startswith("calibration stages: "))
    assert ", 1 forward pass " in line and ", searches " in line and ", reparameterization " in line
    assert "; level count " in line and line == cli.stage_line(calibration)


@pytest.mark.parametrize("command", ["quantize", "train"])
def test_a_recipe_that_reconstructs_takes_the_reconstruction_flags(command):
    """--recipe bitlog2-recon reconstructs without --reconstruct (its flags accepted); --no-reconstruct wins."""
    parse = cli.build_parser().parse_args
    fields = cli._quantize_fields(parse([command, "--recipe", "bitlog2-recon", "--recon-iters", "3"]))
    assert fields["reconstruct"] is True and fields["recon_iters"] == 3
    assert cli._quantize_fields(parse([command, "--recipe", "bitlog2-recon", "--no-reconstruct"]))["reconstruct"] is False
    assert cli._quantize_fields(parse([command, "--recipe", "adalog"]))["reconstruct"] is False
    assert cli._quantize_fields(parse([command, "--recipe", "adalog", "--reconstruct"]))["reconstruct"] is True


def test_main_job_with_mixed_nonlinear_on_a_tiny_model(tiny_folder, tmp_path, capsys, monkeypatch):
    """The whole main job with --nonlinear mixed, on a tiny random ViT instead of the real weights."""
    import torch

    _use_tiny_model(monkeypatch)
    torch_threads = torch.get_num_threads()
    out = tmp_path / "report.json"
    try:
        torch.set_num_threads(1)
        rc, stdout, _ = _run(["quantize", "--recipe", "repq-vit", "--calib-data", str(tiny_folder), "--calib-size", "1",
                              "--batch-size", "2", "--nonlinear", "mixed", "--mixed-rule", "output-sqnr",
                              "--json", str(out), "-q"], capsys)
    finally:
        torch.set_num_threads(torch_threads)
    assert rc == 0
    report = json.loads(out.read_text())
    nonlinear = report["nonlinear"]
    assert nonlinear["rule"] == "output-sqnr"
    layers = {row["layer"] for row in nonlinear["layers"]}
    assert layers == set(nonlinear["choices"])
    assert len(layers) == 2 * 4 + 1  # per block: norm1, softmax, norm2, GELU; the final norm
    assert {row["family"] for row in nonlinear["layers"]} == {"ivit", "ibert", "fqvit"}
    for row in nonlinear["layers"]:
        assert set(row) == {"layer", "op", "family", "input_asqnr", "output_asqnr", "sqnr_diff"}
    assert set(nonlinear["counts"]) == {"softmax", "gelu", "layernorm"}
    assert sum(sum(c.values()) for c in nonlinear["counts"].values()) == len(layers)
    config = report["config"]
    assert config["nonlinear"] == "mixed" and config["mixed_rule"] == "output-sqnr"
    pinned = config["qconfig"]["nonlinear"]
    assert pinned["overrides"] == nonlinear["choices"]  # the choice, pinned as plain data
    assert pinned["ops"] == {"softmax": "mixed", "gelu": "mixed", "layernorm": "mixed", "residual": "integer"}
    assert pinned["bits"] is None and pinned["rule"] == "output-sqnr"  # default: the kernels' own width (16)
    assert report["calibration"]["nonlinear"] == nonlinear
    assert "non-linear kernels (mixed, rule output-sqnr): softmax: " in stdout


def test_quantize_save_then_run_on_a_tiny_model(tiny_folder, tmp_path, capsys, monkeypatch):
    """--save writes the integer program and reports its accuracy beside the simulated model's, on the same
    images; 'vitquant run' evaluates it (fast executor by default, the strict one with --gemm int: the same
    predictions) on the same held-out images, with the float64 twin bit for bit; a model without an integer
    path fails before evaluation."""
    import torch

    _use_tiny_model(monkeypatch)
    saved = tmp_path / "m.vqm"
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        rc, stdout, _ = _run(["quantize", "--recipe", "bitlog2-half-17", "--calib-data", str(tiny_folder),
                              "--calib-size", "2", "--batch-size", "2", "--nonlinear", "ibert",
                              "--save", str(saved), "--json", str(tmp_path / "q.json"), "-q"], capsys)
        assert rc == 0 and saved.is_file()
        assert f"written to {saved}" in stdout
        quantize_report = json.loads((tmp_path / "q.json").read_text())
        assert quantize_report["saved"]["bytes"] == saved.stat().st_size
        program = quantize_report["integer_program"]
        assert program["images"] == quantize_report["quantized"]["images"]  # the same images as the simulation
        assert 0.0 <= program["top1"] <= 100.0 and 0.0 <= program["agreement_quantized"] <= 100.0
        assert program["executor"] == "fast" and program["images_per_second"] > 0
        assert "\ninteger " in stdout and "integer program (saved; fast executor): top-1 agreement" in stdout
        assert "\nsimulated " in stdout and "reported model: the integer program" in stdout
        assert quantize_report["reported_model"] == "integer_program"
        rc, stdout, _ = _run(["run", str(saved), "--eval-data", str(tiny_folder), "--batch-size", "2",
                              "--check-simulation", "--json", str(tmp_path / "r.json"), "-q"], capsys)
        assert rc == 0
        report = json.loads((tmp_path / "r.json").read_text())
        assert report["images"] == quantize_report["quantized"]["images"]  # the same held-out images
        assert report["simulation"]["bit_identical_images"] == report["images"]
        assert 0.0 <= report["integer"]["top1"] <= 100.0 and report["integer"]["images_per_second"] > 0
        assert report["integer"]["gemm"] == "float" and report["integer"]["compile_seconds"] is None  # the default
        assert report["integer"]["top1"] == program["top1"]  # what quantize reported is what run gives
        assert "integer model: top-1" in stdout
        # the strict executor: the same predictions; compiling needs the fast one
        rc, stdout, _ = _run(["run", str(saved), "--eval-data", str(tiny_folder), "--batch-size", "2", "--gemm", "int",
                              "--json", str(tmp_path / "f.json"), "-q"], capsys)
        strict_report = json.loads((tmp_path / "f.json").read_text())
        assert rc == 0 and strict_report["integer"]["top1"] == report["integer"]["top1"]
        assert strict_report["integer"]["gemm"] == "int"
        rc, _, err = _run(["run", str(saved), "--eval-data", str(tiny_folder), "--gemm", "int", "--compile", "-q"], capsys)
        assert rc == 2 and "gemm='float'" in err
        # an undecodable image among the evaluated ones: an error, or skipped and named with --on-bad-image skip
        (tiny_folder / "a_junk.JPEG").write_bytes(b"not an image" * 20)  # first by name: the seeded split evaluates it
        (tiny_folder / "labels.csv").write_text((tiny_folder / "labels.csv").read_text() + "a_junk.JPEG,1\n")
        run_argv = ["run", str(saved), "--eval-data", str(tiny_folder), "--batch-size", "2", "-q"]
        rc, _, err = _run(run_argv, capsys)
        assert rc == 2 and "cannot decode image" in err and "a_junk.JPEG" in err
        rc, stdout, _ = _run(run_argv + ["--on-bad-image", "skip", "--json", str(tmp_path / "s.json")], capsys)
        assert rc == 0 and f"skipped 1 undecodable evaluation images: {tiny_folder / 'a_junk.JPEG'}" in stdout
        skipped_report = json.loads((tmp_path / "s.json").read_text())
        assert skipped_report["skipped_images"] == [str(tiny_folder / "a_junk.JPEG")]
        assert skipped_report["images"] == 1  # of a_junk, img0..img2, two were drawn for calibration
        # no integer kernels: refused with a clear message, before the evaluation
        rc, _, err = _run(["quantize", "--recipe", "bitlog2-half-17", "--calib-data", str(tiny_folder),
                           "--calib-size", "2", "--save", str(tmp_path / "x.vqm"), "-q"], capsys)
        assert rc == 2 and "integer kernel" in err and not (tmp_path / "x.vqm").exists()
    finally:
        torch.set_num_threads(threads)
    rc, _, err = _run(["run", str(tmp_path / "missing.vqm")], capsys)
    assert rc == 2 and "not found" in err


def test_skipped_images_are_printed(tmp_path, capsys, monkeypatch):
    from conftest import noise_folder

    _use_tiny_model(monkeypatch)
    folder = noise_folder(tmp_path / "images", 8, bad=(3,))  # the seed-0 draw of 2 leaves img03 to evaluation
    argv = ["quantize", "--recipe", "repq-vit", "--calib-data", str(folder), "--calib-size", "2", "--batch-size", "4", "-q"]
    rc, _, err = _run(argv, capsys)
    assert rc == 2 and "cannot decode image" in err and "img03.JPEG" in err
    rc, stdout, _ = _run(argv + ["--on-bad-image", "skip"], capsys)
    assert rc == 0
    assert f"skipped 1 undecodable evaluation images: {folder / 'img03.JPEG'}" in stdout


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_device_cuda_without_a_gpu_fails_before_loading(tiny_folder, capsys):
    rc, _, err = _run(["quantize", "--device", "cuda", "--calib-data", str(tiny_folder), "--calib-size", "1",
                       "--weights", "/nonexistent/w.pth", "-q"], capsys)
    assert rc == 2 and "--device cuda: no CUDA device is available" in err


def test_sweep_refuses_bad_bits_and_torchrun(tmp_path, capsys, monkeypatch):
    rc, _, err = _run(["sweep", "--recipes", "repq-vit", "--bits", "4", "--out", str(tmp_path)], capsys)
    assert rc == 2 and "'4' is not W/A" in err
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    rc, _, err = _run(["sweep", "--recipes", "repq-vit", "--out", str(tmp_path)], capsys)
    assert rc == 2 and "start it without torchrun" in err


def test_reconstruction_options_in_help(capsys):
    with pytest.raises(SystemExit):
        cli.main(["quantize", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for flag in ("--reconstruct, --no-reconstruct", "--recon-images N", "--recon-iters K", "--recon-batch-size B", "--recon-lr LR",
                 "--recon-act-lr LR", "--qdrop [P]", "--recon-ends, --no-recon-ends", "--recon-loss {mse,fisher}"):
        assert flag in out


def test_quantize_reconstruct_save_then_run_on_a_tiny_model(tiny_folder, tmp_path, capsys, monkeypatch):
    """--reconstruct after calibration: the report records the settings, per-block errors and time; the
    reconstructed model still converts (--save) and runs bit for bit like its float64 twin."""
    import torch

    _use_tiny_model(monkeypatch)
    saved = tmp_path / "m.vqm"
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        rc, stdout, _ = _run(["quantize", "--recipe", "bitlog2-half-17", "--calib-data", str(tiny_folder),
                              "--calib-size", "2", "--batch-size", "2", "--nonlinear", "ivit", "--reconstruct",
                              "--recon-iters", "3", "--recon-batch-size", "2", "--qdrop", "--recon-loss", "fisher",
                              "--save", str(saved),
                              "--json", str(tmp_path / "q.json"), "-q"], capsys)
        assert rc == 0 and saved.is_file()
        report = json.loads((tmp_path / "q.json").read_text())
        recon = report["reconstruction"]
        assert recon["images"] == 2 and recon["seconds"] > 0
        assert [b["name"] for b in recon["blocks"]] == ["patch_embed", "blocks.0", "blocks.1", "head"]  # ends: default
        assert recon["settings"]["iters"] == 3 and recon["settings"]["batch_size"] == 2
        assert recon["settings"]["drop_prob"] == 0.5 and recon["settings"]["seed"] == 0
        assert recon["settings"]["loss"] == "fisher" and report["config"]["recon_loss"] == "fisher"
        assert report["config"]["reconstruct"] is True and report["config"]["recon_iters"] == 3
        assert all(p["levels_used"] is not None for p in report["calibration"]["points"] if p["role"] != "residual")
        assert recon["settings"]["ends"] is True and report["config"]["recon_ends"] is True
        assert "reconstruction: 4 units (patch embedding and head included) on 2 calibration images, 3 steps each" in stdout
        assert "Fisher-weighted unit output error" in stdout
        rc, _, _ = _run(["run", str(saved), "--eval-data", str(tiny_folder), "--batch-size", "2",
                         "--check-simulation", "--json", str(tmp_path / "r.json"), "-q"], capsys)
        assert rc == 0
        run = json.loads((tmp_path / "r.json").read_text())
        assert run["simulation"]["bit_identical_images"] == run["images"] == report["quantized"]["images"]
    finally:
        torch.set_num_threads(threads)


def test_inspect_report_and_program(tiny_job_files, tmp_path, capsys):
    report, program = tiny_job_files
    rc, stdout, _ = _run(["inspect", str(report), "--role", "post_softmax", "--json", str(tmp_path / "rows.json")], capsys)
    assert rc == 0
    assert stdout.splitlines()[0].endswith("quantization points, 2 of role post_softmax")
    assert "divisor" in next(line for line in stdout.splitlines() if line.startswith("blocks.0.attn.av.a_quant "))
    dumped = json.loads((tmp_path / "rows.json").read_text())
    assert dumped["source"] == "report" and [r["params"]["kind"] for r in dumped["rows"]] == ["bitlog2", "bitlog2"]
    rc, stdout, _ = _run(["inspect", str(program), "--op", "requant", "--markdown"], capsys)
    assert rc == 0 and "| op | kind | output | inputs | constants |" in stdout and "multiplier int64" in stdout


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "file not found"),
        (b"\x00\x01garbage bytes", "is neither a JSON report nor a .vqm integer program"),
        (b'{"fp": {}}', "has no calibration.points"),
        (b'{"status": "failed", "error": "boom"}', "failed, so it has no calibrated points (its error: boom)"),
    ],
)
def test_inspect_bad_input_exits_2(content, message, tmp_path, capsys):
    path = tmp_path / "input.json"
    if content is not None:
        path.write_bytes(content)
    rc, stdout, err = _run(["inspect", str(path)], capsys)
    assert rc == 2 and stdout == ""
    assert err.startswith("vitquant: error: ") and message in err


def test_inspect_corrupted_program_exits_2(tiny_job_files, tmp_path, capsys):
    data = bytearray(tiny_job_files[1].read_bytes())
    data[-5] ^= 0xFF
    (tmp_path / "bad.vqm").write_bytes(bytes(data))
    rc, _, err = _run(["inspect", str(tmp_path / "bad.vqm")], capsys)
    assert rc == 2 and err.startswith("vitquant: error: model file ") and "is corrupted" in err
    rc, _, err = _run(["inspect", str(tiny_job_files[0]), "--op", "add"], capsys)
    assert rc == 2 and "--op filters an integer program's ops" in err


def test_compare_on_a_tiny_model(tmp_path, capsys, monkeypatch):
    import torch
    from conftest import noise_folder

    _use_tiny_model(monkeypatch)
    folder, out = noise_folder(tmp_path / "images", 6), tmp_path / "report"
    argv = ["compare", "--recipes", "repq-vit,bitlog2-half-17+post-gelu=adalog", "--bits", "4/4,3/4",
            "--calib-data", str(folder), "--calib-size", "2", "--batch-size", "4", "--figure-images", "2",
            "--timing-batch", "2", "--attention-layer", "blocks.0.attn", "--out", str(out), "-q"]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        rc, stdout, _ = _run(argv, capsys)
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    variants = ["repq-vit W4A4", "bitlog2-half-17+post_gelu=adalog W4A4", "repq-vit W3A4", "bitlog2-half-17+post_gelu=adalog W3A4"]
    lines = stdout.splitlines()
    assert lines[0].split("  ")[0] == "variant" and lines[1].startswith("FP32 ")
    assert [line.split("  ")[0] for line in lines[2:6]] == variants
    assert lines[6] == (f"report: {out / 'report.md'} and {out / 'report.html'} (4 figures); data: {out / 'results.json'}")
    for name in ("report.md", "report.html", "results.json", "attention_levels.png", "point_sqnr.png",
                 "post_gelu_grids.png", "accuracy_vs_bits.png"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert [r["variant"] for r in results["rows"]] == variants and {r["status"] for r in results["rows"]} == {"ok"}
    assert results["rows"][1]["options"] == {"post_gelu": "adalog"} and results["rows"][2]["w_bits"] == 3
    assert results["command"] == shlex.join(["vitquant", *argv])
    assert {r["figures"]["attention"]["point"] for r in results["rows"]} == {"blocks.0.attn.av.a_quant"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--recipes", "repq-vit+colour=red"], "unknown option 'colour'"),
        (["--recipes", "repq-vit,"], "empty name in the comma-separated list"),
        (["--recipes", "repq-vit+attn_quant"], "option 'attn_quant' is not name=value"),
        (["--recipes", "nope"], "unknown recipe 'nope'"),
        (["--recipes", "repq-vit", "--bits", "4"], "'4' is not W/A"),
        (["--recipes", "repq-vit", "--bits", "4/9"], "--a-bits must be between 2 and 8"),
        (["--recipes", "repq-vit", "--timing-batch", "0"], "--timing-batch must be a positive integer, got 0"),
    ],
)
def test_compare_bad_input_exits_2_before_loading(extra, message, tiny_folder, tmp_path, capsys):
    argv = ["compare", "--calib-data", str(tiny_folder), "--weights", "/nonexistent/w.pth", "--out", str(tmp_path / "r")]
    rc, _, err = _run(argv + extra + ["-q"], capsys)
    assert rc == 2 and err.startswith("vitquant: error: ") and message in err
    assert not (tmp_path / "r").exists()


def test_compare_out_must_be_a_folder_and_no_torchrun(tiny_folder, tmp_path, capsys, monkeypatch):
    (tmp_path / "file.txt").write_text("a file")
    argv = ["compare", "--recipes", "repq-vit", "--calib-data", str(tiny_folder), "--weights", "/nonexistent/w.pth", "-q"]
    rc, _, err = _run(argv + ["--out", str(tmp_path / "file.txt")], capsys)
    assert rc == 2 and f"vitquant: error: --out {tmp_path / 'file.txt'} is not a directory" in err
    monkeypatch.setenv("WORLD_SIZE", "2")
    rc, _, err = _run(argv + ["--out", str(tmp_path / "r")], capsys)
    assert rc == 2 and "vitquant compare runs in one process: start it without torchrun" in err


def test_export_then_run_the_onnx_model(tiny_folder, tmp_path, capsys, monkeypatch):
    """--save, then 'vitquant export' and 'vitquant run MODEL.onnx --check MODEL.vqm': onnxruntime on the same
    held-out images as the integer executor, every image bit-identical; the run imports no timm."""
    pytest.importorskip("onnxruntime")
    import subprocess
    import sys

    _use_tiny_model(monkeypatch)
    saved, exported = tmp_path / "m.vqm", tmp_path / "m.onnx"
    rc, _, _ = _run(["quantize", "--recipe", "bitlog2-half-17", "--calib-data", str(tiny_folder), "--calib-size", "2",
                     "--batch-size", "2", "--nonlinear", "ivit", "--save", str(saved), "-q"], capsys)
    assert rc == 0
    rc, stdout, _ = _run(["export", str(saved), "-o", str(exported)], capsys)
    assert rc == 0 and exported.is_file() and "integer ONNX" in stdout
    rc, _, _ = _run(["run", str(saved), "--eval-data", str(tiny_folder), "--json", str(tmp_path / "v.json"), "-q"], capsys)
    assert rc == 0
    rc, stdout, _ = _run(["run", str(exported), "--eval-data", str(tiny_folder), "--check", str(saved), "--threads", "1",
                          "--json", str(tmp_path / "o.json"), "-q"], capsys)
    assert rc == 0 and "bit-identical integer logits" in stdout
    report, program_report = (json.loads((tmp_path / f).read_text()) for f in ("o.json", "v.json"))
    assert {"images", "top1", "top5", "images_per_second", "bit_identical_images"} <= set(report)
    assert report["images"] == program_report["images"] and report["bit_identical_images"] == report["images"]
    assert report["top1"] == program_report["integer"]["top1"]
    code = ("import sys; from vitquant.cli import main; rc = main(sys.argv[1:]); "
            "assert 'timm' not in sys.modules, 'timm imported'; sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code, "run", str(exported), "--eval-data", str(tiny_folder), "-q"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    # what does not apply, a corrupted model, and export without the extra: one line each
    rc, _, err = _run(["run", str(exported), "--eval-data", str(tiny_folder), "--compile"], capsys)
    assert rc == 2 and "--compile applies to a .vqm program" in err
    rc, _, err = _run(["run", str(saved), "--eval-data", str(tiny_folder), "--check", str(saved)], capsys)
    assert rc == 2 and "--check applies to an ONNX model" in err
    (tmp_path / "bad.onnx").write_bytes(b"\x00garbage" * 50)
    rc, _, err = _run(["run", str(tmp_path / "bad.onnx"), "--eval-data", str(tiny_folder)], capsys)
    assert rc == 2 and "bad.onnx" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setitem(sys.modules, "onnx", None)
    rc, _, err = _run(["export", str(saved), "-o", str(tmp_path / "x.onnx")], capsys)
    assert rc == 2 and "pip install 'vitquant[onnx]'" in err and len(err.strip().splitlines()) == 1


@pytest.mark.usefixtures("single_thread")
def test_quantize_compensate_save_then_run_on_a_tiny_model(tiny_folder, tmp_path, capsys, monkeypatch):
    """--compensate qwt after calibration: the report records the settings and per-block fit; the
    compensated model converts (--save), runs bit for bit like its float64 twin, and the program's top-1
    is what quantize reported."""
    _use_tiny_model(monkeypatch)
    saved = tmp_path / "m.vqm"
    rc, stdout, err = _run(["quantize", "--calib-data", str(tiny_folder), "--calib-size", "2", "--batch-size", "2",
                            "--nonlinear", "ibert", "--compensate", "qwt", "--save", str(saved),
                            "--json", str(tmp_path / "q.json"), "-q"], capsys)
    assert rc == 0 and saved.is_file(), err
    report = json.loads((tmp_path / "q.json").read_text())
    comp = report["compensation"]
    assert comp["images"] == 2 and comp["settings"] == {"method": "qwt", "ridge": 1e-3, "bits": 8}
    assert [u["name"] for u in comp["units"]] == ["blocks.0", "blocks.1"] and report["config"]["compensate"] == "qwt"
    assert "compensation (qwt): 2 blocks on 2 calibration images" in stdout
    rc, _, _ = _run(["run", str(saved), "--eval-data", str(tiny_folder), "--batch-size", "2", "--check-simulation",
                     "--json", str(tmp_path / "r.json"), "-q"], capsys)
    run = json.loads((tmp_path / "r.json").read_text())
    assert rc == 0 and run["simulation"]["bit_identical_images"] == run["images"] == report["quantized"]["images"]
    assert run["integer"]["top1"] == report["integer_program"]["top1"]


def test_unknown_compensation_is_a_one_line_error(tiny_folder, capsys, monkeypatch):
    _use_tiny_model(monkeypatch)
    rc, _, err = _run(["quantize", "--calib-data", str(tiny_folder), "--calib-size", "2", "--compensate", "nope", "-q"], capsys)
    assert rc == 2 and "unknown --compensate 'nope'; choose one of qwt, none" in err and len(err.strip().splitlines()) == 1


@pytest.mark.usefixtures("single_thread")
def test_quantize_rotate_on_a_tiny_model(tiny_folder, tmp_path, capsys, monkeypatch):
    """--rotate hadamard: the report records the rotation; FP is measured on the model as given."""
    _use_tiny_model(monkeypatch)
    common = ["quantize", "--calib-data", str(tiny_folder), "--calib-size", "2", "--batch-size", "2", "-q"]
    rc, stdout, err = _run([*common, "--rotate", "hadamard", "--json", str(tmp_path / "r.json")], capsys)
    assert rc == 0, err
    rotated = json.loads((tmp_path / "r.json").read_text())
    assert rotated["rotation"] == {"method": "hadamard", "construction": "hadamard", "seed": 0}
    assert "residual stream rotated before calibration: hadamard" in stdout
    rc, _, _ = _run([*common, "--json", str(tmp_path / "p.json")], capsys)
    plain = json.loads((tmp_path / "p.json").read_text())
    assert rc == 0 and plain["rotation"] is None and plain["fp"]["top1"] == rotated["fp"]["top1"]
    rc, _, err = _run([*common, "--rotate", "spin"], capsys)
    assert rc == 2 and "unknown --rotate 'spin'; choose one of hadamard, orthogonal, none" in err
