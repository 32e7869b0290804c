"""Data files that try to make a loader allocate without bound, or that are truncated or
corrupt: each is refused with a DataFileError whose message starts with the file's path,
quickly and without allocating what the file would expand to (issue 12, item 4)."""

import gzip
import os
import pickle
import struct
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest
from test_data import _amat_text, _cifar_batch, _idx_bytes, _pickle_batch, _rows, _write_lines
from train_runs import ROOT, subprocess_env

from dqkernels.data import (
    DataFileError,
    UnsafePickleError,
    binarized_mnist,
    cifar10,
    mnist,
    multi30k,
    read_amat,
    read_cifar_binary,
    read_cifar_pickle,
    read_idx,
    read_text_lines,
)

MB = 1 << 20


class _Peak:
    """Peak memory traced (Python objects and numpy arrays) inside the block, in bytes."""

    def __enter__(self):
        tracemalloc.start()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        self.bytes = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


def _refused(fn, path, match=None, error=DataFileError, peak=16 * MB, seconds=10.0):
    """``fn()`` raises ``error`` whose message starts with ``path`` (and matches ``match``),
    within ``seconds`` and ``peak`` bytes of traced memory. Returns the message."""
    with _Peak() as p, pytest.raises(error, match=match) as info:
        fn()
    msg = str(info.value)
    assert msg.startswith(str(path)), msg
    assert "\n" not in msg
    assert p.bytes < peak, f"peak {p.bytes / MB:.1f} MB: {msg}"
    assert p.seconds < seconds, f"{p.seconds:.1f} s: {msg}"
    return msg


#: what the gzip bombs below expand to, hundreds of times their size. (Enough to show a
#: limit at work; and were a loader to read it all again, its parser would refuse the
#: content at its first line, so that the machine survives the regression.)
BOMB = 256 * MB


