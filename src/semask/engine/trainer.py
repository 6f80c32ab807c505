"""The training loop: one CPU process up to many GPUs on many machines (torchrun + DDP).

    from semask import load_config
    from semask.engine.trainer import Trainer
    result = Trainer(load_config("semask-tiny-ade20k"), "datasets/ADEChallengeData2016", "runs/tiny").train()

Per iteration: `grad_accum_steps` micro-batches of ims_per_batch / (world_size * grad_accum_steps) images
per process, forward under autocast on GPU (bf16 where supported, else fp16 with gradient scaling), the
Mask2Former + SeMask losses in float32, backward; then a check that every loss is finite (on all
processes), unscaling, full-model gradient clipping, the AdamW step and the poly schedule.
Every `checkpoint_period` iterations a checkpoint (atomic, last N kept); every `test.eval_period`
iterations and at the end an evaluation on the validation split; metrics.jsonl and training_curves.png
in the output folder. SIGTERM / SIGINT finish the current iteration, save a checkpoint and return.
`resume=True` restores everything from the last checkpoint so that the run continues exactly.

Randomness: the model is initialised from `seed`; each process's dropout stream from seed + rank; the
data order and augmentation and the loss's random points are functions of (seed, sample position), so
they do not depend on the number of processes, workers or on resuming.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config, ConfigError, load_config, save_config
from . import distributed as du
from .checkpoint import CheckpointManager, load_checkpoint, rng_state, set_rng_state
from .curves import draw_training_curves
from .metrics_log import MetricsWriter
from .optim import build_optimizer, build_scheduler, clip_gradients
from .progress import Progress
from .targets import targets_from_label_maps

log = logging.getLogger("semask.train")

CURVES_FILE = "training_curves.png"
METRICS_FILE = "metrics.jsonl"
FINAL_WEIGHTS = "model_final.safetensors"


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, unwritable output, ...); the message says why and what to do."""


@dataclass
class TrainResult:
    """How a `Trainer.train()` call ended."""
    status: str                       # "finished" or "interrupted"
    iteration: int                    # iterations done
    checkpoint: Path | None           # the last checkpoint written
    final_weights: Path | None = None  # model_final.safetensors when finished
    eval: dict | None = None          # the last evaluation's scalar metrics
    skipped_steps: int = 0            # non-finite steps skipped (solver.skip_nonfinite)
    signal: int | None = None         # the signal that interrupted the run


def point_seed(seed: int, position: int) -> int:
    """The seed of the loss's random points for the sample at a global data position."""
    return (seed * 1_000_003 + position * 7_919 + 12_345) % (2 ** 62)


def check_writable(folder: Path) -> None:
    """Create `folder` and prove a file can be written there, or raise TrainingError."""
    if folder.exists() and not folder.is_dir():
        raise TrainingError(f"the output folder {folder} is a file; choose another --output")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write_test_{os.getpid()}"
        with open(probe, "wb") as f:
            f.write(b"0" * 4096)
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as e:
        raise TrainingError(f"cannot write to the output folder {folder}: {e.strerror or e}; choose another "
                            "--output or free some space") from None


def pad_labels(labels: torch.Tensor, size: tuple[int, int], ignore_value: int) -> torch.Tensor:
    """Label maps padded (bottom/right, ignore value) to the model's padded input size."""
    h, w = labels.shape[-2:]
    if (h, w) == tuple(size):
        return labels
    return F.pad(labels, (0, size[1] - w, 0, size[0] - h), value=ignore_value)


