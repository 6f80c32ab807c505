"""The embedded default: train a small SeMask Mask2Former on generated scenes, evaluate it, show it.

    from semask.demo import run_demo
    result = run_demo("runs/demo", minutes=9, seed=0)
    print(result.metrics["mIoU"], result.files["grid"])

Everything is the real pipeline, only small: the synthetic scene dataset
(:func:`semask.data.synthetic.make_synthetic_dataset`) is written to OUTPUT/data, the `demo` preset
(SeMask Swin + MSDeformAttn pixel decoder + masked-attention decoder, narrow widths) is trained from
scratch by :class:`semask.engine.trainer.Trainer` (same losses, data pipeline and checkpoints as
`semask train`), the final weights are evaluated on the held-out split by
:func:`semask.engine.evaluator.evaluate`, and the results are drawn.

The time budget: a few real training iterations in a scratch folder measure the speed of this
machine; the number of iterations (and so the poly learning-rate schedule) is chosen to fill
`minutes`. The speed of a shared machine drifts (measured here: 0.33 to 0.50 s per iteration within one
minute), so at REPLAN_AT fractions of the budget training pauses with a checkpoint, the plan is made
again from the iterations done so far and training resumes with it (the schedule stretches or shrinks;
the learning rate moves a little at that iteration). Should the machine become slower still, training
stops at the deadline (budget x DEADLINE_FACTOR) with a checkpoint, like Ctrl-C, and the model of that
moment is evaluated.
Running again with the same output folder resumes from the last checkpoint to the planned end.

Files in OUTPUT: metrics.json (held-out metrics, percent, and the run's facts), demo.png (validation
image | ground truth | prediction, with a legend), training_curves.png, metrics.jsonl, config.yaml,
model_final.safetensors (for `semask predict`), checkpoints, data/ and predictions/.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("semask.demo")

PRESET = "demo"
DEFAULT_OUTPUT = "runs/demo"
DEFAULT_MINUTES = 8.0     # training; with install, scenes and evaluation about ten minutes on 2 cores
NUM_TRAIN = 1000            # generated training scenes (the stream cycles through them)
NUM_VAL = 50                # held-out scenes, evaluated at the end
CALIBRATION_ITERS = 6       # timed training iterations (the first one, warm-up, is not counted)
DEADLINE_FACTOR = 1.25      # training stops at minutes x this + DEADLINE_SLACK_S even if the planned
DEADLINE_SLACK_S = 30.0     # iterations are not done (the machine became slower)
EVALS_DURING_TRAINING = 5   # points on the mIoU curve
REPLAN_AT = (0.15, 0.5)     # fractions of the training budget at which the plan is made again
GRID_ROWS = 6
GRID_SCALE = 2

METRICS_FILE = "metrics.json"
GRID_FILE = "demo.png"
DATA_DIR = "data"
PREDICTIONS_DIR = "predictions"
CALIBRATION_DIR = ".calibration"


class DemoError(RuntimeError):
    """A demo run that cannot go on as asked (e.g. resuming with another seed); the message says what to do."""


@dataclass
class DemoResult:
    """How a demo run ended. status: "finished", "out_of_time" (stopped at the deadline; running again
    resumes) or "interrupted" (Ctrl-C / SIGTERM; running again resumes)."""
    status: str
    output: Path
    iteration: int
    max_iter: int
    metrics: dict | None = None
    files: dict[str, Path] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- set-up


def demo_config(seed: int, overrides: Any = ()):
    """The `demo` preset with the run's seed (and optional dotted overrides)."""
    from .config import load_config

    cfg = load_config(PRESET, overrides)
    return cfg.replace({"seed": int(seed)})


def scene_size(cfg) -> int:
    """The side of the generated scenes: the preset's training crop (the scenes are square)."""
    return int(cfg.data.crop_size[0])


def prepare_scenes(root: Path, size: int, seed: int) -> Path:
    """Write the synthetic scenes under `root` unless the same set is already there (resuming)."""
    from .data.synthetic import make_synthetic_dataset

    stamp = root / "demo_scenes.json"
    want = {"num_train": NUM_TRAIN, "num_val": NUM_VAL, "size": size, "seed": seed}
    if stamp.exists():
        try:
            if json.loads(stamp.read_text()) == want:
                return root
        except (OSError, json.JSONDecodeError):
            pass
    make_synthetic_dataset(root, NUM_TRAIN, NUM_VAL, size, seed)
    stamp.write_text(json.dumps(want) + "\n")
    return root


