"""Datasets: the image loaders (digits, binarized MNIST, CIFAR-10, MNIST), level <-> grid
values, binary vectors, parallel text and token pairs, and the trainer's view of them."""

import gzip
import io
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from dqkernels.data import (
    BinaryVectors,
    DataFileError,
    TokenBatch,
    TokenPairDataset,
    TokenPairs,
    UnsafePickleError,
    binarized_mnist,
    binary_vectors,
    cifar10,
    digits,
    encode_pairs,
    grid_to_levels,
    levels_to_grid,
    load_dataset,
    mnist,
    multi30k,
    read_amat,
    read_cifar_binary,
    read_cifar_pickle,
    read_idx,
    read_parallel,
    read_text_lines,
)

SHARED_MNIST = os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "data", "binarized_mnist"
)


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
        map(bytes, torch.cat([a.train, a.test]).numpy())
    )
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


@pytest.mark.parametrize(
    "bad_line, message",
    [
        (" ".join(["0"] * 783), r"line 2: expected 784 space-separated 0/1 values, found 783"),
        (" ".join(["0"] * 783 + ["2"]), r"line 2: value '2' in column 784 is not 0 or 1"),
        (" ".join(["x"] + ["1"] * 783), r"line 2: value 'x' is not a number"),
    ],
)
def test_read_amat_malformed_row(tmp_path, bad_line, message):
    rows = _rows(3, 784)
    lines = _amat_text(rows).splitlines()
    lines[1] = bad_line
    path = tmp_path / "bad.amat.gz"
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    with pytest.raises(DataFileError, match=message) as info:
        read_amat(path)
    assert str(info.value).startswith(str(path))


def test_read_amat_empty_file(tmp_path):
    path = tmp_path / "empty.amat"
    path.write_text("\n")
    with pytest.raises(DataFileError, match="empty.amat: no rows"):
        read_amat(path)


def _write_text(path, text: str, gz: bool) -> None:
    """``text`` into ``path`` as UTF-8, or gzipped into ``path.gz``."""
    if gz:
        with gzip.open(str(path) + ".gz", "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")


def _write_split_files(directory, sizes, gz):
    directory.mkdir(exist_ok=True)
    for i, (split, n) in enumerate(sizes.items()):
        _write_text(
            directory / f"binarized_mnist_{split}.amat", _amat_text(_rows(n, 784, seed=i)), gz
        )


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


# ----------------------------------------------------------------------------- CIFAR-10


class _Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2's str (BINSTRING opcodes), as cPickle did for the
    official CIFAR-10 batches; ``pickle.load(..., encoding="bytes")`` gives them back as
    bytes."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj):
        n = len(obj)
        head = (
            pickle.SHORT_BINSTRING + bytes([n])
            if n < 256
            else pickle.BINSTRING + struct.pack("<i", n)
        )
        self.write(head + obj)
        self.memoize(obj)

    def save_str(self, obj):
        self.save_bytes(obj.encode("latin1"))

    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def _cifar_batch(n, seed):
    rng = np.random.RandomState(seed)
    return {
        b"batch_label": f"batch {seed}".encode(),
        b"labels": rng.randint(0, 10, n).tolist(),
        b"data": rng.randint(0, 256, (n, 3072)).astype(np.uint8),
        b"filenames": [f"img_{seed}_{i}.png".encode() for i in range(n)],
    }


def _pickle_batch(batch, style):
    if style == "py2":  # the official files: protocol 2 from Python 2, numpy.core names
        buf = io.BytesIO()
        _Py2Pickler(buf, protocol=2).dump(batch)
        return buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    return pickle.dumps(batch, protocol=int(style[-1]))  # "py3-2", "py3-5"


