"""DGD and logit distillation: zero for identical student and teacher, positive otherwise, against a
reference written with loops; the q/k tap on a prepared model."""

from __future__ import annotations

import math

import pytest
import torch

from vitquant.calibration import quantize_model
from vitquant.calibration.pipeline import prepare
from vitquant.nn.quant_point import Mode, set_mode
from vitquant.qat import QKTap, dgd_loss, kd_loss, similarity
from vitquant.qconfig import repq_vit_qconfig


def _qk(seed: int, layers: int = 2, shape=(3, 2, 5, 4)) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {f"blocks.{i}.attn": (torch.randn(shape, generator=g, dtype=torch.float64),
                                 torch.randn(shape, generator=g, dtype=torch.float64)) for i in range(layers)}


def _reference(student: dict, teacher: dict) -> float:
    """Σ_l Σ_h (‖G̃ᵀ_q − G̃ˢ_q‖ + ‖G̃ᵀ_k − G̃ˢ_k‖), mean over images, with explicit loops."""
    total = 0.0
    for name in student:
        for s, t in zip(student[name], teacher[name]):
            images, heads, n, _ = s.shape
            for b in range(images):
                for h in range(heads):
                    squares = 0.0
                    for i in range(n):
                        rs = [float(s[b, h, i] @ s[b, h, j]) for j in range(n)]
                        rt = [float(t[b, h, i] @ t[b, h, j]) for j in range(n)]
                        ns, nt = math.sqrt(sum(v * v for v in rs)), math.sqrt(sum(v * v for v in rt))
                        squares += sum((a / ns - c / nt) ** 2 for a, c in zip(rs, rt))
                    total += math.sqrt(squares) / images
    return total


def test_dgd_is_zero_for_identical_q_and_k_and_matches_the_reference_otherwise():
    teacher = _qk(0)
    assert float(dgd_loss(teacher, {k: (q.clone(), kk.clone()) for k, (q, kk) in teacher.items()})) == 0.0
    student = _qk(1)
    assert float(dgd_loss(student, teacher)) == pytest.approx(_reference(student, teacher), rel=1e-12)
    assert float(dgd_loss(student, teacher)) > 0


def test_dgd_ignores_a_scale_on_q_and_has_a_gradient_at_zero():
    """The attention's scale on q cancels in the row normalization; at zero distance the gradient is 0, not NaN."""
    teacher = _qk(2)
    scaled = {k: (q * 0.125, kk * 3.0) for k, (q, kk) in teacher.items()}
    assert float(dgd_loss(scaled, teacher)) == pytest.approx(0.0, abs=1e-6)
    student = {k: (q.clone().requires_grad_(True), kk.clone().requires_grad_(True)) for k, (q, kk) in teacher.items()}
    dgd_loss(student, teacher).backward()
    assert all(torch.equal(t.grad, torch.zeros_like(t)) for pair in student.values() for t in pair)


def test_similarity_rows_are_unit_or_zero():
    x = torch.randn(2, 6, 3)
    x[0, 2] = 0.0
    g = similarity(x)
    norms = g.norm(dim=-1)
    assert norms[0, 2] == 0 and torch.allclose(norms[norms > 0], torch.ones_like(norms[norms > 0]))


def test_dgd_refuses_mismatched_layers():
    from vitquant.errors import ConfigError

    with pytest.raises(ConfigError, match="same attentions"):
        dgd_loss(_qk(0, layers=2), _qk(0, layers=3))


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_is_zero_for_identical_logits_and_the_tempered_kl_otherwise(temperature):
    g = torch.Generator().manual_seed(0)
    teacher, student = torch.randn(5, 10, generator=g, dtype=torch.float64), torch.randn(5, 10, generator=g, dtype=torch.float64)
    assert float(kd_loss(teacher.clone(), teacher, temperature)) == 0.0
    p = torch.softmax(teacher / temperature, -1)
    expected = (p * (torch.log(p) - torch.log_softmax(student / temperature, -1))).sum(-1).mean() * temperature**2
    assert float(kd_loss(student, teacher, temperature)) == pytest.approx(float(expected), rel=1e-12)


def test_tap_records_the_quantized_and_the_float_q_and_k(tiny):
    torch.manual_seed(0)
    model, x = tiny.model("vit"), tiny.images(4, "vit", seed=1)
    result = quantize_model(model, x, repq_vit_qconfig(4, 4, "bitlog2-half-17"))
    teacher = prepare(__import__("copy").deepcopy(model), result.qconfig)
    set_mode(teacher, Mode.FLOAT)
    taps = QKTap(result.model), QKTap(teacher)
    with torch.no_grad():
        assert torch.allclose(teacher(x), model(x), atol=1e-5)  # the FP model (timm fuses its attention)
        result.model(x)
    student_qk, teacher_qk = (tap.take() for tap in taps)
    assert list(student_qk) == ["blocks.0.attn", "blocks.1.attn"]
    q, k = student_qk["blocks.0.attn"]
    assert q.shape == k.shape == (4, 3, 17, 16)  # images, heads, tokens, head_dim
    assert q.unique().numel() <= 16 and teacher_qk["blocks.0.attn"][0].unique().numel() > 100  # 4-bit vs float
    assert float(dgd_loss(student_qk, teacher_qk)) > 0
    assert float(dgd_loss(teacher_qk, teacher_qk)) == 0.0
    with pytest.raises(RuntimeError, match="run the model first"):
        taps[0].take()
    for tap in taps:
        tap.close()
