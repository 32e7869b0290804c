"""The shared trainer (dqkernels.trainer) behind ``dqk train <model>``, on a tiny PixelCNN:
resume rules, checkpoints, signals, non-finite losses, bf16/compile, DDP on CPU. The
exact-resume and contract tests over every task are in test_trainer_tasks.py."""

import argparse
import math
import os
import pickle
import signal

import numpy as np
import pytest
import torch
from train_runs import (
    checkpoint_names,
    ddp_against_one_process,
    final_checkpoint,
    records,
    strip_times,
    training_process,
)

import dqkernels.cli
from dqkernels import backends, trainer
from dqkernels.tasks.pixelcnn import PixelCNNTask

# a tiny PixelCNN on 40 digits: batches of 16, 16, 8 -> 3 steps per epoch
TINY = (
    "--limit 40 --batch-size 16 --width 8 --blocks 1 --mixtures 2 --grid 0 --no-progress "
    "--device cpu"
).split()
# the smallest PixelCNN there is, for runs that test everything but the model
SMALLEST = "--width 4 --blocks 0 --mixtures 1"


def _cli(out, *extra):
    return dqkernels.cli.main(["train", "pixelcnn", *TINY, "--out", str(out), *extra])


def _parse(task, out, *argv):
    """The arguments of a tiny run of task into out, as the command line would give them."""
    parser = argparse.ArgumentParser()
    trainer.configure_parser(parser, task)
    args = parser.parse_args([*TINY, "--out", str(out), *argv])
    args.model = task.name
    return args


def _run_task(task, out, *argv):
    return trainer.train(task, _parse(task, out, *argv))


# ----------------------------------------------------------------------------- exact resume


def test_resume_without_rng_restore_differs(tmp_path, monkeypatch):
    """The control of the test above: skip restoring the RNG states and the dropout masks
    after the resume differ, so the final parameters do too."""
    common = ["--epochs", "1", "--dropout", "0.3"]
    assert _cli(tmp_path / "a", *common) == 0
    assert _cli(tmp_path / "b", *common, "--max-steps", "1") == 0
    monkeypatch.setattr(trainer.rng, "restore_rng", lambda state, device: None)
    torch.manual_seed(12345)
    assert _cli(tmp_path / "b", *common, "--resume") == 0
    a, b = final_checkpoint(tmp_path / "a")["model"], final_checkpoint(tmp_path / "b")["model"]
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_resume_from_format_1_checkpoint(tmp_path):
    """A checkpoint written before the run state was one object (format 1: its fields at
    the top level, no last evaluation, no weight sum) still resumes exactly."""
    common = ["--epochs", "1", "--dropout", "0.3"]
    assert _cli(tmp_path / "a", *common) == 0
    assert _cli(tmp_path / "b", *common, "--max-steps", "2") == 0
    path = tmp_path / "b" / "checkpoint-2.pt"
    ck = trainer.load_checkpoint(str(path))
    run = ck.pop("run")
    del run["last_eval"], run["accumulators"]["weight"]
    ck.update(run, format=1)
    torch.save(ck, path)
    assert _cli(tmp_path / "b", *common, "--resume") == 0
    a, b = final_checkpoint(tmp_path / "a")["model"], final_checkpoint(tmp_path / "b")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_at_epoch_end_pending_evaluation(tmp_path):
    """SIGINT-style stop right after the last step of an epoch (before its evaluation):
    the checkpoint says the evaluation is pending and the resumed run does it."""
    task = _signal_at_step(step=3, signum=signal.SIGINT)
    assert _run_task(task, tmp_path / "b", "--epochs", "2", "--dropout", "0.2") == 130
    ck = final_checkpoint(tmp_path / "b")["run"]
    assert (ck["step"], ck["epoch"], ck["batch"]) == (3, 0, 3)
    assert _cli(tmp_path / "b", "--epochs", "2", "--dropout", "0.2", "--resume") == 0
    assert _cli(tmp_path / "a", "--epochs", "2", "--dropout", "0.2") == 0
    a, b = final_checkpoint(tmp_path / "a")["model"], final_checkpoint(tmp_path / "b")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [strip_times(r) for r in records(tmp_path / "a")] == [
        strip_times(r) for r in records(tmp_path / "b")
    ]