def _write_cifar(directory, sizes=(3, 2), test=2, fmt="py2"):
    """A fake CIFAR-10 in the real formats: len(sizes) training batches + a test batch."""
    directory.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{k + 1}" for k in range(len(sizes))] + ["test_batch"]
    batches = [_cifar_batch(n, seed) for seed, n in enumerate([*sizes, test])]
    for name, batch in zip(names, batches):
        if fmt == "bin":
            records = np.concatenate(
                [np.array(batch[b"labels"], np.uint8)[:, None], batch[b"data"]], axis=1
            )
            (directory / f"{name}.bin").write_bytes(records.tobytes())
        else:
            (directory / name).write_bytes(_pickle_batch(batch, fmt))
    return batches


def _images(batch):
    return torch.from_numpy(batch[b"data"].reshape(-1, 3, 32, 32))


@pytest.mark.parametrize("fmt", ["py2", "py3-2", "py3-5", "bin"])
@pytest.mark.parametrize("subdir", [None, "archive"])
def test_cifar10_formats(tmp_path, fmt, subdir):
    where = tmp_path / "cifar"
    if subdir:
        where = where / ("cifar-10-batches-bin" if fmt == "bin" else "cifar-10-batches-py")
    batches = _write_cifar(where, fmt=fmt)
    d = cifar10(tmp_path / "cifar")
    assert d.name == "cifar10" and d.num_levels == 256
    assert d.train.dtype == torch.uint8 and d.train.shape == (5, 3, 32, 32)
    assert d.test.shape == (2, 3, 32, 32) and d.image_shape == (3, 32, 32)
    assert torch.equal(d.train, torch.cat([_images(batches[0]), _images(batches[1])]))
    assert torch.equal(d.test, _images(batches[2]))
    # the channel planes: the first 1024 values of a row are the red plane, row-major
    row = batches[0][b"data"][1]
    assert torch.equal(d.train[1, 0, 0, :5], torch.from_numpy(row[:5]))
    assert torch.equal(d.train[1, 2, 31, 31], torch.tensor(row[3071]))
    assert torch.equal(load_dataset("cifar10", str(tmp_path / "cifar")).test, d.test)


def test_cifar_readers_return_labels(tmp_path):
    batches = _write_cifar(tmp_path / "py", fmt="py2")
    _write_cifar(tmp_path / "bin", fmt="bin")
    x, y = read_cifar_pickle(tmp_path / "py" / "data_batch_1")
    xb, yb = read_cifar_binary(tmp_path / "bin" / "data_batch_1.bin")
    assert torch.equal(x, xb) and torch.equal(y, yb)
    assert y.tolist() == batches[0][b"labels"] and y.dtype == torch.int64


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_pickle_refuses_code(tmp_path):
    """A batch whose pickle calls os.system is refused before anything runs."""
    marker = tmp_path / "pwned"
    batch = _cifar_batch(2, 0)
    batch[b"labels"] = _Exploit(marker)
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(batch, protocol=2))
    assert b"system" in path.read_bytes()
    with pytest.raises(
        UnsafePickleError,
        match=r"data_batch_1: refused to unpickle the global posix\.system: a "
        r"CIFAR-10 batch holds only numpy arrays and plain data",
    ):
        read_cifar_pickle(path)
    assert not marker.exists()
    # through the loader too, and as a ValueError (what the trainer reports as bad input)
    (tmp_path / "test_batch").write_bytes(_pickle_batch(_cifar_batch(1, 1), "py2"))
    with pytest.raises(ValueError, match="refused to unpickle the global posix.system"):
        cifar10(tmp_path)
    assert not marker.exists()
    # other dangerous globals, and a codec other than the one pickle writes
    for evil in (
        b"cbuiltins\neval\n(S'1'\ntR.",
        b"cnumpy\nload\n(S'x'\ntR.",
        b"c_codecs\nencode\n(Vx\nVrot13\ntR.",
    ):
        path.write_bytes(evil)
        with pytest.raises(UnsafePickleError):
            read_cifar_pickle(path)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not a pickle", r"not a CIFAR-10 python batch: unpickling failed"),
        (pickle.dumps([1, 2], protocol=2), r"expected a pickled dict, found list"),
        (pickle.dumps({b"labels": [1]}, protocol=2), r"no b'data' entry"),
        (
            pickle.dumps({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, protocol=2),
            r"b'data' must be a uint8 array \[N, 3072\]; "
            r"found a float32 array of shape \(2, 3072\)",
        ),
        (
            pickle.dumps({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}, protocol=2),
            r"found a uint8 array of shape \(2, 1024\)",
        ),
        (
            pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, protocol=2),
            r"b'labels' must be 2 integers",
        ),
        (
            pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}, protocol=2),
            r"labels must be in 0\.\.9; found 10\.\.10",
        ),
    ],
)
def test_cifar_pickle_malformed(tmp_path, content, message):
    path = tmp_path / "data_batch_1"
    path.write_bytes(content)
    with pytest.raises(DataFileError, match=message) as info:
        read_cifar_pickle(path)
    assert str(info.value).startswith(str(path))


