"""The processes of a run: a torchrun launch (``WORLD_SIZE`` > 1) or a single process."""

from __future__ import annotations

import os

import torch

from dqkernels.trainer.task import UsageError

__all__ = ["Dist", "available_memory", "pick_device"]


class Dist:
    """The process group of a torchrun launch (``WORLD_SIZE`` > 1), or a single process."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0")) if self.world > 1 else 0
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0")) if self.world > 1 else 0
        self.owns_group = False

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def init(self, device: torch.device) -> None:
        """Join the process group (NCCL on GPUs, gloo on CPUs) unless already in one."""
        if not self.enabled:
            return
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            self.owns_group = True
        if dist.get_world_size() != self.world:
            raise UsageError(
                f"WORLD_SIZE is {self.world} but the process group has "
                f"{dist.get_world_size()} processes"
            )

    def destroy(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.owns_group = False

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over the ranks in place (no-op in a single process)."""
        if self.enabled:
            import torch.distributed as dist

            dist.all_reduce(t)
        return t

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether ``flag`` is true on some rank (every rank must call it)."""
        if not self.enabled:
            return flag
        t = torch.tensor([float(flag)], dtype=torch.float64, device=device)
        return self.all_reduce(t).item() > 0

    def gather_objects(self, obj) -> list:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


def pick_device(name: str | None, dist: Dist) -> torch.device:
    """``--device``: cuda (this rank's GPU under torchrun) when available, else cpu."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                "--device cuda: no CUDA device is available to this torch "
                f"({torch.__version__}); use --device cpu"
            )
        if dist.local_rank >= torch.cuda.device_count():
            raise UsageError(
                f"local rank {dist.local_rank} has no GPU: {torch.cuda.device_count()} visible"
            )
        torch.cuda.set_device(dist.local_rank)
        return torch.device("cuda", dist.local_rank)
    return torch.device("cpu")


def available_memory(device: torch.device) -> int | None:
    """Bytes free for new allocations on ``device`` (CPU: the kernel's ``MemAvailable``),
    or None when unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
