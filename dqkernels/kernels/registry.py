"""What each backend's kernels can run on, declared per op family beside the kernels.

An op family is a package ``dqkernels/kernels/<family>/`` with one module per backend it
has (``torch.py``, ``cpp.py``, ``cuda.py``, ``triton.py``) and, in its light ``__init__.py``,
a tuple ``KERNELS`` of :class:`Kernels` declarations, one per backend module: the devices
and dtypes that backend's kernels take and what else they need (the compiled extension,
compiled CUDA kernels, triton, the triton interpreter on CPU), built with
:func:`torch_kernels`, :func:`cpp_kernels`, :func:`cuda_kernels`, :func:`triton_kernels`
(or :class:`Kernels` directly); ``INTERFACE`` names the functions every backend module of
the family provides. A family without (say) a triton module simply declares no triton
kernels. Like xformers' operator classes, a
declaration answers "can you run this input, and if not, why not" (:meth:`Kernels.why_not`).

:mod:`dqkernels.backends` reads the declarations (``auto``, ``why_unavailable``, every
rejection message, ``dqk info``). Reading them imports only the families' ``__init__``
modules, never a kernel module (so never triton); :func:`module` imports a backend's module
when an op first runs on it. Families are found by listing this package's subpackages;
:func:`register` adds one from elsewhere (or a fake one in tests).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import os
import pkgutil
from collections.abc import Callable, Iterable
from types import ModuleType

import torch

from dqkernels import _ext

BACKENDS = ("torch", "cpp", "cuda", "triton")

#: dtype names for declarations
FLOATS = ("float16", "bfloat16", "float32", "float64")
FLOATS_BELOW_64 = ("float16", "bfloat16", "float32")

#: device types for declarations (ANY_DEVICE: every device torch has)
ANY_DEVICE: tuple[str, ...] = ()
CPU = ("cpu",)
CUDA = ("cuda",)
CUDA_OR_CPU = ("cuda", "cpu")

_DEVICE_WORDS = {"cpu": "CPU", "cuda": "CUDA"}


def triton_interpreting() -> bool:
    """Whether Triton kernels run in the interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


@dataclasses.dataclass(frozen=True)
class Need:
    """Something kernels need besides a device and a dtype: ``missing(device)`` is None
    when it is there, else the reason they cannot run, in words."""

    name: str
    missing: Callable[[torch.device], str | None]


def _extension_missing(device: torch.device) -> str | None:
    return None if _ext.has_cpu_kernels() else f"not built: {_ext.LOAD_ERROR}"


def _cuda_kernels_missing(device: torch.device) -> str | None:
    if not _ext.has_cpu_kernels():
        return f"not built: {_ext.LOAD_ERROR}"
    if not _ext.has_cuda_kernels():
        return (
            "dqkernels._C was built without CUDA kernels (nvcc was not found, or DQK_CUDA=0 "
            "at build time)"
        )
    return None


def _triton_missing(device: torch.device) -> str | None:
    return None if triton_installed() else "triton is not installed"


def _interpreter_missing(device: torch.device) -> str | None:
    if device.type != "cpu" or triton_interpreting():
        return None
    return "needs a GPU; on CPU it runs only under TRITON_INTERPRET=1 (for tests)"


#: the compiled extension dqkernels._C (its CPU kernels)
EXTENSION = Need("the compiled extension dqkernels._C", _extension_missing)
#: dqkernels._C built with its CUDA kernels
CUDA_KERNELS = Need("dqkernels._C built with CUDA kernels", _cuda_kernels_missing)
#: the triton package
TRITON = Need("triton", _triton_missing)
#: on CPU tensors, the triton interpreter (TRITON_INTERPRET=1)
TRITON_INTERPRETER_ON_CPU = Need("TRITON_INTERPRET=1 for CPU tensors", _interpreter_missing)


@dataclasses.dataclass(frozen=True)
class Kernels:
    """One backend's kernels of one op family: what they run on.

    ``devices`` are device types (``ANY_DEVICE``: all), ``dtypes`` torch dtype names of
    the tensors the op is resolved for, ``needs`` what else must be present, checked in
    order. ``module`` is where the kernels live (default
    ``dqkernels.kernels.<family>.<backend>``); ``family`` is filled in by :func:`register`.
    """

    backend: str
    devices: tuple[str, ...]
    dtypes: tuple[str, ...]
    needs: tuple[Need, ...] = ()
    family: str = ""
    module: str = ""
    _dtype_set: frozenset = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(
                f"unknown backend {self.backend!r}; backends are {', '.join(BACKENDS)}"
            )
        object.__setattr__(self, "_dtype_set", frozenset(getattr(torch, d) for d in self.dtypes))

    def why_not(self, device: torch.device, dtype: torch.dtype) -> str | None:
        """None if these kernels can run on tensors of ``device`` and ``dtype``, otherwise
        the reason, in words."""
        if dtype not in self._dtype_set:
            return (
                f"dtype {str(dtype).replace('torch.', '')} is not supported (it takes "
                f"{', '.join(self.dtypes)})"
            )
        if self.devices and device.type not in self.devices:
            where = " and ".join(_DEVICE_WORDS.get(d, d) for d in self.devices)
            return f"runs on {where} tensors only; these are on {device}"
        for need in self.needs:
            why = need.missing(device)
            if why is not None:
                return why
        return None


