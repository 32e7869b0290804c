"""``dqk info``: versions, what was built, which backends run here and why the others don't."""
from __future__ import annotations

import json
import platform

import torch

from dqkernels import _ext, backends


def collect() -> dict:
    """Everything ``dqk info`` reports, as a dict (also used by the benchmark records)."""
    import dqkernels

    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    cuda_ok = torch.cuda.is_available()
    info = {
        "dqkernels": dqkernels.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": triton_version,
        "triton_interpret": backends.triton_interpreting(),
        "cuda_available": cuda_ok,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if cuda_ok else [],
        "extension": {
            "built": _ext.has_cpu_kernels(),
            "cpu_kernels": _ext.has_cpu_kernels(),
            "cuda_kernels": _ext.has_cuda_kernels(),
            "load_error": _ext.LOAD_ERROR,
            **_ext.build_info(),
        },
        "default_backend": backends.get_backend(),
        "backends": {},
    }
    for dev in ("cpu", "cuda"):
        table = {}
        for b in backends.BACKENDS:
            why = backends.why_unavailable(b, dev, torch.float32)
            if dev == "cuda" and not cuda_ok and b != "cpp":
                why = "no CUDA device is visible to torch" + (f"; also: {why}" if why else "")
            table[b] = why or "available"
        try:
            table["auto"] = backends.resolve("info", torch.device(dev), torch.float32, "auto") \
                if (dev == "cpu" or cuda_ok) else None
        except backends.BackendUnavailableError:
            table["auto"] = None
        info["backends"][dev] = table
    return info


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def format_report(info: dict) -> str:
    ext = info["extension"]
    lines = [
        f"dqkernels {info['dqkernels']}",
        f"  python   {info['python']} ({info['platform']})",
        f"  torch    {info['torch']} (CUDA {info['torch_cuda'] or 'none'})",
        f"  triton   {info['triton'] or 'not installed'}"
        + ("  [TRITON_INTERPRET=1]" if info["triton_interpret"] else ""),
        f"  GPUs     {', '.join(info['gpus']) if info['gpus'] else 'none visible'}",
        "compiled extension dqkernels._C:",
    ]
    if ext["built"]:
        lines.append("  CPU kernels: yes" + (" (OpenMP)" if ext.get("openmp") else " (no OpenMP)"))
        if ext["cuda_kernels"]:
            lines.append(f"  CUDA kernels: yes (nvcc {ext.get('cuda_version')}, "
                         f"architectures {ext.get('cuda_archs')})")
        else:
            lines.append("  CUDA kernels: no (nvcc was not found at build time, or DQK_CUDA=0)")
        lines.append(f"  compiler: {ext.get('compiler')}")
    else:
        lines.append(f"  not available: {ext['load_error']}")
        lines.append("  (reinstall with a C++ compiler, CMake and pybind11 available; "
                     "DQK_REQUIRE_EXT=1 makes a failed build an error)")
    lines.append(f"default backend: {info['default_backend']}")
    for dev, table in info["backends"].items():
        auto = table.get("auto")
        lines.append(f"backends for {dev} tensors (float32)"
                     + (f", auto -> {auto}:" if auto else ":"))
        for b in backends.BACKENDS:
            lines.append(f"  {b:<7} {table[b]}")
    return "\n".join(lines)


def run(args) -> int:
    info = collect()
    print(json.dumps(info, indent=2) if args.json else format_report(info))
    return 0
