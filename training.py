"""One fit loop for baseline training, QAT and fairness-constrained fine-tuning.

Batches are ``(images, targets, group_codes, sample_ids)`` (see docs/contracts.md). A
``loss_hook(logits, targets, group_codes, base_loss) -> loss`` adds penalties (e.g. a fairness
term) without copying the loop. The loop only relies on ``nn.Module`` behaviour, so FX
``GraphModule``s with fake-quant modules train the same way.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

import profiling

logger = logging.getLogger(__name__)

LossHook = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

OPTIMIZERS = {
    "adamw": lambda params, lr, wd: torch.optim.AdamW(params, lr=lr, weight_decay=wd),
    "sgd": lambda params, lr, wd: torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd),
}
SCHEDULERS = ("cosine", "none")


@dataclass
class FitResult:
    """What ``fit`` did: one ``history`` dict per epoch (``epoch, train_loss, train_accuracy,
    val_accuracy, lr`` with lr as at the end of the epoch) and the epoch whose weights were kept."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_val_accuracy: float | None = None  # None when no validation loader was given
    train_time_s: float = 0.0
    epochs_run: int = 0

    def record(self, row: dict) -> bool:
        """Append an epoch's row; True when its validation accuracy is the best so far."""
        self.history.append(row)
        self.epochs_run = row["epoch"]
        val_accuracy = row["val_accuracy"]
        if val_accuracy is None:
            self.best_epoch = row["epoch"]
            return False
        if self.best_val_accuracy is None or val_accuracy > self.best_val_accuracy:
            self.best_epoch, self.best_val_accuracy = row["epoch"], val_accuracy
            return True
        return False


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``'auto'`` picks CUDA when present, else CPU; ``'cuda'`` without a GPU is a ValueError."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).split(":")[0] not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; "
                         "use device='cpu' or 'auto'")
    return resolved


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) random generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def fit(model: nn.Module, train_loader, val_loader=None, *, epochs: int, lr: float,
        weight_decay: float = 0.0, optimizer: str = "adamw", scheduler: str = "cosine",
        device: str | torch.device = "auto", seed: int = 0, loss_hook: LossHook | None = None,
        max_steps: int | None = None, progress: bool = True, desc: str = "train",
        channels_last: bool = False) -> FitResult:
    """Train ``model`` in place with cross-entropy (plus ``loss_hook``) and return a FitResult.

    The optimizer is ``'adamw'`` or ``'sgd'`` (momentum 0.9); ``scheduler='cosine'`` anneals the
    learning rate per step to 0 over the run. ``max_steps`` caps the steps per epoch. On CUDA the
    forward pass runs under float16 autocast with a GradScaler; on CPU in plain float32. The
    torch random state is seeded with ``seed`` inside the call and restored afterwards, so the
    same seed, model and loader give identical weights on CPU. When ``val_loader`` is given, the
    model ends holding the weights of the epoch with the best validation accuracy (a one-epoch
    run has none to choose between and skips validation); it is left in eval mode on
    ``device``. ``channels_last`` trains with the model and images in that memory format (the
    model keeps it afterwards). Each step is timed as ``profiling`` step
    ``training_step``, each validation pass as ``validation``.
    """
    steps_per_epoch = _check_fit_args(train_loader, epochs, lr, optimizer, scheduler, max_steps)
    device = resolve_device(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    optim = OPTIMIZERS[optimizer](model.parameters(), lr, weight_decay)
    total_steps = epochs * steps_per_epoch
    schedule = (torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=total_steps)
                if scheduler == "cosine" else None)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    result, best_state = FitResult(), None
    validate = val_loader is not None and epochs > 1  # one epoch: no weights to choose between
    start = time.perf_counter()
    cuda_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        for epoch in range(1, epochs + 1):
            train_loss, train_acc = _train_epoch(model, train_loader, optim, schedule, scaler,
                                                 device, loss_hook, steps_per_epoch,
                                                 progress, f"{desc} {epoch}/{epochs}",
                                                 memory_format)
            with profiling.step("validation"):
                val_acc = accuracy(model, val_loader, device) if validate else None
            logger.info("%s epoch %d/%d: loss %.4f, train acc %.4f, val acc %s", desc, epoch,
                        epochs, train_loss, train_acc, "-" if val_acc is None else f"{val_acc:.4f}")
            if result.record({"epoch": epoch, "train_loss": train_loss,
                              "train_accuracy": train_acc, "val_accuracy": val_acc,
                              "lr": optim.param_groups[0]["lr"]}):
                best_state = copy.deepcopy(model.state_dict())
    if best_state is not None and result.best_epoch != epochs:
        model.load_state_dict(best_state)
        logger.info("%s: restored the weights of epoch %d (val acc %.4f)", desc,
                    result.best_epoch, result.best_val_accuracy)
    model.eval()
    result.train_time_s = time.perf_counter() - start
    return result