def test_cifar_binary_malformed(tmp_path):
    path = tmp_path / "data_batch_1.bin"
    path.write_bytes(bytes(3073 * 2 - 5))
    with pytest.raises(DataFileError, match=r"size 6141 bytes is not a positive multiple of 3073"):
        read_cifar_binary(path)
    path.write_bytes(b"")
    with pytest.raises(DataFileError, match=r"size 0 bytes"):
        read_cifar_binary(path)
    rec = bytearray(3073 * 2)
    rec[3073] = 42
    path.write_bytes(bytes(rec))
    with pytest.raises(DataFileError, match=r"record 1 has label byte 42.*CIFAR-100"):
        read_cifar_binary(path)


def test_cifar10_missing_files(tmp_path):
    with pytest.raises(
        FileNotFoundError,
        match=r"cifar10: data directory .* does not exist.*"
        r"data_batch_1\.\.5 and test_batch.*--data-dir",
    ):
        cifar10(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        FileNotFoundError,
        match=r"found neither the python version .* nor in "
        r"its cifar-10-batches-py/",
    ):
        cifar10(tmp_path / "empty")
    _write_cifar(tmp_path / "gap", sizes=(1, 1, 1))
    os.unlink(tmp_path / "gap" / "data_batch_2")
    with pytest.raises(
        FileNotFoundError,
        match=r"data_batch_2 is missing .* while "
        r"data_batch_3 is there",
    ):
        cifar10(tmp_path / "gap")
    _write_cifar(tmp_path / "notest", fmt="bin")
    os.unlink(tmp_path / "notest" / "test_batch.bin")
    with pytest.raises(FileNotFoundError, match="found neither"):
        cifar10(tmp_path / "notest")


# ----------------------------------------------------------------------------- MNIST idx


def _idx_bytes(arr):
    arr = np.asarray(arr, dtype=np.uint8)
    return bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


@pytest.mark.parametrize(
    "gz, name",
    [
        (False, "{}-images-idx3-ubyte"),
        (True, "{}-images-idx3-ubyte"),
        (False, "{}-images.idx3-ubyte"),
    ],
)
def test_mnist_idx(tmp_path, gz, name):
    rng = np.random.RandomState(0)
    train, test = rng.randint(0, 256, (5, 28, 28)), rng.randint(0, 256, (3, 28, 28))
    for split, arr in (("train", train), ("t10k", test)):
        path = tmp_path / name.format(split)
        if gz:
            with gzip.open(str(path) + ".gz", "wb") as f:
                f.write(_idx_bytes(arr))
        else:
            path.write_bytes(_idx_bytes(arr))
    d = mnist(tmp_path)
    assert d.name == "mnist" and d.num_levels == 256
    assert d.train.shape == (5, 1, 28, 28) and d.test.shape == (3, 1, 28, 28)
    assert torch.equal(d.train[:, 0], torch.from_numpy(train.astype(np.uint8)))
    assert torch.equal(
        load_dataset("mnist", str(tmp_path)).test[:, 0], torch.from_numpy(test.astype(np.uint8))
    )


