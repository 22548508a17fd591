"""evaluate_pair / measure_throughput on tiny models and an in-memory DataLoader."""

import time

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from vitquant.errors import ConfigError, DataError, NumericalError
from vitquant.evaluation import ModelRun, compare_throughput, evaluate_pair, log_pair, measure_throughput, run_pair

N_IMAGES, N_CLASSES = 10, 5


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(N_IMAGES, 3, 2, 2, generator=gen)
    labels = torch.randint(0, N_CLASSES, (N_IMAGES,), generator=gen)
    return images, labels


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, N_CLASSES))


def _loader(batch_size: int = 4) -> DataLoader:
    return DataLoader(TensorDataset(*_data()), batch_size=batch_size, shuffle=False)


def _direct_top1(model: nn.Module) -> float:
    images, labels = _data()
    with torch.no_grad():
        return 100.0 * float((model(images).argmax(1) == labels).float().mean())


class _CountingDataset(Dataset):
    """Counts how often each item is decoded."""

    def __init__(self) -> None:
        self.images, self.labels = _data()
        self.reads = [0] * N_IMAGES

    def __len__(self) -> int:
        return N_IMAGES

    def __getitem__(self, i: int):
        self.reads[i] += 1
        return self.images[i], self.labels[i]


class _CallCounter(nn.Module):
    def __init__(self, inner: nn.Module, sleep: float = 0.0) -> None:
        super().__init__()
        self.inner, self.sleep, self.calls = inner, sleep, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        time.sleep(self.sleep)
        return self.inner(x)


def test_same_model_counts_images_and_agrees_fully():
    model = _model(0)
    fp, q, fidelity = evaluate_pair(model, model, _loader(), progress=False)
    assert fp.images == q.images == N_IMAGES
    assert fp.meter.images == N_IMAGES
    assert fidelity.images == N_IMAGES
    assert fidelity.top1_agreement == pytest.approx(100.0)
    assert fidelity.mean_kl == pytest.approx(0.0, abs=1e-12)
    assert fp.meter.top1 == pytest.approx(_direct_top1(model))
    assert q.meter.top1 == pytest.approx(fp.meter.top1)


def test_different_models_match_direct_computation():
    fp_model, q_model = _model(0), _model(1)
    fp, q, fidelity = evaluate_pair(fp_model, q_model, _loader(batch_size=3), progress=False)
    assert fp.meter.top1 == pytest.approx(_direct_top1(fp_model))
    assert q.meter.top1 == pytest.approx(_direct_top1(q_model))
    images, _ = _data()
    with torch.no_grad():
        agree = (fp_model(images).argmax(1) == q_model(images).argmax(1)).float().mean()
    assert fidelity.top1_agreement == pytest.approx(100.0 * float(agree))
    assert fidelity.mean_kl > 0.0


def test_one_pass_one_forward_per_batch_per_model():
    dataset = _CountingDataset()
    loader = DataLoader(dataset, batch_size=4)  # 3 batches
    fp_model, q_model = _CallCounter(_model(0)), _CallCounter(_model(1))
    evaluate_pair(fp_model, q_model, loader, progress=False)
    assert dataset.reads == [1] * N_IMAGES
    assert fp_model.calls == 3
    assert q_model.calls == 3


def test_models_put_in_eval_mode():
    fp_model, q_model = _model(0).train(), _model(1).train()
    evaluate_pair(fp_model, q_model, _loader(), progress=False)
    assert not fp_model.training
    assert not q_model.training


def test_without_quantized_model():
    fp, q, fidelity = evaluate_pair(_model(0), None, _loader(), progress=False)
    assert isinstance(fp, ModelRun)
    assert q is None and fidelity is None
    assert fp.images == N_IMAGES


def test_forward_time_counts_forwards_only():
    class SlowDataset(_CountingDataset):
        def __getitem__(self, i: int):
            time.sleep(0.02)  # 10 items -> 0.2 s spent loading, not in the forward
            return super().__getitem__(i)

    slow_fp = _CallCounter(_model(0), sleep=0.03)  # 3 batches -> >= 0.09 s of forward
    fast_q = _model(1)
    fp, q, _ = evaluate_pair(slow_fp, fast_q, DataLoader(SlowDataset(), batch_size=4), progress=False)
    assert fp.forward_seconds >= 0.09
    assert fp.forward_seconds < 0.09 + 0.15  # would include the 0.2 s of loading otherwise
    assert 0.0 < q.forward_seconds < 0.05
    assert fp.images_per_second == pytest.approx(N_IMAGES / fp.forward_seconds)
    assert q.images_per_second > fp.images_per_second


