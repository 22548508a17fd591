"""Shared fixtures: tiny random-weight timm models (ViT, DeiT-distilled, Swin) for fast CPU tests.

Every factory seeds torch itself, so a test gets the same weights each run. ``diverse_norms`` gives the
LayerNorms random per-channel scales, signs and offsets (a freshly initialised timm model has weight 1
and bias 0 everywhere, which would make the post-LayerNorm reparameterization trivial: r_c ~ 1). The
qkv weights are scaled x4 (peaky attention maps, so the Swin shift mask visibly matters) and the
classifier weights x20 (logits O(10), so top-1 comparisons are not decided by noise).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

VIT_KWARGS = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10)
# img_size 56, patch 4 -> 14x14 tokens in stage 0: two 7x7 windows per side, so block 1 of stage 0 is a
# shifted-window block (shift_size 3) with an attention mask; stage 1 (7x7 tokens) has no shift.
SWIN_KWARGS = dict(
    img_size=56, embed_dim=24, depths=(2, 2), num_heads=(1, 2), window_size=7, num_classes=10
)

VIT_IMG = 32
SWIN_IMG = 56


def _diversify_norms(model: nn.Module, seed: int) -> None:
    """Random LayerNorm affine parameters: |weight| in [0.1, 3] with ~20 % negative, bias ~ N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm) and module.elementwise_affine:
                scale = torch.rand(module.weight.shape, generator=g) * 2.9 + 0.1
                sign = torch.where(torch.rand(module.weight.shape, generator=g) < 0.2, -1.0, 1.0)
                module.weight.copy_(scale * sign)
                module.bias.copy_(torch.randn(module.bias.shape, generator=g))


def _scale_heads(model: nn.Module, factor: float) -> None:
    """Multiply classifier weights so logits are O(10) instead of O(0.1) (makes argmax less fragile)."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and name.split(".")[0] in ("head", "head_dist"):
                module.weight.mul_(factor)


def _sharpen_attention(model: nn.Module, factor: float) -> None:
    """Scale the qkv weights: random init gives near-uniform attention maps, real models peaky ones."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and name.endswith("attn.qkv"):
                module.weight.mul_(factor)


def _make(name: str, kwargs: dict, seed: int, diverse_norms: bool, head_scale: float) -> nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **kwargs)
    _sharpen_attention(model, 4.0)
    if diverse_norms:
        _diversify_norms(model, seed + 1000)
    if head_scale != 1.0:
        _scale_heads(model, head_scale)
    return model.eval()


def make_vit(seed: int = 0, diverse_norms: bool = True, head_scale: float = 20.0) -> nn.Module:
    return _make("vit_tiny_patch16_224", VIT_KWARGS, seed, diverse_norms, head_scale)


def make_deit_distilled(seed: int = 0, diverse_norms: bool = True, head_scale: float = 20.0) -> nn.Module:
    return _make("deit_tiny_distilled_patch16_224", VIT_KWARGS, seed, diverse_norms, head_scale)


def make_swin(seed: int = 0, diverse_norms: bool = True, head_scale: float = 20.0) -> nn.Module:
    return _make("swin_tiny_patch4_window7_224", SWIN_KWARGS, seed, diverse_norms, head_scale)


def images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """``n`` random normalised images ``[n, 3, size, size]`` (standard normal)."""
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def real_deit(calib_images: int, eval_images: int) -> tuple:
    """The real DeiT-Tiny and the shared ImageNet sample (skips the test when either is absent): (float model,
    calibration records, evaluation records, calibration batch, evaluation batch), drawn with seed 0."""
    from vitquant.data import eval_transform, list_images, load_batch, split_calibration_eval
    from vitquant.models import create_model
    from vitquant.paths import default_sample_images, default_weights

    sample = default_sample_images()
    if sample is None or default_weights("deit_tiny_patch16_224") is None:
        pytest.skip("shared DeiT-Tiny weights or ImageNet sample not present")
    torch.manual_seed(0)
    model, _ = create_model("deit_tiny")
    records = list_images(sample)
    calib, evaluation = split_calibration_eval(records, records, calib_images, eval_images, seed=0)
    transform = eval_transform(model)
    return model, calib, evaluation, load_batch(calib, transform), load_batch(evaluation, transform)


