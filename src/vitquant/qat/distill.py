"""The losses of quantization-aware training against the full-precision teacher.

**Distribution-Guided Distillation** (DGD; Q-ViT, Li et al., NeurIPS 2022). Per attention layer l and
head h, the patch-similarity matrix of one image's queries and its rows normalized,

    G_q = q_h · q_hᵀ ∈ R^(N×N),   G̃_q[i] = G_q[i] / ‖G_q[i]‖₂      (the same for the keys),

and the distance between student (S) and teacher (T),

    L_DGD = Σ_l Σ_h ‖G̃ᵀ_q - G̃ˢ_q‖₂ + ‖G̃ᵀ_k - G̃ˢ_k‖₂                 (‖·‖₂ of the N×N matrix: Frobenius)

averaged over the images (a Swin window counts as an image). The student's q and k are the operands
its q @ kᵀ multiplies, quantized (after the IRM where there is one); the teacher's are the full-
precision ones. The attention's scale on q cancels in the row normalization. A zero row (all of q
quantized to 0) stays zero. L_DGD is 0 when student and teacher have the same q and k.

**Logit distillation** (Hinton et al., 2015): KD = τ² · KL(softmax(z_T / τ) ‖ softmax(z_S / τ)), averaged
over the images; 0 for identical logits. Q-ViT trains with the DeiT-style distillation loss against
the FP model plus DGD (weights: :class:`~vitquant.qat.config.TrainConfig`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitquant.errors import ConfigError
from vitquant.nn.attention import attentions

QK = dict[str, tuple[torch.Tensor, torch.Tensor]]  # attention name -> (q [..., N, d], k [..., N, d])


def similarity(x: torch.Tensor) -> torch.Tensor:
    """G̃ = rows of x·xᵀ, each divided by its L2 norm: ``[..., N, d]`` -> ``[..., N, N]``."""
    return F.normalize(x @ x.transpose(-2, -1), dim=-1)


def dgd_loss(student: QK, teacher: QK) -> torch.Tensor:
    """L_DGD of the q and k of every attention (see the module docstring); ``student`` and ``teacher``
    must name the same attentions with the same shapes."""
    if set(student) != set(teacher) or not student:
        raise ConfigError(f"DGD needs the same attentions in student and teacher, got {sorted(student)} and {sorted(teacher)}")
    total = torch.zeros((), dtype=torch.float32, device=next(iter(student.values()))[0].device)
    for name, pair in student.items():
        for s, t in zip(pair, teacher[name]):
            if s.shape != t.shape:
                raise ConfigError(f"{name}: student {tuple(s.shape)} and teacher {tuple(t.shape)} differ")
            distance = torch.linalg.vector_norm(similarity(s) - similarity(t), dim=(-2, -1))  # [images, heads]
            total = total + distance.sum(-1).mean()
    return total


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """τ² · KL(softmax(teacher / τ) ‖ softmax(student / τ)), mean over images."""
    log_s = F.log_softmax(student_logits / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits / temperature, dim=-1)
    return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) * temperature**2


class QKTap:
    """Records, at every forward of a prepared model, the q and k that each attention's q @ kᵀ takes
    (the outputs of its two quantization points: quantized, or as they are in ``Mode.FLOAT``)."""

    def __init__(self, model: nn.Module) -> None:
        self._seen: dict[str, list[torch.Tensor | None]] = {}
        self._handles = []
        for name, attn in attentions(model):
            self._seen[name] = [None, None]
            self._handles.append(attn.qk.a_quant.register_forward_hook(self._hook(name, 0)))
            self._handles.append(attn.qk.b_quant.register_forward_hook(self._hook(name, 1)))
        if not self._handles:
            raise ConfigError(f"DGD needs attention layers; {type(model).__name__} has none prepared")

    def _hook(self, name: str, slot: int):
        def record(_module: nn.Module, _args: tuple, out: torch.Tensor) -> None:
            self._seen[name][slot] = out if slot == 0 else out.transpose(-2, -1)  # kᵀ -> k
        return record

    def take(self) -> QK:
        """The q and k of the last forward (then forgotten)."""
        missing = [name for name, pair in self._seen.items() if pair[0] is None or pair[1] is None]
        if missing:
            raise RuntimeError(f"no q/k recorded for {missing[:3]}: run the model first")
        out = {name: (pair[0], pair[1]) for name, pair in self._seen.items()}  # type: ignore[misc]
        for pair in self._seen.values():
            pair[0] = pair[1] = None
        return out

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