def test_resume_argument_rules(tmp_path, capsys):
    assert _cli(tmp_path, "--epochs", "1", "--max-steps", "1") == 0
    capsys.readouterr()
    # a defining flag that differs from the checkpoint
    assert _cli(tmp_path, "--epochs", "1", "--width", "16", "--resume") == 2
    err = capsys.readouterr().err
    assert "--resume: --width 16 differs from the checkpoint's 8" in err
    # a fresh run into a directory with checkpoints
    assert _cli(tmp_path, "--epochs", "1") == 2
    err = capsys.readouterr().err
    assert "holds checkpoints of an earlier run (checkpoint-1.pt)" in err and "--overwrite" in err
    # a runtime flag may change; it is reported
    assert _cli(tmp_path, "--epochs", "1", "--eval-batch-size", "100", "--resume") == 0
    assert "note: resumed with --eval-batch-size 100 (was 256)" in capsys.readouterr().out
    # --overwrite starts afresh and removes the old checkpoints
    assert _cli(tmp_path, "--epochs", "1", "--max-steps", "2", "--overwrite") == 0
    assert checkpoint_names(tmp_path) == ["checkpoint-2.pt"]
    # --resume PATH; --resume with nothing to resume
    assert _cli(tmp_path, "--epochs", "1", "--resume", str(tmp_path / "checkpoint-2.pt")) == 0
    assert _cli(tmp_path / "empty", "--resume") == 2
    assert "--resume: no checkpoint-<step>.pt in" in capsys.readouterr().err
    assert _cli(tmp_path, "--resume", str(tmp_path / "nope.pt")) == 2
    assert "nope.pt' does not exist" in capsys.readouterr().err


def test_metrics_trimmed_on_resume(tmp_path):
    """Records of epochs after the checkpoint (from a run that went on after it) are
    dropped on resume, the others kept; the file stays one record per epoch."""
    assert _cli(tmp_path, "--epochs", "3", "--checkpoint-every", "1") == 0
    assert [r["epoch"] for r in records(tmp_path)] == [1, 2, 3]
    # back to the checkpoint at step 8 (epoch 3, batch 2 of 3): epoch 3's record goes
    os.unlink(tmp_path / "checkpoint-9.pt")
    rc = _cli(tmp_path, "--epochs", "3", "--resume", "--max-steps", "8")
    assert rc == 0
    assert [r["epoch"] for r in records(tmp_path)] == [1, 2]
    assert _cli(tmp_path, "--epochs", "3", "--resume") == 0
    assert [r["epoch"] for r in records(tmp_path)] == [1, 2, 3]


# ----------------------------------------------------------------------------- test tasks


class _Wrap(PixelCNNTask):
    """The PixelCNN task with a hook on its module's forward."""

    def build(self, args, data):
        module = super().build(args, data)
        original = module.forward
        state = {"calls": 0}

        def forward(x):
            state["calls"] += 1
            return self.hook(state["calls"], original(x), module)

        module.forward = forward
        return module

    def hook(self, step, out, module):
        return out


class _AtStep(_Wrap):
    """Runs action(out, module) on the forward of one step; the others run as they are."""

    def __init__(self, step, action):
        self.step, self.action = step, action

    def hook(self, step, out, module):
        return self.action(out, module) if step == self.step else out


def _signal_at_step(step, signum):
    def send(out, module):
        os.kill(os.getpid(), signum)
        return out

    return _AtStep(step, send)


def _bad_at_step(step, what):
    """A NaN loss (what="loss") or a finite loss with a NaN gradient at that step."""

    def spoil(out, module):
        if what == "loss":
            return {"loss": out["loss"] * float("nan")}
        w = module.net.head2.weight  # d sqrt(|0 * w|) = inf * 0
        return {"loss": out["loss"] + (0 * w).abs().sqrt().sum()}

    return _AtStep(step, spoil)


