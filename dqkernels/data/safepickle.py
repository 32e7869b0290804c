"""A reader of the pickles of CIFAR-10's python version that runs no code from the file
and cannot be made to allocate more than a small multiple of the file's size.

A CIFAR-10 batch is a dict of plain data (bytes keys, a list of labels, a list of file
names) and one numpy array. :func:`load_batch_pickle` rebuilds exactly that and refuses,
with :class:`UnsafePickleError`, whatever else a pickle can ask for:

* a global other than the few numpy array pickles name (``os.system``, ...);
* opcodes a batch never holds (class instances, sets, persistent ids, out-of-band
  buffers, the extension registry);
* numpy arrays built any other way than numpy pickles them: ``numpy.ndarray`` itself is
  never called (its ``buffer`` and ``strides`` arguments can make a 100-byte string look
  like gigabytes of images), ``_reconstruct`` only makes the empty array numpy's pickles
  start from, and an array's data must be bytes of the file of exactly the size its shape
  and (plain numeric) dtype need;
* dict keys other than strings, bytes and ints, and items set on anything but a dict or
  appended to anything but a list: hashing a tuple, or numpy converting a list, walks
  every path through objects that the memo lets a file share, so nested sharing would
  double the work per level.

It runs on the pure-Python unpickler (``pickle._Unpickler``), whose opcodes can be
overridden one by one (and whose memo is a dict: the C unpickler sizes an array by the
largest memo index a file names).
"""

from __future__ import annotations

import io
import math
import pickle
import pickletools
import re

import numpy as np

from dqkernels.data.examples import DataFileError

__all__ = ["UnsafePickleError", "brief", "load_batch_pickle"]


class UnsafePickleError(pickle.UnpicklingError, DataFileError):
    """A pickle asked for something a CIFAR-10 batch never needs: a global outside the few
    a batch's numpy array needs, an opcode a batch never holds, or an array built in a way
    numpy's own pickles never use (it was refused, nothing from it ran). Also a
    :class:`~dqkernels.data.DataFileError` (a ValueError), like every other malformed file."""


class _Refused(Exception):
    """Raised where the file's path is unknown; :func:`load_batch_pickle` names the file."""


def brief(obj) -> str:
    """A short description of a value read from a file that never walks a container (the
    memo can share a container's items so that printing it takes exponential time):
    strings and bytes by their first 40 characters, small ints, plain dtypes; else the
    type's name."""
    if type(obj) in (str, bytes):
        return repr(obj[:40]) + ("..." if len(obj) > 40 else "")
    if type(obj) is int and obj.bit_length() <= 64:
        return str(obj)
    if isinstance(obj, np.dtype) and obj.fields is None and obj.subdtype is None:
        return repr(str(obj))
    return f"a {type(obj).__name__}"


# ------------------------------------------------------------------ what the pickle may call


def _numpy_modules():
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    return multiarray, numeric


class _NdarrayType:
    """Stands for ``numpy.ndarray`` in a pickle: the first argument of ``_reconstruct``,
    never called (``ndarray(shape, dtype, buffer, offset, strides)`` can give a tiny
    buffer any size)."""

    def __call__(self, *args, **kwargs):
        raise _Refused("a call of numpy.ndarray (numpy's pickles never call it)")


_NDARRAY = _NdarrayType()
_MAX_NDIM = 32  # numpy's own limit
# the dtype strings numpy's pickles of plain numeric arrays and scalars use ("u1", "i8", ...)
_DTYPE_SPEC = re.compile(r"[<>|=]?[biuf][1248]")


def _dtype_spec(spec) -> str:
    if isinstance(spec, bytes):  # Python 2's pickles, read with encoding="bytes"
        spec = spec.decode("latin1")
    if type(spec) is not str or not _DTYPE_SPEC.fullmatch(spec):
        raise _Refused(f"a dtype {brief(spec)} other than a plain number type")
    return spec


def _pickled_dtype(spec, align=False, copy=True) -> np.dtype:
    # always a copy: BUILD then sets the state of that copy, never of numpy's own uint8
    return np.dtype(_dtype_spec(spec), align=bool(align), copy=True)


def _check_dtype(dtype) -> np.dtype:
    if not (
        isinstance(dtype, np.dtype)
        and dtype.kind in "biuf"
        and dtype.fields is None
        and dtype.subdtype is None
    ):
        raise _Refused(f"an array or scalar of dtype {brief(dtype)}")
    return dtype