MODEL_FACTORIES: dict[str, tuple[Callable[..., nn.Module], int]] = {
    "vit": (make_vit, VIT_IMG),
    "deit_distilled": (make_deit_distilled, VIT_IMG),
    "swin": (make_swin, SWIN_IMG),
}


def tiny_job_model(name: str, weights: object = None) -> tuple[nn.Module, str]:
    """Stand-in for ``vitquant.workflow.create_model``: the tiny ViT, with a 32-pixel data config."""
    model = make_vit()
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, VIT_IMG, VIT_IMG)}
    return model, "tiny random ViT"


TINY_CLI = Path(__file__).resolve().parent / "tiny_cli.py"  # the vitquant command on the tiny ViT, as a script
SRC = Path(__file__).resolve().parents[1] / "src"


def torchrun_environment() -> dict[str, str]:
    """This environment for a ``torchrun`` (or plain) child process: no inherited rank variables, the
    package on the path, one thread per process (what torchrun gives each)."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    return env


def noise_folder(folder: Path, n: int, bad: tuple[int, ...] = ()) -> Path:
    """A labels.csv folder of ``n`` random-noise 40x40 images labelled ``i % 10`` (so the tiny ViT's predictions
    vary); the ``bad`` ones are junk bytes under a .JPEG name."""
    from PIL import Image

    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        name = f"img{i:02d}.JPEG" if i in bad else f"img{i:02d}.png"
        if i in bad:
            (folder / name).write_bytes(bytes(torch.randint(0, 256, (300,), generator=gen, dtype=torch.uint8).tolist()))
        else:
            pixels = torch.randint(0, 256, (40, 40, 3), generator=gen, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(folder / name)
        rows.append(f"{name},{i % 10}\n")
    (folder / "labels.csv").write_text("file,label\n" + "".join(rows))
    return folder


class TinyModels:
    """Factory handed to tests: ``tiny.model("vit" | "deit_distilled" | "swin", ...)``, ``tiny.images(...)``."""

    kinds = tuple(MODEL_FACTORIES)

    @staticmethod
    def model(kind: str, **kwargs) -> nn.Module:
        return MODEL_FACTORIES[kind][0](**kwargs)

    @staticmethod
    def img_size(kind: str) -> int:
        return MODEL_FACTORIES[kind][1]

    @staticmethod
    def images(n: int, kind_or_size: str | int, seed: int = 0) -> torch.Tensor:
        size = MODEL_FACTORIES[kind_or_size][1] if isinstance(kind_or_size, str) else kind_or_size
        return images(n, size, seed)


@pytest.fixture
def tiny() -> TinyModels:
    return TinyModels()


@pytest.fixture(autouse=True)
def _restore_vitquant_logger():
    """``vitquant.cli.main`` run in-process gives the ``vitquant`` logger a stderr handler and a level;
    each test leaves the logger as it found it, so log lines never leak into a later test's output."""
    import logging

    log = logging.getLogger("vitquant")
    saved = (list(log.handlers), log.level, log.propagate)
    yield
    log.handlers[:], log.propagate = saved[0], saved[2]
    log.setLevel(saved[1])


@pytest.fixture(autouse=True)
def _seed_everything():
    """Each test starts from the same global RNG state, whatever ran before it."""
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def single_thread():
    """Element-wise work on ~1e5 elements: intra-op threads only add overhead (and thrash on busy CPUs)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_job_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``vitquant quantize --json --save`` once on the tiny ViT (:func:`tiny_job_model`; bitlog2-half-17,
    I-BERT kernels, 2 calibration images): (the JSON report, the .vqm integer program)."""
    from vitquant import cli, workflow

    folder = tmp_path_factory.mktemp("tiny_job")
    images = noise_folder(folder / "images", 4)
    report, program = folder / "report.json", folder / "model.vqm"
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(workflow, "create_model", tiny_job_model)
        torch.set_num_threads(1)
        try:
            rc = cli.main(["quantize", "--recipe", "bitlog2-half-17", "--calib-data", str(images), "--calib-size", "2",
                           "--batch-size", "2", "--nonlinear", "ibert", "--json", str(report), "--save", str(program), "-q"])
        finally:
            torch.set_num_threads(threads)
    assert rc == 0 and report.is_file() and program.is_file()
    return report, program