class _Extras(_Wrap):
    """Logs a per-example extra (twice the loss) and a scalar one (3); records the
    backend and autocast state seen by the forward."""

    seen = []

    def hook(self, step, out, module):
        _Extras.seen.append(
            (
                backends.get_backend(),
                torch.is_autocast_enabled("cpu"),
                torch.get_autocast_dtype("cpu"),
            )
        )
        return {"loss": out["loss"], "twice": 2 * out["loss"], "three": torch.tensor(3.0)}


@pytest.mark.parametrize("what", ["loss", "grad"])
def test_non_finite_stops_and_keeps_last_good_checkpoint(tmp_path, capsys, what):
    task = _bad_at_step(step=3, what=what)
    rc = _run_task(task, tmp_path, "--epochs", "2", "--checkpoint-every", "1")
    assert rc == 1
    err = capsys.readouterr().err
    if what == "loss":
        assert "the training loss became nan at step 3 (epoch 1, batch 3/3)" in err
    else:
        assert "the gradient norm became nan" in err and "at step 3 (epoch 1" in err
    assert f"the last good checkpoint is {tmp_path / 'checkpoint-2.pt'}" in err
    assert "the update was not applied" in err
    assert checkpoint_names(tmp_path) == ["checkpoint-1.pt", "checkpoint-2.pt"]
    good = final_checkpoint(tmp_path)
    assert all(torch.isfinite(v).all() for v in good["model"].values())


def test_non_finite_at_first_step_names_no_checkpoint(tmp_path, capsys):
    rc = _run_task(_bad_at_step(step=1, what="loss"), tmp_path, "--epochs", "1")
    assert rc == 1
    assert "no checkpoint had been written yet" in capsys.readouterr().err
    assert checkpoint_names(tmp_path) == []


def test_sigint_in_process_checkpoints_and_exits_130(tmp_path, capfd):
    task = _signal_at_step(step=2, signum=signal.SIGINT)
    handler = signal.getsignal(signal.SIGINT)
    assert _run_task(task, tmp_path, "--epochs", "5") == 130
    assert signal.getsignal(signal.SIGINT) is handler  # restored
    err = capfd.readouterr().err  # (the handler's note goes straight to file descriptor 2)
    assert "got SIGINT" in err and "stopped by SIGINT at step 2 (epoch 1, batch 2/3)" in err
    assert f"resume with: dqk train pixelcnn --out {tmp_path} --resume" in err
    assert checkpoint_names(tmp_path) == ["checkpoint-2.pt"]


def test_extras_eval_every_backend_and_bf16(tmp_path):
    _Extras.seen = []
    previous = backends.get_backend()
    flags = "--epochs 3 --eval-every 2 --backend torch --bf16".split()
    rc = _run_task(_Extras(), tmp_path, *flags, "--max-steps", "7")
    assert rc == 0
    assert backends.get_backend() == previous  # the run's backend is undone
    assert len(_Extras.seen) == 7
    assert all(s == ("torch", True, torch.bfloat16) for s in _Extras.seen)
    recs = records(tmp_path)
    assert [r["epoch"] for r in recs] == [1, 2]
    assert recs[0]["test_bpd"] is None and math.isfinite(recs[1]["test_bpd"])
    D = 64
    for r in recs:
        assert r["extras"]["three"] == pytest.approx(3.0)
        assert r["extras"]["twice"] == pytest.approx(2 * r["train_bpd"] * D * math.log(2))
        assert r["images"] == 40 and r["step"] == 3 * r["epoch"]
    # the third epoch, the last: evaluated although 3 % 2 != 0
    _Extras.seen = []
    assert _run_task(_Extras(), tmp_path, *flags, "--resume") == 0
    assert math.isfinite(records(tmp_path)[2]["test_bpd"])


