"""The trainer over a table of small tasks: every model of ``dqk train`` and two tasks that
are not about images (tests/toy_tasks.py: binary vectors, token pairs). Each must resume
bit for bit; the non-image contract (units, weights, list statistics, DDP reduction) is
checked on the toy tasks."""

import gc
import os

import pytest
import torch
import toy_tasks
from train_runs import (
    checkpoint_names,
    ddp_against_one_process,
    final_checkpoint,
    records,
    strip_times,
)

import dqkernels.cli
from dqkernels import trainer

# Every case: 40 (24 for the flow) training examples in batches of 16 (8) -> 3 steps per
# epoch, and noise in the forward drawn from the global RNG, so that the RNG restore
# matters: dropout (pixelcnn, toy tasks), dequantization noise (flow), the uniforms of the
# posterior samples (sbn), sampled codes and dead-code re-initialisation (vqvae).
CASES = {
    "pixelcnn": (
        "--limit 40 --batch-size 16 --width 8 --blocks 1 --mixtures 2 --grid 0 --dropout 0.3 "
        "--seed 7"
    ).split(),
    "flow": (
        "--limit 24 --batch-size 8 --width 8 --steps 1 --components 3 --dequant-steps 2 "
        "--context-channels 2 --eval-samples 3 --epoch-eval-samples 2 --grid 0 --dequant ard "
        "--seed 3 --warmup-steps 0"
    ).split(),
    "vqvae": (
        "--limit 40 --batch-size 16 --width 8 --blocks 1 --codes 8 --code-dim 4 --mixtures 1 "
        "--grid 0 --backend torch --em soft --samples 2 --reinit-dead --dead-threshold 0.9 "
        "--decay 0.5 --seed 5"
    ).split(),
    "sbn": (
        "--limit 40 --batch-size 16 --layers 5,3 --estimator tokui --eval-samples 3 "
        "--epoch-eval-samples 2 --seed 6"
    ).split(),
    "bernoulli": ["--limit", "40", "--batch-size", "16", "--dropout", "0.3", "--seed", "2"],
    "tokens": ["--limit", "40", "--batch-size", "16", "--dropout", "0.3", "--seed", "4"],
}
COMMON = ["--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def reverse_dir(tmp_path_factory):
    """Raw parallel text for the token task: 40 / 10 / 21 pairs."""
    d = tmp_path_factory.mktemp("reverse")
    toy_tasks.write_parallel_text(
        d,
        {
            "train": toy_tasks.reverse_pairs(40, 0),
            "val": toy_tasks.reverse_pairs(10, 1),
            "test": toy_tasks.reverse_pairs(21, 2),
        },
    )
    return str(d)


def _train(name, *argv):
    if name in toy_tasks.TASKS:
        return toy_tasks.run(toy_tasks.TASKS[name], list(argv))
    return dqkernels.cli.main(["train", name, *argv])


def _flags(name, reverse_dir):
    extra = ["--data-dir", reverse_dir] if name == "tokens" else []
    return [*CASES[name], *COMMON, *extra]


@pytest.mark.parametrize("name", list(CASES))
def test_exact_resume_bit_identical(name, tmp_path, capsys, reverse_dir):
    """Stopped mid-epoch 1 (step 2), then at the end of epoch 1 plus one step (step 4),
    then resumed to the end: the same parameters, optimizer state, run state and metrics,
    bit for bit, as a run that never stopped."""
    flags = [*_flags(name, reverse_dir), "--epochs", "2"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert _train(name, *flags, "--out", str(a)) == 0
    assert _train(name, *flags, "--out", str(b), "--max-steps", "2") == 0
    assert checkpoint_names(b) == ["checkpoint-2.pt"]
    assert not (b / "metrics.jsonl").read_text()  # no epoch finished yet
    out = capsys.readouterr().out
    assert "stopped after 2 steps (--max-steps 2)" in out
    assert f"dqk train {name} --out {b} --resume" in out
    # resume: flags left out come from the checkpoint
    assert _train(name, "--out", str(b), "--resume", "--max-steps", "4", "--no-progress") == 0
    assert checkpoint_names(b) == ["checkpoint-3.pt", "checkpoint-4.pt"]
    assert len(records(b)) == 1
    assert _train(name, *flags, "--out", str(b), "--resume") == 0

    ca, cb = final_checkpoint(a), final_checkpoint(b)
    ra, rb = ca["run"], cb["run"]
    assert ra["step"] == rb["step"] == 6 and ra["epoch"] == rb["epoch"] == 2
    assert ca["model"].keys() == cb["model"].keys()
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), k
    for pa, pb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values()):
        for k in pa:
            assert torch.equal(pa[k], pb[k]), k
    assert torch.equal(ra["shuffle_state"], rb["shuffle_state"])
    assert [strip_times(r) for r in records(a)] == [strip_times(r) for r in records(b)]
    assert [strip_times(r) for r in ra["history"]] == [strip_times(r) for r in rb["history"]]
    assert [r["epoch"] for r in records(b)] == [1, 2]
    assert checkpoint_names(b) == ["checkpoint-4.pt", "checkpoint-6.pt"]  # the last two
    assert checkpoint_names(a) == ["checkpoint-3.pt", "checkpoint-6.pt"]
    assert not list(b.glob(".*tmp"))
    # the parameters really moved after epoch 1
    first = trainer.load_checkpoint(str(a / "checkpoint-3.pt"))["model"]
    assert any(not torch.equal(first[k], ca["model"][k]) for k in first)


