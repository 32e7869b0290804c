"""Datasets: the digits loader, the binarized-MNIST .amat reader, level <-> grid values."""
import gzip
import os

import numpy as np
import pytest
import torch

from dqkernels.data import (binarized_mnist, digits, grid_to_levels, levels_to_grid,
                            load_dataset, read_amat)

SHARED_MNIST = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                            "binarized_mnist")


# ----------------------------------------------------------------------------- digits


def test_digits_shapes_and_levels():
    d = digits()
    assert d.num_levels == 17
    assert d.train.shape == (1437, 1, 8, 8)
    assert d.test.shape == (360, 1, 8, 8)
    assert d.train.dtype == torch.uint8 and d.test.dtype == torch.uint8
    both = torch.cat([d.train, d.test])
    assert int(both.min()) == 0 and int(both.max()) == 16
    # every one of the 17 levels occurs
    assert torch.bincount(both.flatten().long(), minlength=17).gt(0).all()
    assert d.image_shape == (1, 8, 8) and d.num_dims == 64


def test_digits_split_is_deterministic_and_disjoint():
    a, b = digits(), load_dataset("digits")
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    # the split is a partition of sklearn's 1797 images, in a shuffled order
    from sklearn.datasets import load_digits

    ref = torch.from_numpy(load_digits().data.astype(np.uint8).reshape(-1, 1, 8, 8))
    assert sorted(map(bytes, ref.numpy())) == sorted(
        map(bytes, torch.cat([a.train, a.test]).numpy()))
    assert not torch.equal(a.test, ref[:360])
    # another seed gives another split
    c = digits(seed=1)
    assert not torch.equal(a.test, c.test)


# ----------------------------------------------------------------------- level <-> grid


@pytest.mark.parametrize("L", [2, 17, 256])
def test_levels_grid_round_trip(L):
    k = torch.arange(L)
    x = levels_to_grid(k, L)
    assert x.dtype == torch.float32
    assert x[0].item() == -1.0 and x[-1].item() == 1.0
    torch.testing.assert_close(x, 2 * k.double() / (L - 1) - 1, check_dtype=False)
    assert torch.equal(grid_to_levels(x, L), k)
    # uint8 levels and float64 grid values work too
    k8 = torch.arange(L, dtype=torch.uint8)
    assert torch.equal(grid_to_levels(levels_to_grid(k8, L, torch.float64), L), k)
    # values near a grid point go to it; values off the ends are clamped
    step = 2.0 / (L - 1)
    assert torch.equal(grid_to_levels(x + 0.3 * step, L), k)
    assert grid_to_levels(torch.tensor([-3.0, 3.0]), L).tolist() == [0, L - 1]


def test_levels_grid_bad_num_levels():
    with pytest.raises(ValueError, match="num_levels"):
        levels_to_grid(torch.zeros(3), 1)


# ----------------------------------------------------------------------------- .amat


def _rows(n, num_values, seed=0):
    return np.random.RandomState(seed).randint(0, 2, size=(n, num_values)).astype(np.uint8)


def _amat_text(rows) -> str:
    return "".join(" ".join(str(v) for v in row) + "\n" for row in rows)


def test_read_amat_plain_and_gzip(tmp_path):
    rows = _rows(5, 784)
    plain = tmp_path / "plain.amat"
    plain.write_text(_amat_text(rows))
    zipped = tmp_path / "zipped.amat.gz"
    with gzip.open(zipped, "wt") as f:
        f.write(_amat_text(rows))
    for path in (plain, zipped, str(plain)):
        got = read_amat(path)
        assert got.dtype == torch.uint8 and got.shape == (5, 784)
        assert torch.equal(got, torch.from_numpy(rows))


def test_read_amat_tolerates_other_whitespace(tmp_path):
    rows = _rows(3, 784, seed=1)
    text = "\r\n".join("  ".join(str(v) for v in row) + " " for row in rows) + "\r\n\n"
    path = tmp_path / "crlf.amat"
    path.write_text(text, newline="")
    assert torch.equal(read_amat(path), torch.from_numpy(rows))


@pytest.mark.parametrize("bad_line, message", [
    (" ".join(["0"] * 783), r"line 2: expected 784 space-separated 0/1 values, found 783"),
    (" ".join(["0"] * 783 + ["2"]), r"line 2: value '2' in column 784 is not 0 or 1"),
    (" ".join(["x"] + ["1"] * 783), r"line 2: value 'x' is not a number"),
])
def test_read_amat_malformed_row(tmp_path, bad_line, message):
    rows = _rows(3, 784)
    lines = _amat_text(rows).splitlines()
    lines[1] = bad_line
    path = tmp_path / "bad.amat.gz"
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=message) as info:
        read_amat(path)
    assert "bad.amat.gz" in str(info.value)


def test_read_amat_empty_file(tmp_path):
    path = tmp_path / "empty.amat"
    path.write_text("\n")
    with pytest.raises(ValueError, match="empty.amat: no rows"):
        read_amat(path)


def _write_split_files(directory, sizes, gz):
    directory.mkdir(exist_ok=True)
    for i, (split, n) in enumerate(sizes.items()):
        text = _amat_text(_rows(n, 784, seed=i))
        name = directory / f"binarized_mnist_{split}.amat"
        if gz:
            with gzip.open(str(name) + ".gz", "wt") as f:
                f.write(text)
        else:
            name.write_text(text)


@pytest.mark.parametrize("gz", [False, True])
def test_binarized_mnist_from_directory(tmp_path, gz):
    _write_split_files(tmp_path / "bm", {"train": 4, "valid": 2, "test": 3}, gz)
    d = binarized_mnist(tmp_path / "bm")
    assert d.num_levels == 2
    assert d.train.shape == (4, 1, 28, 28) and d.valid.shape == (2, 1, 28, 28)
    assert d.test.shape == (3, 1, 28, 28)
    assert torch.equal(d.test.reshape(3, 784), torch.from_numpy(_rows(3, 784, seed=2)))
    assert torch.equal(load_dataset("binarized_mnist", str(tmp_path / "bm")).train, d.train)


def test_binarized_mnist_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist.*binarized_mnist_train\.amat"):
        binarized_mnist(tmp_path / "nowhere")
    _write_split_files(tmp_path / "partial", {"train": 2, "valid": 2}, gz=False)
    with pytest.raises(FileNotFoundError) as info:
        binarized_mnist(tmp_path / "partial")
    msg = str(info.value)
    assert "binarized_mnist_test.amat" in msg and "binarized_mnist_test.amat.gz" in msg
    assert "binarized_mnist_valid.amat[.gz]" in msg


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")


@pytest.mark.skipif(not os.path.isdir(SHARED_MNIST), reason="shared binarized MNIST not here")
def test_binarized_mnist_shared_files():
    d = binarized_mnist(SHARED_MNIST)
    assert d.train.shape == (50000, 1, 28, 28)
    assert d.valid.shape == (10000, 1, 28, 28) and d.test.shape == (10000, 1, 28, 28)
    # the mean pixels listed in the data's README
    assert abs(d.train.float().mean().item() - 0.1306) < 5e-4
    assert abs(d.test.float().mean().item() - 0.1325) < 5e-4
