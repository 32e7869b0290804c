"""A run folder belongs to one run (dqkernels.trainer.rundir): the lock, the run's identity
and what --resume may write over, pruning, the cleanup of killed writes' temporary files;
and ``dqk bench`` never shrinking a result file."""

import copy
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from train_runs import (
    ROOT,
    checkpoint_names,
    final_checkpoint,
    subprocess_env,
    training_process,
)

import dqkernels.cli
from dqkernels import bench, trainer
from dqkernels.trainer.checkpoint import write_checkpoint

# a tiny PixelCNN on 40 digits: 3 steps per epoch
TINY = (
    "--limit 40 --batch-size 16 --width 4 --blocks 0 --mixtures 1 --grid 0 --no-progress "
    "--device cpu"
).split()


def _cli(out, *extra):
    return dqkernels.cli.main(["train", "pixelcnn", *TINY, "--out", str(out), *extra])


def _snapshot(folder) -> dict:
    """Every file of ``folder`` and its bytes."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _dqk(*argv, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dqkernels.cli", *map(str, argv)],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ----------------------------------------------------------------------------- the lock


def test_second_run_into_a_locked_folder_is_refused_at_once(tmp_path):
    """Two real processes: while the first trains into --out (holding its lock), a second
    run into the same folder fails fast with one line naming the folder and the holder's
    pid; the first goes on undisturbed and stops normally."""
    out = tmp_path / "run"
    flags = ["--epochs", "10000", "--limit", "16", "--batch-size", "8", "--checkpoint-every", "1"]
    first = training_process(out, *TINY, *flags)
    try:
        for argv in (["--epochs", "1"], ["--resume"]):
            t0 = time.monotonic()
            second = _dqk("train", "pixelcnn", "--out", out, "--no-progress", *argv)
            assert second.returncode == 2, second.stderr
            assert time.monotonic() - t0 < 60
            lines = second.stderr.strip().splitlines()
            assert lines == [
                f"dqk train: error: --out {str(out)!r} is in use by another run "
                f"(pid {first.pid}); wait for it to end, or choose another --out"
            ]
            assert (out / ".lock").read_text().strip() == str(first.pid)
        assert first.poll() is None  # undisturbed
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 143
    # the lock went with the process: the folder can be resumed now
    step = final_checkpoint(out)["run"]["step"]
    resume = ["--out", str(out), "--resume", "--max-steps", str(step + 1), "--no-progress"]
    assert dqkernels.cli.main(["train", "pixelcnn", *resume]) == 0


def test_lock_is_released_and_an_empty_folder_is_not_left_behind(tmp_path):
    out = tmp_path / "new"
    assert _cli(out, "--batch-size", "0") == 2
    assert not out.exists()  # created for the lock, then removed: nothing was written
    assert _cli(out, "--epochs", "1", "--max-steps", "1") == 0
    assert _cli(out, "--epochs", "1", "--resume") == 0  # the first run let go of the lock


# ----------------------------------------------------------------------------- identity


def test_resume_into_another_runs_folder_is_refused(tmp_path, capsys):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert _cli(a, "--epochs", "1", "--max-steps", "2") == 0
    assert _cli(b, "--epochs", "2") == 0
    id_a = json.loads((a / "run.json").read_text())["run_id"]
    id_b = json.loads((b / "run.json").read_text())["run_id"]
    assert id_a != id_b and final_checkpoint(a)["run_id"] == id_a
    assert final_checkpoint(b)["run_id"] == id_b
    capsys.readouterr()
    before = _snapshot(b)
    assert _cli(b, "--resume", str(a / "checkpoint-2.pt")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"--resume: --out {str(b)!r} holds checkpoints of another run (checkpoint-6.pt" in err
    assert id_a in err and id_b in err and "--overwrite" in err
    assert _snapshot(b) == before  # untouched
    # into an empty folder: a branch of the run, with its own identity
    assert _cli(c, "--resume", str(a / "checkpoint-2.pt")) == 0
    ck = final_checkpoint(c)
    assert ck["run"]["step"] == 3 and ck["run_id"] not in (id_a, id_b)
    # into its own folder: the same run
    assert _cli(a, "--resume") == 0
    assert final_checkpoint(a)["run_id"] == id_a
    assert checkpoint_names(a) == ["checkpoint-2.pt", "checkpoint-3.pt"]
    # --overwrite: the other run's checkpoints and metrics are replaced
    assert _cli(b, "--resume", str(a / "checkpoint-2.pt"), "--overwrite") == 0
    assert checkpoint_names(b) == ["checkpoint-3.pt"]
    assert final_checkpoint(b)["run_id"] == id_a
    assert [json.loads(x)["epoch"] for x in (b / "metrics.jsonl").read_text().splitlines()] == [1]


def test_checkpoints_without_run_id_resume_only_into_their_own_folder(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _cli(a, "--epochs", "1", "--max-steps", "2") == 0
    assert _cli(b, "--epochs", "1", "--max-steps", "1") == 0
    for folder in (a, b):  # as written before run ids
        path = trainer.latest_checkpoint(str(folder))
        ck = trainer.load_checkpoint(path)
        del ck["run_id"]
        trainer.save_atomic(ck, path)
        os.unlink(folder / "run.json")
    capsys.readouterr()
    assert _cli(b, "--resume", str(a / "checkpoint-2.pt")) == 2
    assert "holds checkpoints of another run (checkpoint-1.pt: run without id" in (
        capsys.readouterr().err
    )
    assert checkpoint_names(b) == ["checkpoint-1.pt"]
    assert _cli(a, "--resume") == 0
    assert json.loads((a / "run.json").read_text())["run_id"] == final_checkpoint(a)["run_id"]


def test_fresh_run_refuses_a_folder_with_metrics(tmp_path, capsys):
    """Metrics without checkpoints are an earlier run's outputs too."""
    assert _cli(tmp_path, "--epochs", "1") == 0
    for _, path in trainer.list_checkpoints(str(tmp_path)):
        os.unlink(path)
    capsys.readouterr()
    assert _cli(tmp_path, "--epochs", "1") == 2
    assert "holds metrics of an earlier run (metrics.jsonl)" in capsys.readouterr().err
    assert _cli(tmp_path, "--epochs", "1", "--overwrite") == 0


