"""``dqk sbn-variance``: the gradient variance of every SBN estimator at the same parameters
(issue 13 item 4; Tokui & Sato 2017, "Evaluating the Variance of Likelihood-Ratio Gradient
Estimators").

The parameters: a checkpoint of ``dqk train sbn`` (``--checkpoint``), or a model trained here
for ``--train-steps`` Adam steps by ``--train-estimator`` from ``--seed`` (``--layers``,
``--nonlinear``, ``--hidden``). The data: ``--batches`` fixed minibatches of ``--batch-size``
training examples, chosen by a permutation seeded with ``--seed`` (their indices are in the
JSON). At each minibatch every estimator of ``--estimators`` makes ``--draws`` independent
draws (fresh uniforms, from a generator seeded per estimator) of ``g``, the estimated
gradient of the minibatch's **mean** ELBO (nats per example) at the fixed ``x``; only the
latent samples vary. Per parameter ``i``, ``Var g_i`` is the sample variance over the draws
(``ddof=1``); for the recognition parameters and the generative ones (the prior's logits and
the generative connections) separately we report

* ``trace``: ``sum_i Var g_i = E ||g - E g||^2`` (the variance of the whole gradient vector);
* ``mean`` and ``median`` over the *active* parameters: those whose variance is non-zero
  under some measured estimator (e.g. a first-layer weight of a pixel that is 0 in every
  example of the minibatch has an identically zero gradient);
* ``mean_norm``: ``||mean over draws of g||`` (the gradient's size, to judge the variance).

Normalisation: *per minibatch* (the gradient the optimiser sees); the variance of one
example's gradient is ``B`` times it on average (examples are independent given ``x``).
With several minibatches each number is the mean over them.

``reinforce_optimal``: the likelihood ratio with the optimal input-dependent baseline, per
data point and per recognition parameter, ``b_{x,i} = E[f s_i^2] / E[s_i^2]`` (``f`` the
one-sample ELBO, ``s = grad_phi log q(z | x)``), the baseline depending on ``x`` only that
minimises ``Var[(f - b) s_i]``. It is estimated for each example from ``--baseline-draws``
*extra* draws of ``z ~ q(z | x)``, independent of the measured draws, so the measured
estimator stays unbiased and its variance is that of a fixed baseline: above the optimum by
exactly ``E[s_i^2] E[(b_hat - b)^2]``, O(1 / baseline-draws). Tokui & Sato show that their
estimator's variance is never above this one's. Its generative gradient is the others':
``grad_theta log p(x, z)`` at the sampled ``z``.

The stateful estimators are fitted at the measured parameters first (``--fit-steps`` steps on
random training minibatches, model parameters fixed): ``reinforce_baseline``'s moving average,
``nvil``'s moving averages and baseline network (Adam, lr 1e-3); then every estimator is
measured in eval mode (state fixed). ``nvil``'s recognition gradient is divided by its
variance normalisation ``1 / max(1, sqrt(v))``, so that it estimates the true gradient; its
baseline network's parameters are not counted. ``straight_through`` and ``gumbel`` are biased:
their ``mean_norm`` can differ from the others'.

Outputs in ``--out``: ``variance.json`` (settings, per estimator and minibatch the numbers),
``variance.csv``, ``variance.md`` (a Markdown table) and ``variance.png`` (log-scale bars of
the traces, recognition and generative).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zlib

import torch

from dqkernels.cli import SEED, float_in, int_in

__all__ = [
    "OPTIMAL",
    "GradientMoments",
    "add_arguments",
    "estimator_seed",
    "fit_optimal_baseline",
    "load_sbn",
    "run",
    "uniforms",
]

OPTIMAL = "reinforce_optimal"
GROUPS = ("recognition", "generative")


def _names() -> list[str]:
    from dqkernels.models.sbn_estimators import ESTIMATORS

    return [*ESTIMATORS, OPTIMAL]


def _estimator_list(text: str) -> list[str]:
    """An argparse type: comma-separated estimator names (``all``: every one)."""
    known = _names()
    if text.strip() == "all":
        return known
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown estimator {bad[0]!r}; choose from {', '.join(known)} or all"
            if bad
            else "name at least one estimator"
        )
    return list(dict.fromkeys(names))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from dqkernels.data import BINARY_DATASETS

    g = parser.add_argument_group("parameters (a checkpoint, or a short training here)")
    g.add_argument(
        "--checkpoint", default=None, metavar="PATH", help="a checkpoint of dqk train sbn"
    )
    g.add_argument(
        "--train-steps",
        type=int_in(0),
        default=2000,
        metavar="N",
        help="without --checkpoint: Adam steps of training first (default %(default)s)",
    )
    g.add_argument(
        "--train-estimator",
        choices=_names()[:-1],
        default="tokui",
        help="the estimator of that training (default %(default)s)",
    )
    g.add_argument(
        "--lr", type=float_in(0, 1.0), default=1e-3, help="its learning rate (default %(default)s)"
    )
    g.add_argument(
        "--layers", default=None, metavar="H1,H2,..", help="its stochastic layers (default 200,200)"
    )
    g.add_argument("--nonlinear", action="store_true", help="its connections tanh MLPs")
    g.add_argument(
        "--hidden", default=None, metavar="W1,..", help="their hidden widths (default 100,100)"
    )
    g = parser.add_argument_group("measurement")
    g.add_argument(
        "--dataset",
        choices=BINARY_DATASETS,
        default=None,
        help="default: the checkpoint's, else binarized_mnist",
    )
    g.add_argument(
        "--data-dir", default=None, metavar="DIR", help="default ../shared/data/<dataset>"
    )
    g.add_argument(
        "--estimators",
        type=_estimator_list,
        default=None,
        metavar="A,B,..",
        help=f"comma-separated, or all (default all: {', '.join(_names())})",
    )
    g.add_argument(
        "--batch-size", type=int_in(1), default=24, metavar="B", help="default %(default)s"
    )
    g.add_argument(
        "--batches", type=int_in(1), default=1, metavar="K", help="minibatches (default 1)"
    )
    g.add_argument(
        "--draws",
        type=int_in(2),
        default=100,
        metavar="R",
        help="draws per estimator and minibatch (default %(default)s)",
    )
    g.add_argument(
        "--baseline-draws",
        type=int_in(2),
        default=1000,
        metavar="M",
        help="extra draws per example fitting reinforce_optimal's baseline (default %(default)s)",
    )
    g.add_argument(
        "--fit-steps",
        type=int_in(0),
        default=500,
        metavar="N",
        help="steps fitting reinforce_baseline's and nvil's state (default %(default)s)",
    )
    g.add_argument(
        "--temperature",
        type=float_in(0),
        default=0.5,
        help="gumbel's temperature (default %(default)s)",
    )
    g.add_argument("--seed", type=SEED, default=0, help="default %(default)s")
    g.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if any")
    g.add_argument("--out", default="runs/sbn-variance", metavar="DIR", help="default %(default)s")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


# ----------------------------------------------------------------------------- the model


def load_sbn(path: str):
    """``(sbn, checkpoint)``: the SBN of a ``dqk train sbn`` checkpoint (verified), on the CPU.
    A UsageError (naming the file) for anything else."""
    from dqkernels.models.sbn import SBN
    from dqkernels.trainer import CheckpointError, UsageError, load_checkpoint

    if not os.path.isfile(path):
        raise UsageError(f"--checkpoint {path!r} does not exist")
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as exc:
        raise UsageError(f"--checkpoint {exc}") from None
    cfg = ckpt.get("model_config")
    if ckpt.get("task") != "sbn" or not isinstance(cfg, dict):
        raise UsageError(
            f"--checkpoint {path}: not a checkpoint of dqk train sbn (task {ckpt.get('task')!r})"
        )
    try:
        sbn = SBN(cfg["num_dims"], cfg["layers"], nonlinear=cfg["nonlinear"], hidden=cfg["hidden"])
        state = {k[4:]: v for k, v in ckpt["model"].items() if k.startswith("sbn.")}
        sbn.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise UsageError(f"--checkpoint {path}: its model does not load ({exc})") from None
    return sbn, ckpt


def _train(sbn, data: torch.Tensor, args) -> float:
    """``--train-steps`` Adam steps of ``--train-estimator`` on random minibatches; returns
    the last 100 steps' mean ELBO."""
    from dqkernels.models.sbn_estimators import make_estimator

    opts = {"temperature": args.temperature} if args.train_estimator == "gumbel" else {}
    est = make_estimator(args.train_estimator, sbn, **opts).to(data.device)
    opt = torch.optim.Adam([*sbn.parameters(), *est.parameters()], lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    elbos: list[float] = []
    bar = _bar(args.train_steps, f"train {args.train_estimator}", not args.no_progress)
    for _ in range(args.train_steps):
        idx = torch.randint(data.shape[0], (args.batch_size,), generator=gen)
        out = est(sbn, data[idx.to(data.device)])
        opt.zero_grad(set_to_none=True)
        out.loss.mean().backward()
        opt.step()
        elbos = (elbos + [float(out.elbo.mean())])[-100:]
        bar.update()
    bar.close()
    return sum(elbos) / len(elbos) if elbos else float("nan")


def _fit_state(sbn, est, data: torch.Tensor, args, seed: int) -> None:
    """Fit a stateful estimator's state at fixed model parameters (train mode): its moving
    averages, and its own parameters (NVIL's baseline network) by Adam."""
    params = list(est.parameters())
    opt = torch.optim.Adam(params, lr=1e-3) if params else None
    gen = torch.Generator().manual_seed(seed)
    est.train()
    for _ in range(args.fit_steps):
        idx = torch.randint(data.shape[0], (args.batch_size,), generator=gen)
        x = data[idx.to(data.device)]
        if opt is None:
            with torch.no_grad():
                est(sbn, x)
            continue
        grads = torch.autograd.grad(est(sbn, x).loss.mean(), params)
        for p, gp in zip(params, grads):
            p.grad = gp
        opt.step()
    est.eval()


# ----------------------------------------------------------------------------- the draws


def estimator_seed(seed: int, name: str, batch: int) -> int:
    """The seed of the uniforms of estimator ``name`` at minibatch ``batch``."""
    return (seed * 1_000_003 + zlib.crc32(name.encode()) * 101 + batch) % 2**63


def uniforms(sbn, batch: int, gen: torch.Generator, like: torch.Tensor) -> list:
    """``[None, u_1, .., u_L]`` drawn from ``gen`` (on the CPU, then moved to ``like``)."""
    return [None] + [
        torch.rand(batch, h, generator=gen, dtype=like.dtype).to(like.device) for h in sbn.layers
    ]


class GradientMoments:
    """Running mean and sum of squared deviations (Welford, float64) of gradient draws."""

    def __init__(self, n: int, device):
        self.count = 0
        self.mean = torch.zeros(n, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(n, dtype=torch.float64, device=device)

    def add(self, g: torch.Tensor) -> None:
        g = g.detach().to(torch.float64)
        self.count += 1
        delta = g - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (g - self.mean)

    def variance(self) -> torch.Tensor:
        """Per parameter, the sample variance (``ddof=1``)."""
        return self.m2 / max(1, self.count - 1)


def _flat(grads, params) -> torch.Tensor:
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)]
    )


