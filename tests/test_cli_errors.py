"""Every error of the ``dqk`` command line is one line on stderr naming the argument, exit
status 2, no traceback (issue 12): bad numbers, seeds, folders, environment, data files;
crafted checkpoints are in test_run_dir.py."""

import argparse
import gzip
import os
import subprocess
import sys

import pytest
from train_runs import ROOT, subprocess_env

import dqkernels.cli
from dqkernels.data import DataFileError
from dqkernels.tasks.pixelcnn import PixelCNNTask
from dqkernels.trainer import configure_parser, train

TINY = (
    "--limit 40 --batch-size 16 --epochs 1 --width 4 --blocks 0 --mixtures 1 --grid 0 "
    "--no-progress --device cpu"
).split()


def _one_line_error(capsys, argv) -> str:
    """Run ``dqk argv`` in this process: it must exit 2 with one line on stderr."""
    capsys.readouterr()
    try:
        rc = dqkernels.cli.main(list(map(str, argv)))
    except SystemExit as exc:  # argparse's errors
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def _train(out, *argv):
    return ["train", "pixelcnn", *TINY, "--out", out, *argv]


# (argv after `dqk train pixelcnn TINY --out OUT`, the line printed)
TRAIN_FLAGS = {
    "lr 1e300": (
        ["--lr", "1e300"],
        "dqk train pixelcnn: error: argument --lr: must be a finite number > 0 and <= "
        "3.4e+37; got 1e300 (see dqk train pixelcnn --help)",
    ),
    "lr 0": (["--lr", "0"], "argument --lr: must be a finite number > 0"),
    "lr inf": (["--lr", "inf"], "argument --lr: must be a finite number > 0"),
    "huge seed": (
        ["--seed", str(10**23)],
        f"argument --seed: must be in [0, {2**63 - 1}]; got {10**23}",
    ),
    "negative seed": (["--seed", "-1"], "argument --seed: must be in [0, "),
    "grad-clip nan": (["--grad-clip", "nan"], "argument --grad-clip: must be a finite number"),
    "epochs not an int": (["--epochs", "1.5"], "argument --epochs: invalid int value: '1.5'"),
    "width 1e9 as text": (["--width", "1e9"], "argument --width: invalid int value: '1e9'"),
    "width 1e9": (
        ["--width", str(10**9)],
        "the pixelcnn model does not fit in memory (",
    ),
    "unknown flag": (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    "bad choice": (["--dataset", "imagenet"], "argument --dataset: invalid choice: 'imagenet'"),
}


# (argv after `dqk train sbn`, the line printed): checked before any data is read
SBN_FLAGS = {
    "unknown estimator": (
        ["--estimator", "relax"],
        "argument --estimator: invalid choice: 'relax' (choose from 'arm', 'disarm', 'gumbel'",
    ),
    "layers not integers": (
        ["--layers", "200,x"],
        "--layers must be comma-separated positive integers, e.g. 200,200; got '200,x'",
    ),
    "layers zero": (["--layers", "200,0"], "--layers must be comma-separated positive"),
    "hidden empty": (["--nonlinear", "--hidden", ""], "--hidden must be comma-separated"),
    "temperature without gumbel": (
        ["--estimator", "tokui", "--temperature", "0.5"],
        "--temperature applies to --estimator gumbel only",
    ),
    "temperature zero": (
        ["--estimator", "gumbel", "--temperature", "0"],
        "--temperature must be a positive number; got 0.0",
    ),
    "eval samples zero": (["--eval-samples", "0"], "--eval-samples must be >= 1"),
}


@pytest.mark.parametrize("case", SBN_FLAGS)
def test_bad_sbn_flags(tmp_path, capsys, case):
    argv, message = SBN_FLAGS[case]
    out = tmp_path / "out"
    line = _one_line_error(
        capsys, ["train", "sbn", "--no-progress", "--device", "cpu", "--out", out, *argv]
    )
    assert message in line, line
    assert not out.exists()


@pytest.mark.parametrize("case", TRAIN_FLAGS)
def test_bad_train_flags(tmp_path, capsys, case):
    argv, message = TRAIN_FLAGS[case]
    line = _one_line_error(capsys, _train(tmp_path / "out", *argv))
    assert message in line
    assert not (tmp_path / "out").exists()  # nothing was left behind


def test_model_too_large_for_memory_is_refused_before_allocating(tmp_path, capsys):
    """Counted on the meta device (the VQ-VAE builds there): 16 TB of parameters with
    their gradients and Adam's moments are refused before anything is allocated."""
    argv = ["train", "vqvae", *TINY[:4], "--epochs", "1", "--grid", "0", "--no-progress"]
    line = _one_line_error(capsys, [*argv, "--device", "cpu", "--width", 10**5, "--out", tmp_path])
    assert (
        "the vqvae model would have " in line and " GiB available on cpu; check its size " in line
    )


def test_bad_out(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    line = _one_line_error(capsys, _train(afile))
    assert line == f"dqk train: error: --out {str(afile)!r} is not a folder"
    line = _one_line_error(capsys, _train(afile / "sub"))
    assert line.startswith(f"dqk train: error: --out {str(afile / 'sub')!r}: cannot create it (")
    line = _one_line_error(capsys, _train("/proc/dqk-test"))
    assert line.startswith("dqk train: error: --out '/proc/dqk-test': cannot create it (")
    assert afile.read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        line = _one_line_error(capsys, _train(ro))
    finally:
        ro.chmod(0o755)
    assert line.startswith(f"dqk train: error: --out {str(ro)!r}: cannot write there (")


def test_bad_backend_environment(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DQK_BACKEND", "bogus")
    expected = (
        "dqk: error: environment variable DQK_BACKEND must be one of torch, cpp, cuda, "
        "triton, auto; got 'bogus'"
    )
    assert _one_line_error(capsys, _train(tmp_path)) == expected
    assert _one_line_error(capsys, ["bench", "--list"]) == expected
    assert _one_line_error(capsys, ["info"]) == expected


BENCH_FLAGS = {
    "budget nan": (["--budget", "nan"], "argument --budget: must be a finite number > 0; got nan"),
    "budget 0": (["--budget", "0"], "argument --budget: must be a finite number > 0; got 0"),
    "threads 0": (["--threads", "0"], "argument --threads: must be >= 1; got 0"),
    "huge seed": (["--seed", str(2**64)], "argument --seed: must be in [0, "),
    "bad dtype": (["--dtypes", "fp8"], "dqk bench: unknown dtype 'fp8'"),
}


@pytest.mark.parametrize("case", BENCH_FLAGS)
def test_bad_bench_flags(tmp_path, capsys, case):
    argv, message = BENCH_FLAGS[case]
    flags = ["--quick", "--device", "cpu", "--ops", "vq_nearest", "--out", tmp_path]
    assert message in _one_line_error(capsys, ["bench", *flags, *argv])
    assert not list(tmp_path.iterdir())


def test_truncated_gzip_data(tmp_path, capsys):
    """A truncated binarized MNIST file: one line naming the data, exit 2."""
    data = tmp_path / "bm"
    data.mkdir()
    text = "".join(" ".join(["0"] * 784) + "\n" for _ in range(20)).encode()
    for split in ("train", "valid", "test"):
        blob = gzip.compress(text)
        if split == "train":
            blob = blob[: len(blob) // 2]
        (data / f"binarized_mnist_{split}.amat.gz").write_bytes(blob)
    argv = _train(tmp_path / "out", "--dataset", "binarized_mnist", "--data-dir", data)
    line = _one_line_error(capsys, argv)
    assert line.startswith("dqk train: error: ") and str(data) in line


def test_data_file_error_of_a_task(tmp_path, capsys):
    """A task's load_data raising DataFileError (the loaders' one error type for bad
    files): its message, on one line, exit 2."""

    class BadFile(PixelCNNTask):
        def load_data(self, args):
            raise DataFileError(f"{tmp_path}/data_batch_1: a stride-0 array\nof 100000 images")

    parser = argparse.ArgumentParser()
    task = BadFile()
    configure_parser(parser, task)
    args = parser.parse_args([*TINY, "--out", str(tmp_path / "out")])
    args.model = task.name
    capsys.readouterr()
    assert train(task, args) == 2
    assert capsys.readouterr().err == (
        f"dqk train: error: {tmp_path}/data_batch_1: a stride-0 array of 100000 images\n"
    )


def test_errors_in_a_real_process_have_no_traceback(tmp_path):
    """The same through ``python -m dqkernels.cli`` (the installed ``dqk``)."""
    for argv, env in (
        (_train(tmp_path / "a", "--lr", "1e300"), {}),
        (_train(tmp_path / "b"), {"DQK_BACKEND": "bogus"}),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "dqkernels.cli", *map(str, argv)],
            cwd=ROOT,
            env=subprocess_env(**env),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "Traceback" not in proc.stderr
