"""Hand-computed checks for ClassificationMeter and FidelityMeter."""

import math

import pytest
import torch

from vitquant.errors import NumericalError
from vitquant.evaluation import ClassificationMeter, FidelityMeter

# 4 images, 6 classes.
#   row 0: argmax 0, label 0 -> top1 hit, top5 hit
#   row 1: scores rise with index, label 4 -> top1 miss (argmax 5), top5 hit
#   row 2: same scores, label 0 (lowest score) -> top1 miss, top5 miss
#   row 3: argmax 1, label 1 -> top1 hit, top5 hit
LOGITS = torch.tensor(
    [
        [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],
        [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
        [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
        [1.0, 9.0, 2.0, 3.0, 4.0, 5.0],
    ]
)
LABELS = torch.tensor([0, 4, 0, 1])


def test_top1_top5_single_batch():
    meter = ClassificationMeter()
    meter.update(LOGITS, LABELS)
    assert meter.images == 4
    assert meter.top1 == pytest.approx(50.0)
    assert meter.top5 == pytest.approx(75.0)


def test_accumulates_across_batches():
    meter = ClassificationMeter()
    meter.update(LOGITS[:1], LABELS[:1])  # 1 top1, 1 top5
    meter.update(LOGITS[1:], LABELS[1:])  # 1 top1, 2 top5
    assert meter.images == 4
    assert meter.top1 == pytest.approx(50.0)
    assert meter.top5 == pytest.approx(75.0)
    assert meter.to_dict() == {"images": 4, "top1": pytest.approx(50.0), "top5": pytest.approx(75.0)}


def test_top5_with_fewer_than_five_classes_uses_all_classes():
    meter = ClassificationMeter()
    logits = torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]])
    meter.update(logits, torch.tensor([2, 0]))  # top1: 1 of 2; top-3 covers every class
    assert meter.top1 == pytest.approx(50.0)
    assert meter.top5 == pytest.approx(100.0)


def test_nan_logits_raise_numerical_error_with_row_count():
    meter = ClassificationMeter()
    bad = LOGITS.clone()
    bad[1, 2] = float("nan")
    bad[3, 0] = float("inf")
    with pytest.raises(NumericalError, match="2 of 4 rows"):
        meter.update(bad, LABELS)
    assert meter.images == 0


@pytest.mark.parametrize(
    "logits, labels",
    [
        (LOGITS, LABELS[:3]),  # batch size mismatch
        (LOGITS[0], LABELS[:1]),  # 1-D logits
        (LOGITS, LABELS.unsqueeze(1)),  # 2-D labels
        (LOGITS, LABELS.float()),  # float labels
        (LOGITS, torch.tensor([0, 1, 2, 6])),  # label out of range
    ],
)
def test_bad_shapes_raise_value_error(logits, labels):
    with pytest.raises(ValueError):
        ClassificationMeter().update(logits, labels)


def test_empty_meter_has_no_accuracy():
    with pytest.raises(ValueError, match="no images"):
        _ = ClassificationMeter().top1


def test_identical_logits_agree_fully_with_zero_kl():
    meter = FidelityMeter()
    meter.update(LOGITS, LOGITS.clone())
    assert meter.images == 4
    assert meter.top1_agreement == pytest.approx(100.0)
    assert meter.mean_kl == pytest.approx(0.0, abs=1e-12)


def test_known_pair_agreement_and_kl():
    # image 0: p = (3/4, 1/4), q = (1/4, 3/4)
    #   KL = 3/4 ln 3 + 1/4 ln(1/3) = (1/2) ln 3; argmax 0 vs 1 -> disagree
    # image 1: identical logits -> KL 0, agree
    # mean KL = (1/4) ln 3 = 0.27465307...; agreement 50 %
    ln3 = math.log(3.0)
    fp = torch.tensor([[ln3, 0.0], [1.0, 2.0]])
    q = torch.tensor([[0.0, ln3], [1.0, 2.0]])
    meter = FidelityMeter()
    meter.update(fp, q)
    assert meter.top1_agreement == pytest.approx(50.0)
    assert meter.mean_kl == pytest.approx(0.25 * ln3, abs=1e-6)
    assert meter.to_dict() == {
        "images": 2,
        "top1_agreement": pytest.approx(50.0),
        "mean_kl": pytest.approx(0.25 * ln3, abs=1e-6),
    }


