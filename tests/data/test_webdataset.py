"""WebDataset shards as a streamed dataset (cldfast.data.stream): the key -> original index
mapping (index file and listing pass), the errors naming key and shard, the training and eval
views (order, split between ranks and workers, every sample once), tracking on shards equal
to tracking the same samples as a map-style dataset, the CLI, and Recipe.workers="auto"."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

wds = pytest.importorskip("webdataset")

from cldfast.cli import main  # noqa: E402
from cldfast.data import (DatasetBundle, InMemoryImageDataset, load_dataset,  # noqa: E402
                          load_webdataset, read_index, shard_index, write_index)
from cldfast.data.stream import ShardError, list_shards  # noqa: E402
from cldfast.io import load_scores  # noqa: E402
from cldfast.pipeline import DataSpec, track  # noqa: E402
from cldfast.training import Recipe  # noqa: E402
from cldfast.training import recipe as recipe_module  # noqa: E402

N_TRAIN, N_TEST, SHARDS = 300, 60, 3
MEAN, STD = (0.2860,), (0.3530,)


def _images() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A few hundred uint8 [N, H, W] images with labels: the embedded Fashion-MNIST when its
    files are there, else scikit-learn's digits scaled to 0..255 (a synthetic stand-in)."""
    try:
        b = load_dataset("fashion-mnist")
        scale = 1
    except FileNotFoundError:
        b = load_dataset("digits")
        scale = 15  # digits' pixels are 0..16
    train = (b.train_eval.images[:N_TRAIN, 0].numpy().astype(np.int64) * scale).astype(np.uint8)
    test = (b.test.images[:N_TEST, 0].numpy().astype(np.int64) * scale).astype(np.uint8)
    return train, b.train_targets[:N_TRAIN], test, b.test_targets[:N_TEST]


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def write_shards(folder: Path, images: np.ndarray, labels: np.ndarray, prefix: str, shards: int,
                 *, key: str = "s", extra: dict[int, dict] | None = None) -> str:
    """``shards`` tar files of the samples in order; returns the brace pattern."""
    folder.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, len(images), shards + 1).astype(int)
    for s in range(shards):
        with wds.TarWriter(str(folder / f"{prefix}-{s:06d}.tar")) as w:
            for i in range(bounds[s], bounds[s + 1]):
                sample = {"__key__": f"{key}{i:05d}", "png": _png(images[i]), "cls": str(int(labels[i]))}
                sample.update((extra or {}).get(i, {}))
                w.write(sample)
    last = shards - 1
    return str(folder / (f"{prefix}-{{000000..{last:06d}}}.tar" if shards > 1 else f"{prefix}-000000.tar"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Shards of the samples, their index file (with the normalisation of the map-style
    reference) and that reference: the same samples as in-memory tensors."""
    root = tmp_path_factory.mktemp("wds")
    train, labels, test, test_labels = _images()
    pattern = write_shards(root, train, labels, "train", SHARDS)
    test_pattern = write_shards(root, test, test_labels, "test", 1, key="t")
    index = root / "index.json"
    listed = list_shards(wds.shardlists.expand_urls(pattern) + [test_pattern])
    write_index(index, listed, mean=list(MEAN), std=list(STD))
    plain = InMemoryImageDataset(torch.from_numpy(train).unsqueeze(1), labels, MEAN, STD)
    test_set = InMemoryImageDataset(torch.from_numpy(test).unsqueeze(1), test_labels, MEAN, STD)
    reference = DatasetBundle(name="reference", train=plain, train_eval=plain, test=test_set,
                              train_targets=labels.astype(np.int64),
                              test_targets=test_labels.astype(np.int64), num_classes=10,
                              input_shape=(1, *train.shape[1:]), fingerprint="reference")
    return {"root": root, "pattern": pattern, "test_pattern": test_pattern, "index": index,
            "reference": reference, "labels": labels, "images": train}


@pytest.fixture
def one_thread():
    """One torch thread: the 2-core test machines are shared, and OpenMP threads that wait for
    descheduled peers make these small trainings several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _spec(data, **kw) -> DataSpec:
    return DataSpec("webdataset", data["pattern"], index=str(data["index"]),
                    test_data_path=data["test_pattern"], **kw)


# --------------------------------------------------------------------------------------------
# Keys, positions, labels
# --------------------------------------------------------------------------------------------

def test_index_file_and_listing_pass_agree(data):
    from_file = shard_index(data["pattern"], data["index"])
    listed = shard_index(data["pattern"])  # a listing pass, no file
    assert from_file.keys == listed.keys == [f"s{i:05d}" for i in range(N_TRAIN)]
    np.testing.assert_array_equal(from_file.labels, listed.labels)
    np.testing.assert_array_equal(from_file.labels, data["labels"])
    np.testing.assert_array_equal(from_file.shard_of, np.repeat(np.arange(SHARDS), N_TRAIN // SHARDS))
    # IdMap: key -> original index, the place in index order (shard order, then tar order).
    keys = ["s00007", "s00150", "s00299"]
    assert from_file.ids.positions(keys).tolist() == listed.ids.positions(keys).tolist() == [7, 150, 299]
    assert from_file.source.startswith("index file") and "listing pass" in listed.source


def test_a_missing_index_file_is_written_by_one_listing_pass(data, tmp_path):
    path = tmp_path / "new-index.json"
    first = shard_index(data["pattern"], path)
    doc = read_index(path)
    assert sorted(doc["shards"]) == [f"train-{s:06d}.tar" for s in range(SHARDS)]
    again = shard_index(data["pattern"], path)
    assert again.keys == first.keys and again.source == f"index file {path}"


def test_bundle_labels_split_and_inputs_match_the_map_style_samples(data):
    bundle = _spec(data, image_size=None).load()
    ref = data["reference"]
    assert bundle.streamed and bundle.name == "webdataset" and bundle.num_classes == 10
    np.testing.assert_array_equal(bundle.train_targets, ref.train_targets)
    np.testing.assert_array_equal(bundle.test_targets, ref.test_targets)
    assert bundle.input_shape == ref.input_shape
    served = {int(k): (x, y) for x, y, k in bundle.train_eval.eval_view(np.arange(N_TRAIN))}
    assert sorted(served) == list(range(N_TRAIN))
    for k in (0, 123, 299):
        x, y = ref.train_eval[k]
        assert torch.equal(served[k][0], x) and served[k][1] == y


# --------------------------------------------------------------------------------------------
# Errors name the key and the shard
# --------------------------------------------------------------------------------------------

def test_a_shard_sample_missing_from_the_index_names_key_and_file(data, tmp_path):
    train, labels = data["images"], data["labels"]
    pattern = write_shards(tmp_path, train[:40], labels[:40], "train", 2)
    index = tmp_path / "index.json"
    shard_index(pattern, index)  # written now
    # Shard 1 is rewritten with one more sample: its key is not in the index.
    with wds.TarWriter(str(tmp_path / "train-000001.tar")) as w:
        for i in range(20, 40):
            w.write({"__key__": f"s{i:05d}", "png": _png(train[i]), "cls": str(int(labels[i]))})
        w.write({"__key__": "intruder", "png": _png(train[0]), "cls": "3"})
    bundle = load_webdataset(pattern, index=index, augment=False)
    with pytest.raises(ShardError) as info:
        list(bundle.train_eval.eval_view(np.arange(40)))
    msg = str(info.value)
    assert "'intruder'" in msg and "train-000001.tar" in msg and str(index) in msg
    assert "delete" in msg  # says how to rebuild the index


def test_an_index_key_missing_from_its_shard_is_an_error(data, tmp_path):
    train, labels = data["images"], data["labels"]
    pattern = write_shards(tmp_path, train[:40], labels[:40], "train", 2)
    index = tmp_path / "index.json"
    shard_index(pattern, index)
    with wds.TarWriter(str(tmp_path / "train-000001.tar")) as w:  # s00025 dropped
        for i in [i for i in range(20, 40) if i != 25]:
            w.write({"__key__": f"s{i:05d}", "png": _png(train[i]), "cls": str(int(labels[i]))})
    bundle = load_webdataset(pattern, index=index, augment=False)
    with pytest.raises(ShardError, match=r"train-000001\.tar holds 19 of the 20 .*'s00025'"):
        list(bundle.train_eval.eval_view(np.arange(40)))


def test_unknown_keys_labels_and_malformed_shards_are_clear_errors(data, tmp_path):
    train, labels = data["images"], data["labels"]
    index = shard_index(data["pattern"], data["index"])
    with pytest.raises(ShardError, match=r"shard x\.tar: sample 'nope' is not in the index \(index file"):
        index.original_index("nope", "x.tar", 0)
    # A sample without its class.
    with wds.TarWriter(str(tmp_path / "nocls-000000.tar")) as w:
        w.write({"__key__": "a", "png": _png(train[0]), "cls": "1"})
        w.write({"__key__": "b", "png": _png(train[1])})
    with pytest.raises(ShardError, match=r"nocls-000000\.tar: sample 'b' has no \.cls field \(its fields: png\)"):
        shard_index(str(tmp_path / "nocls-000000.tar"))
    # A key in two shards.
    write_shards(tmp_path / "dup", train[:4], labels[:4], "a", 1)
    write_shards(tmp_path / "dup", train[:4], labels[:4], "b", 1)
    with pytest.raises(ValueError, match=r"'s00000' appears in shard .*a-000000\.tar and in shard .*b-000000\.tar"):
        shard_index(str(tmp_path / "dup" / "a-000000.tar") + "::" + str(tmp_path / "dup" / "b-000000.tar"))
    # A class that differs from the index's.
    pattern = write_shards(tmp_path / "lbl", train[:10], labels[:10], "t", 1)
    idx_file = tmp_path / "lbl" / "index.json"
    listed = list_shards([pattern])
    listed["t-000000.tar"]["labels"][4] = (int(labels[4]) + 1) % 10
    write_index(idx_file, listed)
    bundle = load_webdataset(pattern, index=idx_file, augment=False)
    with pytest.raises(ShardError, match=r"sample 's00004' has class \d, the index .* says \d"):
        list(bundle.train_eval.eval_view(np.arange(10)))
    # Shards that are not there; an index file that is not one.
    with pytest.raises(FileNotFoundError, match=r"data_path=.*2 of its 2 shard\(s\) not found"):
        load_webdataset(str(tmp_path / "none-{0..1}.tar"))
    (tmp_path / "bad.json").write_text("{\"shards\": {}}")
    with pytest.raises(ValueError, match=r"index file .*bad\.json: expected a JSON object with \"format\""):
        load_webdataset(data["pattern"], index=tmp_path / "bad.json")
    with pytest.raises(ValueError, match=r"index=.*\(--index\) applies to dataset 'webdataset' only"):
        load_dataset("digits", index="x.json")


def test_images_of_different_sizes_need_image_size(data, tmp_path):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((10, 12), np.uint8), mode="L").save(buf, format="PNG")
    with wds.TarWriter(str(tmp_path / "mixed-000000.tar")) as w:
        w.write({"__key__": "a", "png": _png(data["images"][0]), "cls": "1"})
        w.write({"__key__": "b", "png": buf.getvalue(), "cls": "2"})
    bundle = load_webdataset(str(tmp_path / "mixed-000000.tar"), augment=False)
    with pytest.raises(ShardError, match=r"sample 'b' is a 12x10 image.*--image-size"):
        list(bundle.train_eval.eval_view(np.arange(2)))
    sized = load_webdataset(str(tmp_path / "mixed-000000.tar"), augment=False, image_size=8)
    assert sized.input_shape == (1, 8, 8)
    assert [tuple(x.shape) for x, _, _ in sized.train_eval.eval_view(np.arange(2))] == [(1, 8, 8)] * 2


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def test_npy_inputs_uint8_images_and_float_arrays(data, tmp_path):
    train, labels = data["images"], data["labels"]
    with wds.TarWriter(str(tmp_path / "u8-000000.tar")) as w:
        for i in range(8):
            w.write({"__key__": f"s{i:05d}", "npy": _npy(train[i]), "cls": str(int(labels[i]))})
    images = load_webdataset(str(tmp_path / "u8-000000.tar"), augment=False)
    ref = data["reference"].train_eval
    for x, y, k in images.train_eval.eval_view(np.arange(8)):  # grayscale default: 0.5 / 0.5
        torch.testing.assert_close(x * 0.5 + 0.5, ref[int(k)][0] * STD[0] + MEAN[0])
        assert y == int(labels[int(k)])
    features = np.random.default_rng(0).normal(size=(8, 5)).astype(np.float32)
    with wds.TarWriter(str(tmp_path / "f32-000000.tar")) as w:
        for i in range(8):
            w.write({"__key__": f"f{i}", "npy": _npy(features[i]), "cls": str(i % 2)})
    arrays = load_webdataset(str(tmp_path / "f32-000000.tar"))
    assert arrays.input_shape == (5,) and not arrays.train.augmented
    got = {int(k): x for x, _, k in arrays.train.eval_view(np.arange(8))}
    assert all(torch.equal(got[i], torch.from_numpy(features[i])) for i in range(8))


# --------------------------------------------------------------------------------------------
# Views: order, ranks, workers
# --------------------------------------------------------------------------------------------

def _positions(view, workers: int, batch_size: int) -> list[list[int]]:
    from cldfast.data import make_loader

    loader = make_loader(view, batch_size, shuffle=False, num_workers=workers, pin_memory=False)
    return [b[2].tolist() for b in loader]


@pytest.mark.parametrize("workers", [0, 2])
def test_index_order_is_the_map_style_order_batch_for_batch(data, workers):
    bundle = _spec(data).load()
    train_idx = np.setdiff1d(np.arange(N_TRAIN), np.arange(0, N_TRAIN, 7))
    view = bundle.train.training_view(train_idx, seed=5, shuffle=False, batch_size=32, workers=workers)
    batches = _positions(view, workers, 32)
    flat = np.arange(train_idx.size)
    assert batches == [flat[s:s + 32].tolist() for s in range(0, flat.size, 32)]
    assert len(view) == train_idx.size


def test_shuffled_epochs_serve_every_sample_once_in_a_seeded_order(data):
    bundle = _spec(data, shuffle_buffer=50).load()
    train_idx = np.arange(0, N_TRAIN, 2)
    orders = {}
    for seed in (1, 1, 2):
        view = bundle.train.training_view(train_idx, seed=seed, batch_size=16, workers=2)
        flat = sum(_positions(view, 2, 16), [])
        assert sorted(flat) == list(range(train_idx.size))
        orders.setdefault(seed, []).append(flat)
    assert orders[1][0] == orders[1][1]  # deterministic for a seed (resume replays it)
    assert orders[1][0] != orders[2][0] and orders[1][0] != sorted(orders[1][0])


@pytest.mark.parametrize("shuffle", [True, False])
def test_ranks_get_equal_batch_counts_and_together_every_sample(data, shuffle):
    bundle = _spec(data).load()
    train_idx = np.arange(N_TRAIN - 5)  # not a multiple of the world size
    per_rank = []
    for rank in range(2):
        view = bundle.train.training_view(train_idx, seed=3, rank=rank, world=2, shuffle=shuffle,
                                          batch_size=16, workers=2)
        per_rank.append(_positions(view, 2, 16))
    assert [len(b) for b in per_rank[0]] == [len(b) for b in per_rank[1]]  # DDP steps in lockstep
    seen = [k for rank in per_rank for batch in rank for k in batch]
    assert set(seen) == set(range(train_idx.size))


def test_eval_view_splits_shards_between_ranks_and_workers_each_sample_once(data):
    bundle = _spec(data).load()
    wanted = np.random.default_rng(0).permutation(N_TRAIN)[:200]
    seen = []
    for rank in range(2):
        view = bundle.train_eval.eval_view(wanted, rank=rank, world=2, workers=2)
        got = sum(_positions(view, 2, 64), [])
        assert len(got) == len(view)
        seen += got
    assert sorted(seen) == list(range(wanted.size))
    with pytest.raises(ValueError, match=r"lists original index 3 \('s00003'\) more than once"):
        bundle.train_eval.eval_view([3, 4, 3])


# --------------------------------------------------------------------------------------------
# Tracking on shards = tracking the same samples as a map-style dataset
# --------------------------------------------------------------------------------------------

def test_tracking_on_shards_equals_the_map_style_scores(data, tmp_path, one_thread):
    recipe = Recipe(epochs=3, batch_size=32, lr=0.05, workers=2, shuffle=False, device="cpu",
                    eval_batch_size=64)
    # Without augmentation: the same inputs as the map-style reference.
    streamed = load_webdataset(data["pattern"], index=data["index"],
                               test_data_path=data["test_pattern"], augment=False)
    sf, metrics = track(streamed, tmp_path / "stream", recipe=recipe, val_fraction=0.1,
                        progress=False)
    ref, ref_metrics = track(data["reference"], tmp_path / "ref", recipe=recipe, val_fraction=0.1,
                             progress=False)
    np.testing.assert_array_equal(sf.train_indices, ref.train_indices)
    np.testing.assert_array_equal(sf.val_indices, ref.val_indices)
    np.testing.assert_array_equal(sf.labels, ref.labels)
    # Every training sample observed once per checkpoint: 3 checkpoints, 2 differences each.
    assert (sf.extra["num_differences"] == 2).all() and (ref.extra["num_differences"] == 2).all()
    assert np.isfinite(sf.scores).all()
    np.testing.assert_allclose(sf.scores, ref.scores, rtol=0, atol=1e-6)
    assert metrics["proxy_test_accuracy"] == ref_metrics["proxy_test_accuracy"]
    for a, b in zip(metrics["history"], ref_metrics["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-6)


def test_track_cli_on_shards_default_order(data, tmp_path, capsys, one_thread):
    out = tmp_path / "cli"
    rc = main(["track", "--dataset", "webdataset", "--data-path", data["pattern"], "--index",
               str(data["index"]), "--test-data-path", data["test_pattern"], "--epochs", "3",
               "--batch-size", "32", "--lr", "0.05", "--workers", "2", "--shuffle-buffer", "64",
               "--device", "cpu", "--quiet", "--out", str(out)])
    assert rc == 0
    sf = load_scores(out / "scores.npz")
    assert sf.metadata["dataset"] == "webdataset"
    assert (sf.extra["num_differences"] == 2).all()  # each sample once per checkpoint, shuffled
    assert sf.scores.size + sf.val_indices.size == N_TRAIN
    assert np.isfinite(sf.metadata["proxy_test_accuracy"])
    assert "proxy test accuracy" in capsys.readouterr().out


def test_cli_errors_and_help(data, tmp_path, capsys):
    rc = main(["track", "--dataset", "webdataset", "--epochs", "1", "--quiet", "--out", str(tmp_path)])
    assert rc == 2
    assert "data_path (--data-path) is required for 'webdataset'" in capsys.readouterr().err
    rc = main(["track", "--dataset", "digits", "--index", "x.json", "--epochs", "1", "--quiet",
               "--out", str(tmp_path)])
    assert rc == 2 and "applies to dataset 'webdataset' only" in capsys.readouterr().err
    rc = main(["train", "--dataset", "webdataset", "--data-path", data["pattern"], "--index",
               str(data["index"]), "--prune", "random", "--prune-saving", "0.3", "--epochs", "2",
               "--quiet", "--out", str(tmp_path)])
    assert rc == 2 and "dynamic pruning (prune= / --prune) needs a map-style dataset" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["track", "--workers", "many"])
    assert "expected an integer >= 0 or 'auto', got 'many'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["track", "--help"])
    text = capsys.readouterr().out
    for option in ("--index FILE", "--test-data-path PATTERN", "--shuffle-buffer N", "--no-shuffle",
                   "--workers N|auto"):
        assert option in text


# --------------------------------------------------------------------------------------------
# Recipe.workers = "auto"
# --------------------------------------------------------------------------------------------

def test_auto_workers_rule(data, monkeypatch):
    import cldfast.core.threads as threads

    bundle = _spec(data).load()
    fmnist_like = data["reference"].train
    assert Recipe().workers == "auto"
    assert Recipe().resolved_workers(fmnist_like) == 0  # in-memory tensors: the main process
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    for cores, expected in ((1, 0), (2, 1), (4, 3), (9, 8), (64, 8)):
        monkeypatch.setattr(threads, "available_cores", lambda c=cores: c)
        assert recipe_module.auto_workers(bundle.train) == expected
        assert Recipe().resolved_workers(bundle.train) == expected
        assert Recipe().resolved_workers(fmnist_like) == 0
    monkeypatch.setattr(threads, "available_cores", lambda: 16)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: 4 processes share the 16 cores
    assert recipe_module.auto_workers(bundle.train) == 3
    assert Recipe(workers=5).resolved_workers(bundle.train) == 5
    # The default path on the embedded data keeps the identity of workers=0 (checkpoints and
    # bench caches written before "auto" still match).
    assert Recipe().resolved(fmnist_like).identity() == Recipe(workers=0).identity()
    with pytest.raises(ValueError, match=r"workers must be an integer >= 0 or 'auto'; got 'some'"):
        Recipe(workers="some").check()


@pytest.mark.slow
@pytest.mark.parametrize("order", [[], ["--no-shuffle"]])
def test_torchrun_two_processes_on_shards(data, tmp_path, order):
    """2 Gloo processes x 2 loader workers on 3 shards: rank 0 writes the missing index file
    (rank 1 waits for it), every rank runs the same number of batches (no hang), and every
    training sample is observed once per checkpoint."""
    import os
    import socket
    import subprocess
    import sys
    import tempfile

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           f"--master_port={port}", "-m", "cldfast", "track", "--dataset", "webdataset",
           "--data-path", data["pattern"], "--index", str(tmp_path / "index.json"), "--test-data-path",
           data["test_pattern"], "--epochs", "3", "--batch-size", "16", "--lr", "0.05",
           "--workers", "2", "--shuffle-buffer", "32", "--device", "cpu", "--quiet",
           "--out", str(out), *order]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          cwd=tempfile.gettempdir(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sf = load_scores(out / "scores.npz")
    assert sf.metadata["world_size"] == 2
    assert sf.scores.size + sf.val_indices.size == N_TRAIN
    assert (sf.extra["num_differences"] == 2).all() and np.isfinite(sf.scores).all()
    assert shard_index(data["pattern"], tmp_path / "index.json").keys == shard_index(data["pattern"]).keys
