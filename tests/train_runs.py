"""Training runs in tests: their files (checkpoints, metrics records) and processes
(``dqk train`` in a subprocess, under torchrun)."""

import json
import os
import subprocess
import sys
import time

import torch

from dqkernels import trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def checkpoint_names(out) -> list[str]:
    """The checkpoint files in ``out``, oldest first."""
    return [os.path.basename(p) for _, p in trainer.list_checkpoints(str(out))]


def final_checkpoint(out) -> dict:
    return trainer.load_checkpoint(trainer.latest_checkpoint(str(out)))


def records(out) -> list[dict]:
    """The records of ``out/metrics.jsonl``."""
    with open(os.path.join(str(out), "metrics.jsonl")) as f:
        return [json.loads(line) for line in f.read().splitlines()]


def strip_times(rec: dict) -> dict:
    """A record without its timings (``*_s``: seconds and rates per second)."""
    return {k: v for k, v in rec.items() if not k.endswith("_s")}


def subprocess_env(**extra) -> dict:
    """The environment of a subprocess that imports this checkout's dqkernels (outside
    any torchrun of the tests themselves)."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("WORLD_SIZE", None)
    return env


def training_process(out, *flags) -> subprocess.Popen:
    """``dqk train pixelcnn flags --out out`` in a subprocess (text pipes), returned once
    its first checkpoint is in ``out``; the test fails (the process killed) if it exits or
    takes over 120 s before."""
    cmd = [sys.executable, "-m", "dqkernels.cli", "train", "pixelcnn", *flags, "--out", str(out)]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not trainer.list_checkpoints(str(out)):  # the first step is done
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
    except BaseException:
        if proc.poll() is None:
            proc.kill()
        raise
    return proc


def torchrun(*argv, nproc: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node nproc --standalone argv`` on the CPU (gloo, one thread
    per process); fails the test with the output unless it exits 0."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--standalone",
        *map(str, argv),
    ]
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        env=subprocess_env(OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def ddp_against_one_process(tmp_path, program, run, flags) -> subprocess.CompletedProcess:
    """Trains with ``flags`` twice: under ``torchrun(*program)`` (2 processes) into
    ``tmp_path/ddp`` and in this process with ``run(argv)`` into ``tmp_path/one``, each
    dumping its parameters; both must succeed and the ranks must match each other and the one
    process (``assert_ranks_match``). Returns the torchrun process."""
    ddp = ["--out", tmp_path / "ddp", "--dump-params", tmp_path / "rank{rank}.pt"]
    proc = torchrun(*program, *flags, *ddp)
    one = ["--out", str(tmp_path / "one"), "--dump-params", str(tmp_path / "single.pt")]
    assert run([*flags, *one]) == 0
    assert_ranks_match(tmp_path)
    return proc


def assert_ranks_match(tmp_path, single: str | None = "single.pt") -> dict:
    """The parameters dumped by ``--dump-params tmp_path/rank{rank}.pt`` are identical on
    both ranks and, with ``single``, equal to one process's up to the reduction order.
    Returns rank 0's."""
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    one = torch.load(tmp_path / single, weights_only=True) if single else None
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
        if one is not None:
            torch.testing.assert_close(r0[k], one[k], rtol=1e-5, atol=1e-5)
    return r0
