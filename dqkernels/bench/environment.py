"""The environment a sweep ran in, for its result document: versions, the device's name
and the folder slug it is filed under, the git commit, the machine's load, the available
dqkernels backends and the Inductor cache settings. No hostname, no user name."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import subprocess
from typing import Any

import torch

from dqkernels.bench.records import dtype_name, short_error


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return name or platform.processor() or platform.machine() or "cpu"


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def device_slug(device: torch.device, name: str | None = None) -> str:
    """``nvidia-h100-80gb-hbm3``, ``cpu-amd-epyc``, ``cpu-intel-xeon-platinum-8480``..."""
    name = name or device_name(device)
    if device.type == "cuda":
        return slugify(name)
    short = re.sub(r"\((r|tm)\)", " ", name, flags=re.I)
    short = re.sub(r"@.*$", " ", short)
    short = re.sub(r"\b(cpu|processor|\d+-core)\b", " ", short, flags=re.I)
    slug = slugify(short)
    return slug if slug.startswith("cpu") else f"cpu-{slug}"


def _git_commit() -> dict:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    info: dict[str, Any] = {"commit": None, "dirty": None}
    try:
        commit = subprocess.run(
            ["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode == 0:
            info["commit"] = commit.stdout.strip()
            status = subprocess.run(
                ["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            if status.returncode == 0:
                info["dirty"] = bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def environment(device: torch.device) -> dict:
    """Versions and device facts for the JSON (no hostname, no user names)."""
    env: dict[str, Any] = {
        "device_type": device.type,
        "device_name": device_name(device),
        "device_slug": device_slug(device),
        "date_utc": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": None,
        "triton": None,
        "dqkernels": None,
        "torch_num_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        # other work on the machine makes CPU timings noisy: recorded to judge a run
        "loadavg_1m_at_start": None,
    }
    try:
        env["loadavg_1m_at_start"] = round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        pass
    env.update({f"git_{k}": v for k, v in _git_commit().items()})
    try:
        env["cudnn"] = torch.backends.cudnn.version()
    except Exception:  # noqa: BLE001
        pass
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        pass
    try:
        import dqkernels
        from dqkernels import _ext, backends

        env["dqkernels"] = dqkernels.__version__
        env["dqkernels_build"] = {
            k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v))
            for k, v in _ext.build_info().items()
        }
        env["backends"] = {}
        for dt in (torch.float32, torch.bfloat16):
            env["backends"][dtype_name(dt)] = {
                b: backends.why_unavailable(b, device, dt) or "available" for b in backends.BACKENDS
            }
    except Exception as exc:  # noqa: BLE001
        env["dqkernels_error"] = short_error(exc)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu_memory_bytes"] = int(props.total_memory)
        env["gpu_capability"] = f"{props.major}.{props.minor}"
        env["gpu_sm_count"] = int(props.multi_processor_count)
        try:
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            if smi.returncode == 0:
                env["nvidia_driver"] = smi.stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            pass
    return env


def inductor_cache_settings() -> dict:
    try:
        from torch._functorch import config as functorch_config
        from torch._inductor import config as inductor_config

        return {
            "fx_graph_cache": bool(inductor_config.fx_graph_cache),
            "autograd_cache": bool(getattr(functorch_config, "enable_autograd_cache", False)),
            "force_disable_caches": bool(inductor_config.force_disable_caches),
        }
    except Exception:  # noqa: BLE001
        return {}
