"""Training loader: infinite deterministic sampling, bit-exact resume, rank partition, workers, skips;
evaluation sharding."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import pytest
import torch

from semask.config import DataConfig, load_config
from semask.data import build_dataset
from semask.data.loader import (batch_positions, build_test_loader, build_train_loader, collate, epoch_permutation,
                                shard_indices)
from semask.data.synthetic import make_synthetic_dataset
from semask.data.transforms import TrainTransform

N = 7


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("scenes"), num_train=N, num_val=5, size=32, seed=1)


def cfg_for(on_error: str = "raise"):
    return load_config("semask-tiny-ade20k", {"model.num_classes": 6, "data.on_error": on_error})


def transform() -> TrainTransform:
    return TrainTransform(dataclasses.replace(DataConfig(), min_size_train=(24, 32, 40), max_size_train=128,
                                              crop_size=(24, 24), size_divisibility=32))


def take(loader, n: int) -> list[dict]:
    return list(itertools.islice(loader, n))


def same(a: dict, b: dict) -> bool:
    return torch.equal(a["images"], b["images"]) and torch.equal(a["labels"], b["labels"]) and \
        a["indices"] == b["indices"]


def test_batches_shapes_and_epochs_are_permutations(root: Path) -> None:
    ds = build_dataset(cfg_for(), "train", root)
    batches = take(build_train_loader(ds, transform(), batch_size=N, seed=3), 3)
    for b in batches:
        assert b["images"].shape == (N, 3, 32, 32) and b["images"].dtype == torch.float32
        assert b["labels"].shape == (N, 32, 32) and b["labels"].dtype == torch.int64
        assert sorted(b["indices"]) == list(range(N))  # batch of N = one epoch
    assert batches[0]["indices"] != batches[1]["indices"]  # each epoch has its own order
    assert batches[0]["indices"] == epoch_permutation(3, 0, N).tolist()


def test_resume_at_start_iter_is_bit_exact(root: Path) -> None:
    ds = build_dataset(cfg_for(), "train", root)
    full = take(build_train_loader(ds, transform(), batch_size=3, seed=11), 6)
    resumed_loader = build_train_loader(ds, transform(), batch_size=3, seed=11, start_iter=4)
    assert resumed_loader.iteration == 4
    resumed = take(resumed_loader, 2)
    assert resumed_loader.iteration == 6
    assert same(full[4], resumed[0]) and same(full[5], resumed[1])
    other_seed = take(build_train_loader(ds, transform(), batch_size=3, seed=12), 1)
    assert not same(full[0], other_seed[0])


def test_two_ranks_partition_the_global_batch(root: Path) -> None:
    ds = build_dataset(cfg_for(), "train", root)
    single = take(build_train_loader(ds, transform(), batch_size=4, seed=5), 3)
    r0 = take(build_train_loader(ds, transform(), batch_size=2, seed=5, rank=0, world_size=2), 3)
    r1 = take(build_train_loader(ds, transform(), batch_size=2, seed=5, rank=1, world_size=2), 3)
    for t in range(3):
        assert set(r0[t]["positions"]).isdisjoint(r1[t]["positions"])
        assert sorted(r0[t]["positions"] + r1[t]["positions"]) == single[t]["positions"]
        by_position = {p: (img, lab) for b in (r0[t], r1[t]) for p, img, lab in
                       zip(b["positions"], b["images"], b["labels"])}
        for k, p in enumerate(single[t]["positions"]):
            assert torch.equal(by_position[p][0], single[t]["images"][k])
            assert torch.equal(by_position[p][1], single[t]["labels"][k])
    assert batch_positions(2, 2, rank=1, world_size=2) == [9, 11]


def test_workers_give_the_same_batches(root: Path) -> None:
    ds = build_dataset(cfg_for(), "train", root)
    plain = take(build_train_loader(ds, transform(), batch_size=2, seed=9, start_iter=1), 3)
    workers = take(build_train_loader(ds, transform(), batch_size=2, seed=9, start_iter=1, num_workers=2), 3)
    assert all(same(a, b) for a, b in zip(plain, workers))


def test_skipped_files_are_counted_in_the_main_process(root: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    (copy / "images" / "training" / "scene_00002.png").write_bytes(b"")
    ds = build_dataset(cfg_for("skip"), "train", copy)
    batches = take(build_train_loader(ds, transform(), batch_size=N, seed=0, num_workers=2), 2)
    assert ds.skipped == 1 and all(2 not in b["indices"] for b in batches)
    assert all(b["indices"].count(3) == 2 for b in batches)  # the next sample stands in


def test_collate_pads_different_sizes() -> None:
    items = [(0, 0, torch.ones(3, 4, 5), torch.zeros(4, 5, dtype=torch.int64), {}),
             (1, 1, torch.ones(3, 6, 3), torch.ones(6, 3, dtype=torch.int64), {})]
    b = collate(items)
    assert b["images"].shape == (2, 3, 6, 5) and b["labels"].shape == (2, 6, 5)
    assert (b["images"][0, :, 4:] == 128).all() and (b["labels"][0, 4:] == 255).all()
    assert (b["labels"][1, :, 3:] == 255).all() and (b["labels"][1, :, :3] == 1).all()


def test_unlabelled_split_cannot_train(tmp_path: Path) -> None:
    from semask.data import DataError

    make_synthetic_dataset(tmp_path, 2, 2, 32, 0)
    import shutil

    shutil.rmtree(tmp_path / "annotations" / "validation")
    ds = build_dataset(cfg_for(), "val", tmp_path)
    with pytest.raises(DataError, match="no label maps"):
        next(build_train_loader(ds, transform(), batch_size=1, seed=0))


def test_shard_indices_partition() -> None:
    for n in (0, 1, 5, 10, 11):
        for world in (1, 2, 3, 4):
            shards = [shard_indices(n, r, world) for r in range(world)]
            assert sum(shards, []) == list(range(n))
            assert max(map(len, shards)) - min(map(len, shards)) <= 1
    with pytest.raises(ValueError):
        shard_indices(4, 2, 2)


def test_test_loader_covers_every_sample_once_and_leaves_bad_ones_out(root: Path, tmp_path: Path) -> None:
    ds = build_dataset(cfg_for(), "val", root)
    seen = [s.index for r in range(2) for s in build_test_loader(ds, r, 2)]
    assert seen == list(range(len(ds)))
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    (copy / "annotations" / "validation" / "scene_00001.png").write_bytes(b"junk")
    ds = build_dataset(cfg_for("skip"), "val", copy)
    seen = [s.index for s in build_test_loader(ds, num_workers=1)]
    assert seen == [0, 2, 3, 4] and ds.skipped == 1


@pytest.mark.parametrize("workers", [0, 2])
def test_a_bad_file_is_one_clean_error_even_from_a_worker(root: Path, tmp_path: Path, workers: int) -> None:
    import shutil

    from semask.data import DataError

    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    (copy / "images" / "training" / "scene_00004.png").write_bytes(b"")
    (copy / "images" / "validation" / "scene_00001.png").write_text("text")
    ds = build_dataset(cfg_for(), "train", copy)
    with pytest.raises(DataError) as info:
        take(build_train_loader(ds, transform(), batch_size=N, seed=0, num_workers=workers), 1)
    assert "scene_00004.png" in str(info.value) and "\n" not in str(info.value)
    assert "Traceback" not in str(info.value) and "worker" not in str(info.value)
    val = build_dataset(cfg_for(), "val", copy)
    with pytest.raises(DataError) as info:
        list(build_test_loader(val, num_workers=workers))
    assert "scene_00001.png" in str(info.value) and "\n" not in str(info.value)