class Trainer:
    """Trains a SeMask Mask2Former as `cfg` says on the dataset at `data_root`, writing to `output_dir`.

    `model`, `train_dataset` and `val_dataset` may be given to override what the config would build
    (the demo and tests do). `device`: default cuda:LOCAL_RANK when available, else cpu.
    `should_stop(iterations_done)`, asked after every iteration (e.g. a time budget), stops the run as
    SIGTERM does when it returns True: checkpoint, status "interrupted", `signal` None.
    """

    def __init__(self, cfg: Config | str, data_root: str | os.PathLike | None, output_dir: str | os.PathLike,
                 resume: bool = False, max_iter: int | None = None, device: str | torch.device | None = None,
                 model: nn.Module | None = None, train_dataset: Any = None, val_dataset: Any = None,
                 progress: bool | None = None, should_stop: Callable[[int], bool] | None = None) -> None:
        cfg = load_config(cfg) if not isinstance(cfg, Config) else cfg
        if max_iter is not None:
            cfg = cfg.replace({"solver.max_iter": int(max_iter)})
        if data_root is not None:
            cfg = cfg.replace({"data.root": str(data_root)})
        self.cfg = cfg
        self.output_dir = Path(output_dir)
        self.resume = resume
        self.device = torch.device(device) if device is not None else None
        self._model = model
        self._train_dataset = train_dataset
        self._val_dataset = val_dataset
        self.progress_tty = progress
        self._signal: int | None = None
        self.should_stop = should_stop
        self.val_dataset: Any = None

    # ------------------------------------------------------------------ set-up

    def _batch_per_process(self, world: int) -> int:
        s = self.cfg.solver
        denom = world * s.grad_accum_steps
        if s.ims_per_batch % denom or s.ims_per_batch < denom:
            raise ConfigError(f"solver.ims_per_batch={s.ims_per_batch} must be a multiple of processes x "
                              f"solver.grad_accum_steps = {world} x {s.grad_accum_steps}")
        return s.ims_per_batch // denom

    def _build_model(self) -> nn.Module:
        if self._model is not None:
            model = self._model
            model.config = getattr(model, "config", self.cfg)
            return model
        from .. import build_model

        return build_model(self.cfg)

    def _datasets(self):
        from ..data import build_dataset

        train = self._train_dataset or build_dataset(self.cfg, self.cfg.data.train_split, self.cfg.data.root or None)
        if self.cfg.data.ignore_value != 255 and getattr(train, "ignore_value", 255) != self.cfg.data.ignore_value:
            raise ConfigError(f"data.ignore_value={self.cfg.data.ignore_value} but the dataset uses "
                              f"{train.ignore_value}")
        return train

    def _val(self):
        """The validation dataset, or None (with a warning) when the split is missing."""
        if self._val_dataset is not None:
            return self._val_dataset
        from ..data import DataError, build_dataset

        try:
            return build_dataset(self.cfg, self.cfg.data.val_split, self.cfg.data.root or None)
        except DataError as e:
            log.warning("no evaluation during training: %s", e)
            return None

    def _install_signal_handlers(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}

        def handler(signum, _frame):
            if self._signal is not None:  # second signal: stop now
                signal.signal(signum, previous.get(signum, signal.SIG_DFL))
                raise KeyboardInterrupt
            self._signal = signum
            log.warning("received %s: finishing this iteration, then saving a checkpoint",
                        signal.Signals(signum).name)

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.getsignal(sig)
            signal.signal(sig, handler)
        return previous

    # ------------------------------------------------------------------ the loop

    def train(self) -> TrainResult:
        cfg = self.cfg
        device = self.device or du.default_device()
        distributed = du.init_distributed(device)
        rank, world = du.get_rank(), du.get_world_size()
        main = rank == 0
        if device.type == "cuda" and distributed:
            device = torch.device("cuda", du.get_local_rank())
        if main:
            check_writable(self.output_dir)
        solver = cfg.solver
        batch = self._batch_per_process(world)
        accum = solver.grad_accum_steps
        manager = CheckpointManager(self.output_dir, solver.keep_last)

        train_set = self._datasets()
        if train_set.num_classes != cfg.model.num_classes:
            raise ConfigError(f"model.num_classes={cfg.model.num_classes} but the dataset has "
                              f"{train_set.num_classes} classes")
        ckpt_path = manager.latest() if self.resume else None
        if self.resume and ckpt_path is None and main:
            log.info("--resume: no checkpoint in %s yet, starting from the beginning", self.output_dir)

        torch.manual_seed(cfg.seed)
        model = self._build_model()
        if cfg.model.weights and ckpt_path is None:
            from .initial_weights import load_initial_weights

            report = load_initial_weights(model, cfg.model.weights)
            if main:
                log.info("%s", report)
        model.to(device).train()
        torch.manual_seed(cfg.seed + rank)

        from ..modeling.criterion import build_criterion
        from ..modeling.point_sampling import PointSampler

        sampler = PointSampler()
        criterion = build_criterion(cfg, num_classes=cfg.model.num_classes, point_sampler=sampler).to(device)
        optimizer = build_optimizer(model, solver)
        scheduler = build_scheduler(optimizer, solver)
        amp_dtype = None
        if device.type == "cuda" and solver.amp:
            amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

        start_iter, skipped = 0, 0
        if ckpt_path is not None:
            state = load_checkpoint(ckpt_path)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            start_iter = int(state["iteration"])
            skipped = int(state.get("skipped_steps", 0))
            if main:
                log.info("resumed from %s at iteration %d", ckpt_path, start_iter)
                if start_iter >= solver.max_iter:
                    log.warning("the checkpoint is at iteration %d, not before solver.max_iter=%d: nothing to "
                                "train (raise --max-iter to continue)", start_iter, solver.max_iter)
        if main:
            manager.remove_stale_temporaries()

        if main:
            save_config(cfg, self.output_dir / "config.yaml")
        metrics = MetricsWriter(self.output_dir / METRICS_FILE, enabled=main)
        if main and start_iter > 0:
            metrics.truncate_after(start_iter)
        elif main and ckpt_path is None and metrics.path.exists():
            metrics.path.unlink()

        train_model: nn.Module = model
        if distributed:
            train_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)

        from ..data.loader import build_train_loader
        from ..data.transforms import TrainTransform

        loader = build_train_loader(train_set, TrainTransform(cfg.data), batch, cfg.seed, rank, world,
                                    start_iter=start_iter * accum, num_workers=cfg.data.num_workers)
        if main:
            log.info("training %s: %d images, %d process(es) x %d images x %d accumulation = batch %d, "
                     "iterations %d..%d, device %s%s", cfg.name or "model", len(train_set), world, batch, accum,
                     solver.ims_per_batch, start_iter, solver.max_iter, device,
                     f", autocast {amp_dtype}".replace("torch.", "") if amp_dtype else "")

        if ckpt_path is not None:  # last, after everything that draws from the generators while setting up
            rngs = state.get("rng") or []
            if len(rngs) == world:
                set_rng_state(rngs[rank])
            elif rngs and main:
                log.warning("the checkpoint was written by %d processes, this run has %d: the random states "
                            "(dropout) are not restored exactly", len(rngs), world)
            del state
        self.val_dataset = None
        previous_handlers = self._install_signal_handlers()
        progress = Progress(start_iter, solver.max_iter, solver.log_period, self.progress_tty, enabled=main)
        params = [p for p in model.parameters() if p.requires_grad]
        last_ckpt: Path | None = ckpt_path
        last_eval: dict | None = None
        window: dict[str, float] = {}
        window_n, window_t, window_data = 0, 0.0, 0.0
        iteration = start_iter
        status = "finished"
        try:
            for iteration in range(start_iter, solver.max_iter):
                t_start = time.perf_counter()
                data_time = 0.0
                optimizer.zero_grad(set_to_none=True)
                step_losses: dict[str, torch.Tensor] = {}
                for micro in range(accum):
                    t_data = time.perf_counter()
                    data = next(loader)
                    data_time += time.perf_counter() - t_data
                    images = data["images"].to(device, non_blocking=True)
                    labels = data["labels"].to(device, non_blocking=True)
                    sampler.set_image_seeds([point_seed(cfg.seed, p) for p in data["positions"]])
                    sync = (train_model.no_sync() if distributed and micro < accum - 1
                            else contextlib.nullcontext())
                    with sync:
                        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                            outputs = train_model(images)
                        labels = pad_labels(labels, outputs["padded_size"], cfg.data.ignore_value)
                        targets = targets_from_label_maps(labels, cfg.model.num_classes, cfg.data.ignore_value)
                        losses = criterion(outputs, targets, labels)
                        total = sum(v.sum() for v in losses.values())
                        scaler.scale(total / accum if accum > 1 else total).backward()
                    for k, v in losses.items():
                        step_losses[k] = step_losses.get(k, 0.0) + v.detach().sum() / accum
                    # the outputs (every decoder layer's masks) must not stay alive into the next forward
                    del outputs, losses, total, targets
                # one transfer per iteration: every loss term (and the finiteness check) from a single vector
                names = list(step_losses)
                values = torch.stack([step_losses[k].float().reshape(()) for k in names]).double().cpu().tolist()
                total_loss = sum(values)

                flags = torch.tensor([0.0 if math.isfinite(total_loss) else 1.0,
                                      1.0 if self._signal is not None or (
                                          self.should_stop is not None and self.should_stop(iteration + 1))
                                      else 0.0], device=device)
                if distributed:
                    du.all_reduce_sum(flags)
                    flags = flags.cpu()
                grad_norm = None
                if flags[0] > 0:
                    bad = [f"{k}={v}" for k, v in zip(names, values) if not math.isfinite(v)]
                    where = ", ".join(bad) if bad else "on another process"
                    if not solver.skip_nonfinite:
                        raise TrainingError(
                            f"non-finite loss at iteration {iteration + 1}: {where}. The last good checkpoint "
                            f"is {last_ckpt or 'not written yet'}; lower solver.base_lr, check the data, or set "
                            "solver.skip_nonfinite=true to skip such steps")
                    skipped += 1
                    optimizer.zero_grad(set_to_none=True)
                    progress.write(f"iteration {iteration + 1}: non-finite loss ({where}), step skipped "
                                   f"({skipped} so far)")
                else:
                    scaler.unscale_(optimizer)
                    grad_norm = clip_gradients(params, solver)
                    scaler.step(optimizer)
                    scaler.update()
                scheduler.step()
                done = iteration + 1
                lr = optimizer.param_groups[-1]["lr"]

                # ---- logging: averages over the log window (and over processes) at log iterations only
                window_n += 1
                window_t += time.perf_counter() - t_start
                window_data += data_time
                for k, v in zip(names, values):
                    window[k] = window.get(k, 0.0) + v
                window["total_loss"] = window.get("total_loss", 0.0) + total_loss
                if grad_norm is not None:
                    window["grad_norm"] = window.get("grad_norm", 0.0) + float(grad_norm)
                if done % solver.log_period == 0 or done == solver.max_iter or flags[1] > 0:
                    keys = sorted(window)
                    vec = torch.tensor([window[k] / window_n for k in keys], dtype=torch.float64)
                    if distributed:
                        vec = du.all_reduce_sum(vec.to(device)).cpu() / world
                    record = {"iteration": done, **{k: float(x) for k, x in zip(keys, vec.tolist())},
                              "lr": lr, "lr_backbone": optimizer.param_groups[0]["lr"],
                              "time": window_t / window_n, "data_time": window_data / window_n}
                    if skipped:
                        record["skipped_steps"] = skipped
                    if getattr(train_set, "skipped", 0):
                        record["skipped_files"] = train_set.skipped
                    if device.type == "cuda":
                        record["max_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
                    metrics.write(record)
                    window, window_n, window_t, window_data = {}, 0, 0.0, 0.0
                progress.update(done, total_loss, lr)

                if flags[1] > 0:
                    last_ckpt = self._save(manager, model, optimizer, scheduler, scaler, done, skipped, main)
                    status = "interrupted"
                    progress.write(f"stopped at iteration {done}; checkpoint {last_ckpt}"
                                   + ("; continue with --resume" if self._signal is not None else ""))
                    break
                if done % solver.checkpoint_period == 0 and done < solver.max_iter:
                    last_ckpt = self._save(manager, model, optimizer, scheduler, scaler, done, skipped, main)
                if cfg.test.eval_period > 0 and done % cfg.test.eval_period == 0 and done < solver.max_iter:
                    last_eval = self._evaluate(model, done, metrics, device) or last_eval
            else:
                done = solver.max_iter
            if status == "finished":
                if last_ckpt is None or start_iter < solver.max_iter:
                    last_ckpt = self._save(manager, model, optimizer, scheduler, scaler, solver.max_iter, skipped,
                                           main)
                final = None
                if main:
                    from ..weights import save_weights

                    final = save_weights(model, self.output_dir / FINAL_WEIGHTS, cfg)
                if cfg.test.eval_period >= 0:
                    last_eval = self._evaluate(model, solver.max_iter, metrics, device) or last_eval
                if main:
                    draw_training_curves(metrics.records(), self.output_dir / CURVES_FILE)
                return TrainResult("finished", solver.max_iter, last_ckpt, final, last_eval, skipped)
            if main:
                draw_training_curves(metrics.records(), self.output_dir / CURVES_FILE)
            return TrainResult("interrupted", done, last_ckpt, None, last_eval, skipped, self._signal)
        finally:
            progress.close()
            for sig, h in previous_handlers.items():
                signal.signal(sig, h)

    # ------------------------------------------------------------------ hooks

    def _save(self, manager: CheckpointManager, model: nn.Module, optimizer, scheduler, scaler, iteration: int,
              skipped: int, main: bool) -> Path | None:
        """Every process contributes its RNG state; rank 0 writes."""
        rngs = [rng_state()]
        if du.get_world_size() > 1:
            gathered: list[Any] = [None] * du.get_world_size()
            torch.distributed.all_gather_object(gathered, rngs[0])
            rngs = gathered
        path = None
        if main:
            state = {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                     "iteration": iteration, "skipped_steps": skipped, "rng": rngs,
                     "data": {"seed": self.cfg.seed, "samples_seen": iteration * self.cfg.solver.ims_per_batch},
                     "config": self.cfg.to_yaml()}
            try:
                path = manager.save(state, iteration)
            except OSError as e:
                raise TrainingError(f"cannot write the checkpoint of iteration {iteration} in {manager.folder}: "
                                    f"{e.strerror or e}; the previous checkpoint is intact") from None
        du.barrier()
        return path if main else manager.path_for(iteration)

    def _evaluate(self, model: nn.Module, iteration: int, metrics: MetricsWriter,
                  device: torch.device) -> dict | None:
        if self.val_dataset is None:
            self.val_dataset = self._val() or False
        if self.val_dataset is False:
            return None
        from .evaluator import evaluate

        result = evaluate(model, self.val_dataset, self.cfg, device=device, progress=False)
        if not du.is_main_process() or not result:
            return None
        scalars = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        metrics.write({"iteration": iteration, "eval": scalars})
        draw_training_curves(metrics.records(), self.output_dir / CURVES_FILE)
        log.info("evaluation at iteration %d: %s", iteration,
                 "  ".join(f"{k} {v:.2f}" for k, v in scalars.items() if k in ("mIoU", "fwIoU", "mACC", "pACC")))
        return scalars


def train(cfg: Config | str, data_root: str | os.PathLike | None, output_dir: str | os.PathLike,
          **kwargs) -> TrainResult:
    """`Trainer(cfg, data_root, output_dir, **kwargs).train()`."""
    return Trainer(cfg, data_root, output_dir, **kwargs).train()