def _gzip_bomb(path, total: int = BOMB, unit: bytes = b"0" * 1023 + b"\n") -> int:
    """A gzip file (of many members, as gzip allows) that decompresses to ``total`` bytes
    of ``unit`` repeated; returns its size on disk."""
    member_bytes = 8 * MB
    member = gzip.compress(unit * (member_bytes // len(unit)), compresslevel=9)
    with open(path, "wb") as f:
        f.write(member * (total // member_bytes))
    return os.path.getsize(path)


def _sparse(path, size: int) -> None:
    """A file of ``size`` zero bytes that takes no room on disk."""
    with open(path, "wb") as f:
        f.truncate(size)


def _truncate(path) -> None:
    """Cut a file to its first half."""
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


# --------------------------------------------------------------------------- gzip bombs


def test_amat_gzip_bomb_stops_at_the_limit(tmp_path):
    path = tmp_path / "bomb.amat.gz"
    size = _gzip_bomb(path)
    assert size < BOMB / 250
    # 10 rows of 784 values: at most 31,360 bytes are decompressed
    msg = _refused(lambda: read_amat(path, max_rows=10), path, peak=2 * MB, seconds=2)
    assert "more than the 31,360 bytes that 10 rows of 784 0/1 values can take" in msg


def test_binarized_mnist_bounds_each_split(tmp_path):
    d = tmp_path / "bm"
    d.mkdir()
    for split in ("train", "test"):
        with gzip.open(d / f"binarized_mnist_{split}.amat.gz", "wt") as f:
            f.write(_amat_text(_rows(2, 784)))
    path = d / "binarized_mnist_valid.amat.gz"
    _gzip_bomb(path)
    msg = _refused(lambda: binarized_mnist(d), path, peak=40 * MB)  # the limit, not 256 MB
    assert "31,360,000 bytes that 10,000 rows of 784 0/1 values" in msg


def test_amat_rows_bounded(tmp_path):
    path = tmp_path / "x.amat"
    path.write_text(_amat_text(_rows(4, 784)))  # the standard layout: the fast parser
    assert read_amat(path, max_rows=4).shape == (4, 784)
    with pytest.raises(DataFileError, match=r"x.amat: 4 rows, more than the 3 this file"):
        read_amat(path, max_rows=3)
    path.write_text(_amat_text(_rows(4, 784)).replace("\n", "\r\n"))  # the line-by-line one
    assert read_amat(path, max_rows=4).shape == (4, 784)
    with pytest.raises(DataFileError, match=r"x.amat, line 4: more than 3 rows"):
        read_amat(path, max_rows=3)


def test_amat_line_length_bounded(tmp_path):
    """One line of a million values is refused before it is split into a million tokens."""
    path = tmp_path / "long.amat"
    path.write_text(_amat_text(_rows(1, 784)) + "0 " * 1_000_000 + "\n")
    msg = _refused(lambda: read_amat(path), path, peak=8 * MB)
    assert "line 2: longer than 3,136 bytes" in msg


def test_plain_files_refused_from_their_size(tmp_path):
    """Plain files larger than the format allows are refused before they are read (these
    are sparse files: nothing is written)."""
    amat = tmp_path / "big.amat"
    _sparse(amat, 4 * 784 * 10 + 1)
    _refused(lambda: read_amat(amat, max_rows=10), amat, r"31,361 bytes, more than the 31,360")
    cifar_bin = tmp_path / "data_batch_1.bin"
    _sparse(cifar_bin, 10_001 * 3073)
    _refused(lambda: read_cifar_binary(cifar_bin), cifar_bin, r"30,733,073 bytes, more than")
    cifar_py = tmp_path / "data_batch_1"
    _sparse(cifar_py, 1 << 40)
    _refused(lambda: read_cifar_pickle(cifar_py), cifar_py, r"bytes, more than the 92,160,000")
    text = tmp_path / "train.en"
    _sparse(text, 1 << 40)
    _refused(lambda: read_text_lines(text), text, r"bytes, more than the 268,435,456")


def test_idx_header_bounded(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    # a header declaring 4 billion images of 28x28, and no data
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + struct.pack(">3I", 2**32 - 1, 28, 28))
    _refused(lambda: read_idx(path, ndim=3), path, r"more than the 47,040,000")
    _refused(
        lambda: read_idx(path, ndim=3, shape=(60_000, 28, 28)),
        path,
        r"idx sizes 4294967295x28x28; expected at most 60,000 items of 28x28",
    )
    # images of another size are refused by mnist() before their data is read
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(np.zeros((1, 28, 28))))
    with gzip.open(path, "wb") as f:
        f.write(_idx_bytes(np.zeros((2, 20, 20))))
    _refused(lambda: mnist(tmp_path), path, r"sizes 2x20x20; expected at most 60,000 items")


def test_idx_gzip_bomb_after_the_data(tmp_path):
    """A valid header and data followed by 256 MB: only one byte past the data is read."""
    path = tmp_path / "x-idx3-ubyte.gz"
    good = _idx_bytes(np.zeros((2, 28, 28)))
    _gzip_bomb(path, unit=b"\0")
    with open(path, "rb") as f:
        bomb = f.read()
    path.write_bytes(gzip.compress(good) + bomb)
    msg = _refused(lambda: read_idx(path), path, peak=2 * MB, seconds=2)
    assert "size more bytes does not match its header (sizes 2x28x28 need 1584 bytes)" in msg


def test_text_bounded(tmp_path):
    path = tmp_path / "bomb.en.gz"
    _gzip_bomb(path)
    _refused(lambda: read_text_lines(path, max_bytes=MB), path, r"more than the 1,048,576 bytes")
    path = tmp_path / "lines.en"
    path.write_text("a\n" * 11)
    assert len(read_text_lines(path, max_lines=11)) == 11
    _refused(lambda: read_text_lines(path, max_lines=10), path, r"11 lines, more than the 10")


def test_multi30k_bounds_each_split(tmp_path):
    for stem, n in (("train", 3), ("val", 2), ("test_2016_flickr", 1)):
        for lang in ("en", "de"):
            _write_lines(tmp_path / f"{stem}.{lang}", [f"{stem} {lang}"] * n, gz=True)
    path = tmp_path / "val.de.gz"
    _gzip_bomb(path, unit=b"Ein Hund. " * 100 + b"\n")
    msg = _refused(lambda: multi30k(str(tmp_path)), path, peak=4 * MB)
    assert "more than the 327,680 bytes" in msg
    _write_lines(tmp_path / "val.de", ["x"] * 4057, gz=True)
    _refused(lambda: multi30k(str(tmp_path)), path, r"4,057 lines, more than the 4,056")


# --------------------------------------------------------------------------- truncated and corrupt


def _amat_file(path):
    with gzip.open(path, "wt") as f:
        f.write(_amat_text(_rows(8, 784)))


def _idx_file(path):
    with gzip.open(path, "wb") as f:
        f.write(_idx_bytes(np.random.RandomState(0).randint(0, 256, (8, 28, 28))))


def _text_file(path):
    with gzip.open(path, "wt") as f:
        f.write("".join(f"line {i} {'x' * i}\n" for i in range(500)))


_READERS = {
    "amat": ("x.amat.gz", _amat_file, read_amat),
    "idx": ("x-idx3-ubyte.gz", _idx_file, read_idx),
    "text": ("x.en.gz", _text_file, read_text_lines),
}


@pytest.mark.parametrize("fmt", sorted(_READERS))
def test_truncated_gzip(tmp_path, fmt):
    name, write, read = _READERS[fmt]
    path = tmp_path / name
    write(path)
    read(path)  # the whole file reads
    _truncate(path)
    _refused(lambda: read(path), path, r"truncated: the gzip stream ends before its end")


@pytest.mark.parametrize("fmt", sorted(_READERS))
def test_corrupt_gzip(tmp_path, fmt):
    name, write, read = _READERS[fmt]
    path = tmp_path / name
    write(path)
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF  # the CRC of the decompressed data
    path.write_bytes(bytes(data))
    _refused(lambda: read(path), path, r"corrupt gzip data \(CRC check failed")
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # the deflate stream itself
    path.write_bytes(bytes(data))
    _refused(lambda: read(path), path, r"corrupt gzip data")
    path.write_bytes(b"plain text, not gzip\n")
    _refused(lambda: read(path), path, r"corrupt gzip data \(Not a gzipped file")


def test_unreadable_file(tmp_path):
    path = tmp_path / "dir.amat"
    path.mkdir()
    _refused(lambda: read_amat(path), path, r"cannot be read \(Is a directory\)")


def test_truncated_gzip_loaders(tmp_path):
    """Through the loaders (what the trainer calls)."""
    for split in ("train", "valid", "test"):
        _amat_file(tmp_path / f"binarized_mnist_{split}.amat.gz")
    _truncate(tmp_path / "binarized_mnist_test.amat.gz")
    _refused(lambda: binarized_mnist(tmp_path), tmp_path / "binarized_mnist_test.amat.gz")
    for split in ("train", "t10k"):
        _idx_file(tmp_path / f"{split}-images-idx3-ubyte.gz")
    _truncate(tmp_path / "t10k-images-idx3-ubyte.gz")
    _refused(lambda: mnist(tmp_path), tmp_path / "t10k-images-idx3-ubyte.gz")


@pytest.mark.parametrize("fmt", ["py2", "py3-2", "py3-5"])
def test_truncated_cifar_pickle(tmp_path, fmt):
    path = tmp_path / "data_batch_1"
    path.write_bytes(_pickle_batch(_cifar_batch(3, 0), fmt))
    _truncate(path)
    _refused(lambda: read_cifar_pickle(path), path, r"not a CIFAR-10 python batch: unpickling")


def test_cli_reports_a_truncated_file_in_one_line(tmp_path):
    """``dqk train`` with a truncated data file: one line naming the file, status 2."""
    for split in ("train", "valid", "test"):
        _amat_file(tmp_path / f"binarized_mnist_{split}.amat.gz")
    bad = tmp_path / "binarized_mnist_valid.amat.gz"
    _truncate(bad)
    proc = subprocess.run(
        [sys.executable, "-m", "dqkernels.cli", "train", "pixelcnn", "--dataset"]
        + ["binarized_mnist", "--data-dir", str(tmp_path), "--out", str(tmp_path / "run")]
        + ["--device", "cpu", "--no-progress", "--max-steps", "1"],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"dqk train: error: {bad}: truncated: the gzip stream ends before its end-of-stream marker"
    ]


# --------------------------------------------------------------------------- CIFAR pickles

P = pickle


def _s(b: bytes) -> bytes:  # Python 2's str, as the official batches hold (bytes on load)
    return P.BINSTRING + struct.pack("<i", len(b)) + b


def _u(s: str) -> bytes:
    return P.SHORT_BINUNICODE + bytes([len(s)]) + s.encode()


def _i(n: int) -> bytes:
    return P.BININT + struct.pack("<i", n)


def _t(*items: bytes) -> bytes:
    return P.MARK + b"".join(items) + P.TUPLE


def _g(module: str, name: str) -> bytes:
    return P.GLOBAL + f"{module}\n{name}\n".encode()


def _put(i: int) -> bytes:
    return P.LONG_BINPUT + struct.pack("<I", i)


def _get(i: int) -> bytes:
    return P.LONG_BINGET + struct.pack("<I", i)


_CORE = "numpy.core.multiarray"
_U1 = _g("numpy", "dtype") + _t(_u("u1"), P.NEWFALSE, P.NEWTRUE) + P.REDUCE
_EMPTY = _g(_CORE, "_reconstruct") + _t(_g("numpy", "ndarray"), _t(_i(0)), _s(b"b")) + P.REDUCE
_ONE_ROW = _EMPTY + _t(_i(1), _t(_i(1), _i(3072)), _U1, P.NEWFALSE, _s(bytes(3072))) + P.BUILD


def _batch_pickle(data: bytes, labels: bytes = P.EMPTY_LIST, extra: bytes = b"") -> bytes:
    """A protocol-2 pickle of {b"data": <data>, b"labels": <labels>} (ops given as bytes)."""
    return (
        P.PROTO
        + b"\x02"
        + P.EMPTY_DICT
        + P.MARK
        + _s(b"data")
        + data
        + _s(b"labels")
        + labels
        + extra
        + P.SETITEMS
        + P.STOP
    )


def _nested(depth: int, leaf: bytes, kind: bytes) -> bytes:
    """A list or tuple of two references to one of two references to ... ``leaf``: 2**depth
    leaves when walked, a few bytes a level in the file (the memo shares each level)."""
    out = P.MARK + leaf + kind + _put(1000) + P.POP
    for k in range(depth):
        out += P.MARK + _get(1000 + k) * 2 + kind + _put(1001 + k) + P.POP
    return out + _get(1000 + depth)


def test_cifar_stride0_array_is_refused(tmp_path):
    """ndarray((100000, 3072), "u1", b"x", 0, (0, 0)): 100,000 images from 1 byte."""
    big = _g("numpy", "ndarray") + _t(
        _t(_i(100_000), _i(3072)), _u("u1"), _s(b"x"), _i(0), _t(_i(0), _i(0))
    )
    content = _batch_pickle(big + P.REDUCE)
    assert len(content) < 133
    path = tmp_path / "data_batch_1"
    path.write_bytes(content)
    msg = _refused(
        lambda: read_cifar_pickle(path), path, r"a call of numpy.ndarray", UnsafePickleError
    )
    assert "nothing from it was run" in msg
    # and with the rest of a data set around it, through the loader
    (tmp_path / "test_batch").write_bytes(_pickle_batch(_cifar_batch(1, 1), "py2"))
    _refused(lambda: cifar10(tmp_path), path, r"a call of numpy.ndarray", UnsafePickleError)


_ARRAY_STATE = (_i(1), _t(_i(100_000), _i(3072)), _U1, P.NEWFALSE)


@pytest.mark.parametrize(
    "data, message",
    [
        # numpy.ndarray by other opcodes than REDUCE
        (_g("numpy", "ndarray") + _t(_t(_i(9))) + P.NEWOBJ, "the pickle opcode NEWOBJ"),
        (P.MARK + _g("numpy", "ndarray") + _t(_i(9)) + P.OBJ, "the pickle opcode OBJ"),
        # an empty array of 300 MB, or data that does not fill its shape
        (
            _g(_CORE, "_reconstruct")
            + _t(_g("numpy", "ndarray"), _t(_i(100_000), _i(3072)), _s(b"b"))
            + P.REDUCE,
            "a numpy _reconstruct call other than the empty array",
        ),
        (
            _EMPTY + _t(*_ARRAY_STATE, _s(b"x")) + P.BUILD,
            r"array data of 1 bytes for shape \(100000, 3072\) of uint8 \(307200000 bytes\)",
        ),
        (_EMPTY + _t(*_ARRAY_STATE, _i(0)) + P.BUILD, r"array data of int"),
        (_EMPTY + _t(_i(1), _t(_t(_i(1))), _U1, P.NEWFALSE, _s(b"x")) + P.BUILD, "array shape"),
        (
            _g("numpy._core.numeric", "_frombuffer")
            + _t(_s(b"x"), _U1, _t(_i(100_000), _i(3072)), _u("C"))
            + P.REDUCE,
            r"array data of 1 bytes",
        ),
        (
            _g(_CORE, "scalar") + _t(_U1, _s(b"xx")) + P.REDUCE,
            r"array data of 2 bytes for shape \(\) of uint8 \(1 bytes\)",
        ),
        # dtypes other than plain numbers, or states that make one something else
        (
            _g("numpy", "dtype") + _t(P.EMPTY_LIST) + P.REDUCE,
            "a dtype a list other than a plain number type",
        ),
        (_g("numpy", "dtype") + _t(_u("O")) + P.REDUCE, "a dtype 'O'"),
        # a spec of 2**40 references, never printed in the message
        (_g("numpy", "dtype") + _t(_nested(40, _i(0), P.LIST)) + P.REDUCE, "a dtype a list"),
        (_g("numpy", "dtype") + _t(_u("V999999999")) + P.REDUCE, "a dtype 'V999999999'"),
        (
            _U1
            + _t(_i(3), _u("|"), P.NONE, _t(_u("a")), P.EMPTY_DICT, _i(-1), _i(-1), _i(0))
            + P.BUILD,
            "a dtype state other than that of a plain number type",
        ),
        (
            _U1 + _t(_i(3), _u("|"), *[P.NONE] * 3, _i(-1), _i(-1), _i(63)) + P.BUILD,
            "a dtype state other than",
        ),
        # items set on something else than a dict (numpy would convert a nested value)
        (_ONE_ROW + _i(0) + P.EMPTY_LIST + P.SETITEM, "items added to a ndarray"),
        (_ONE_ROW + _i(0) + P.APPEND, "items added to a ndarray"),
        (P.EMPTY_DICT + _t() + P.BUILD, "the state of a dict"),
        (P.EMPTY_SET, "the pickle opcode EMPTY_SET"),
        (_g("numpy", "load") + _t(_u("x")) + P.REDUCE, "the global numpy.load"),
    ],
)
def test_cifar_pickle_refuses_what_a_batch_never_holds(tmp_path, data, message):
    path = tmp_path / "data_batch_1"
    path.write_bytes(_batch_pickle(data))
    _refused(lambda: read_cifar_pickle(path), path, message, UnsafePickleError, peak=4 * MB)


def test_unsafe_pickle_error_is_a_data_file_error():
    assert issubclass(UnsafePickleError, DataFileError)
    assert issubclass(UnsafePickleError, pickle.UnpicklingError)
    assert issubclass(DataFileError, ValueError)


def test_cifar_nested_labels_are_not_walked(tmp_path):
    """Labels of 2**22 references in 600 bytes (and one row of data): refused as not a
    flat list of ints, without walking them."""
    path = tmp_path / "data_batch_1"
    path.write_bytes(_batch_pickle(_ONE_ROW, _nested(22, _i(0), P.LIST)))
    assert path.stat().st_size < 3072 + 700
    msg = _refused(lambda: read_cifar_pickle(path), path, peak=4 * MB, seconds=1)
    assert "b'labels' must be 1 integers (one per row of b'data'); found a list of 2" in msg
    # the right length, an element that is not an int
    path.write_bytes(_batch_pickle(_ONE_ROW, P.EMPTY_LIST + _t() + P.APPEND))
    with pytest.raises(DataFileError, match=r"found an element of type tuple"):
        read_cifar_pickle(path)


def test_cifar_nested_dict_keys_are_not_hashed(tmp_path):
    """A dict key of 2**28 references (hashing it takes seconds, twice as long a level
    more): refused at once."""
    path = tmp_path / "data_batch_1"
    key = _nested(28, _i(0), P.TUPLE)
    path.write_bytes(_batch_pickle(_ONE_ROW, P.EMPTY_LIST, extra=key + _i(0)))
    _refused(
        lambda: read_cifar_pickle(path),
        path,
        "a dict key of type tuple",
        UnsafePickleError,
        peak=4 * MB,
        seconds=1,
    )


def test_cifar_pickle_memo_index_costs_nothing(tmp_path):
    """A memo index of 2**32 - 1 (the C unpickler sizes an array by it): loads, small."""
    path = tmp_path / "data_batch_1"
    path.write_bytes(_batch_pickle(_ONE_ROW, P.EMPTY_LIST + _i(7) + _put(2**32 - 1) + P.APPEND))
    with _Peak() as p:
        images, labels = read_cifar_pickle(path)
    assert p.bytes < 4 * MB and images.shape == (1, 3, 32, 32) and labels.tolist() == [7]


def test_cifar_labels_out_of_range(tmp_path):
    path = tmp_path / "data_batch_1"
    huge = P.LONG1 + b"\x09" + b"\xff" * 8 + b"\x7f"  # 2**71 - 1: no int64
    path.write_bytes(_batch_pickle(_ONE_ROW, P.EMPTY_LIST + huge + P.APPEND))
    _refused(lambda: read_cifar_pickle(path), path, rf"labels must be in 0\.\.9; found {2**71 - 1}")


@pytest.mark.parametrize("fmt", ["py2", "py3-2", "py3-5"])
def test_cifar_batch_rows_bounded(tmp_path, fmt):
    """A batch holds at most 10,000 images: a full one loads, one more is refused."""
    batch = _cifar_batch(10_001, 0)
    path = tmp_path / "data_batch_1"
    path.write_bytes(_pickle_batch(batch, fmt))
    _refused(
        lambda: read_cifar_pickle(path),
        path,
        r"b'data' holds 10,001 images; a CIFAR-10 batch holds 1\.\.10,000",
        peak=200 * MB,
    )
    full = {k: v[:10_000] for k, v in batch.items() if k != b"batch_label"}
    path.write_bytes(_pickle_batch(full, fmt))
    images, labels = read_cifar_pickle(path)
    assert images.shape == (10_000, 3, 32, 32) and labels.shape == (10_000,)
    assert labels.tolist() == full[b"labels"]
    assert np.array_equal(images.numpy().reshape(10_000, -1), full[b"data"])
