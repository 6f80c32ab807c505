"""Speed and memory of one model configuration: what `semask benchmark` measures.

Inference: `model.predict_labels` on a random batch (forward, semantic inference and the label map at
the input size) under `torch.inference_mode`. Training: one optimisation step on a random batch with
Voronoi label maps: forward in train mode, the full loss (Hungarian matching, point-sampled mask and
dice losses, deep supervision, the semantic "cate" loss), backward, AdamW step.

Reported: latency (median / min / max over the timed runs after warm-up), images per second, peak
memory (CPU: the process's resident-set high-water mark, `ru_maxrss`, which includes building the
model; GPU: `torch.cuda.max_memory_allocated`), FLOPs of one run (torch's flop counter: matmuls and
convolutions), and achieved FLOP/s as a fraction of a large matmul of the same dtype timed in the same
process with the same threads.
"""

from __future__ import annotations

import platform
import resource
import statistics
import sys
import time
from contextlib import contextmanager, nullcontext
from typing import Callable, Iterator

import torch

MODES = ("infer", "train")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a wall-clock reading covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mib(device: torch.device) -> float:
    """CPU: resident-set high-water mark of this process; GPU: peak bytes allocated by torch on `device`."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def current_rss_mib() -> float | None:
    """Resident set size now (Linux /proc), or None where not available."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * resource.getpagesize() / 2 ** 20
    except (OSError, ValueError, IndexError):
        return None


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed-precision context for bf16, nothing for fp32."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def time_runs(fn: Callable[[], object], warmup: int, iters: int, device: torch.device) -> list[float]:
    """Wall-clock seconds of `iters` calls after `warmup` untimed ones (GPU work synchronised)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return times


def matmul_flops_per_s(device: torch.device, dtype: torch.dtype, n: int | None = None, reps: int = 5) -> float:
    """FLOP/s of an n x n @ n x n matmul (median of `reps` after a warm-up): the hardware's practical rate
    for this dtype, device and thread count."""
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    times = time_runs(lambda: torch.mm(a, b), warmup=2, iters=reps, device=device)
    return 2 * n ** 3 / statistics.median(times)


@contextmanager
def _frozen(model: torch.nn.Module) -> Iterator[None]:
    """Parameters without requires_grad for the duration (the flop counter's module tracker needs this
    for views of parameters made under no_grad)."""
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)


def count_flops(fn: Callable[[], object], model: torch.nn.Module | None = None, grad: bool = False) -> int:
    """FLOPs of one call of `fn` by torch's flop counter (matmuls, convolutions, attention it knows)."""
    from torch.utils.flop_counter import FlopCounterMode

    frozen = _frozen(model) if (model is not None and not grad) else nullcontext()
    grad_ctx = nullcontext() if grad else torch.no_grad()
    with frozen, grad_ctx, FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def voronoi_label_maps(batch: int, size: int, num_classes: int, segments: int = 8,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, size, size) int64 label maps: a Voronoi partition into `segments` regions, each a distinct
    random class (the synthetic targets of the peer benchmark); at most `num_classes` regions."""
    gen = generator or torch.Generator().manual_seed(0)
    segments = max(1, min(segments, num_classes))
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    grid = torch.stack([ys, xs], -1).float().view(-1, 2)
    maps = []
    for _ in range(batch):
        seeds = torch.rand(segments, 2, generator=gen) * size
        owner = torch.cdist(grid, seeds).argmin(1).view(size, size)
        classes = torch.randperm(num_classes, generator=gen)[:segments]
        maps.append(classes[owner])
    return torch.stack(maps)



def synthetic_training_batch(cfg, batch: int, size: int, seed: int = 0
                             ) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """(images (B, 3, S, S) in 0..255, Voronoi label maps (B, S, S), Mask2Former targets) for a training
    benchmark of `cfg`'s model, the same for the same seed."""
    from .engine.targets import targets_from_label_maps

    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, size, size, generator=gen) * 255
    labels = voronoi_label_maps(batch, size, cfg.model.num_classes, generator=gen)
    return images, labels, targets_from_label_maps(labels, cfg.model.num_classes, cfg.data.ignore_value)

def _compile(model: torch.nn.Module) -> None:
    """torch.compile the model's repeated layers in place (semask.compiled; state_dict keys unchanged)."""
    from .compiled import compile_model

    compile_model(model)


def inference_step(model: torch.nn.Module, images: torch.Tensor, device: torch.device,
                   dtype: torch.dtype) -> Callable[[], list[torch.Tensor]]:
    """One inference: label maps at the input size."""
    def step() -> list[torch.Tensor]:
        with torch.inference_mode(), autocast(device, dtype):
            return model.predict_labels(images)
    return step