def _per_example_scores(sbn, zs: list[torch.Tensor]) -> torch.Tensor:
    """``[B, n_rec]``: ``grad_phi log q(z_b | x_b)`` for each example, in the order of
    ``sbn.recognition_parameters()``: in closed form for linear connections (``d log q / d a =
    z - sigmoid(a)``, the weight's row the outer product with the parent), else by torch.func
    (vmap of grad)."""
    if all(isinstance(c, torch.nn.Linear) for c in sbn.rec):
        B, parts = zs[0].shape[0], []
        with torch.no_grad():
            for k, conn in enumerate(sbn.rec):
                d = zs[k + 1] - torch.sigmoid(conn(zs[k]))
                parts += [(d[:, :, None] * zs[k][:, None, :]).reshape(B, -1), d]
        return torch.cat(parts, dim=1)
    from torch.func import functional_call, grad, vmap

    from dqkernels.models.sbn import bernoulli_log_prob

    params = {k: v.detach() for k, v in sbn.rec.named_parameters()}

    def log_q(p, *z):
        total = z[0].new_zeros(())
        for k in range(1, len(z)):
            sub = {n.split(".", 1)[1]: v for n, v in p.items() if n.split(".", 1)[0] == str(k - 1)}
            logits = functional_call(sbn.rec[k - 1], sub, (z[k - 1][None],))[0]
            total = total + bernoulli_log_prob(z[k], logits).sum()
        return total

    g = vmap(grad(log_q), in_dims=(None, *[0] * len(zs)))(params, *zs)
    names = [n for n, _ in sbn.rec.named_parameters()]
    return torch.cat([g[n].reshape(zs[0].shape[0], -1) for n in names], dim=1)