def test_read_idx_malformed(tmp_path):
    path = tmp_path / "x-idx3-ubyte"
    good = _idx_bytes(np.zeros((2, 4, 4)))
    for content, message in [
        (b"\x01\x02\x03\x04" + good[4:], r"not an idx file \(its first bytes 01020304"),
        (good[:2] + b"\x0d" + good[3:], r"idx element type 0x0d; only unsigned bytes"),
        (good[:-1], r"size 47 bytes does not match its header \(sizes 2x4x4 need 48 bytes\)"),
        (good[:6], r"truncated idx header"),
    ]:
        path.write_bytes(content)
        with pytest.raises(DataFileError, match=message) as info:
            read_idx(path)
        assert str(info.value).startswith(str(path))
    path.write_bytes(_idx_bytes(np.zeros(3)))
    with pytest.raises(DataFileError, match="idx file of 1 dimensions; expected 3"):
        read_idx(path, ndim=3)
    assert read_idx(path).shape == (3,)


def test_mnist_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"mnist: data directory .* does not exist"):
        mnist(tmp_path / "nowhere")
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx_bytes(np.zeros((1, 28, 28))))
    with pytest.raises(FileNotFoundError, match=r"t10k-images-idx3-ubyte\[\.gz\] not found"):
        mnist(tmp_path)


# ----------------------------------------------------------------------------- the trainer's view


def test_level_dataset_as_trainer_data():
    d = digits()
    train = d.examples("train")
    assert len(train) == 1437 and len(d.examples("test")) == 360
    batch = train.take(torch.tensor([3, 0]))
    assert batch.dtype == torch.int64 and torch.equal(batch, d.train[[3, 0]].long())
    assert torch.equal(train.take(slice(0, 5)), d.train[:5].long())
    assert len(train.head(7)) == 7
    assert d.describe() == "images of 1x8x8, 17 levels" and d.noun == ("images", "img")
    assert d.info() == {"kind": "images", "num_levels": 17, "image_shape": [1, 8, 8]}
    with pytest.raises(ValueError, match="digits has no 'valid' split"):
        d.examples("valid")


# ----------------------------------------------------------------------------- binary vectors


def test_binary_digits():
    d, levels = binary_vectors("digits"), digits()
    assert d.train.shape == (1437, 64) and d.test.shape == (360, 64)
    assert d.train.dtype == torch.uint8
    assert torch.equal(d.test, (levels.test.flatten(1) >= 8).to(torch.uint8))
    batch = d.examples("train").take(torch.arange(4))
    assert batch.dtype == torch.float32 and set(batch.unique().tolist()) <= {0.0, 1.0}
    assert d.describe() == "binary vectors of 64 dimensions"


@pytest.mark.parametrize("gz", [False, True])
def test_binary_vectors_of_binarized_mnist(tmp_path, gz):
    _write_split_files(tmp_path / "bm", {"train": 4, "valid": 2, "test": 3}, gz)
    d = binary_vectors("binarized_mnist", str(tmp_path / "bm"))
    assert d.train.shape == (4, 784) and d.valid.shape == (2, 784) and d.test.shape == (3, 784)
    assert torch.equal(d.test, torch.from_numpy(_rows(3, 784, seed=2)))
    assert len(d.examples("valid")) == 2


def test_binary_vectors_bad_input():
    with pytest.raises(ValueError, match="unknown binary-vector dataset 'cifar10'"):
        binary_vectors("cifar10")
    ok = torch.zeros(2, 5, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"test must be uint8 \[N, D\]; got float32 \(2, 5\)"):
        BinaryVectors("x", ok, ok.float())
    with pytest.raises(ValueError, match=r"values other than 0 and 1 \(max 2\)"):
        BinaryVectors("x", ok + 2, ok)
    with pytest.raises(ValueError, match="test vectors have 4 dimensions, train vectors 5"):
        BinaryVectors("x", ok, ok[:, :4])


# ----------------------------------------------------------------------------- text


def _write_lines(path, lines, gz=False):
    _write_text(path, "".join(line + "\n" for line in lines), gz)