def test_final_evaluation_flag_and_grad_clip(tmp_path, monkeypatch):
    finals = []
    norms = []

    class Recording(_Wrap):
        def evaluate(self, model, x, args, *, final):
            finals.append(final)
            return super().evaluate(model, x, args, final=final)

    real = torch.nn.utils.clip_grad_norm_

    def clip(params, max_norm, *a, **k):
        norms.append(max_norm)
        return real(params, max_norm, *a, **k)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    assert (
        _run_task(
            Recording(), tmp_path, "--epochs", "2", "--eval-batch-size", "200", "--grad-clip", "0.5"
        )
        == 0
    )
    assert finals == [False, False, True, True]  # 360 test images in chunks of 200
    assert norms == [0.5] * 6


def test_bad_task_output(tmp_path):
    class NotADict(_Wrap):
        def hook(self, step, out, module):
            return out["loss"]

    class WrongShape(_Wrap):
        def hook(self, step, out, module):
            return {"loss": out["loss"].sum()}

    with pytest.raises(TypeError, match="forward must return a dict with 'loss'"):
        _run_task(NotADict(), tmp_path / "a", "--epochs", "1")
    with pytest.raises(ValueError, match=r"'loss' must be per example, shape \(16,\); got \(\)"):
        _run_task(WrongShape(), tmp_path / "b", "--epochs", "1")


# ----------------------------------------------------------------------------- pieces


def test_warmup_cosine_schedule():
    f = trainer.WarmupCosine(warmup=4, total=14)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == 1.0 and f(9) == pytest.approx(0.5) and f(14) == pytest.approx(0.0)
    g = trainer.WarmupCosine(warmup=0, total=10)
    assert g(0) == 1.0 and g(5) == pytest.approx(0.5)
    assert all(g(s) >= g(s + 1) for s in range(10))


def test_common_argument_errors(tmp_path, capsys):
    for argv, message in [
        (["--batch-size", "0"], "--batch-size must be >= 1; got 0"),
        (["--lr", "nan"], "argument --lr: must be a finite number > 0 and <= 3.4e+37; got nan"),
        (["--grad-clip", "-1"], "argument --grad-clip: must be a finite number > 0; got -1"),
        (["--warmup-steps", "-2"], "--warmup-steps must be >= 0; got -2"),
        (["--max-steps", "0"], "--max-steps must be >= 1; got 0"),
        (["--compile", "nonsense"], "--compile nonsense: not a torch.compile backend"),
        (["--dropout", "1.5"], "--dropout must be in [0, 1); got 1.5"),
        (["--backend", "cuda"], "backend 'cuda' cannot run on cpu tensors"),
    ]:
        try:
            rc = _cli(tmp_path, *argv)
        except SystemExit as exc:  # (argparse's own errors)
            rc = exc.code
        assert rc == 2, argv
        assert message in capsys.readouterr().err, argv
    args = _parse(PixelCNNTask(), tmp_path, "--batch-size", "10")  # good but for the world
    with pytest.raises(trainer.UsageError, match="--batch-size 10 .* not divisible by the 3 "):
        trainer.check_common_args(args, world=3)


def test_help_lists_models_and_flags(capsys):
    with pytest.raises(SystemExit):
        dqkernels.cli.main(["train", "pixelcnn", "--help"])
    text = capsys.readouterr().out
    for flag in (
        "--resume",
        "--max-steps",
        "--grid",
        "--bf16",
        "--compile",
        "--width",
        "--checkpoint-every",
        "--eval-every",
        "--warmup-steps",
        "--grad-clip",
    ):
        assert flag in text, flag
    assert "--dump-params" not in text and "--samples" not in text


def test_bf16_and_compile_smoke(tmp_path):
    assert _cli(tmp_path / "bf16", "--epochs", "1", "--max-steps", "2", "--bf16") == 0
    assert (
        _cli(tmp_path / "compiled", "--epochs", "1", "--max-steps", "2", "--compile", "aot_eager")
        == 0
    )
    for d in ("bf16", "compiled"):
        ck = final_checkpoint(tmp_path / d)
        assert ck["run"]["step"] == 2
        assert all(torch.isfinite(v).all() for v in ck["model"].values())