def _sample_f_and_scores(sbn, x: torch.Tensor, u) -> tuple:
    """One draw for every example: its ELBO ``f`` [B], the sample and the scores [B, n_rec]."""
    with torch.no_grad():
        s = sbn.sample_posterior(x, u)
        f = sbn.log_joint(s.z) - sbn.log_posterior(s.z)
    return f, s, _per_example_scores(sbn, s.z)


def fit_optimal_baseline(sbn, x: torch.Tensor, draws: int, gen: torch.Generator) -> torch.Tensor:
    """``[B, n_rec]``: per example and recognition parameter, ``sum_m f_m s_m^2 / sum_m s_m^2``
    over ``draws`` draws ``z_m ~ q(z | x_b)`` (0 where every ``s_m`` is 0): the estimate of the
    optimal baseline ``E[f s^2] / E[s^2]`` of the likelihood-ratio estimator."""
    num = den = None
    for _ in range(draws):
        f, _, s = _sample_f_and_scores(sbn, x, uniforms(sbn, x.shape[0], gen, x))
        s2 = s.to(torch.float64)
        s2.mul_(s2)
        if num is None or den is None:
            num, den = torch.zeros_like(s2), torch.zeros_like(s2)
        den.add_(s2)
        num.addcmul_(s2, f.to(torch.float64)[:, None])
    assert num is not None and den is not None
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num))


