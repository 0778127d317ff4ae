"""The YOLOX training loop: SGD (nesterov) with YOLOX's parameter groups, warm-up + cosine LR, EMA weights,
augmentation switched off (and the L1 loss on) for the last epochs, validation, checkpoints, curves, resume,
and DistributedDataParallel when started under torchrun (see `cvpipe.training.distributed`).

Determinism on CPU: the model is built after `seed_everything`, the data order is a seeded permutation per
epoch and each sample's augmentation is drawn from (seed, epoch, index); a resume restores weights, EMA,
optimizer, iteration and RNG states, so it ends on the same weights as an uninterrupted run.
"""

from __future__ import annotations

import logging
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from cvpipe.data.schema import DetectionDataset

from .checkpoints import Checkpoints
from .curves import write_curves
from .dataset import AugmentConfig, EpochSampler, YoloxTrainDataset, collate
from .ema import ModelEMA, unwrap
from .frozen_bn import CentredSteps
from .model_init import resolve_freeze_backbone
from .params import TrainParams
from .process_group import DistInfo
from .schedule import WarmCosineLR
from .validation import evaluate_model

log = logging.getLogger(__name__)

LOSS_KEYS = ("total_loss", "iou_loss", "obj_loss", "cls_loss", "l1_loss", "num_fg")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' asked for but torch sees no CUDA GPU (use device: auto or cpu)")
    return torch.device(name)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """YOLOX's three groups: BatchNorm weights and all biases without weight decay, other weights with it."""
    bn_weights: list[nn.Parameter] = []
    weights: list[nn.Parameter] = []
    biases: list[nn.Parameter] = []
    for module in model.modules():
        bias = getattr(module, "bias", None)
        if isinstance(bias, nn.Parameter) and bias.requires_grad:
            biases.append(bias)
        weight = getattr(module, "weight", None)
        if isinstance(weight, nn.Parameter) and weight.requires_grad:
            (bn_weights if isinstance(module, nn.modules.batchnorm._NormBase) else weights).append(weight)
    return [{"params": bn_weights, "weight_decay": 0.0}, {"params": weights, "weight_decay": weight_decay},
            {"params": biases, "weight_decay": 0.0}]


def warmup_epochs(params: TrainParams, iters_per_epoch: int, least_iters: int = 30) -> float:
    """The given warm-up, or auto: one epoch but at least `least_iters` iterations (a few images make epochs of
    1-2 iterations; a fresh head and un-settled BN statistics need more), at most a quarter of the run."""
    if params.warmup_epochs is not None:
        return params.warmup_epochs
    total = iters_per_epoch * params.epochs
    iters = min(max(iters_per_epoch, least_iters), total / 4)
    return iters / iters_per_epoch


def freeze_batchnorm(model: nn.Module) -> int:
    """Put every BatchNorm in eval mode with fixed affine weights; returns how many (call after model.train())."""
    n = 0
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase):
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)
            n += 1
    return n


def freeze_backbone(model: nn.Module) -> int:
    """Fix every parameter under `backbone.` (CSPDarknet + PAFPN); returns how many tensors were frozen."""
    frozen = 0
    for name, p in model.named_parameters():
        if name.startswith("backbone."):
            p.requires_grad_(False)
            frozen += 1
    return frozen


def rng_state() -> dict:
    np_state = cast(tuple[Any, ...], np.random.get_state())  # the legacy tuple form (the default)
    return {"torch": torch.get_rng_state(), "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                                                      int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()]}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


@dataclass
class TrainOutputs:
    checkpoints: Path
    curves: Path


@dataclass
class TrainResult:
    best_ap: float | None
    best_epoch: int | None
    epochs: int
    train_images: int
    val_images: int
    seconds: float
    history: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        best_row = next((r for r in self.history if r.get("epoch") == self.best_epoch), {})
        start = next((r for r in self.history if r.get("epoch") == 0), {})
        return {"best_ap": self.best_ap, "best_ap50": best_row.get("AP50"), "best_epoch": self.best_epoch,
                "start_ap": start.get("AP"), "start_ap50": start.get("AP50"), "epochs": self.epochs,
                "train_images": self.train_images, "val_images": self.val_images, "seconds": round(self.seconds, 2)}


class _EpochProgress:
    """A rich bar with loss and images/s on a terminal (rank 0 only); a log line every 15 s elsewhere."""

    def __init__(self, description: str, total: int, enabled: bool):
        self.description, self.total, self.enabled = description, total, enabled
        self.bar = None
        self.last_log = time.monotonic()

    def __enter__(self):
        if self.enabled and sys.stderr.isatty():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("loss {task.fields[loss]:.3f}  {task.fields[ips]:.1f} img/s"),
                                TimeElapsedColumn(), TimeRemainingColumn(), transient=True)
            self.bar.start()
            self.task = self.bar.add_task(self.description, total=self.total, loss=float("nan"), ips=0.0)
        return self

    def update(self, done: int, loss: float, ips: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done, loss=loss, ips=ips)
        elif self.enabled and time.monotonic() - self.last_log >= 15:
            self.last_log = time.monotonic()
            log.info("%s: %d/%d  loss %.3f  %.1f img/s", self.description, done, self.total, loss, ips)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
        return False