def _check_shape(shape) -> tuple[int, ...]:
    if not (
        type(shape) is tuple
        and len(shape) <= _MAX_NDIM
        and all(type(n) is int and n >= 0 for n in shape)
    ):
        raise _Refused(f"an array shape that is not a tuple of at most {_MAX_NDIM} sizes")
    return shape


def _check_data(data, shape: tuple[int, ...], dtype: np.dtype, kinds: tuple[type, ...]) -> None:
    need = math.prod(shape) * dtype.itemsize
    if type(data) not in kinds or len(data) != need:
        got = f"{len(data)} bytes" if type(data) in kinds else type(data).__name__
        raise _Refused(
            f"array data of {got} for shape {shape} of {dtype} ({need} bytes): an array's "
            f"data must be bytes of the file, exactly as many as its shape needs"
        )


def _pickled_reconstruct(subtype, shape, dtype):
    # numpy's pickles start every array as _reconstruct(ndarray, (0,), b"b"), then BUILD
    if subtype is not _NDARRAY or shape != (0,) or dtype not in (b"b", "b"):
        raise _Refused("a numpy _reconstruct call other than the empty array numpy's pickles use")
    return _numpy_modules()[0]._reconstruct(np.ndarray, (0,), b"b")


def _pickled_frombuffer(buf, dtype, shape, order):
    # protocol 5: _frombuffer(data, dtype, shape, order), the data in-band in the file
    _check_data(buf, _check_shape(shape), _check_dtype(dtype), (bytes, bytearray))
    if order not in ("C", "F"):
        raise _Refused(f"array order {brief(order)}")
    return _numpy_modules()[1]._frombuffer(buf, dtype, shape, order)


def _pickled_scalar(dtype, data=None):
    _check_data(data, (), _check_dtype(dtype), (bytes,))
    return _numpy_modules()[0].scalar(dtype, data)


def _latin1_encode(text, encoding="latin1"):
    # Python 3 writes bytes under protocols 0-2 as _codecs.encode(str, "latin1"); only the
    # codec pickle itself uses, no lookup of arbitrary codecs by name
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise _Refused(
            f"_codecs.encode with encoding {brief(encoding)}; only 'latin1' (what "
            f"pickle writes) is accepted"
        )
    return text.encode("latin1")


def _globals() -> dict:
    """The globals a pickled numpy array needs, under the module names numpy 1.x and 2.x
    write (``numpy.core`` became ``numpy._core``), mapped to checked stand-ins, so that
    nothing is imported by name while unpickling."""
    table = {
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): _pickled_dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for core in ("numpy.core", "numpy._core"):
        table[(core + ".multiarray", "_reconstruct")] = _pickled_reconstruct
        table[(core + ".multiarray", "scalar")] = _pickled_scalar
        table[(core + ".numeric", "_frombuffer")] = _pickled_frombuffer
    return table


_GLOBALS = _globals()

# ------------------------------------------------------------------------- opcodes

# what pickles of dicts, lists, tuples, strings, numbers and numpy arrays use (protocols 0-5)
_ALLOWED_OPCODES = frozenset(
    """PROTO FRAME STOP MARK POP POP_MARK DUP NONE NEWTRUE NEWFALSE INT BININT BININT1
    BININT2 LONG LONG1 LONG4 FLOAT BINFLOAT STRING BINSTRING SHORT_BINSTRING UNICODE
    BINUNICODE SHORT_BINUNICODE BINUNICODE8 BINBYTES SHORT_BINBYTES BINBYTES8 BYTEARRAY8
    EMPTY_LIST LIST APPEND APPENDS EMPTY_TUPLE TUPLE TUPLE1 TUPLE2 TUPLE3 EMPTY_DICT DICT
    SETITEM SETITEMS PUT BINPUT LONG_BINPUT MEMOIZE GET BINGET LONG_BINGET GLOBAL
    STACK_GLOBAL REDUCE BUILD""".split()
)
_OPCODE_NAMES = {op.code.encode("latin1")[0]: op.name for op in pickletools.opcodes}


def _refuser(name: str):
    def refuse(self) -> None:
        raise _Refused(f"the pickle opcode {name} (a CIFAR-10 batch has none)")

    return refuse


def _check_key(key) -> None:
    if type(key) not in (str, bytes, int):
        raise _Refused(f"a dict key of type {type(key).__name__} (a batch's keys are strings)")