def measure_iteration_seconds(cfg, data_root: Path, work_dir: Path) -> float:
    """Seconds per training iteration of `cfg` on this machine, from a few real iterations of the trainer
    in a scratch folder (deleted afterwards): the median of them after the first (allocation, warm-up)."""
    from .engine.metrics_log import read_metrics
    from .engine.trainer import METRICS_FILE as TRAIN_METRICS, Trainer

    probe = cfg.replace({"solver.max_iter": CALIBRATION_ITERS, "solver.log_period": 1,
                         "solver.checkpoint_period": 10 ** 9, "test.eval_period": -1})
    quiet = logging.getLogger("semask.train")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        Trainer(probe, data_root, work_dir, progress=False).train()
        times = [r["time"] for r in read_metrics(work_dir / TRAIN_METRICS) if "time" in r]
    finally:
        quiet.setLevel(level)
        shutil.rmtree(work_dir, ignore_errors=True)
    steady = times[1:] or times
    # the median: one disturbed iteration does not change the plan, and unlike the fastest iteration it is
    # what the run's iterations take (measured: fastest 0.34 s, the run's median 0.38 s); a machine that
    # becomes slower later is caught by the deadline
    return float(statistics.median(steady))


def plan(cfg, seconds_per_iter: float, minutes: float, done: int = 0):
    """The config of a run that fills `minutes` of training (after `done` iterations already trained):
    max_iter, evaluation and checkpoint periods."""
    max_iter = done + max(int(minutes * 60.0 / seconds_per_iter), 1)
    eval_period = max(math.ceil(max_iter / EVALS_DURING_TRAINING), 1)  # the last one is the final evaluation
    return cfg.replace({"solver.max_iter": max_iter, "test.eval_period": eval_period,
                        "solver.checkpoint_period": eval_period})


# ---------------------------------------------------------------------------------------------- pictures


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def draw_grid(dataset, prediction_dir: Path, path: Path, rows: int = GRID_ROWS, scale: int = GRID_SCALE,
              caption: str = "") -> Path:
    """validation image | ground truth | prediction for the first `rows` images of `dataset`, with the
    column titles, a legend of every class and an optional caption line; written as PNG to `path`."""
    import numpy as np
    from PIL import Image, ImageDraw

    from .visualize import colorize, legend, palette_for

    names = list(dataset.class_names)
    palette = palette_for(len(names), getattr(dataset, "palette", None))
    pictures = []
    for i in range(min(rows, len(dataset))):
        sample = dataset.read(i)
        pred_path = prediction_dir / f"{Path(sample.path).stem}.png"
        prediction = np.asarray(Image.open(pred_path)).astype(np.int64)
        cells = [sample.image, colorize(sample.label, palette), colorize(prediction, palette)]
        pictures.append([Image.fromarray(c).resize((c.shape[1] * scale, c.shape[0] * scale), Image.NEAREST)
                         for c in cells])
    if not pictures:
        raise ValueError("no validation images to draw")
    cell_w = max(p.width for row in pictures for p in row)
    cell_h = max(p.height for row in pictures for p in row)
    gap, header, footer = 6, 26, 26 if caption else 0
    grid_w = 3 * cell_w + 4 * gap
    grid_h = header + len(pictures) * (cell_h + gap) + gap + footer
    key = legend(list(range(len(names))), names, palette, min(grid_h - header, 40 + 18 * len(names)), width=170,
                 title="classes")
    canvas = Image.new("RGB", (grid_w + key.width, grid_h), "white")
    draw = ImageDraw.Draw(canvas)
    font = _font(14)
    for c, title in enumerate(("validation image", "ground truth", "prediction")):
        draw.text((gap + c * (cell_w + gap), 6), title, fill="black", font=font)
    for r, row in enumerate(pictures):
        for c, picture in enumerate(row):
            canvas.paste(picture, (gap + c * (cell_w + gap), header + r * (cell_h + gap)))
    canvas.paste(key, (grid_w, header))
    if caption:
        draw.text((gap, grid_h - footer + 4), caption, fill="black", font=font)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    canvas.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------------- the run