def _check_fit_args(train_loader, epochs, lr, optimizer, scheduler, max_steps) -> int:
    """Validate fit's arguments; returns the number of steps per epoch."""
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {sorted(OPTIMIZERS)}")
    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; choose one of {list(SCHEDULERS)}")
    if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
        raise ValueError(f"max_steps must be None or an int >= 1, got {max_steps!r}")
    if len(train_loader) == 0:
        raise ValueError("train_loader yields no batches; check the training split and "
                         "batch_size (drop_last with a tiny split gives none)")
    return min(len(train_loader), max_steps or len(train_loader))


def _unpack(batch, device: torch.device, memory_format=torch.contiguous_format):
    """Images (in ``memory_format``), targets and group codes of a contract batch, on ``device``."""
    if not isinstance(batch, (list, tuple)) or len(batch) < 3:
        raise ValueError("batches must be (images, targets, group_codes, sample_ids) tuples, "
                         f"got {type(batch).__name__}; build loaders with datasets.make_loader")
    images, targets, group_codes = batch[0], batch[1], batch[2]
    if images.ndim == 4:
        images = images.to(device, non_blocking=True, memory_format=memory_format)
    return (images.to(device, non_blocking=True), targets.to(device, non_blocking=True),
            torch.as_tensor(group_codes).to(device, non_blocking=True))


def _train_epoch(model, loader, optim, schedule, scaler, device, loss_hook, steps, progress,
                 desc, memory_format=torch.contiguous_format) -> tuple[float, float]:
    """One pass over at most ``steps`` batches; returns (mean loss, accuracy)."""
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    bar = tqdm(loader, total=steps, desc=desc, disable=not progress, leave=False)
    for step, batch in enumerate(bar):
        if step == steps:
            break
        with profiling.step("training_step"):
            loss, logits, targets = _train_step(model, batch, optim, schedule, scaler, device,
                                                loss_hook, memory_format, f"{desc} step {step}")
        total_loss += loss * len(targets)
        correct += (logits.argmax(1) == targets).sum().item()
        seen += len(targets)
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}")
    return total_loss / seen, correct / seen


def _train_step(model, batch, optim, schedule, scaler, device, loss_hook, memory_format, where):
    """One optimizer step on ``batch``; returns (loss value, logits, targets)."""
    images, targets, group_codes = _unpack(batch, device, memory_format)
    with torch.autocast(device_type=device.type, dtype=torch.float16,
                        enabled=device.type == "cuda"):
        logits = model(images)
    base_loss = nn.functional.cross_entropy(logits.float(), targets)
    loss = loss_hook(logits, targets, group_codes, base_loss) if loss_hook else base_loss
    if loss.ndim != 0 or not math.isfinite(loss.item()):
        raise FloatingPointError(f"{where}: loss is {loss.detach()} (expected a finite scalar); "
                                 "lower lr or check loss_hook")
    optim.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optim)
    scaler.update()
    if schedule is not None:
        schedule.step()
    return loss.item(), logits.detach(), targets


@torch.inference_mode()
def accuracy(model: nn.Module, loader, device: str | torch.device = "cpu") -> float:
    """Top-1 accuracy of ``model`` over ``loader`` (eval mode)."""
    device = resolve_device(device)
    model.eval()
    correct, seen = 0, 0
    for batch in loader:
        images, targets, _ = _unpack(batch, device)
        correct += (model(images).argmax(1) == targets).sum().item()
        seen += len(targets)
    if seen == 0:
        raise ValueError("the validation loader yields no samples; pass val_loader=None instead")
    return correct / seen