# ----------------------------------------------------------------------------- pruning


def test_pruning_keeps_the_checkpoint_just_written(tmp_path):
    """Checkpoints of higher steps (a later point of the run) are never pruned in favour
    of the one just written; of the lower ones the newest stays."""
    for step in (10, 12):
        write_checkpoint(str(tmp_path), step, {"step": step})
    write_checkpoint(str(tmp_path), 3, {"step": 3})
    assert checkpoint_names(tmp_path) == ["checkpoint-3.pt", "checkpoint-10.pt", "checkpoint-12.pt"]
    write_checkpoint(str(tmp_path), 4, {"step": 4})
    write_checkpoint(str(tmp_path), 5, {"step": 5})
    assert checkpoint_names(tmp_path) == [
        "checkpoint-4.pt",
        "checkpoint-5.pt",
        "checkpoint-10.pt",
        "checkpoint-12.pt",
    ]
    write_checkpoint(str(tmp_path), 13, {"step": 13})
    assert checkpoint_names(tmp_path) == ["checkpoint-12.pt", "checkpoint-13.pt"]
    for bad in (-1, 2.0, True):
        with pytest.raises(ValueError, match="step must be an int >= 0"):
            write_checkpoint(str(tmp_path), bad, {})
    assert not list(tmp_path.glob("checkpoint--*"))


# ----------------------------------------------------------------------------- temp files


def test_temporary_files_of_killed_writes_are_cleaned(tmp_path):
    assert _cli(tmp_path, "--epochs", "1", "--max-steps", "1") == 0
    left = [
        f".checkpoint-1.pt.{os.getpid()}.0123abcd.tmp",  # even a live pid: the lock says
        ".metrics.jsonl.4194305.deadbeef.tmp",
        ".run.json.77.00000000.tmp",
    ]
    kept = [".notes.tmp", "mine.tmp", ".checkpoint-1.pt.12.xyz.tmp"]
    for name in left + kept:
        (tmp_path / name).write_bytes(b"partial")
    assert _cli(tmp_path, "--epochs", "1", "--resume") == 0
    names = {p.name for p in tmp_path.iterdir()}
    assert not names & set(left)
    assert set(kept) <= names