def _latest_iteration(output: Path) -> int:
    from .engine.checkpoint import CheckpointManager, load_checkpoint

    latest = CheckpointManager(output).latest()
    return int(load_checkpoint(latest)["iteration"]) if latest is not None else 0


def _resumable_config(output: Path, seed: int | None):
    """The config of an earlier run in `output` that has a checkpoint, or None."""
    from .config import load_config
    from .engine.checkpoint import CheckpointManager

    if not (output / "config.yaml").exists() or CheckpointManager(output).latest() is None:
        return None
    cfg = load_config(str(output / "config.yaml"))
    if seed is not None and seed != cfg.seed:
        raise DemoError(f"{output} holds a demo run with seed {cfg.seed}; run with --seed {cfg.seed} to "
                         f"resume it, or choose another --output for seed {seed}")
    return cfg


def run_demo(output: str | os.PathLike = DEFAULT_OUTPUT, minutes: float = DEFAULT_MINUTES, seed: int | None = None,
             progress: bool | None = None, overrides: Any = ()) -> DemoResult:
    """Generate scenes, train the `demo` preset for about `minutes`, evaluate it on the held-out scenes and
    write the pictures and metrics.json to `output`. An earlier run in `output` is resumed (its seed and
    planned iterations are kept). `overrides`: dotted config overrides for a new run."""
    from .engine.trainer import FINAL_WEIGHTS, Trainer

    if not minutes > 0:
        raise DemoError(f"minutes must be > 0, got {minutes}")
    output = Path(output)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()

    # 1. the scenes (and the plan of an earlier run to resume)
    cfg = _resumable_config(output, seed)
    resume = cfg is not None
    if cfg is None:
        cfg = demo_config(0 if seed is None else seed, overrides)
    data_root = prepare_scenes(output / DATA_DIR, scene_size(cfg), cfg.seed)
    seconds["data"] = time.perf_counter() - t0

    # 2. how many iterations fit in the budget on this machine
    if resume:
        log.info("resuming the demo in %s from iteration %d of %d", output, _latest_iteration(output),
                 cfg.solver.max_iter)
    else:
        t = time.perf_counter()
        per_iter = measure_iteration_seconds(cfg, data_root, output / CALIBRATION_DIR)
        seconds["calibration"] = time.perf_counter() - t
        cfg = plan(cfg, per_iter, minutes)
        log.info("this machine trains the demo model at %.2f s per iteration (batch %d): %d iterations fill "
                 "%g minutes", per_iter, cfg.solver.ims_per_batch, cfg.solver.max_iter, minutes)

    # 3. training, with the real trainer; stops at the deadline or on Ctrl-C with a checkpoint
    t = time.perf_counter()
    if resume and (output / FINAL_WEIGHTS).exists() and _latest_iteration(output) >= cfg.solver.max_iter:
        log.info("the demo in %s has finished training; evaluating it again (choose another --output for a "
                 "new run)", output)
        status, iteration = "finished", cfg.solver.max_iter
    else:
        budget = minutes * 60.0
        deadline = t + budget * DEADLINE_FACTOR + DEADLINE_SLACK_S
        # a resumed run finishes its plan; a new one is planned again at REPLAN_AT of the budget
        replans = [] if resume else [t + f * budget for f in REPLAN_AT]
        from_checkpoint = resume
        while True:
            pause = replans.pop(0) if replans else math.inf
            result = Trainer(cfg, data_root, output, resume=from_checkpoint, progress=progress,
                             should_stop=lambda _done, pause=pause: time.perf_counter() > min(deadline, pause)
                             ).train()
            from_checkpoint = True
            now = time.perf_counter()
            if not (result.status == "interrupted" and result.signal is None and now < deadline
                    and math.isfinite(pause)):
                break
            # paused to plan again: the wall time per iteration so far (evaluations and checkpoints included)
            # fills what is left of the budget
            per_iter = (now - t) / max(result.iteration, 1)
            cfg = plan(cfg, per_iter, max(t + budget - now, 0.0) / 60.0, done=result.iteration)
            log.info("planned again at iteration %d: %.2f s per iteration so far, %d iterations in all fill "
                     "the %g minutes", result.iteration, per_iter, cfg.solver.max_iter, minutes)
        seconds["train"] = time.perf_counter() - t
        iteration = result.iteration
        if result.status == "interrupted" and result.signal is not None:
            files = {"checkpoint": result.checkpoint} if result.checkpoint is not None else {}
            return DemoResult("interrupted", output, iteration, cfg.solver.max_iter, None, files, seconds)
        status = "finished" if result.status == "finished" else "out_of_time"

    # 4. held-out evaluation of the final weights (or of the last checkpoint when out of time), pictures
    weights = output / FINAL_WEIGHTS if status == "finished" else _latest_checkpoint(output)
    t = time.perf_counter()
    metrics, files = evaluate_and_draw(cfg, weights, data_root, output, iteration)
    seconds["eval"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    record = {**metrics, "demo": {
        "status": status, "seed": cfg.seed, "iteration": iteration, "max_iter": cfg.solver.max_iter,
        "batch": cfg.solver.ims_per_batch, "image_size": scene_size(cfg), "minutes": minutes,
        "num_train": _count(data_root, "training"), "num_val": metrics["num_images"], "resumed": resume,
        "threads": _threads(), "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "weights": str(weights)}}
    from .metrics import json_safe

    files["metrics"].write_text(json.dumps(json_safe(record), indent=2) + "\n")
    return DemoResult(status, output, iteration, cfg.solver.max_iter, metrics, files, seconds)


def evaluate_and_draw(cfg, weights: Path, data_root: Path, output: Path, iteration: int) -> tuple[dict, dict]:
    """Load `weights` (as `semask predict` would), evaluate them on the held-out scenes with the evaluator
    (predictions saved to OUTPUT/predictions) and draw the grid. Returns (metrics, files)."""
    from .data import build_dataset
    from .engine.evaluator import evaluate
    from .engine.trainer import CURVES_FILE
    from .weights import load_model

    model = load_model(None if weights.suffix == ".safetensors" else cfg, weights)
    val = build_dataset(cfg, cfg.data.val_split, data_root)
    metrics = evaluate(model, val, cfg, save_dir=output / PREDICTIONS_DIR)
    files = {"metrics": output / METRICS_FILE, "grid": output / GRID_FILE, "curves": output / CURVES_FILE,
             "weights": weights, "config": output / "config.yaml"}
    caption = (f"held-out mIoU {metrics['mIoU']:.1f}%  pixel accuracy {metrics['pACC']:.1f}%  "
               f"({metrics['num_images']} scenes; {iteration} iterations, seed {cfg.seed})")
    draw_grid(val, output / PREDICTIONS_DIR, files["grid"], caption=caption)
    return metrics, files


def _count(data_root: Path, split: str) -> int:
    return len(list((data_root / "images" / split).glob("*.png")))


def _latest_checkpoint(output: Path) -> Path:
    from .engine.checkpoint import CheckpointManager

    latest = CheckpointManager(output).latest()
    if latest is None:
        raise FileNotFoundError(f"{output}: no checkpoint written")
    return latest


def _threads() -> int:
    import torch

    return int(torch.get_num_threads())


def summary(result: DemoResult) -> str:
    """The lines `semask demo` prints at the end."""
    if result.metrics is None:
        return (f"stopped at iteration {result.iteration} of {result.max_iter}; "
                f"run the same command again to resume from the checkpoint in {result.output}")
    m = result.metrics
    per_class = "  ".join(f"{name} {v['IoU']:.0f}" for name, v in m["per_class"].items()
                          if not math.isnan(v["IoU"]))
    lines = [f"held-out mIoU {m['mIoU']:.1f}%  pixel accuracy {m['pACC']:.1f}%  on {m['num_images']} scenes "
             f"after {result.iteration} iterations ({result.seconds.get('train', 0.0) / 60:.1f} min of training)",
             f"IoU per class: {per_class}"]
    if result.status == "out_of_time":
        lines.append(f"the time budget ran out at iteration {result.iteration} of {result.max_iter}; run the "
                     "same command again to finish the planned schedule")
    lines += [f"  {label:<18}{path}" for label, path in (
        ("predictions:", result.files["grid"]), ("training curves:", result.files["curves"]),
        ("metrics:", result.files["metrics"]), ("weights:", result.files["weights"]))]
    lines.append(f"try: semask predict --weights {result.files['weights']} YOUR_IMAGE.png --output preds/")
    return "\n".join(lines)