def _target(self, kind: type):
    target = self.stack[-1]
    if type(target) is not kind:
        raise _Refused(f"items added to a {type(target).__name__} (expected a {kind.__name__})")
    return target


def _load_dict(self) -> None:
    items = self.pop_mark()
    for key in items[::2]:
        _check_key(key)
    self.append({items[i]: items[i + 1] for i in range(0, len(items), 2)})


def _load_setitem(self) -> None:
    value, key = self.stack.pop(), self.stack.pop()
    _check_key(key)
    _target(self, dict)[key] = value


def _load_setitems(self) -> None:
    items = self.pop_mark()
    target = _target(self, dict)
    for i in range(0, len(items), 2):
        _check_key(items[i])
        target[items[i]] = items[i + 1]


def _load_append(self) -> None:
    value = self.stack.pop()
    _target(self, list).append(value)


def _load_appends(self) -> None:
    items = self.pop_mark()
    _target(self, list).extend(items)


def _load_build(self) -> None:
    state = self.stack.pop()
    inst = self.stack[-1]
    if type(inst) is np.ndarray:
        # (version, shape, dtype, is_fortran, data), as ndarray.__reduce__ writes it
        if not (type(state) is tuple and len(state) == 5 and type(state[0]) is int):
            raise _Refused("an array state other than numpy's (version, shape, dtype, ...)")
        _check_data(state[4], _check_shape(state[1]), _check_dtype(state[2]), (bytes,))
    elif isinstance(inst, np.dtype):
        # (3, byteorder, None, None, None, -1, -1, flags) for a plain number type, its own
        # flags (flags of another kind of dtype, e.g. "holds objects", would be believed)
        if not (
            type(state) is tuple
            and len(state) == 8
            and state[0] == 3
            and state[1] in ("<", ">", "|", "=", b"<", b">", b"|", b"=")
            and state[2:7] == (None, None, None, -1, -1)
            and type(state[7]) is int
            and state[7] == inst.flags
        ):
            raise _Refused("a dtype state other than that of a plain number type")
    else:
        raise _Refused(f"the state of a {type(inst).__name__} (only arrays and dtypes have one)")
    inst.__setstate__(state)


class _Dispatch(dict):
    def __missing__(self, key):
        raise pickle.UnpicklingError(f"invalid load key {bytes([key])!r}")


class _BatchUnpickler(pickle._Unpickler):
    """The pure-Python unpickler, with the opcodes and globals of a CIFAR-10 batch only."""

    dispatch = _Dispatch(
        {
            code: fn if _OPCODE_NAMES[code] in _ALLOWED_OPCODES else _refuser(_OPCODE_NAMES[code])
            for code, fn in pickle._Unpickler.dispatch.items()
        }
    )
    dispatch.update(
        {
            pickle.DICT[0]: _load_dict,
            pickle.SETITEM[0]: _load_setitem,
            pickle.SETITEMS[0]: _load_setitems,
            pickle.APPEND[0]: _load_append,
            pickle.APPENDS[0]: _load_appends,
            pickle.BUILD[0]: _load_build,
        }
    )

    def __init__(self, file: io.BytesIO):
        # encoding="bytes": the official batches were pickled by Python 2, whose str
        # (the keys, the filenames and the array data) must come back as bytes
        super().__init__(file, encoding="bytes")

    def find_class(self, module: str, name: str):
        obj = _GLOBALS.get((module, name))
        if obj is None:
            raise _Refused(f"the global {module}.{name}")
        return obj


def load_batch_pickle(content: bytes, path: str):
    """The object pickled in ``content`` (the bytes of the file ``path``), rebuilt under the
    rules of the module docstring. Raises :class:`UnsafePickleError` for what they refuse
    and :class:`~dqkernels.data.DataFileError` for a file that is not a pickle (or a
    truncated one); both name the file."""
    try:
        return _BatchUnpickler(io.BytesIO(content)).load()
    except _Refused as exc:
        raise UnsafePickleError(
            f"{path}: refused to unpickle {exc}: a CIFAR-10 batch holds only numpy arrays "
            f"and plain data, so this file is not one (or has been tampered with); nothing "
            f"from it was run"
        ) from None
    except Exception as exc:  # truncated or not a pickle at all
        raise DataFileError(
            f"{path}: not a CIFAR-10 python batch: unpickling failed ({type(exc).__name__}: {exc})"
        ) from None
