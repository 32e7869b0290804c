"""``dqk info``: versions, what was built, which backends run here and why the others don't,
and what each op family's backends declare (:mod:`dqkernels.kernels.registry`)."""

from __future__ import annotations

import json
import platform

import torch

from dqkernels import _ext, backends
from dqkernels.kernels import registry

_DEVICES = ("cpu", "cuda")


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
        if cuda_ok
        else [],
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
    for dev in _DEVICES:
        table: dict[str, str | None] = {}
        for b in backends.BACKENDS:
            table[b] = _reason(dev, cuda_ok, b, None)
        table["auto"] = _auto(dev, cuda_ok, None)
        info["backends"][dev] = table
    info["families"] = {}
    for family, decls in sorted(registry.families().items()):
        entry: dict = {
            "declared": {
                b: {
                    "devices": list(k.devices) or ["any"],
                    "dtypes": list(k.dtypes),
                    "needs": [n.name for n in k.needs],
                }
                for b, k in decls.items()
            }
        }
        for dev in _DEVICES:
            entry[dev] = {b: _reason(dev, cuda_ok, b, family) for b in backends.BACKENDS}
            entry[dev]["auto"] = _auto(dev, cuda_ok, family)
        info["families"][family] = entry
    return info


def _reason(dev: str, cuda_ok: bool, backend: str, family: str | None) -> str:
    why = backends.why_unavailable(backend, dev, torch.float32, family)
    if dev == "cuda" and not cuda_ok and backend != "cpp":
        why = "no CUDA device is visible to torch" + (f"; also: {why}" if why else "")
    return why or "available"


def _auto(dev: str, cuda_ok: bool, family: str | None) -> str | None:
    """What ``auto`` picks for float32 tensors on ``dev`` (None: nothing runs there)."""
    if dev == "cuda" and not cuda_ok:
        return None
    try:
        return backends.resolve("info", torch.device(dev), torch.float32, "auto", family)
    except backends.BackendUnavailableError:
        return None


def _short_dtypes(declared: dict | None) -> str:
    if declared is None:
        return "-"
    return ",".join(d.replace("float", "f") for d in declared["dtypes"])


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
            lines.append(
                f"  CUDA kernels: yes (nvcc {ext.get('cuda_version')}, "
                f"architectures {ext.get('cuda_archs')})"
            )
        else:
            lines.append("  CUDA kernels: no (nvcc was not found at build time, or DQK_CUDA=0)")
        lines.append(f"  compiler: {ext.get('compiler')}")
    else:
        lines.append(f"  not available: {ext['load_error']}")
        lines.append(
            "  (reinstall with a C++ compiler, CMake and pybind11 available; "
            "DQK_REQUIRE_EXT=1 makes a failed build an error)"
        )
    lines.append(f"default backend: {info['default_backend']}")
    for dev, table in info["backends"].items():
        auto = table.get("auto")
        lines.append(
            f"backends for {dev} tensors (float32)" + (f", auto -> {auto}:" if auto else ":")
        )
        for b in backends.BACKENDS:
            lines.append(f"  {b:<7} {table[b]}")
    lines.append(
        "op families: the dtypes each backend's kernels take (-: no kernels), and "
        "auto for float32 tensors on cpu / cuda:"
    )
    lines.append(f"  {'family':<14} " + "".join(f"{b:<18}" for b in backends.BACKENDS) + "auto")
    for family, entry in info["families"].items():
        cells = "".join(f"{_short_dtypes(entry['declared'].get(b)):<18}" for b in backends.BACKENDS)
        autos = " / ".join(entry[dev]["auto"] or "none" for dev in _DEVICES)
        lines.append(f"  {family:<14} {cells}{autos}")
    return "\n".join(lines)


def run(args) -> int:
    info = collect()
    print(json.dumps(info, indent=2) if args.json else format_report(info))
    return 0