def test_kl_is_direction_fp_to_q():
    # fp = (1/2, 1/2), q = (1/4, 3/4): KL(p||q) = 1/2 ln(4/3) = 0.1438410...
    # the reverse KL(q||p) = 1/4 ln(1/2) + 3/4 ln(3/2) = 0.1308120... would fail this test
    fp = torch.tensor([[0.0, 0.0]])
    q = torch.tensor([[0.0, math.log(3.0)]])
    meter = FidelityMeter()
    meter.update(fp, q)
    assert meter.mean_kl == pytest.approx(0.5 * math.log(4.0 / 3.0), abs=1e-6)


def test_kl_is_mean_over_images_across_batches():
    ln3 = math.log(3.0)
    meter = FidelityMeter()
    meter.update(torch.tensor([[ln3, 0.0]]), torch.tensor([[0.0, ln3]]))  # KL = ln3 / 2
    meter.update(torch.zeros(3, 2), torch.zeros(3, 2))  # KL = 0 for three images
    assert meter.images == 4
    assert meter.mean_kl == pytest.approx(ln3 / 8, abs=1e-6)
    assert meter.top1_agreement == pytest.approx(75.0)


def test_kl_computed_in_float64():
    # Large logits where float32 softmax differences vanish below float32 resolution.
    fp = torch.tensor([[0.0, 30.0]], dtype=torch.float32)
    q = torch.tensor([[0.0, 25.0]], dtype=torch.float32)
    p = torch.tensor([0.0, 30.0], dtype=torch.float64).log_softmax(0)
    r = torch.tensor([0.0, 25.0], dtype=torch.float64).log_softmax(0)
    expected = float((p.exp() * (p - r)).sum())  # ~1.33e-11; float32 gives about -4.7e-13
    meter = FidelityMeter()
    meter.update(fp, q)
    assert expected > 0
    assert meter.mean_kl == pytest.approx(expected, rel=1e-6)


def test_fidelity_nan_and_shape_errors():
    with pytest.raises(NumericalError, match="q_logits: 1 of 4 rows"):
        bad = LOGITS.clone()
        bad[2, 2] = float("nan")
        FidelityMeter().update(LOGITS, bad)
    with pytest.raises(NumericalError, match="fp_logits"):
        bad = LOGITS.clone()
        bad[0, 0] = -float("inf")
        FidelityMeter().update(bad, LOGITS)
    with pytest.raises(ValueError, match="differ in shape"):
        FidelityMeter().update(LOGITS, LOGITS[:3])


# ------------------------------------------------------------------------------ exact merging
def _pairs(n: int = 600, classes: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    fp = torch.randn(n, classes, generator=gen) * 4
    return fp, fp + torch.randn(n, classes, generator=gen)


def _fidelity(fp: torch.Tensor, q: torch.Tensor, batch: int) -> FidelityMeter:
    meter = FidelityMeter()
    for start in range(0, fp.shape[0], batch):
        meter.update(fp[start : start + batch], q[start : start + batch])
    return meter


def test_mean_kl_does_not_depend_on_batching_or_merge_order():
    fp, q = _pairs()
    per_image = _fidelity(fp, q, 1)
    whole = _fidelity(fp, q, fp.shape[0])
    halves = [_fidelity(fp[:300], q[:300], 7), _fidelity(fp[300:], q[300:], 11)]
    merged_backwards = _fidelity(fp[300:], q[300:], 5)
    merged_backwards.merge(halves[0])
    halves[0].merge(halves[1])
    values = [m.mean_kl for m in (per_image, whole, halves[0], merged_backwards)]
    assert values == [values[0]] * 4  # exactly, not approximately
    assert halves[0].top1_agreement == whole.top1_agreement and halves[0].images == 600
    # a plain float running sum would differ with the batching: the test can tell
    kl = (torch.log_softmax(fp.double(), 1).exp() * (torch.log_softmax(fp.double(), 1) - torch.log_softmax(q.double(), 1))).sum(1)
    naive = {sum(float(kl[s : s + b].sum()) for s in range(0, 600, b)) for b in (1, 7, 600)}
    assert len(naive) > 1
    assert values[0] == math.fsum(kl.tolist()) / 600


def test_classification_meters_merge_counts():
    a, b, both = ClassificationMeter(), ClassificationMeter(), ClassificationMeter()
    a.update(LOGITS[:3], LABELS[:3])
    b.update(LOGITS[3:], LABELS[3:])
    both.update(LOGITS, LABELS)
    a.merge(b)
    assert a.to_dict() == both.to_dict()
