"""The benchmark's result row (:class:`Record`), the JSON schema version, dtype names and
the one-line error text every module records.

A sweep writes one result document per op (see :mod:`dqkernels.bench.runner`); its
``records`` are :class:`Record` s as dicts, and the writers in :mod:`dqkernels.bench.report`
read nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: version of the result document; readers take every version up to this one
SCHEMA_VERSION = 1

DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "fp64": torch.float64,
    "float64": torch.float64,
}


def dtype_name(dtype: torch.dtype) -> str:
    return {
        torch.float32: "fp32",
        torch.bfloat16: "bf16",
        torch.float16: "fp16",
        torch.float64: "fp64",
    }.get(dtype, str(dtype).replace("torch.", ""))


@dataclass
class Record:
    """One row: one implementation of one op on one case (shape) and dtype. Which fields
    a row fills depends on the op's measurement mode (:mod:`dqkernels.bench.modes`)."""

    op: str
    case: str
    shape: str
    dims: dict
    dtype: str
    device: str
    impl: str
    status: str = "ok"  # ok | error | skipped
    error: str | None = None
    ms: float | None = None  # median of the timed call (fwd+bwd, forward, step)
    reps: int | None = None  # -1: chosen by triton's do_bench
    fwd_ms: float | None = None  # forward only (grad enabled) median
    fwd_reps: int | None = None
    speedup_vs_eager: float | None = None
    speedup_vs_compile: float | None = None
    fwd_speedup_vs_eager: float | None = None
    bytes_min: int | None = None  # minimal bytes of the timed call
    gbps: float | None = None
    frac_copy_bw: float | None = None
    fwd_bytes_min: int | None = None
    fwd_gbps: float | None = None
    peak_mem_bytes: int | None = None  # extra memory of the checked call beyond the inputs
    grad_rel_err: float | None = None  # ||g - g64|| / ||g64|| vs float64 reference
    compile_s: float | None = None  # first call of the compiled function (compile)
    kind: str | None = None  # eager | compile | backend | external
    flops: float | None = None  # FLOP of one timed call (ops that define it)
    tflops: float | None = None
    frac_matmul: float | None = None  # tflops over the measured matmul rate of the dtype
    vs: dict | None = None  # {baseline: its ms / this ms} (forward modes)
    exact_frac: float | None = None  # output checks (forward modes)
    out_rel_err: float | None = None
    note: str | None = None  # how the row ran, e.g. "chunked (8192 rows per chunk)"


RECORD_KEYS = tuple(Record.__dataclass_fields__)

#: the record fields a forward op's own ``check`` may fill
CHECK_FIELDS = ("exact_frac", "out_rel_err")


def short_error(exc: BaseException, limit: int = 300) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().replace("\n", " | ")
    return text if len(text) <= limit else text[: limit - 3] + "..."