# ----------------------------------------------------------------------------- bench

QUICK = "--quick --device cpu --no-compile --no-progress --no-memory --no-check".split()


def test_bench_never_shrinks_a_result_file(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DQK_BENCH_CASES", raising=False)
    out = ["--out", str(tmp_path), "--ops", "vq_nearest"]
    assert bench.main([*QUICK, *out, "--backends", "torch,cpp"]) == 0
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    result = folder / "vq_nearest.json"
    n = len(json.loads(result.read_text())["records"])
    before = _snapshot(folder)
    capsys.readouterr()
    # a case pattern that matches nothing: nothing runs, nothing is written
    assert bench.main([*QUICK, *out, "--cases", "nope*"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no quick cpu case matches vq_nearest/nope*" in err
    # fewer cases x dtypes: refused before running
    assert bench.main([*QUICK, *out, "--dtypes", "fp32"]) == 2
    err = capsys.readouterr().err
    assert f"{result} holds results of 2 cases x dtypes, this run would measure 1" in err
    assert "--replace" in err
    # fewer rows (one backend fewer): refused after running, the file kept
    assert bench.main([*QUICK, *out, "--backends", "torch"]) == 2
    err = capsys.readouterr().err
    assert f"not replacing {result} ({n} records) with {n - 2} records" in err
    assert _snapshot(folder) == before
    # a killed write's leftover goes; --replace replaces
    (folder / ".vq_nearest.json.4194305.0123abcd.tmp").write_text("{")
    assert bench.main([*QUICK, *out, "--backends", "torch", "--replace"]) == 0
    assert len(json.loads(result.read_text())["records"]) == n - 2
    assert sorted(p.name for p in folder.iterdir()) == sorted(before)


def test_bench_help_documents_replace(capsys):
    with pytest.raises(SystemExit):
        dqkernels.cli.main(["bench", "--help"])
    assert "--replace" in capsys.readouterr().out


# ----------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("good")
    assert _cli(out, "--epochs", "2", "--max-steps", "1") == 0
    return trainer.load_checkpoint(str(out / "checkpoint-1.pt"))


def _refused(capsys, out, *argv) -> str:
    """The one line of ``dqk train pixelcnn --out out argv`` that exits 2."""
    capsys.readouterr()
    assert dqkernels.cli.main(["train", "pixelcnn", "--out", str(out), *argv]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dqk train: error: "), captured.err
    return lines[0]


def test_checkpoint_checksum_is_verified(tmp_path, capsys):
    assert _cli(tmp_path, "--epochs", "2", "--max-steps", "1") == 0
    path = tmp_path / "checkpoint-1.pt"
    outer = torch.load(path, weights_only=True)  # the envelope needs no dqkernels to read
    assert outer["envelope"] == 1 and len(outer["sha256"]) == 64
    assert outer["payload"].dtype == torch.uint8
    data = bytearray(path.read_bytes())
    start = len(data) // 3
    for i in range(start, start + 200):  # the 200 flipped bytes
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    line = _refused(capsys, tmp_path, "--resume")
    assert line == f"dqk train: error: --resume: {path}: checksum mismatch (the file is damaged)"
    with pytest.raises(trainer.CheckpointError, match=f"^{path}: checksum mismatch"):
        trainer.load_checkpoint(str(path))


def _crafted(good: dict, change) -> object:
    ck = copy.deepcopy(good)
    return change(ck)


def _set(ck, keys, value):
    d = ck
    for k in keys[:-1]:
        d = d[k]
    d[keys[-1]] = value
    return ck


CRAFTED = {
    "a list": (lambda ck: [ck], "not a trainer checkpoint: a list, not a dict"),
    "no optimizer": (lambda ck: ck.pop("optimizer") and ck, "no 'optimizer'"),
    "no run step": (lambda ck: ck["run"].pop("step") and ck, "no 'step'"),
    "negative step": (
        lambda ck: _set(ck, ["run", "step"], -1),
        "an impossible position: step -1, epoch 0, batch 1",
    ),
    "step off the epoch": (lambda ck: _set(ck, ["run", "step"], 7), "impossible position"),
    "bad torch RNG state": (
        lambda ck: _set(ck, ["run", "rng", 0, "torch"], torch.zeros(5, dtype=torch.uint8)),
        "does not fit this run",
    ),
    "bad numpy RNG state": (
        lambda ck: _set(ck, ["run", "rng", 0, "numpy", "name"], "PCG64"),
        "does not fit this run",
    ),
    "no RNG states": (lambda ck: _set(ck, ["run", "rng"], []), "'rng' is not a list"),
    "model of other shapes": (
        lambda ck: _set(ck, ["model"], {k: v[:1] for k, v in ck["model"].items()}),
        "does not fit this run: Error(s) in loading state_dict",
    ),
    "optimizer moment of another shape": (
        lambda ck: _set(ck, ["optimizer", "state", 0, "exp_avg"], torch.zeros(1)),
        "optimizer state 'exp_avg' has shape (1,)",
    ),
    "optimizer moment off by 1e34": (
        lambda ck: _set(
            ck,
            ["optimizer", "state", 0, "exp_avg_sq"],
            ck["optimizer"]["state"][0]["exp_avg_sq"] - 1e38 * 1e38,
        ),
        "optimizer state 'exp_avg_sq' is not finite",
    ),
    "width a string": (
        lambda ck: _set(ck, ["args", "width"], "1e9"),
        "--resume: the checkpoint's --width '1e9' is refused: invalid literal for int()",
    ),
    "width a float": (
        lambda ck: _set(ck, ["args", "width"], 8.5),
        "--resume: the checkpoint's --width 8.5 is refused",
    ),
    "width 0": (lambda ck: _set(ck, ["args", "width"], 0), "--width must be >= 1; got 0"),
    "lr 1e300": (
        lambda ck: _set(ck, ["args", "lr"], 1e300),
        "--resume: the checkpoint's --lr 1e+300 is refused: must be a finite number > 0",
    ),
    "seed 2**70": (
        lambda ck: _set(ck, ["args", "seed"], 2**70),
        "--resume: the checkpoint's --seed 1180591620717411303424 is refused: must be in [0, ",
    ),
    "unknown argument": (
        lambda ck: _set(ck, ["args", "hack"], 1),
        "--resume: the checkpoint's arguments hold 'hack', not a flag",
    ),
    "bad choice": (
        lambda ck: _set(ck, ["args", "dataset"], "../etc"),
        "--resume: the checkpoint's --dataset '../etc' is not one of digits",
    ),
    "a flag of the wrong kind": (
        lambda ck: _set(ck, ["args", "bf16"], "yes"),
        "--resume: the checkpoint's --bf16 'yes' is not true or false",
    ),
    "epochs None": (
        lambda ck: _set(ck, ["args", "epochs"], None),
        "--resume: the checkpoint's --epochs None is not a value of this flag",
    ),
    "width 1e9": (
        lambda ck: _set(ck, ["args", "width"], 10**9),
        "model does not fit in memory",
    ),
}


@pytest.mark.parametrize("case", CRAFTED)
def test_crafted_checkpoints_are_refused_in_one_line(tmp_path, capsys, good_checkpoint, case):
    change, message = CRAFTED[case]
    write_checkpoint(str(tmp_path), 1, _crafted(good_checkpoint, change))
    line = _refused(capsys, tmp_path, "--resume", "--no-progress")
    assert message in line
    assert "Traceback" not in line


def test_checkpoint_without_checksum_resumes_with_a_warning(tmp_path, capsys):
    assert _cli(tmp_path, "--epochs", "2", "--max-steps", "1") == 0
    path = str(tmp_path / "checkpoint-1.pt")
    trainer.save_atomic(trainer.load_checkpoint(path), path)  # a bare dict, as before
    capsys.readouterr()
    assert _cli(tmp_path, "--resume", "--max-steps", "2") == 0
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"warning: {path} has no checksum (written before checkpoints carried one); "
        "resuming from it unverified"
    ]
    assert torch.load(tmp_path / "checkpoint-2.pt", weights_only=True)["envelope"] == 1
