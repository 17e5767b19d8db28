"""The one training loop: teacher, baselines and distilled students, single process or DDP.

Every epoch is a pure function of (weights, optimiser state, epoch): RNGs are re-seeded from
(seed, epoch, rank) at its start, so ``--resume`` continues exactly where a run stopped.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from osr.atomic import write_text_atomic
from .adapter import InputAdapter
from .augment import DeviceBatches, train_transform
from .checkpoint import SCHEMA, CheckpointError, atomic_torch_save, git_commit, load_checkpoint, model_from_checkpoint
from .config import TrainConfig
from .data import OpenSetData, load_open_set
from .finetune import apply_pretrained, feature_anchor, freeze_batchnorm, group_schedules, input_adapter_args, param_groups
from .metrics import SCORES, auroc, known_score, near_chance_warning, open_set_metrics
from .models import build_model
from .steps import EpochTerms, Step


class NonFiniteLossError(RuntimeError):
    pass


class AugmentedImages(Dataset):
    """uint8 NHWC images -> (augmented uint8 CHW tensor, label)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, transform):
        self.x = torch.from_numpy(x).permute(0, 3, 1, 2)  # a view: no copy of the pixels
        self.y = torch.from_numpy(y)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.transform(self.x[i]), self.y[i]


class Normalize(nn.Module):
    """uint8 NCHW -> normalised float, on the device (the exported graph does the same)."""

    def __init__(self, mean: list[float], std: list[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std


def lr_factor(step: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then multiply by lr_gamma at each milestone (fractions of training)."""
    warm = cfg.warmup_epochs * steps_per_epoch
    if step < warm:
        return (step + 1) / warm
    total = cfg.epochs * steps_per_epoch
    return cfg.lr_gamma ** sum(step >= m * total for m in cfg.lr_milestones)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(name)


@torch.no_grad()
def predict_logits(model: nn.Module, norm: Normalize, x: np.ndarray, device: torch.device,
                   batch_size: int = 512, amp: bool = False, bar: tqdm | None = None) -> np.ndarray:
    """Logits of uint8 NHWC images, in batches; ``bar`` (a progress bar) advances by each batch's images."""
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        xb = torch.from_numpy(x[i : i + batch_size]).to(device).permute(0, 3, 1, 2)
        with _autocast(device, amp):
            out.append(model(norm(xb)).float().cpu())
        if bar is not None:
            bar.update(len(xb))
    return torch.cat(out).numpy() if out else np.empty((0, 0), np.float32)


def _autocast(device: torch.device, amp: bool):
    return torch.autocast("cuda", dtype=torch.bfloat16) if amp and device.type == "cuda" else nullcontext()


def evaluate(model: nn.Module, norm: Normalize, data: OpenSetData, device: torch.device,
             score: str = "max_logit", amp: bool = False, progress: bool = False) -> dict:
    """Closed-set accuracy and open-set metrics on the test sets (reporting only, never selection);
    ``progress`` shows a bar over the known and unknown test images."""
    total = len(data.test_known_x) + len(data.test_unknown_x)
    with tqdm(total=total, desc=f"evaluating on {total} test images", unit="img", disable=not progress,
              leave=False, dynamic_ncols=True) as bar:
        kl = predict_logits(model, norm, data.test_known_x, device, amp=amp, bar=bar)
        ul = predict_logits(model, norm, data.test_unknown_x, device, amp=amp, bar=bar)
    if len(ul) == 0:
        return {"accuracy": float((kl.argmax(1) == data.test_known_y).mean()), "n_known": len(kl), "n_unknown": 0}
    m = open_set_metrics(kl, data.test_known_y, ul, score=score)
    for kind in SCORES:  # the other scores' AUROC, for comparison
        m[f"auroc_{kind}"] = auroc(known_score(kl, kind), known_score(ul, kind))
    return m


def load_teacher(path: str, data: OpenSetData, cfg: TrainConfig, device: torch.device,
                 stats: tuple[list[float], list[float]]) -> tuple[nn.Module, dict]:
    """Load the teacher and refuse one trained on other classes, another split or hold-out."""
    t = load_checkpoint(path)
    tc = t["config"]
    problems = []
    if t["classes"] != data.classes:
        problems.append(f"classes {t['classes']} != {data.classes}")
    if (tc["dataset"], tc["split"]) != (cfg.dataset, cfg.split):
        problems.append(f"dataset/split {tc['dataset']}/{tc['split']} != {cfg.dataset}/{cfg.split}")
    if list(t["calibration_indices"]) != data.calib_indices.tolist():
        problems.append("its calibration hold-out differs (use the same --split-seed and --calib-fraction): "
                        "the teacher trained on images this run keeps for calibration")
    # Both on a per-class subset: the same draw (one --subset-seed) nests them (the smaller is the first part of
    # the larger); other draws would give the student a teacher that saw other images than its own.
    if (tc.get("max_train_per_class") and cfg.max_train_per_class
            and tc.get("subset_seed") != cfg.subset_seed):
        problems.append(f"it trained on another subset of the training images (--subset-seed {tc.get('subset_seed')}, "
                        f"this run {cfg.subset_seed}): use the same --subset-seed for a teacher and its students "
                        "(a teacher on every training image, without --max-train-per-class, is fine)")
    if problems:
        raise CheckpointError(f"teacher {path} does not match this run: " + "; ".join(problems))
    model = teacher_view(model_from_checkpoint(t), t, *stats, data.image_size).to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    info = {"run_id": t.get("run_id"), "arch": t["model_args"]["arch"], "width": t["model_args"]["width"],
            "path": str(path), "metrics": t.get("metrics", {}), "image_size": t["image_size"],
            "input": t["model_args"].get("input")}
    return model, info


def teacher_view(model: nn.Module, ckpt: dict, mean: list[float], std: list[float], image_size: int) -> nn.Module:
    """The teacher behind an adapter from this run's batches (their size and statistics) to the ones the
    teacher was trained on; the teacher's own input adapter, if any, then applies as in its training."""
    t_mean, t_std = ckpt["normalize"]["mean"], ckpt["normalize"]["std"]
    if ckpt["image_size"] == image_size and (list(t_mean), list(t_std)) == (list(mean), list(std)):
        return model
    return nn.Sequential(InputAdapter(mean, std, t_mean, t_std, size=ckpt["image_size"]), model.eval())


class Trainer:
    def __init__(self, cfg: TrainConfig, data: OpenSetData | None = None, progress: bool = True):
        self.cfg = cfg
        self.world, self.rank, local_rank = _dist_info()
        if self.world > 1 and not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo"
            dist.init_process_group(backend)
        self.device = resolve_device(cfg.device, local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            torch.backends.cudnn.benchmark = True
        self.main = self.rank == 0
        self.progress = progress and self.main
        self.out = Path(cfg.run_dir)
        self.data = data or load_open_set(
            cfg.dataset, cfg.split, cfg.data_root, image_size=cfg.image_size, calib_fraction=cfg.calib_fraction,
            split_seed=cfg.split_seed, max_train_per_class=cfg.max_train_per_class,
            max_test_per_class=cfg.max_test_per_class, download=cfg.download,
            skip_bad_images=cfg.skip_bad_images, subset_seed=cfg.subset_seed)
        self.image_size_given = cfg.image_size  # None: the dataset's default (for the resize note)
        cfg.image_size = self.data.image_size
        self.mean, self.std = self.data.normalize_stats()
        self.norm = Normalize(self.mean, self.std).to(self.device)
        k = self.data.num_classes

        torch.manual_seed(cfg.seed)  # identical init on every rank
        self.model_args = {"arch": cfg.arch, "num_classes": k, "width": cfg.width}
        adapter = input_adapter_args(cfg, self.mean, self.std, self.data.image_size)
        if adapter:
            self.model_args["input"] = adapter
        self.model = build_model(**self.model_args)
        pretrained_names = apply_pretrained(self.model, cfg)
        self.model = self.model.to(self.device)
        if self.device.type == "cuda" and cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.teacher, self.teacher_info = None, None
        if cfg.method in ("kd", "ad"):
            self.teacher, self.teacher_info = load_teacher(cfg.teacher, self.data, cfg, self.device,
                                                              (self.mean, self.std))
            if self.device.type == "cuda" and cfg.channels_last:
                self.teacher = self.teacher.to(memory_format=torch.channels_last)
        self.net = nn.parallel.DistributedDataParallel(self.model) if self.world > 1 else self.model
        if cfg.compile:  # self.model stays the plain module: checkpoints and evaluation use it
            self.net = torch.compile(self.net)

        per_rank = max(1, cfg.batch_size // self.world)
        self.dataset = AugmentedImages(self.data.train_x, self.data.train_y,
                                       train_transform(self.data.image_size, randaugment=cfg.randaugment))
        self.sampler = DistributedSampler(self.dataset, num_replicas=self.world, rank=self.rank,
                                          shuffle=True, seed=cfg.seed, drop_last=True)
        if cfg.batch_augment:  # the whole training set lives on the device as one uint8 tensor
            self.loader = DeviceBatches(self.dataset.x, self.dataset.y, self.sampler, per_rank, cfg.randaugment,
                                        self.device)
        else:
            self.loader = DataLoader(self.dataset, batch_size=per_rank, sampler=self.sampler, drop_last=True,
                                     num_workers=cfg.workers, pin_memory=self.device.type == "cuda",
                                     persistent_workers=cfg.workers > 0)
        if len(self.loader) == 0:
            raise ValueError(f"batch size {per_rank} per process exceeds the {len(self.dataset)} training images")
        self.steps_per_epoch = len(self.loader)
        lr = cfg.lr * cfg.batch_size / 128
        groups = param_groups(self.model, pretrained_names, lr, cfg)
        self.opt = torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, group_schedules(
            groups, lambda s: lr_factor(s, self.steps_per_epoch, cfg), self.steps_per_epoch, cfg))
        self.step = Step(cfg, k, torch.compile(self.teacher) if cfg.compile and self.teacher is not None else self.teacher,
                         anchor=feature_anchor(self.model, cfg))
        self.epoch = 0
        self.metrics: dict = {}
        self.run_id = f"{self.out.name}-{cfg.digest()}"
        if cfg.resume:
            self._resume()

    # ------------------------------------------------------------------ checkpoints

    def _checkpoint(self) -> dict:
        return {
            "schema": SCHEMA,
            "model": self.model.state_dict(),
            "model_args": self.model_args,
            "classes": self.data.classes,
            "image_size": self.data.image_size,
            "normalize": {"mean": self.mean, "std": self.std},
            "config": self.cfg.to_dict(),
            "metrics": self.metrics,
            "calibration_indices": self.data.calib_indices.tolist(),
            "epoch": self.epoch,
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "run_id": self.run_id,
            "config_digest": self.cfg.digest(),
            "git_commit": git_commit(),
            "teacher": self.teacher_info,
            "torch_version": str(torch.__version__),
        }

    def _resume(self) -> None:
        path = self.out / "checkpoint.pt"
        if not path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {path}")
        ckpt = load_checkpoint(path)
        # a run checkpointed with an --eval-every other than 1 has that value in its digest (TrainConfig.digest)
        digests = {self.cfg.digest(), self.cfg.digest(eval_every=ckpt["config"].get("eval_every", 1))}
        if ckpt["config_digest"] not in digests:
            raise CheckpointError(f"--resume: {path} was written with another config; use a new --out")
        self.run_id = ckpt.get("run_id") or self.run_id
        self.model.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        self.epoch, self.metrics = ckpt["epoch"], ckpt["metrics"]

    def _write(self, log_line: dict) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(self._checkpoint(), self.out / "checkpoint.pt")
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps(log_line) + "\n")
        summary = {"run_id": self.run_id, "epoch": self.epoch, "config": self.cfg.to_dict(),
                   "teacher": self.teacher_info, "metrics": self.metrics}
        write_text_atomic(self.out / "metrics.json", json.dumps(summary, indent=2))
        from .curves import write_curves  # curves.png from log.jsonl; never raises
        write_curves(self.out)

    # ------------------------------------------------------------------ loop

    def train_epoch(self) -> dict:
        cfg = self.cfg
        seed_everything(cfg.seed * 100_003 + self.epoch * 1_009 + self.rank)
        self.sampler.set_epoch(self.epoch)
        self.net.train()
        if cfg.freeze_bn:
            freeze_batchnorm(self.model)
        total, n, mixed_steps, t0 = 0.0, 0, 0, time.perf_counter()
        terms = EpochTerms()
        bar = tqdm(self.loader, total=self.steps_per_epoch, desc=f"epoch {self.epoch + 1}/{cfg.epochs}", disable=not self.progress,
                   leave=False, dynamic_ncols=True)
        for x, y in bar:
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            if self.device.type == "cuda" and cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            mixed = cfg.mix != "none" and torch.rand(()).item() < cfg.p_mix
            with _autocast(self.device, cfg.amp):
                loss, step_stats = self.step(self.net, self.norm(x), y, mixed)
            value = loss.item()
            if not math.isfinite(value):
                raise NonFiniteLossError(
                    f"loss became {value} at epoch {self.epoch + 1}, step {n + 1}; stopped. The last good "
                    f"checkpoint (epoch {self.epoch}) is kept in {self.out}. Try a lower --lr.")
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.sched.step()
            total += value
            n += 1
            mixed_steps += mixed
            terms.add(mixed, step_stats)
            bar.set_postfix(loss=f"{total / n:.3f}")
        return {"train_loss": total / max(n, 1), "mixed_steps": mixed_steps, "steps": n,
                "epoch_seconds": time.perf_counter() - t0,
                "images_per_second": n * x.shape[0] * self.world / (time.perf_counter() - t0),
                "terms": terms.means()}

    def _epoch_summary(self, stats: dict, test: dict | None, eval_seconds: float | None) -> str:
        """One readable line per epoch: loss and speed, and the test metrics when it was evaluated."""
        text = (f"epoch {self.epoch}/{self.cfg.epochs}: loss {stats['train_loss']:.4f}, "
                f"{stats['epoch_seconds']:.0f} s ({stats['images_per_second']:.0f} img/s)")
        if test:
            text += f"; test: accuracy {100 * test['accuracy']:.1f} %"
            if "auroc" in test:
                text += f", AUROC {test['auroc']:.3f}, OSCR {test['oscr']:.3f}"
            text += f" ({eval_seconds:.0f} s)"
        return text

    def frozen_reference(self) -> dict:
        """Frozen ImageNet features, no training, on this run's images (osr.export.probe): what fine-tuning must beat."""
        from osr.export.probe import frozen_reference

        d = self.data
        print("osr-train: measuring the frozen-feature reference (the pretrained backbone, no training) on the same "
              "images", flush=True)
        return frozen_reference(self.cfg.to_dict(), self.model_args, d.image_size, d.train_x, d.train_y, d.calib_x,
                                d.test_known_x, d.test_known_y, d.test_unknown_x, alpha=0.05)

    def fit(self, stop_after: int | None = None) -> dict:
        """Train to cfg.epochs (or stop after ``stop_after`` epochs of this call, to simulate a crash)."""
        cfg, done = self.cfg, 0
        if self.main:
            when = (f"every {cfg.eval_every} epochs and after the last" if cfg.eval_every > 1 else
                    "after every epoch" if cfg.eval_every == 1 else "after the last epoch (--eval-every N for more)")
            print(f"osr-train: {self.run_id} on {self.device} x{self.world}: {len(self.dataset)} train, "
                  f"{len(self.data.calib_x)} calibration, {len(self.data.test_known_x)} known test, "
                  f"{len(self.data.test_unknown_x)} unknown test images; {self.steps_per_epoch} steps/epoch; "
                  f"test metrics {when}", flush=True)
            if cfg.dataset == "imagefolder":
                from .folder_check import resize_note

                note = resize_note(Path(cfg.data_root), self.data.image_size, self.image_size_given, cfg.input_size)
                if note:
                    print(f"osr-train: note: {note}", flush=True)
        while self.epoch < cfg.epochs:
            stats = self.train_epoch()
            self.epoch += 1
            done += 1
            line = {"epoch": self.epoch, "lr": self.opt.param_groups[0]["lr"], **stats}
            if self.main:
                eval_seconds = None
                if (cfg.eval_every and self.epoch % cfg.eval_every == 0) or self.epoch == cfg.epochs:
                    t0 = time.perf_counter()
                    self.metrics = evaluate(self.model, self.norm, self.data, self.device, cfg.score, cfg.amp,
                                            progress=self.progress)
                    eval_seconds = time.perf_counter() - t0
                    line["test"] = self.metrics
                self._write(line)
                print(self._epoch_summary(stats, line.get("test"), eval_seconds), flush=True)
            if self.world > 1:
                dist.barrier()
            if stop_after is not None and done >= stop_after:
                break
        if self.main and self.epoch == cfg.epochs and cfg.pretrained and cfg.reference and "auroc" in self.metrics \
                and "frozen_reference" not in self.metrics:
            self.metrics["frozen_reference"] = self.frozen_reference()
            self._write({"epoch": self.epoch, "frozen_reference": self.metrics["frozen_reference"]})
        warning = near_chance_warning(self.metrics, self.data.num_classes) if self.epoch == cfg.epochs else None
        if warning and self.main:
            print(f"osr-train: warning: {warning}", flush=True)
        return self.metrics
