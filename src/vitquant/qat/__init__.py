"""Quantization-aware training of a calibrated model (Q-ViT's IRM and DGD, LSQ steps, AdamW with a
warm-up cosine schedule, checkpoints, DistributedDataParallel under torchrun): ``vitquant train``."""

from vitquant.qat.config import TrainConfig
from vitquant.qat.distill import QKTap, dgd_loss, kd_loss, similarity
from vitquant.qat.irm import InformationRectifier, fold_rectifiers, install_rectifiers
from vitquant.qat.job import TrainJob, TrainingStage, run_train
from vitquant.qat.schedule import CosineWarmup
from vitquant.qat.trainer import FolderImages, QATTrainer, TensorImages, TrainingResult

__all__ = [
    "CosineWarmup",
    "FolderImages",
    "InformationRectifier",
    "QATTrainer",
    "QKTap",
    "TensorImages",
    "TrainConfig",
    "TrainJob",
    "TrainingResult",
    "TrainingStage",
    "dgd_loss",
    "fold_rectifiers",
    "install_rectifiers",
    "kd_loss",
    "run_train",
    "similarity",
]