def _write_fake_cifar(directory, n_train=(3, 2), n_test=2):
    directory.mkdir(parents=True)
    rng = np.random.RandomState(0)
    for k, n in enumerate([*n_train, n_test]):
        name = f"data_batch_{k + 1}" if k < len(n_train) else "test_batch"
        batch = {
            b"batch_label": name.encode(),
            b"labels": rng.randint(0, 10, n).tolist(),
            b"data": rng.randint(0, 256, (n, 3072)).astype(np.uint8),
            b"filenames": [f"img{i}.png".encode() for i in range(n)],
        }
        with open(directory / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)


def test_train_on_fake_cifar10(tmp_path, capsys):
    _write_fake_cifar(tmp_path / "cifar" / "cifar-10-batches-py")
    data = ["--dataset", "cifar10", "--data-dir", str(tmp_path / "cifar")]
    flags = f"--epochs 1 --batch-size 2 {SMALLEST} --grid 1 --no-progress".split()
    rc = dqkernels.cli.main(["train", "pixelcnn", *data, *flags, "--out", str(tmp_path / "out")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "5 train / 2 test images of 3x32x32, 256 levels" in out
    assert "uniform baseline log2(256) = 8.000" in out
    assert (tmp_path / "out" / "samples.png").read_bytes()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------- processes


def test_sigterm_subprocess_checkpoints_and_exits_143(tmp_path):
    out = tmp_path / "run"
    flags = (
        f"--epochs 10000 --limit 16 --batch-size 8 {SMALLEST} --grid 0 --no-progress "
        "--device cpu --checkpoint-every 1"
    ).split()
    proc = training_process(out, *flags)
    try:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, (stdout, stderr)
    assert "stopped by SIGTERM at step" in stderr
    assert f"resume with: dqk train pixelcnn --out {out} --resume" in stderr
    ck = final_checkpoint(out)["run"]
    assert ck["step"] >= 1 and ck["epoch"] < 10000
    assert len(trainer.list_checkpoints(str(out))) <= 2
    assert not list(out.glob(".*tmp"))
    # it resumes from there
    resume = ["--out", str(out), "--resume", "--max-steps", str(ck["step"] + 1), "--no-progress"]
    rc = dqkernels.cli.main(["train", "pixelcnn", *resume])
    assert rc == 0 and final_checkpoint(out)["run"]["step"] == ck["step"] + 1


def test_ddp_two_gloo_processes_match_single_process(tmp_path):
    """torchrun with 2 CPU processes: both ranks end with identical parameters, equal (up
    to the reduction order) to one process on the same global batches; the sharded test
    evaluation agrees too; only rank 0 writes."""
    flags = (
        "--limit 16 --batch-size 8 --epochs 2 --dropout 0 --width 8 --blocks 1 --mixtures 2 "
        "--grid 0 --no-progress --device cpu --eval-batch-size 100"
    ).split()
    ddp_out = tmp_path / "ddp"
    program = ["-m", "dqkernels.cli", "train", "pixelcnn"]
    proc = ddp_against_one_process(
        tmp_path, program, lambda argv: dqkernels.cli.main(["train", "pixelcnn", *argv]), flags
    )
    assert proc.stdout.count("pixelcnn on digits") == 1  # rank 0 prints
    assert "x 2 processes" in proc.stdout
    ck = final_checkpoint(ddp_out)
    assert len(ck["run"]["rng"]) == 2 and ck["world_size"] == 2
    rngs = ck["run"]["rng"]
    assert not torch.equal(rngs[0]["torch"], rngs[1]["torch"])  # per-rank noise
    for a, b in zip(records(ddp_out), records(tmp_path / "one")):
        assert a["train_bpd"] == pytest.approx(b["train_bpd"], rel=1e-5)
        assert a["test_bpd"] == pytest.approx(b["test_bpd"], rel=1e-5)