def training_step(model: torch.nn.Module, criterion: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  images: torch.Tensor, targets: list[dict], label_maps: torch.Tensor, device: torch.device,
                  dtype: torch.dtype) -> Callable[[], float]:
    """One optimisation step: forward, full loss, backward, optimizer step. Returns the loss."""
    def step() -> float:
        with autocast(device, dtype):
            outputs = model(images)
            losses = criterion(outputs, targets, label_maps)
        loss = sum(losses.values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step.last_loss = float(loss.detach())
        return step.last_loss
    return step


def run_benchmark(config="semask-tiny-ade20k", size: int = 512, batch: int = 1, threads: int | None = None,
                  mode: str = "infer", dtype: str = "fp32", compile: bool = False, warmup: int | None = None,
                  iters: int | None = None, device: str = "cpu", weights: str | None = None,
                  overrides=(), flops: bool = True, seed: int = 0) -> dict:
    """Build (or load) the model and measure `mode` at `size` x `size`. Returns a JSON-ready dict."""
    from . import build_model

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    torch_dtype = DTYPES[dtype]
    warmup = (2 if mode == "infer" else 1) if warmup is None else warmup
    iters = (5 if mode == "infer" else 3) if iters is None else iters
    torch.manual_seed(seed)
    if weights:
        from .weights import load_model

        model = load_model(config, weights, dev, overrides)
    else:
        model = build_model(config, overrides).to(dev)
    cfg = model.config
    params = sum(p.numel() for p in model.parameters())
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    gen = torch.Generator().manual_seed(seed)
    images = (torch.rand(batch, 3, size, size, generator=gen) * 255).to(dev)
    rss_after_build = current_rss_mib()
    if mode == "infer":
        model.eval()
        step = inference_step(model, images, dev, torch_dtype)
    else:
        from .engine.targets import targets_from_label_maps
        from .modeling.criterion import build_criterion

        model.train()
        label_maps = voronoi_label_maps(batch, size, cfg.model.num_classes, generator=gen).to(dev)
        targets = targets_from_label_maps(label_maps, cfg.model.num_classes, cfg.data.ignore_value)
        criterion = build_criterion(cfg).to(dev)
        from .engine.optim import adamw

        optimizer = adamw(model.parameters(), lr=cfg.solver.base_lr, weight_decay=cfg.solver.weight_decay)
        step = training_step(model, criterion, optimizer, images, targets, label_maps, dev, torch_dtype)
    if compile:
        _compile(model)
    times = time_runs(step, warmup, iters, dev)
    peak = peak_memory_mib(dev)
    result = {
        "config": getattr(cfg, "name", None) or str(config),
        "mode": mode,
        "size": size,
        "batch": batch,
        "threads": torch.get_num_threads(),
        "dtype": dtype,
        "compile": compile,
        "device": str(dev),
        "device_name": (torch.cuda.get_device_name(dev) if dev.type == "cuda"
                        else platform.processor() or platform.machine()),
        "torch": torch.__version__,
        "params": params,
        "warmup": warmup,
        "iters": iters,
        "latency_s": {"median": statistics.median(times), "min": min(times), "max": max(times)},
        "latency_s_all": [round(t, 4) for t in times],
        "images_per_s": batch / statistics.median(times),
        "peak_mem_mib": round(peak, 1),
        "peak_mem_kind": "max_memory_allocated" if dev.type == "cuda" else "ru_maxrss (process lifetime)",
        "rss_after_build_mib": None if rss_after_build is None else round(rss_after_build, 1),
    }
    if mode == "train":
        result["loss_last"] = getattr(step, "last_loss", None)
    if flops:
        n = count_flops(step, model, grad=(mode == "train")) if not compile else None
        if n is None:  # the counter does not see inside compiled graphs: count on an eager copy of the step
            n = _count_flops_eager(config, weights, overrides, mode, images, dev, torch_dtype, cfg)
        rate = matmul_flops_per_s(dev, torch_dtype)
        achieved = n / statistics.median(times)
        result.update({"flops": n, "achieved_flops_per_s": achieved, "matmul_flops_per_s": rate,
                       "matmul_fraction": achieved / rate})
    return result


def _count_flops_eager(config, weights, overrides, mode, images, dev, dtype, cfg) -> int:
    """FLOPs of the same step on a fresh eager model (for --compile runs)."""
    from . import build_model
    from .engine.targets import targets_from_label_maps
    from .modeling.criterion import build_criterion

    model = build_model(config, overrides).to(dev)
    if mode == "infer":
        return count_flops(inference_step(model.eval(), images, dev, dtype), model)
    label_maps = voronoi_label_maps(images.shape[0], images.shape[-1], cfg.model.num_classes).to(dev)
    targets = targets_from_label_maps(label_maps, cfg.model.num_classes, cfg.data.ignore_value)
    optimizer = torch.optim.AdamW(model.parameters())
    step = training_step(model.train(), build_criterion(cfg).to(dev), optimizer, images, targets, label_maps, dev,
                         dtype)
    return count_flops(step, model, grad=True)