class Trainer:
    """Trains `model` (a YOLOX, or anything with its forward contract) on a dataset's train split.

    `meta` goes into every checkpoint (class_names, category_ids, pretrained, ...). Only rank 0 writes.
    """

    def __init__(self, params: TrainParams, model: nn.Module, train: DetectionDataset, val: DetectionDataset | None,
                 images_dir: Path, outputs: TrainOutputs, meta: dict | None = None, dist: DistInfo | None = None):
        self.p = params
        # TrainParams' validator resolves the auto value (None): an int from here on
        self.no_aug_epochs = cast(int, params.no_aug_epochs)
        self.dist = dist or DistInfo()
        self.device = self.dist.device if self.dist.world_size > 1 else select_device(params.device)
        self.model = model.to(self.device)
        self.meta = dict(meta or {})
        self.frozen_backbone = self.freeze_layers()
        self.train_split, self.val_split = train, val if val is not None and len(val.images) else None
        self.images_dir = Path(images_dir)
        self.outputs = outputs
        if params.batch_size % self.dist.world_size:
            raise ValueError(f"batch_size {params.batch_size} must be divisible by the number of processes "
                             f"{self.dist.world_size}")
        self.rank_batch = params.batch_size // self.dist.world_size
        self.dataset, self.sampler, self.loader = self.make_loader(train)
        self.iters_per_epoch = max(1, math.ceil(len(self.sampler) / self.rank_batch))
        flat_tail = self.no_aug_epochs if params.no_aug_lr == "min" else 0
        self.schedule = WarmCosineLR(params.lr, self.iters_per_epoch, params.epochs,
                                     warmup_epochs(params, self.iters_per_epoch), flat_tail, params.min_lr_ratio,
                                     params.warmup_lr_start)
        self.optimizer = torch.optim.SGD(param_groups(self.model, params.weight_decay), lr=params.lr,
                                         momentum=params.momentum, nesterov=True)
        self.use_amp = params.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.ema = ModelEMA(self.model, params.ema_decay) if params.ema else None
        # BN frozen: steps that shift a conv row's mean output or scale it are taken out (see frozen_bn)
        self.centred = CentredSteps(unwrap(self.model)) if params.freeze_bn else None
        self.net = self.model
        if self.dist.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.start_epoch, self.iteration = 0, 0
        self.best_ap: float | None = None
        self.best_epoch: int | None = None
        self.history: list[dict] = []
        self.on_saved: Callable[[], None] | None = None  # after each epoch's checkpoints (resumable state)
        if params.resume:
            self.load_resume(Path(params.resume))

    def freeze_layers(self) -> bool:
        """Freeze what the params ask (a fused model always trains its head only); True when the backbone is."""
        p = self.p
        fused = bool(getattr(self.model, "fused", False))
        asked = resolve_freeze_backbone(p.freeze_backbone, self.meta.get("pretrained") or {})
        if asked or fused:
            n = freeze_backbone(self.model)
            why = (" because the model is fused (no BatchNorm)" if not asked else
                   " (freeze_backbone: auto -- the start already knows every class of the data)"
                   if p.freeze_backbone == "auto" else "")
            log.info("backbone frozen (%d tensors)%s: training the head only", n, why)
        if p.freeze_bn:
            freeze_batchnorm(self.model)
        return asked or fused

    def make_loader(self, train: DetectionDataset) -> tuple[YoloxTrainDataset, EpochSampler, DataLoader]:
        p = self.p
        cache = p.cache_images
        if cache is None:  # every worker (or the main process) keeps its own copy
            cache = len(train.images) * p.img_size ** 2 * 3 * max(1, p.workers) < 1 << 30
        dataset = YoloxTrainDataset(train, self.images_dir, p.img_size, AugmentConfig.from_params(p), p.epochs,
                                    self.no_aug_epochs, p.seed, p.max_labels, cache)
        sampler = EpochSampler(len(dataset), self.rank_batch, p.seed, self.dist.rank, self.dist.world_size,
                               shuffle=True, drop_last=True)
        loader = DataLoader(dataset, batch_size=self.rank_batch, sampler=sampler, collate_fn=collate,
                            num_workers=p.workers, persistent_workers=p.workers > 0,
                            pin_memory=self.device.type == "cuda", worker_init_fn=_seed_worker,
                            generator=torch.Generator().manual_seed(p.seed))
        return dataset, sampler, loader

    @property
    def hyperparameters(self) -> dict:
        """What decides the result, as used (auto values resolved): printed at the start and in the summary."""
        p, a = self.p, self.dataset.aug
        assert a is not None  # make_loader always gives the dataset one
        return {"scale": p.scale, "pretrained": p.pretrained, "img_size": p.img_size, "epochs": p.epochs,
                "batch_size": p.batch_size, "iterations": self.schedule.total_iters, "lr": p.lr,
                "warmup_iterations": self.schedule.warmup_iters, "min_lr_ratio": p.min_lr_ratio,
                "no_aug_epochs": p.no_aug_epochs, "no_aug_lr": p.no_aug_lr, "weight_decay": p.weight_decay,
                "momentum": p.momentum, "ema_decay": p.ema_decay if p.ema else None,
                "frozen": "backbone" if self.frozen_backbone else ("bn" if p.freeze_bn else "none"),
                "mosaic_prob": a.mosaic_prob, "mixup_prob": a.mixup_prob,
                "affine_scale": list(a.scale) if a.affine else None, "hsv_prob": a.hsv_prob, "flip_prob": a.flip_prob,
                "train_images": len(self.dataset),
                "val_images": 0 if self.val_split is None else len(self.val_split.images)}

    # ---- state ----------------------------------------------------------------------------------
    @property
    def eval_model(self) -> nn.Module:
        return self.ema.ema if self.ema is not None else unwrap(self.model)

    def resume_state(self, epoch: int) -> dict:
        return {"model": {k: v.detach().cpu() for k, v in unwrap(self.model).state_dict().items()},
                "ema_updates": self.ema.updates if self.ema is not None else None,
                "epoch": epoch, "iteration": self.iteration, "best_ap": self.best_ap, "best_epoch": self.best_epoch,
                "history": self.history, "rng": rng_state(), "scaler": self.scaler.state_dict(),
                "params": self.p.model_dump(mode="json")}

    def load_resume(self, path: Path) -> None:
        from cvpipe.models.yolox.checkpoints import read_checkpoint

        ckpt = read_checkpoint(path)
        extra = ckpt.get("extra")
        if not isinstance(extra, dict) or "model" not in extra or "optimizer" not in ckpt:
            raise ValueError(f"{path} holds no training state to resume from (use a last.pt written by model_train)")
        before = extra.get("params", {})
        for key in ("epochs", "batch_size", "img_size", "scale", "seed", "no_aug_epochs", "lr_per_img"):
            if key in before and before[key] != getattr(self.p, key):
                log.warning("resuming with %s=%r but the checkpoint was trained with %r", key, getattr(self.p, key),
                            before[key])
        unwrap(self.model).load_state_dict(extra["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.ema is not None:
            if extra.get("ema_updates") is None:
                raise ValueError(f"{path} was trained without EMA; resume with ema: false")
            self.ema.load_state_dict({"model": ckpt["model"], "updates": extra["ema_updates"]})
        if extra.get("scaler"):
            self.scaler.load_state_dict(extra["scaler"])
        self.start_epoch, self.iteration = int(extra["epoch"]), int(extra["iteration"])
        self.best_ap, self.best_epoch = extra.get("best_ap"), extra.get("best_epoch")
        self.history = list(extra.get("history") or [])
        set_rng_state(extra["rng"])
        log.info("resuming from %s after epoch %d (iteration %d)", path, self.start_epoch, self.iteration)

    def save(self, epoch: int, metrics: dict, improved: bool) -> None:
        meta = dict(self.meta, epoch=epoch, input_size=[self.p.img_size, self.p.img_size], metrics=metrics,
                    ema=self.ema is not None)
        Checkpoints.save_epoch(self.outputs.checkpoints, self.eval_model, meta, improved, self.optimizer,
                               self.resume_state(epoch))

    # ---- loop -----------------------------------------------------------------------------------
    def set_lr(self) -> float:
        lr = self.schedule(self.iteration)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        return lr

    def train_epoch(self, epoch: int) -> dict:
        p = self.p
        augmenting = self.dataset.augmenting(epoch)
        head = getattr(unwrap(self.model), "head", None)
        if head is not None and hasattr(head, "use_l1"):
            head.use_l1 = self.uses_l1(epoch)
        self.net.train()
        if p.freeze_bn:
            freeze_batchnorm(self.model)
        elif self.frozen_backbone:
            # a frozen backbone must not move at all: in train mode its BN statistics followed the batches while
            # its weights stayed fixed (-0.005 to -0.008 held-out AP at the COCO setting's peak LR, issue 21)
            freeze_batchnorm(unwrap(self.model).get_submodule("backbone"))
        if self.centred is not None:
            self.centred.refresh(self.plain_batch().to(self.device))
        self.sampler.set_epoch(epoch)
        sums = {k: 0.0 for k in LOSS_KEYS}
        steps, images_seen, start = 0, 0, time.perf_counter()
        lr = self.schedule(self.iteration)
        desc = f"epoch {epoch + 1}/{p.epochs}" + ("" if augmenting else " (no aug)")
        with _EpochProgress(desc, self.iters_per_epoch, self.dist.is_main) as bar:
            for images, targets, _ in self.loader:
                lr = self.set_lr()
                images = images.to(self.device, non_blocking=True)
                targets = targets.to(self.device, non_blocking=True)
                with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.use_amp):
                    losses = self.net(images, targets)
                loss = losses["total_loss"]
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch + 1}, iteration {self.iteration}; "
                                             "lower lr_per_img or set grad_clip")
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                if p.grad_clip:
                    self.scaler.unscale_(self.optimizer)
                    nn.utils.clip_grad_norm_(self.model.parameters(), p.grad_clip)
                if self.centred is not None:
                    self.centred.save()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                if self.centred is not None:
                    self.centred.project()
                if self.ema is not None:
                    self.ema.update(self.model)
                self.iteration += 1
                steps += 1
                images_seen += images.shape[0]
                for k in LOSS_KEYS:
                    sums[k] += float(losses[k].detach()) if k in losses else 0.0
                bar.update(steps, sums["total_loss"] / steps, images_seen / (time.perf_counter() - start))
        seconds = time.perf_counter() - start
        means = {k: v / max(steps, 1) for k, v in sums.items()}
        means = self.dist.mean(means, self.device)
        return {"epoch": epoch + 1, "lr": lr, **means, "augment": augmenting,
                "imgs_per_s": images_seen * self.dist.world_size / max(seconds, 1e-9), "seconds": seconds}

    def uses_l1(self, epoch: int) -> bool:
        """The L1 box loss is on in the no-aug epochs (YOLOX)."""
        return not self.dataset.augmenting(epoch) and self.no_aug_epochs > 0

    def plain_batch(self) -> torch.Tensor:
        """The first training images, un-augmented (letterboxed), as one batch."""
        items = [self.dataset[(i, self.p.epochs)] for i in range(min(len(self.dataset), self.rank_batch))]
        return collate(items)[0]

    @torch.no_grad()
    def plain_loss(self, most_images: int = 256) -> float:
        """Mean training loss of the model as it is on un-augmented training images (eval mode: BN untouched),
        with the loss terms of the first epoch (L1 on when it trains without augmentation). Epoch 0 of the
        curves is this for the start; after training it says whether the fit on the same images improved."""
        model = unwrap(self.model)
        was_training = model.training
        model.eval()
        head = getattr(model, "head", None)
        use_l1 = getattr(head, "use_l1", None)
        if head is not None and use_l1 is not None:
            head.use_l1 = self.uses_l1(0)
        total, batches = 0.0, 0
        try:
            n = min(len(self.dataset), most_images)
            for start in range(0, n, self.rank_batch):
                items = [self.dataset[(i, self.p.epochs)] for i in range(start, min(start + self.rank_batch, n))]
                images, targets, _ = collate(items)
                total += float(model(images.to(self.device), targets.to(self.device))["total_loss"])
                batches += 1
        finally:
            model.train(was_training)
            if head is not None and use_l1 is not None:
                head.use_l1 = use_l1
        return total / max(batches, 1)

    def record_start(self) -> None:
        """Epoch 0 of the curves: the start evaluated on val before any step. A pretrained start is a candidate
        for best.pt like every epoch (training never ends below where it started, on val); a random one is not."""
        if not self.dist.is_main:
            self.dist.barrier()
            return
        row: dict = {"epoch": 0, "lr": 0.0, "total_loss": self.plain_loss(), "augment": False, "seconds": 0.0}
        metrics: dict = {}
        if self.val_split is not None:
            t0 = time.perf_counter()
            metrics = evaluate_model(self.eval_model, self.val_split, self.images_dir, self.p.img_size, self.device,
                                     self.p.eval_batch_size)
            row["eval_seconds"] = time.perf_counter() - t0
        pretrained = bool((self.meta.get("pretrained") or {}).get("loaded"))
        if pretrained and metrics:
            self.best_ap, self.best_epoch = metrics.get("AP"), 0
        row["AP"], row["AP50"] = metrics.get("AP"), metrics.get("AP50")
        self.history.append(row)
        log.info("epoch 0 (the start): loss %.3f%s", row["total_loss"],
                 "" if row["AP"] is None else f"  val AP {row['AP']:.4f} AP50 {row['AP50']:.4f}")
        self.save(0, metrics, improved=pretrained)
        self.dist.barrier()

    def fit(self, stop_after_epoch: int | None = None) -> TrainResult:
        """Train to `epochs` (or only up to `stop_after_epoch`, as if interrupted there); returns the result."""
        p = self.p
        start = time.perf_counter()
        if self.dist.is_main:
            self.outputs.checkpoints.mkdir(parents=True, exist_ok=True)
            self.outputs.curves.mkdir(parents=True, exist_ok=True)
            log.info("training on %s: %d train / %d val images, %d x %d iterations, batch %d, lr %.5g, img %d",
                     self.device, len(self.dataset), 0 if self.val_split is None else len(self.val_split.images),
                     p.epochs, self.iters_per_epoch, p.batch_size, p.lr, p.img_size)
        if self.start_epoch == 0 and not self.history:
            self.record_start()
        last = p.epochs if stop_after_epoch is None else min(stop_after_epoch, p.epochs)
        for epoch in range(self.start_epoch, last):
            row = self.train_epoch(epoch)
            metrics: dict = {}
            evaluate = self.val_split is not None and ((epoch + 1) % p.eval_interval == 0 or epoch + 1 == p.epochs)
            if evaluate and self.val_split is not None and self.dist.is_main:
                t0 = time.perf_counter()
                metrics = evaluate_model(self.eval_model, self.val_split, self.images_dir, p.img_size, self.device,
                                         p.eval_batch_size)
                row["eval_seconds"] = time.perf_counter() - t0
            row["AP"], row["AP50"] = metrics.get("AP"), metrics.get("AP50")
            improved = row["AP"] is not None and (self.best_ap is None or row["AP"] > self.best_ap)
            if improved:
                self.best_ap, self.best_epoch = row["AP"], epoch + 1
            elif self.val_split is None:
                self.best_epoch = epoch + 1  # nothing to compare: best = last
            if self.dist.is_main:
                self.history.append(row)
                log.info("epoch %d/%d: loss %.3f (iou %.3f obj %.3f cls %.3f l1 %.3f) lr %.2e %.1f img/s%s",
                         epoch + 1, p.epochs, row["total_loss"], row["iou_loss"], row["obj_loss"], row["cls_loss"],
                         row["l1_loss"], row["lr"], row["imgs_per_s"],
                         "" if row["AP"] is None else f"  val AP {row['AP']:.4f} AP50 {row['AP50']:.4f}")
                self.save(epoch + 1, metrics, improved or self.val_split is None)
                write_curves(self.history, self.outputs.curves, plot=evaluate or epoch + 1 == last)
                if self.on_saved is not None:
                    self.on_saved()
            self.dist.barrier()
        return TrainResult(self.best_ap, self.best_epoch, p.epochs, len(self.dataset),
                           0 if self.val_split is None else len(self.val_split.images),
                           time.perf_counter() - start, self.history)


def _seed_worker(worker_id: int) -> None:
    # samples draw from their own (seed, epoch, index) generators; this only tames stray global randomness
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