def test_progress_bar_goes_to_stderr(capsys):
    evaluate_pair(_model(0), None, _loader(), progress=True, desc="my-eval")
    captured = capsys.readouterr()
    assert "my-eval" in captured.err
    assert "my-eval" not in captured.out
    evaluate_pair(_model(0), None, _loader(), progress=False, desc="quiet-eval")
    assert "quiet-eval" not in capsys.readouterr().err


def test_nan_output_raises_numerical_error():
    class NanModel(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = torch.zeros(x.shape[0], N_CLASSES)
            out[0, 0] = float("nan")
            return out

    with pytest.raises(NumericalError):
        evaluate_pair(_model(0), NanModel(), _loader(), progress=False)


def test_empty_loader_and_bad_batches_raise_data_error():
    empty = DataLoader(TensorDataset(torch.zeros(0, 3, 2, 2), torch.zeros(0, dtype=torch.long)), batch_size=4)
    with pytest.raises(DataError, match="no images"):
        evaluate_pair(_model(0), None, empty, progress=False)
    with pytest.raises(DataError, match="pairs"):
        evaluate_pair(_model(0), None, [torch.zeros(2, 3, 2, 2)], progress=False)


def test_images_per_second_edge_cases():
    from vitquant.evaluation import ClassificationMeter

    assert ModelRun(ClassificationMeter(), forward_seconds=2.0, images=8).images_per_second == 4.0
    assert ModelRun(ClassificationMeter(), forward_seconds=0.0, images=0).images_per_second == 0.0


def test_measure_throughput_is_best_of_repeats():
    model = _CallCounter(_model(0), sleep=0.01)
    batch = torch.randn(8, 3, 2, 2)
    ips = measure_throughput(model, batch, repeats=3, warmup=2)
    assert model.calls == 5
    assert 0.0 < ips <= 8 / 0.01
    assert ips > 8 / 0.05  # a 10 ms forward over 8 images is far faster than 160 images/s


def test_measure_throughput_rejects_bad_options():
    with pytest.raises(ConfigError):
        measure_throughput(_model(0), torch.randn(2, 3, 2, 2), repeats=0)
    with pytest.raises(ConfigError):
        measure_throughput(_model(0), torch.randn(2, 3, 2, 2), warmup=-1)
    with pytest.raises(ConfigError):
        measure_throughput(_model(0), torch.randn(0, 3, 2, 2))


def test_compare_throughput_times_models_in_turns():
    order: list[str] = []

    class _Tagged(nn.Module):
        def __init__(self, tag: str, sleep: float) -> None:
            super().__init__()
            self.tag, self.sleep = tag, sleep

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            order.append(self.tag)
            time.sleep(self.sleep)
            return x.flatten(1)

    fast, slow = _Tagged("fast", 0.002), _Tagged("slow", 0.02)
    fast_ips, slow_ips = compare_throughput([fast, slow], torch.randn(4, 3, 2, 2), repeats=3, warmup=1)
    assert order == ["fast", "slow"] * 4  # warm-up round, then three timed rounds, alternating
    assert fast_ips > 2 * slow_ips
    with pytest.raises(ConfigError):
        compare_throughput([], torch.randn(4, 3, 2, 2))


def test_skipped_images_are_collected_and_empty_batches_not_run():
    from vitquant.data import LoadedBatch

    images, labels = _data()
    counter = _CallCounter(_model(0))
    batches = [
        LoadedBatch(images[:4], labels[:4], ("a.JPEG",)),
        LoadedBatch(torch.empty(0), torch.empty(0, dtype=torch.int64), ("b.JPEG", "c.JPEG")),
        LoadedBatch(images[4:], labels[4:], ()),
    ]
    result = run_pair(counter, _model(1), batches, progress=False)
    assert result.skipped == ["a.JPEG", "b.JPEG", "c.JPEG"]
    assert counter.calls == 2 and result.fp.images == result.quantized.images == N_IMAGES


def test_pair_evaluations_merge_to_the_whole():
    fp_model, q_model = _model(0), _model(1)
    images, labels = _data()
    whole = run_pair(fp_model, q_model, [(images[:3], labels[:3]), (images[3:], labels[3:])], progress=False)
    first = run_pair(fp_model, q_model, [(images[:3], labels[:3])], progress=False)
    first.merge(run_pair(fp_model, q_model, [(images[3:], labels[3:])], progress=False))
    assert first.fp.meter.to_dict() == whole.fp.meter.to_dict()
    assert first.quantized.meter.to_dict() == whole.quantized.meter.to_dict()
    assert first.fidelity.to_dict() == whole.fidelity.to_dict()


def test_empty_share_is_no_error_until_reported():
    result = run_pair(_model(0), None, [], progress=False)
    assert result.fp.images == 0
    with pytest.raises(DataError, match="no images"):
        log_pair(result)
