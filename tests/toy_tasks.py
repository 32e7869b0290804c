"""Two small tasks that are not about images, for the trainer's tests: they use the task
contract the way the binary-vector and translation models do.

* :class:`BernoulliMixtureTask`: a mixture of factorised Bernoullis on binary vectors
  (:func:`dqkernels.data.binary_vectors`), nats per example, with dropout on the mixture
  logits (noise from the global RNG) and a PNG of the component means as its output.
* :class:`TokenTask`: a toy "translation" model on token pairs read from raw parallel
  text with a whitespace vocabulary: every target position predicts its token from the
  mean source embedding and the position (dropout again); per-token NLL (the module
  weighs each example by its target tokens), and an evaluation that also gathers
  greedy outputs as a list statistic (exact-match rate) and writes them to a text file.

Run as a script for torchrun: ``python tests/toy_tasks.py {bernoulli,tokens} [flags]``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch
import torch.nn as nn

from dqkernels.data import TokenPairDataset, binary_vectors, encode_pairs, read_parallel
from dqkernels.trainer import Task, Units, check_at_least, configure_parser, train

PAD, BOS, EOS = 0, 1, 2


# ----------------------------------------------------------------------------- binary vectors


class BernoulliMixture(nn.Module):
    def __init__(self, dims: int, components: int, dropout: float):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(components))
        self.pixel_logits = nn.Parameter(0.1 * torch.randn(components, dims))
        self.dropout = nn.Dropout(dropout)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        log_mix = torch.log_softmax(self.dropout(self.logits), 0)
        lp = -nn.functional.binary_cross_entropy_with_logits(
            self.pixel_logits[None].expand(x.shape[0], -1, -1),
            x[:, None].expand(-1, self.pixel_logits.shape[0], -1),
            reduction="none",
        ).sum(-1)
        return torch.logsumexp(log_mix + lp, dim=1)

    def forward(self, x: torch.Tensor) -> dict:
        return {"loss": -self.log_prob(x), "mean_x": x.mean(1)}


class BernoulliMixtureTask(Task):
    name = "bernoulli"
    description = "a mixture of factorised Bernoullis (trainer tests)"
    datasets = ("digits", "binarized_mnist")
    defaults = {"lr": 0.05}

    def add_arguments(self, parser):
        parser.add_argument("--components", type=int, default=4)
        parser.add_argument("--dropout", type=float, default=0.3)

    def check_args(self, args):
        check_at_least(args, 1, "components")

    def load_data(self, args):
        return binary_vectors(args.dataset, args.data_dir)

    def units(self, data):
        return Units.nats_per_example()

    def build(self, args, data):
        return BernoulliMixture(data.num_dims, args.components, args.dropout)

    def evaluate(self, model, x, args, *, final):
        return -model.log_prob(x)

    def write_outputs(self, model, data, args, ctx):
        from dqkernels.plots import save_image_grid

        side = math.isqrt(data.num_dims)
        if side * side != data.num_dims:
            return []
        means = torch.sigmoid(model.pixel_logits).detach().cpu()
        path = os.path.join(ctx.out_dir, "components.png")
        save_image_grid(
            (means * 16).round().long().view(-1, 1, side, side),
            17,
            path,
            f"{ctx.title}: component means",
        )
        return [path]


# ----------------------------------------------------------------------------- token pairs


def write_parallel_text(directory, pairs_by_split: dict) -> None:
    """Raw parallel text files ``<split>.src`` / ``<split>.tgt``."""
    os.makedirs(directory, exist_ok=True)
    for split, pairs in pairs_by_split.items():
        for side, lang in ((0, "src"), (1, "tgt")):
            with open(os.path.join(directory, f"{split}.{lang}"), "w", encoding="utf-8") as f:
                f.writelines(p[side] + "\n" for p in pairs)


def reverse_pairs(n: int, seed: int, words=("a", "b", "c", "d", "e", "f")) -> list:
    """Sentences of 1-5 words and their reversal."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        k = int(torch.randint(1, 6, (1,), generator=g))
        w = [words[int(i)] for i in torch.randint(len(words), (k,), generator=g)]
        out.append((" ".join(w), " ".join(reversed(w))))
    return out