# The usual declaration of each backend: its devices and needs, with the dtypes (and any
# further needs) of the family.


def torch_kernels(dtypes: tuple[str, ...], needs: tuple[Need, ...] = ()) -> Kernels:
    """PyTorch code: any device."""
    return Kernels("torch", ANY_DEVICE, dtypes, needs)


def cpp_kernels(dtypes: tuple[str, ...], needs: tuple[Need, ...] = ()) -> Kernels:
    """dqkernels._C's CPU kernels: CPU tensors, a built extension."""
    return Kernels("cpp", CPU, dtypes, (EXTENSION, *needs))


def cuda_kernels(dtypes: tuple[str, ...], needs: tuple[Need, ...] = ()) -> Kernels:
    """dqkernels._C's CUDA kernels: CUDA tensors, an extension built with CUDA kernels."""
    return Kernels("cuda", CUDA, dtypes, (CUDA_KERNELS, *needs))


def triton_kernels(dtypes: tuple[str, ...], needs: tuple[Need, ...] = ()) -> Kernels:
    """Triton kernels: CUDA tensors, or CPU tensors under the interpreter; triton
    installed."""
    return Kernels("triton", CUDA_OR_CPU, dtypes, (TRITON, TRITON_INTERPRETER_ON_CPU, *needs))


def every_backend(
    dtypes: tuple[str, ...] = FLOATS, triton_dtypes: tuple[str, ...] = FLOATS_BELOW_64
) -> tuple[Kernels, ...]:
    """The declaration of a family that ships all four backends: ``torch``, ``cpp`` and
    ``cuda`` on ``dtypes``, ``triton`` on ``triton_dtypes`` (no float64 by default:
    Triton's dot has none)."""
    return (
        torch_kernels(dtypes),
        cpp_kernels(dtypes),
        cuda_kernels(dtypes),
        triton_kernels(triton_dtypes),
    )


# family -> backend -> declaration; filled on first use
_families: dict[str, dict[str, Kernels]] = {}
_discovered = False
_modules: dict[tuple[str, str], ModuleType] = {}


def register(family: str, kernels: Iterable[Kernels]) -> None:
    """Declare (or replace) the kernels of op family ``family``."""
    decls = {}
    for k in kernels:
        if k.backend in decls:
            raise ValueError(f"op family {family!r} declares {k.backend} kernels twice")
        decls[k.backend] = dataclasses.replace(
            k, family=family, module=k.module or f"{__package__}.{family}.{k.backend}"
        )
    _families[family] = decls
    for key in [key for key in _modules if key[0] == family]:
        del _modules[key]


def unregister(family: str) -> None:
    """Forget op family ``family`` (a family added by :func:`register`)."""
    _families.pop(family, None)
    for key in [key for key in _modules if key[0] == family]:
        del _modules[key]


def families() -> dict[str, dict[str, Kernels]]:
    """Every op family's declarations: family -> backend -> :class:`Kernels`."""
    global _discovered
    if not _discovered:
        package = importlib.import_module(__package__)
        for info in pkgutil.iter_modules(package.__path__):
            if info.ispkg and info.name not in _families:
                mod = importlib.import_module(f"{__package__}.{info.name}")
                register(info.name, mod.KERNELS)
        _discovered = True
    return _families


def declared(family: str) -> dict[str, Kernels]:
    """The declarations of op family ``family``: backend -> :class:`Kernels`."""
    decls = _families.get(family)
    if decls is None:
        decls = families().get(family)
        if decls is None:
            raise ValueError(
                f"unknown op family {family!r}; the families are {', '.join(sorted(families()))}"
            )
    return decls


def module(family: str, backend: str) -> ModuleType:
    """The module holding ``backend``'s kernels of ``family`` (imported on first use)."""
    mod = _modules.get((family, backend))
    if mod is None:
        k = declared(family).get(backend)
        if k is None:
            raise ValueError(f"no {backend} kernels for {family}")
        mod = _modules[(family, backend)] = importlib.import_module(k.module)
    return mod