def _measure(sbn, name: str, est, x: torch.Tensor, args, seed: int, bar) -> list:
    """``[GradientMoments]`` of the recognition and generative gradients of the minibatch
    mean ELBO over ``args.draws`` draws of estimator ``name``."""
    rec, gen_params = sbn.recognition_parameters(), sbn.generative_parameters()
    gen = torch.Generator().manual_seed(seed)
    moments = [GradientMoments(sum(p.numel() for p in ps), x.device) for ps in (rec, gen_params)]
    baseline = None
    if name == OPTIMAL:
        baseline = fit_optimal_baseline(sbn, x, args.baseline_draws, gen)
    for _ in range(args.draws):
        u = uniforms(sbn, x.shape[0], gen, x)
        if baseline is not None:
            f, s, scores = _sample_f_and_scores(sbn, x, u)
            g_rec = ((f.to(torch.float64)[:, None] - baseline) * scores).mean(0)
            g_gen = _flat(torch.autograd.grad(sbn.log_joint(s.z).mean(), gen_params), gen_params)
        else:
            loss = est(sbn, x, u).loss.mean()
            grads = torch.autograd.grad(-loss, [*rec, *gen_params], allow_unused=True)
            g_rec = _flat(grads[: len(rec)], rec)
            g_gen = _flat(grads[len(rec) :], gen_params)
            if name == "nvil":
                g_rec = g_rec / est.scale()
        moments[0].add(g_rec)
        moments[1].add(g_gen)
        bar.update()
    return moments


def _mean(values: list):
    """The mean over minibatches (an int when they all agree on one: the parameter counts)."""
    if all(isinstance(v, int) for v in values) and len(set(values)) == 1:
        return values[0]
    return sum(values) / len(values)


def _summary(m: GradientMoments, active: torch.Tensor) -> dict:
    var = m.variance()
    act = var[active]
    return {
        "trace": float(var.sum()),
        "mean": float(act.mean()) if act.numel() else 0.0,
        "median": float(act.median()) if act.numel() else 0.0,
        "mean_norm": float(m.mean.norm()),
        "active": int(active.sum()),
        "parameters": int(var.numel()),
    }


# ----------------------------------------------------------------------------- outputs


