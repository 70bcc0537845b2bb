"""Train/test loaders and the image store: both input pipelines agree, resume, ranks, corrupt images."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from reid.config import validate
from reid.data.image_store import ImageStore
from reid.data.loaders import build_test_loader, build_train_loader, choose_pipeline
from reid.data.transforms import TestTransform, resize_uint8
from reid.errors import CorruptImageError, ReidError


def sample(path: Path, pid: int, camid: int = 1):
    try:
        from reid.data.samples import Sample
    except ImportError:  # pragma: no cover - before reid.data.samples exists
        return SimpleNamespace(path=str(path), pid=pid, camid=camid)
    return Sample(str(path), pid, camid)


def write_dataset(root: Path, ids: int = 6, per_id: tuple[int, ...] = (5, 4, 6, 2, 5, 4), size=(32, 16),
                  mixed: bool = False, seed: int = 0) -> SimpleNamespace:
    """PNG crops (lossless, so every pipeline sees the same pixels) and a manifest-like object."""
    root.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    samples, labels = [], []
    for pid in range(ids):
        for j in range(per_id[pid % len(per_id)]):
            h, w = size
            if mixed and j % 2:
                h, w = h + 6 + pid, w + 2
            pixels = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=g).numpy()
            path = root / f"{pid:04d}_c1s1_{j:06d}_00.png"
            Image.fromarray(pixels).save(path)
            samples.append(sample(path, 100 + pid))
            labels.append(pid)
    return SimpleNamespace(train=samples, train_labels=labels, num_classes=ids)


def make_config(pipeline: str = "cpu", workers: int = 0, height: int = 32, width: int = 16, max_steps=None,
                policy: str = "fail", p: int = 2, k: int = 4):
    return validate({
        "data": {"height": height, "width": width, "padding": 3, "ids_per_batch": p, "instances_per_id": k,
                 "test_batch_size": 5, "num_workers": workers, "input_pipeline": pipeline,
                 "corrupt_images": policy},
        "model": {"channels_last": True},
        "train": {"device": "cpu", "seed": 3, "max_steps_per_epoch": max_steps},
    }, "loader test config")


def read_png(path) -> torch.Tensor:
    with Image.open(path) as im:
        return torch.tensor(np.array(im)).permute(2, 0, 1)


def corrupt(path: Path) -> None:
    path.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")


def take(loader, n: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for batch in loader:
        out.append(batch)
        if n is not None and len(out) == n:
            break
    return out


def assert_same(a, b) -> None:
    assert len(a) == len(b)
    for (xa, la), (xb, lb) in zip(a, b):
        assert torch.equal(la, lb)
        assert torch.equal(xa, xb)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    return write_dataset(tmp_path_factory.mktemp("uniform"))


# -- the two pipelines --------------------------------------------------------------------------------
@pytest.mark.parametrize("height,width", [(32, 16), (48, 24)])  # native size, and resized on the device
def test_gpu_and_cpu_pipelines_give_identical_batches(dataset, height: int, width: int) -> None:
    gpu = build_train_loader(dataset, make_config("gpu", height=height, width=width), "cpu")
    cpu = build_train_loader(dataset, make_config("cpu", height=height, width=width), "cpu")
    assert gpu.pipeline == "gpu" and cpu.pipeline == "cpu" and gpu.store is not None
    assert gpu.store.image_size == (32, 16)  # uniform and small: kept native
    for epoch in (0, 1):
        gpu.set_epoch(epoch)
        cpu.set_epoch(epoch)
        a, b = take(gpu), take(cpu)
        assert len(a) == len(gpu) > 1
        assert_same(a, b)
        for images, labels in a:
            assert images.shape == (8, 3, height, width) and images.dtype == torch.float32
            assert labels.dtype == torch.long and labels.device.type == "cpu"
            assert sorted(torch.bincount(labels).tolist())[-2:] == [4, 4]  # P=2 ids x K=4
    gpu.set_epoch(0)
    cpu.set_epoch(1)
    assert not torch.equal(take(gpu, 1)[0][0], take(cpu, 1)[0][0])


def test_worker_processes_do_not_change_the_batches(dataset) -> None:
    single = build_train_loader(dataset, make_config("cpu", workers=0), "cpu")
    workers = build_train_loader(dataset, make_config("cpu", workers=2), "cpu")
    assert_same(take(single), take(workers))


def test_mixed_image_sizes_agree_across_pipelines(tmp_path: Path) -> None:
    mixed = write_dataset(tmp_path / "mixed", mixed=True)
    gpu = build_train_loader(mixed, make_config("gpu"), "cpu")
    cpu = build_train_loader(mixed, make_config("cpu"), "cpu")
    assert gpu.store.image_size == (32, 16)  # resized once at load
    assert_same(take(gpu), take(cpu))


def test_images_are_the_augmented_store_rows(dataset) -> None:
    """The labels belong to the images: with augmentation off, each image is its sample normalised."""
    cfg = make_config("gpu")
    cfg.data.flip_prob, cfg.data.padding, cfg.data.random_erasing_prob = 0.0, 0, 0.0
    loader = build_train_loader(dataset, cfg, "cpu")
    store = loader.store
    pixels = {tuple(TestTransform(cfg.data)(store.images[i:i + 1])[0].flatten()[:12].tolist()): int(store.labels[i])
              for i in range(len(store))}
    for images, labels in take(loader):
        for img, label in zip(images, labels):
            assert pixels[tuple(img.flatten()[:12].tolist())] == int(label)


def test_len_respects_max_steps_per_epoch(dataset) -> None:
    full = build_train_loader(dataset, make_config("gpu"), "cpu")
    capped = build_train_loader(dataset, make_config("gpu", max_steps=2), "cpu")
    assert len(full) == len(full.sampler) == 3  # one chunk of K=4 per identity: 6 chunks // P=2
    assert len(capped) == 2
    batches = take(capped)
    assert len(batches) == 2
    assert_same(batches, take(full, 2))
    assert capped.num_classes == 6


def test_resume_mid_epoch_continues_exactly(dataset) -> None:
    cfg = make_config("cpu")
    reference = build_train_loader(dataset, cfg, "cpu")
    reference.set_epoch(2)
    expected = take(reference)
    interrupted = build_train_loader(dataset, cfg, "cpu")
    interrupted.set_epoch(2)
    take(interrupted, 1)
    state = interrupted.state_dict()
    assert state["sampler"]["consumed"] == 1 and state["sampler"]["epoch"] == 2
    resumed = build_train_loader(dataset, make_config("gpu"), "cpu")  # the other pipeline, same stream
    resumed.load_state_dict(state)
    resumed.set_epoch(2)
    assert_same(take(resumed), expected[1:])
    assert_same(take(resumed), expected)  # the next pass is the whole epoch


def test_state_dict_is_weights_only_loadable(dataset, tmp_path: Path) -> None:
    loader = build_train_loader(dataset, make_config("gpu"), "cpu")
    take(loader, 1)
    torch.save(loader.state_dict(), tmp_path / "s.pt")
    assert torch.load(tmp_path / "s.pt", weights_only=True) == loader.state_dict()
    with pytest.raises(ReidError, match="not a training-loader state"):
        loader.load_state_dict({"epoch": 1})


def test_ranks_together_see_the_single_process_batch(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "ranks", ids=8, per_id=(4, 5, 8, 4))
    cfg = make_config("gpu", p=4, k=2)
    single = take(build_train_loader(data, cfg, "cpu"))
    ranks = [take(build_train_loader(data, cfg, "cpu", rank=r, world_size=2)) for r in range(2)]
    for step, (images, labels) in enumerate(single):
        assert torch.equal(torch.cat([ranks[0][step][1], ranks[1][step][1]]), labels)
        assert torch.equal(torch.cat([ranks[0][step][0], ranks[1][step][0]]), images)
    with pytest.raises(ReidError, match="multiple of 3"):
        build_train_loader(data, cfg, "cpu", rank=0, world_size=3)


def test_outputs_stay_contiguous_on_the_cpu_and_auto_picks_cpu(dataset) -> None:
    loader = build_train_loader(dataset, make_config("auto"), "cpu")
    assert loader.pipeline == "cpu"
    images, _ = take(loader, 1)[0]
    assert images.is_contiguous()  # channels_last is for CUDA only
    assert choose_pipeline("gpu", torch.device("cpu"), 10, (8, 8)) == "gpu"
    with pytest.raises(ReidError, match="input_pipeline"):
        choose_pipeline("tpu", torch.device("cpu"), 10, (8, 8))


# -- the image store and corrupt images ----------------------------------------------------------------
def test_store_fail_policy_names_the_corrupt_file(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "bad")
    bad = Path(data.train[3].path)
    corrupt(bad)
    with pytest.raises(CorruptImageError, match=bad.name):
        ImageStore.build(data.train, data.train_labels, (32, 16), "fail", num_threads=2)
    with pytest.raises(CorruptImageError, match=bad.name):
        take(build_train_loader(data, make_config("cpu"), "cpu"))


def test_store_skip_policy_drops_the_image_and_keeps_labels_aligned(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "skip")
    for i in (0, 7):
        corrupt(Path(data.train[i].path))
    with pytest.warns(UserWarning, match="dropped 2 corrupt"):
        store = ImageStore.build(data.train, data.train_labels, (32, 16), "skip", num_threads=2)
    assert len(store) == len(data.train) - 2
    assert store.kept == [i for i in range(len(data.train)) if i not in (0, 7)]
    assert store.labels.tolist() == [data.train_labels[i] for i in store.kept]
    assert store.dropped == [str(data.train[0].path), str(data.train[7].path)]
    row = store.kept.index(8)
    assert torch.equal(store.images[row], read_png(data.train[8].path))
    with pytest.warns(UserWarning):
        loader = build_train_loader(data, make_config("gpu", policy="skip"), "cpu")
    for images, labels in take(loader):
        assert images.shape[0] == 8 and sorted(torch.bincount(labels).tolist())[-2:] == [4, 4]


def test_cpu_pipeline_skip_substitutes_an_image_of_the_same_identity(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "subst")
    for i in range(1, 5):  # identity 0 keeps one good image of five
        corrupt(Path(data.train[i].path))
    cfg = make_config("cpu", policy="skip")
    cfg.data.flip_prob, cfg.data.padding, cfg.data.random_erasing_prob = 0.0, 0, 0.0
    loader = build_train_loader(data, cfg, "cpu")
    with pytest.warns(UserWarning, match="skipping corrupt image"):
        batches = take(loader)
    good = TestTransform(cfg.data)(read_png(data.train[0].path))[0]
    seen = 0
    for images, labels in batches:  # 6 chunks in 3 batches: identity 0 is in one of them
        assert sorted(torch.bincount(labels).tolist())[-2:] == [4, 4]
        for img in images[labels == 0]:
            assert torch.equal(img, good)
            seen += 1
    assert seen == 4
    cfg.data.corrupt_images = "fail"
    with pytest.raises(CorruptImageError):
        take(build_train_loader(data, cfg, "cpu"))


def test_store_cache_is_reused_and_invalidated(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "cache")
    cache = tmp_path / "store-cache"
    first = ImageStore.build(data.train, data.train_labels, (32, 16), num_threads=1, cache_dir=cache)
    assert len(list(cache.glob("*.pt"))) == 1

    def refuse(path: str) -> torch.Tensor:
        raise AssertionError("decoded although the cache is valid")

    again = ImageStore.build(data.train, data.train_labels, (32, 16), num_threads=1, cache_dir=cache, decoder=refuse)
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    Image.fromarray(torch.zeros(32, 16, 3, dtype=torch.uint8).numpy()).save(data.train[0].path)
    rebuilt = ImageStore.build(data.train, data.train_labels, (32, 16), num_threads=1, cache_dir=cache)
    assert rebuilt.images[0].sum() == 0 and not torch.equal(rebuilt.images, first.images)


def test_store_resizes_large_or_mixed_images_at_load(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "big", size=(64, 32))
    store = ImageStore.build(data.train, data.train_labels, (32, 16), num_threads=2)
    assert store.image_size == (32, 16)
    native = ImageStore.build(data.train, data.train_labels, (128, 64), num_threads=2)
    assert native.image_size == (64, 32)  # uniform and smaller than the input: kept native
    assert torch.equal(store.images, resize_uint8(native.images, (32, 16)))
    assert store.nbytes == len(data.train) * 3 * 32 * 16


# -- test loader -----------------------------------------------------------------------------------
def test_test_loader_yields_every_image_in_order(dataset) -> None:
    cfg = make_config("cpu", height=48, width=24)
    loader = build_test_loader(dataset.train, cfg, "cpu")
    batches = list(loader)
    assert [b.shape[0] for b in batches] == [5, 5, 5, 5, 5, 1] and len(loader) == 6
    out = torch.cat(batches)
    store = ImageStore.build(dataset.train, dataset.train_labels, (48, 24), num_threads=1)
    assert torch.equal(out, TestTransform(cfg.data)(store.images))
    assert torch.equal(torch.cat(list(build_test_loader(dataset.train, make_config("cpu", workers=2, height=48,
                                                                                    width=24), "cpu"))), out)


def test_test_loader_policy_for_corrupt_images(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "test-bad")
    corrupt(Path(data.train[2].path))
    with pytest.raises(CorruptImageError, match=Path(data.train[2].path).name):
        list(build_test_loader(data.train, make_config("cpu"), "cpu"))
    with pytest.warns(UserWarning, match="skipping corrupt image"):
        out = torch.cat(list(build_test_loader(data.train, make_config("cpu", policy="skip"), "cpu")))
    assert out.shape[0] == len(data.train) - 1


def test_synthetic_dataset_end_to_end(synthetic_manifest, tiny_config) -> None:
    """The conftest dataset through both pipelines (what the trainer and evaluator see)."""
    tiny_config.data.input_pipeline = "gpu"
    gpu = build_train_loader(synthetic_manifest, tiny_config, "cpu")
    tiny_config.data.input_pipeline = "cpu"
    cpu = build_train_loader(synthetic_manifest, tiny_config, "cpu")
    assert len(gpu) == len(cpu) == tiny_config.train.max_steps_per_epoch
    assert_same(take(gpu), take(cpu))
    assert gpu.num_classes == synthetic_manifest.num_classes
    test = list(build_test_loader(synthetic_manifest.query, tiny_config, "cpu"))
    assert sum(b.shape[0] for b in test) == len(synthetic_manifest.query)


def test_workers_with_a_step_cap_restart_cleanly_each_epoch(dataset) -> None:
    """Persistent workers left with prefetched batches by max_steps must not leak them into the next epoch."""
    single = build_train_loader(dataset, make_config("cpu", max_steps=1), "cpu")
    workers = build_train_loader(dataset, make_config("cpu", workers=2, max_steps=1), "cpu")
    for epoch in range(3):
        single.set_epoch(epoch)
        workers.set_epoch(epoch)
        assert_same(take(single), take(workers))