#: the shared settings of :func:`tiny_compare` (a :class:`vitquant.compare.CompareJob`'s fields, without the data)
COMPARE_SETTINGS = dict(calib_size=2, batch_size=4, timing_batch=2, repeats=1, figure_images=2, progress=False)
COMPARE_FAILING_BITS = 3  # tiny_compare makes the variants with these weight bits fail at run time


@pytest.fixture(scope="session")
def tiny_compare(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """``run_compare`` once on the tiny ViT (:func:`tiny_job_model`) and 8 noise images (2 calibration,
    6 evaluation, in batches of 4): repq-vit and bitlog2-half-17 at W4A4, then repq-vit at W3A3, whose
    calibration is made to raise a NumericalError (a variant failing at run time): (the results, the
    image folder)."""
    from vitquant.calibration import quantize_model
    from vitquant.compare import CompareJob, plan_variants, run_compare, session
    from vitquant.errors import NumericalError
    from vitquant.qconfig import WEIGHT

    def failing(model, images, qconfig, progress=False):
        if qconfig.specs[WEIGHT].bits == COMPARE_FAILING_BITS:
            raise NumericalError("quantized logits: 6 of 6 rows contain NaN or inf values")
        return quantize_model(model, images, qconfig, progress)

    folder = noise_folder(tmp_path_factory.mktemp("tiny_compare") / "images", 8)
    variants = plan_variants(["repq-vit", "bitlog2-half-17"], [(4, 4)])
    variants += plan_variants(["repq-vit"], [(COMPARE_FAILING_BITS, COMPARE_FAILING_BITS)])
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(session, "create_model", tiny_job_model)
        patch.setattr(session, "quantize_model", failing)
        torch.set_num_threads(1)
        try:
            results = run_compare(CompareJob(calib_data=folder, **COMPARE_SETTINGS), variants)
        finally:
            torch.set_num_threads(threads)
    return results, folder


# ------------------------------------------------------------------ the compiled executor, in the background

_COMPILED_SCRIPT = Path(__file__).resolve().parent / "integer" / "compiled_run.py"
_COMPILED_TEST = "test_compiled_run_equals_the_strict_run"
_COMPILED: dict[str, object] = {}


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Start ``integer/compiled_run.py`` as soon as the session collects its test, so that its minutes of
    cold C++ compilation (inductor, empty compile cache) overlap the rest of the suite."""
    compiled = [item for item in items if item.name == _COMPILED_TEST]
    if compiled:  # run last, so that the suite waits for the subprocess as little as possible
        items[:] = [item for item in items if item.name != _COMPILED_TEST] + compiled
    if compiled and "proc" not in _COMPILED:
        import subprocess
        import sys
        import tempfile

        out = Path(tempfile.mkdtemp(prefix="vitquant-compiled-")) / "result.json"
        _COMPILED["out"] = out
        _COMPILED["proc"] = subprocess.Popen([sys.executable, str(_COMPILED_SCRIPT), str(out)],
                                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    proc = _COMPILED.get("proc")
    if proc is not None and proc.poll() is None:  # type: ignore[attr-defined]
        proc.kill()  # type: ignore[attr-defined]


@pytest.fixture
def compiled_run() -> dict:
    """What ``integer/compiled_run.py`` found (waits for it to finish)."""
    import json

    proc = _COMPILED.get("proc")
    if proc is None:
        pytest.fail("the compiled run was not started at collection")
    _, err = proc.communicate(timeout=1800)  # type: ignore[attr-defined]
    assert proc.returncode == 0, err[-3000:]  # type: ignore[attr-defined]
    return json.loads(Path(_COMPILED["out"]).read_text())  # type: ignore[arg-type]