class TokenModel(nn.Module):
    def __init__(self, vocab: int, max_len: int, width: int, dropout: float):
        super().__init__()
        self.embed = nn.Embedding(vocab, width, padding_idx=PAD)
        self.pos = nn.Embedding(max_len, width)
        self.out = nn.Linear(width, vocab)
        self.dropout = nn.Dropout(dropout)

    def token_logits(self, batch) -> torch.Tensor:
        mask = (batch.src != PAD).unsqueeze(-1)
        ctx = (self.embed(batch.src) * mask).sum(1) / mask.sum(1).clamp(min=1)
        T = batch.tgt.shape[1]
        h = self.dropout(torch.tanh(ctx[:, None] + self.pos.weight[:T][None]))
        return self.out(h)  # [B, T, V]

    def nll(self, batch) -> torch.Tensor:
        logits = self.token_logits(batch)
        lp = torch.log_softmax(logits, -1).gather(-1, batch.tgt.unsqueeze(-1)).squeeze(-1)
        return -(lp * (batch.tgt != PAD)).sum(1)

    def forward(self, batch) -> dict:
        return {"loss": self.nll(batch), "weight": batch.tgt_lengths.to(torch.float32)}


class TokenTask(Task):
    name = "tokens"
    description = "a toy model of token pairs (trainer tests)"
    datasets = ("reverse",)
    defaults = {"lr": 0.03}

    def add_arguments(self, parser):
        parser.add_argument("--width", type=int, default=16)
        parser.add_argument("--dropout", type=float, default=0.2)

    def load_data(self, args):
        if args.data_dir is None:
            raise FileNotFoundError("tokens: --data-dir with {train,val,test}.{src,tgt} needed")
        raw = {
            s: read_parallel(args.data_dir, stem, "src", "tgt", what="reverse")
            for s, stem in (("train", "train"), ("valid", "val"), ("test", "test"))
        }
        vocab = {"<pad>": PAD, "<s>": BOS, "</s>": EOS}
        for pairs in raw.values():
            for pair in pairs:
                for w in " ".join(pair).split():
                    vocab.setdefault(w, len(vocab))

        def encode(text):
            return [vocab[w] for w in text.split()] + [EOS]

        splits = {s: encode_pairs(p, encode, encode, PAD) for s, p in raw.items()}
        return TokenPairDataset(
            "reverse",
            splits,
            len(vocab),
            len(vocab),
            extra_info={"vocab": sorted(vocab, key=vocab.get)},
        )

    def units(self, data):
        return Units.nats_per_token()

    def build(self, args, data):
        return TokenModel(data.tgt_vocab_size, 16, args.width, args.dropout)

    def eval_step(self, model, batch, args, *, final):
        nll = model.nll(batch)
        guess = model.token_logits(batch).argmax(-1)
        hyps = [
            tuple(g[:n].tolist()) == tuple(t[:n].tolist())
            for g, t, n in zip(guess, batch.tgt, batch.tgt_lengths.tolist())
        ]
        return {
            "loss": nll.double().sum(),
            "weight": batch.tgt_lengths.sum().double(),
            "hyps": hyps,
        }

    def eval_metrics(self, model, totals, count, args, *, final):
        assert len(totals["hyps"]) == count
        return {"exact_match": sum(totals["hyps"]) / count}

    def write_outputs(self, model, data, args, ctx):
        path = os.path.join(ctx.out_dir, "exact_match.txt")
        with open(path, "w") as f:
            f.write(f"{ctx.metrics['exact_match']}\n")
        return [path]


TASKS = {t.name: t for t in (BernoulliMixtureTask(), TokenTask())}


def run(task: Task, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"toy {task.name}")
    configure_parser(parser, task)
    args = parser.parse_args(argv)
    args.model = task.name
    return train(task, args)


if __name__ == "__main__":
    sys.exit(run(TASKS[sys.argv[1]], sys.argv[2:]))