@pytest.mark.parametrize("gz", [False, True])
def test_read_parallel(tmp_path, gz):
    _write_lines(tmp_path / "train.en", ["A dog.", "Zwei Männer?"], gz)
    _write_lines(tmp_path / "train.de", ["Ein Hund.", "Two men?"], gz)
    pairs = read_parallel(str(tmp_path), "train", "en", "de")
    assert pairs == [("A dog.", "Ein Hund."), ("Zwei Männer?", "Two men?")]


def test_read_parallel_errors(tmp_path):
    _write_lines(tmp_path / "train.en", ["a", "b"])
    _write_lines(tmp_path / "train.de", ["a"])
    with pytest.raises(DataFileError, match="has 2 lines but .*train.de has 1"):
        read_parallel(str(tmp_path), "train", "en", "de")
    with pytest.raises(FileNotFoundError, match="neither val.en nor val.en.gz found"):
        read_parallel(str(tmp_path), "val", "en", "de")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_parallel(str(tmp_path / "nowhere"), "train", "en", "de")
    (tmp_path / "bad.txt").write_bytes(b"fine\nnot \xff utf-8\n")
    with pytest.raises(DataFileError, match=r"bad.txt, line 2: not UTF-8 text"):
        read_text_lines(str(tmp_path / "bad.txt"))


def test_multi30k_layout(tmp_path):
    for stem, n in (("train", 3), ("val", 2), ("test_2016_flickr", 1)):
        for lang in ("en", "de"):
            _write_lines(
                tmp_path / f"{stem}.{lang}", [f"{stem} {lang} {i}" for i in range(n)], gz=True
            )
    m = multi30k(str(tmp_path))
    assert {k: len(v) for k, v in m.splits.items()} == {"train": 3, "valid": 2, "test": 1}
    assert m.splits["test"] == [("test_2016_flickr en 0", "test_2016_flickr de 0")]


SHARED_MULTI30K = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "multi30k")


@pytest.mark.skipif(not os.path.isdir(SHARED_MULTI30K), reason="shared Multi30k not here")
def test_multi30k_shared_files():
    m = multi30k(SHARED_MULTI30K)
    assert {k: len(v) for k, v in m.splits.items()} == {"train": 29000, "valid": 1014, "test": 1000}
    assert all(src and tgt for src, tgt in m.splits["test"])


def test_token_pairs_collate():
    vocab = {}

    def encode(text):
        return [vocab.setdefault(w, len(vocab) + 1) for w in text.split()]

    pairs = encode_pairs([("a b c", "x"), ("a", "y z"), ("b b", "x y z w")], encode, encode)
    assert len(pairs) == 3 and pairs.num_tokens() == (6, 7)
    batch = pairs.take(torch.tensor([2, 0]))
    assert isinstance(batch, TokenBatch) and len(batch) == 2
    assert batch.src.tolist() == [[2, 2, 0], [1, 2, 3]]
    assert batch.src_lengths.tolist() == [2, 3] and batch.tgt_lengths.tolist() == [4, 1]
    assert batch.tgt[1].tolist() == [4, 0, 0, 0]
    assert pairs.take(slice(1, 2)).tgt.tolist() == [[5, 6]]
    assert len(pairs.head(2)) == 2
    data = TokenPairDataset("toy", {"train": pairs, "test": pairs.head(1)}, 10, 12, "en", "de")
    assert data.examples("test") is data.splits["test"]
    assert data.describe() == "sentence pairs (en -> de, vocabularies 10 / 12)"
    with pytest.raises(ValueError, match="toy has no 'valid' split"):
        data.examples("valid")
    with pytest.raises(ValueError, match="2 source but 1 target"):
        TokenPairs([torch.tensor([1]), torch.tensor([2])], [torch.tensor([1])])
    with pytest.raises(ValueError, match="target sequence 0 must be a 1-D int64 tensor"):
        TokenPairs([torch.tensor([1])], [torch.tensor([1.0])])
