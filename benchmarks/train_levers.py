"""Peak RSS and CPU time of SeMask-T training steps with single levers switched back to the previous way.

    taskset -c 1 python benchmarks/train_levers.py --cate plain --optimizer loop   # the previous step
    taskset -c 1 python benchmarks/train_levers.py                                 # the current default

--cate plain: the model also returns the full-resolution "sem_seg_logits" and the criterion gets only
those (one cross-entropy over the whole map), as before the banded cate loss. --optimizer loop: AdamW
without the fused kernel. --mmap-threshold N: glibc's M_MMAP_THRESHOLD (an allocator experiment, not
a semask setting). Prints one JSON line: peak RSS (ru_maxrss of this process, which includes building
the model), CPU seconds (process_time) and loss of every step. Run each setting in its own process.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import resource
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="semask-tiny-ade20k")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--cate", choices=("plain", "banded"), default="banded")
    p.add_argument("--optimizer", choices=("loop", "fused"), default="fused")
    p.add_argument("--mmap-threshold", type=int, default=0, help="glibc M_MMAP_THRESHOLD in bytes (0: leave)")
    a = p.parse_args()
    if a.mmap_threshold:
        if ctypes.CDLL("libc.so.6").mallopt(-3, a.mmap_threshold) != 1:  # -3 = M_MMAP_THRESHOLD
            raise SystemExit("mallopt(M_MMAP_THRESHOLD) failed")
    torch.set_num_threads(a.threads)

    from semask import build_model
    from semask.benchmark import synthetic_training_batch
    from semask.modeling.criterion import build_criterion

    torch.manual_seed(0)
    model = build_model(a.config).train()
    cfg = model.config
    images, labels, targets = synthetic_training_batch(cfg, a.batch, a.size)
    criterion = build_criterion(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.solver.base_lr, weight_decay=cfg.solver.weight_decay,
                                  fused=a.optimizer == "fused")

    def step() -> float:
        if a.cate == "plain":
            outputs = model(images, with_semantic=True)
            del outputs["sem_seg_fused"]
        else:
            outputs = model(images)
        loss = sum(criterion(outputs, targets, labels).values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    cpu, losses = [], []
    for _ in range(a.steps):
        t0 = time.process_time()
        losses.append(step())
        cpu.append(round(time.process_time() - t0, 2))
    print(json.dumps({"cate": a.cate, "optimizer": a.optimizer, "mmap_threshold": a.mmap_threshold,
                      "threads": a.threads, "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                      "cpu_s": cpu, "loss": [round(v, 4) for v in losses]}))


if __name__ == "__main__":
    main()