def test_units_and_records_of_non_image_tasks(tmp_path, capsys, reverse_dir):
    """Binary vectors report nats per example; token pairs nats per token (the module's
    weights), with the list statistic of the evaluation reduced to an exact-match rate."""
    assert (
        _train(
            "bernoulli",
            *_flags("bernoulli", reverse_dir),
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "b"),
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "40 train / 360 test binary vectors of 64 dimensions" in text
    assert "test nats: " in text and "vec/s" in text
    (rec,) = records(tmp_path / "b")
    assert {"train_nats", "test_nats", "vectors", "vectors_per_s"} <= set(rec)
    assert 0 < rec["test_nats"] < 64 * 0.7  # better than a fair coin per pixel
    assert (tmp_path / "b" / "components.png").stat().st_size > 0

    assert (
        _train(
            "tokens", *_flags("tokens", reverse_dir), "--epochs", "1", "--out", str(tmp_path / "t")
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "40 train / 21 test sentence pairs (src -> tgt, vocabularies 9 / 9)" in text
    (rec,) = records(tmp_path / "t")
    assert {"train_nll", "test_nll", "pairs"} <= set(rec)
    assert 0 < rec["test_nll"] < 2 * torch.log(torch.tensor(9.0)).item()
    assert 0 <= rec["test_extras"]["exact_match"] <= 1
    assert (tmp_path / "t" / "exact_match.txt").read_text().strip() == str(
        rec["test_extras"]["exact_match"]
    )


def test_per_token_loss_is_normalised_by_the_tokens(tmp_path, reverse_dir):
    """The training metric is the summed NLL over the summed target tokens: recomputed
    from the final model on the training pairs after an epoch with lr 0 it agrees."""
    assert (
        _train(
            "tokens",
            *_flags("tokens", reverse_dir),
            "--epochs",
            "1",
            "--lr",
            "1e-30",
            "--dropout",
            "0",
            "--out",
            str(tmp_path / "t"),
        )
        == 0
    )
    task = toy_tasks.TASKS["tokens"]
    ck = final_checkpoint(tmp_path / "t")
    args = type("A", (), {"data_dir": reverse_dir})()
    data = task.load_data(args)
    model = task.build(type("A", (), {"width": 16, "dropout": 0.0})(), data)
    model.load_state_dict(ck["model"])
    batch = data.examples("train").take(slice(0, 40))
    with torch.no_grad():
        expected = (model.nll(batch).double().sum() / batch.tgt_lengths.sum()).item()
    assert records(tmp_path / "t")[0]["train_nll"] == pytest.approx(expected, rel=1e-4)


def test_contract_errors(tmp_path, reverse_dir):
    class NoWeight(toy_tasks.TokenTask):
        def build(self, args, data):
            module = super().build(args, data)
            original = module.forward
            module.forward = lambda batch: {"loss": original(batch)["loss"]}
            return module

    class NoLoss(toy_tasks.BernoulliMixtureTask):
        def eval_step(self, model, batch, args, *, final):
            return {"nll": 0.0}

    with pytest.raises(
        ValueError,
        match="must return 'weight', the weight of each example "
        r"in nats/token, shape \(16,\); got None",
    ):
        toy_tasks.run(NoWeight(), [*_flags("tokens", reverse_dir), "--out", str(tmp_path / "a")])
    with pytest.raises(
        ValueError,
        match=r"NoLoss.eval_step must return 'loss', the summed "
        r"loss in nats; got \['nll'\]",
    ):
        toy_tasks.run(NoLoss(), [*_flags("bernoulli", reverse_dir), "--out", str(tmp_path / "b")])


def test_ddp_reduces_weights_and_list_statistics(tmp_path, reverse_dir):
    """The token task under torchrun with 2 gloo processes: the token counts are summed
    over the ranks before the loss is scaled and the evaluation's list statistic is
    concatenated over the ranks, so both ranks end with identical parameters equal (up to
    the reduction order) to one process, with the same test metrics."""
    flags = [
        *_flags("tokens", reverse_dir),
        "--epochs",
        "2",
        "--dropout",
        "0",
        "--eval-batch-size",
        "4",
    ]
    program = [os.path.abspath(toy_tasks.__file__), "tokens"]
    proc = ddp_against_one_process(tmp_path, program, lambda argv: _train("tokens", *argv), flags)
    assert "x 2 processes" in proc.stdout
    for a, b in zip(records(tmp_path / "ddp"), records(tmp_path / "one")):
        assert a["train_nll"] == pytest.approx(b["train_nll"], rel=1e-5)
        assert a["test_nll"] == pytest.approx(b["test_nll"], rel=1e-5)
        assert a["test_extras"] == b["test_extras"]


def test_run_released_before_leaving_the_process_group(tmp_path, reverse_dir, monkeypatch):
    """train() drops its Run, which holds the DistributedDataParallel wrapper, before it
    destroys the process group: a reducer that is the group's last owner tears the group
    down while holding the GIL, which can deadlock against gloo's worker threads."""
    alive = []
    destroy = trainer.dist.Dist.destroy

    def checked_destroy(self):
        gc.collect()
        alive.append(sum(type(o) is trainer.loop.Run for o in gc.get_objects()))
        destroy(self)

    monkeypatch.setattr(trainer.dist.Dist, "destroy", checked_destroy)
    flags = [*_flags("bernoulli", reverse_dir), "--epochs", "1"]
    assert _train("bernoulli", *flags, "--out", str(tmp_path / "r")) == 0
    assert alive == [0]