def _table(rows: list[dict]) -> str:
    head = (
        "| estimator | unbiased | rec trace | rec mean | rec median | rec ‖E g‖ | gen trace | "
        "gen mean | gen median |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        a, b = r["recognition"], r["generative"]
        lines.append(
            f"| {r['estimator']} | {'yes' if r['unbiased'] else 'NO'} | {a['trace']:.4g} | "
            f"{a['mean']:.4g} | {a['median']:.4g} | {a['mean_norm']:.4g} | {b['trace']:.4g} | "
            f"{b['mean']:.4g} | {b['median']:.4g} |"
        )
    return head + "\n".join(lines) + "\n"


def _plot(rows: list[dict], path: str, title: str) -> None:
    from dqkernels.plots import _figure

    names = [r["estimator"] for r in rows]
    fig = _figure(max(6.0, 0.8 * len(names) + 2), 4.5)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.4
    for j, (group, color) in enumerate(zip(GROUPS, ("tab:blue", "tab:orange"))):
        vals = [max(r[group]["trace"], 1e-300) for r in rows]
        ax.bar(
            [i + (j - 0.5) * width for i in range(len(names))],
            vals,
            width,
            label=group,
            color=color,
        )
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_ylabel("trace of the gradient covariance (per minibatch)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_description(self, desc: str) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(total: int, desc: str, enabled: bool):
    """A tqdm bar on stderr (a do-nothing one when disabled or tqdm is missing)."""
    if enabled:
        try:
            from tqdm.auto import tqdm

            return tqdm(total=total, desc=desc, dynamic_ncols=True, file=sys.stderr)
        except Exception:  # noqa: BLE001 - tqdm missing: no bar
            pass
    return _NoBar()


# ----------------------------------------------------------------------------- the command


def _setup(args):
    """The model, the training data and what describes them (UsageError for bad input)."""
    from dqkernels.data import binary_vectors
    from dqkernels.models.sbn import SBN
    from dqkernels.tasks.sbn import parse_widths
    from dqkernels.trainer import UsageError
    from dqkernels.trainer.task import one_line

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda, but torch.cuda.is_available() is False")
    ckpt = None
    if args.checkpoint is not None:
        given = [f for f in ("layers", "hidden") if getattr(args, f) is not None]
        given += ["nonlinear"] if args.nonlinear else []
        if given:
            raise UsageError(
                f"--{given[0]} describes the model trained here; the --checkpoint has its own"
            )
        sbn, ckpt = load_sbn(args.checkpoint)
        dataset = args.dataset or ckpt.get("dataset") or "binarized_mnist"
    else:
        layers = parse_widths(args.layers or "200,200", "--layers")
        hidden = parse_widths(args.hidden or "100,100", "--hidden")
        dataset = args.dataset or "binarized_mnist"
        sbn = None
    try:
        data = binary_vectors(dataset, args.data_dir)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--dataset {dataset}: {one_line(exc)}") from None
    if sbn is None:
        torch.manual_seed(args.seed)
        sbn = SBN(data.num_dims, layers, nonlinear=args.nonlinear, hidden=hidden)
    elif sbn.num_dims != data.num_dims:
        raise UsageError(
            f"--checkpoint's model has {sbn.num_dims} visible units; {dataset} has {data.num_dims}"
        )
    need = args.batch_size * args.batches
    if need > data.train.shape[0]:
        raise UsageError(
            f"--batch-size {args.batch_size} x --batches {args.batches} = {need} examples; "
            f"{dataset} has {data.train.shape[0]} training examples"
        )
    return sbn.to(device), data.train.to(device=device, dtype=torch.float32), dataset, ckpt


def run(args) -> int:
    from dqkernels.trainer import UsageError

    try:
        return _run(args)
    except UsageError as exc:
        print(f"dqk sbn-variance: error: {exc}", file=sys.stderr, flush=True)
        return 2


def _run(args) -> int:
    from dqkernels.models.sbn_estimators import ESTIMATORS, make_estimator

    t0 = time.time()
    names = args.estimators or _names()
    sbn, train, dataset, ckpt = _setup(args)
    os.makedirs(args.out, exist_ok=True)
    if ckpt is None:
        torch.manual_seed(args.seed)
        elbo = _train(sbn, train, args)
        source = {
            "trained_here": {
                "estimator": args.train_estimator,
                "steps": args.train_steps,
                "lr": args.lr,
                "batch_size": args.batch_size,
                "seed": args.seed,
                "train_elbo_last100": elbo,
            }
        }
    else:
        source = {"checkpoint": args.checkpoint, "step": ckpt["run"]["step"]}
    sbn.eval()
    perm = torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(args.seed))
    picks = perm[: args.batch_size * args.batches].view(args.batches, args.batch_size)

    estimators = {}
    for name in names:
        if name == OPTIMAL:
            estimators[name] = None
            continue
        opts = {"temperature": args.temperature} if name == "gumbel" else {}
        est = make_estimator(name, sbn, **opts).to(train.device)
        if list(est.parameters()) or list(est.buffers()):
            _fit_state(sbn, est, train, args, estimator_seed(args.seed, name, 10**6))
        estimators[name] = est.eval()

    bar = _bar(len(names) * args.batches * args.draws, "draws", not args.no_progress)
    per_batch: dict[str, list] = {n: [] for n in names}
    try:
        for k in range(args.batches):
            x = train[picks[k].to(train.device)]
            for name in names:
                bar.set_description(f"batch {k + 1}/{args.batches} {name}")
                seed = estimator_seed(args.seed, name, k)
                per_batch[name].append(_measure(sbn, name, estimators[name], x, args, seed, bar))
    finally:
        bar.close()

    rows = []
    tokui_le = None
    for name in names:
        row: dict = {
            "estimator": name,
            "unbiased": True if name == OPTIMAL else ESTIMATORS[name].unbiased,
        }
        for j, group in enumerate(GROUPS):
            summaries = []
            for k in range(args.batches):
                active = torch.stack([per_batch[n][k][j].variance() > 0 for n in names]).any(0)
                summaries.append(_summary(per_batch[name][k][j], active))
            row[group] = {key: _mean([s[key] for s in summaries]) for key in summaries[0]}
            row[group]["per_batch"] = summaries
        rows.append(row)
    if "tokui" in names and OPTIMAL in names:
        fracs = []
        for k in range(args.batches):
            vt = per_batch["tokui"][k][0].variance()
            vo = per_batch[OPTIMAL][k][0].variance()
            act = (vt > 0) | (vo > 0)
            fracs.append(float((vt[act] <= vo[act]).double().mean()) if act.any() else 1.0)
        tokui_le = sum(fracs) / len(fracs)

    widths = "-".join(map(str, reversed(sbn.sizes)))
    kind = "nonlinear" if sbn.nonlinear else "linear"
    result = {
        "model": {
            "sizes": widths,
            "kind": kind,
            "layers": list(sbn.layers),
            "hidden": list(sbn.hidden),
        },
        "source": source,
        "dataset": dataset,
        "batch_size": args.batch_size,
        "batches": args.batches,
        "examples": picks.tolist(),
        "draws": args.draws,
        "baseline_draws": args.baseline_draws,
        "fit_steps": args.fit_steps,
        "temperature": args.temperature,
        "seed": args.seed,
        "normalisation": "variance of the gradient of the minibatch mean ELBO (nats/example)",
        "tokui_le_optimal_fraction": tokui_le,
        "device": str(train.device),
        "seconds": round(time.time() - t0, 1),
        "rows": rows,
    }
    with open(os.path.join(args.out, "variance.json"), "w") as fh:
        json.dump(result, fh, indent=1)
    with open(os.path.join(args.out, "variance.csv"), "w") as fh:
        cols = ["trace", "mean", "median", "mean_norm", "active", "parameters"]
        fh.write(
            "estimator,unbiased," + ",".join(f"{g[:3]}_{c}" for g in GROUPS for c in cols) + "\n"
        )
        for r in rows:
            vals = [f"{r[g][c]:.6g}" for g in GROUPS for c in cols]
            fh.write(f"{r['estimator']},{int(r['unbiased'])}," + ",".join(vals) + "\n")
    title = (
        f"SBN {widths} {kind} on {dataset}: gradient variance per minibatch "
        f"(B={args.batch_size}, {args.draws} draws, {args.batches} minibatch(es))"
    )
    note = ""
    if tokui_le is not None:
        note = (
            f"\nTokui's recognition variance <= the optimal-baseline likelihood ratio's on "
            f"{100 * tokui_le:.1f}% of the active recognition parameters.\n"
        )
    with open(os.path.join(args.out, "variance.md"), "w") as fh:
        fh.write(f"{title}\n\n{_table(rows)}{note}")
    _plot(rows, os.path.join(args.out, "variance.png"), title)
    print(f"{title}\n\n{_table(rows)}{note}")
    print(f"wrote {args.out}/variance.{{json,csv,md,png}} in {result['seconds']} s")
    return 0
