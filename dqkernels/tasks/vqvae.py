"""``dqk train vqvae``: a VQ-VAE trained by hard or soft EM (Roy et al. 2018), the model in
:mod:`dqkernels.models.vqvae`.

``--em hard`` is the VQ-VAE with an EMA codebook; ``--em soft`` draws ``--samples`` codes
per latent from ``softmax(-|z - e_k|^2 / T)`` and feeds the decoder their mean (the EMA
counts and sums add ``1/m`` per sample). Both take the nearest code at evaluation.

Units: the training loss is ``recon + commitment`` (so train bits/dim leave out the rate,
a constant); test bits/dim are the bound ``recon + rate`` with ``rate = h*w*log K`` (a
uniform prior over the codes). The final evaluation also gathers the codebook's
statistics over the test set with the nearest codes (summed over the DDP ranks: recon
bits/dim, the usage of every code), logged under ``test_extras``; the run writes, besides
the trainer's files:

* ``reconstructions.png``: test images (top half) above draws from ``p(x | their codes)``;
* ``codebook_usage.png``: test-set usage per code (sorted) and the EMA counts, dead codes red;
* ``vq_test_metrics.json``: test bound, recon and rate bits/dim, perplexity of the code usage
  over the whole test set, used / dead codes (also printed).

The defaults (64 codes of dim 16 on a 2x2 latent grid for digits, decay 0.99, 40 epochs)
are the hard-k64 row of ``experiments/vqvae/README.md``: about 20 s on an idle CPU core.
"""

from __future__ import annotations

import json
import math
import os

import torch

from dqkernels.tasks.images import ImageTask
from dqkernels.trainer import UsageError, check_at_least

__all__ = ["TASK", "VQVAETask", "codebook_counts", "codebook_metrics", "codebook_statistics"]

LN2 = math.log(2.0)
RECON_IMAGES = 32


class VQVAETask(ImageTask):
    name = "vqvae"
    description = "a VQ-VAE (EMA codebook) trained by hard or soft EM, dmol decoder"
    defaults = {"epochs": 40, "batch_size": 64, "lr": 2e-3, "grid": 64}

    def add_arguments(self, parser) -> None:
        from dqkernels.nn.vector_quantizer import EM_MODES

        super().add_arguments(parser)
        g = parser.add_argument_group("vqvae model")
        g.add_argument(
            "--em",
            choices=EM_MODES,
            default="hard",
            help="hard: nearest code (VQ-VAE, default); soft: the mean of "
            "--samples codes drawn from softmax(-|z - e|^2 / T)",
        )
        g.add_argument(
            "--codes", type=int, default=64, metavar="K", help="codebook size (default %(default)s)"
        )
        g.add_argument(
            "--code-dim",
            type=int,
            default=16,
            metavar="D",
            help="dimension of the latents and codes (default %(default)s)",
        )
        g.add_argument(
            "--samples",
            type=int,
            default=10,
            metavar="M",
            help="soft EM: codes drawn per latent (default %(default)s)",
        )
        g.add_argument(
            "--temperature",
            type=float,
            default=1.0,
            metavar="T",
            help="soft EM: temperature of the code distribution (default %(default)s)",
        )
        g.add_argument(
            "--decay",
            type=float,
            default=0.99,
            help="EMA decay of the codebook counts and sums (default %(default)s "
            "for short runs; the paper's 0.999 lags the encoder over the "
            "~1000 steps of a digits run)",
        )
        g.add_argument(
            "--beta", type=float, default=0.25, help="commitment loss weight (default %(default)s)"
        )
        g.add_argument(
            "--eps",
            type=float,
            default=1e-5,
            help="Laplace smoothing of the EMA counts (default %(default)s)",
        )
        g.add_argument(
            "--dead-threshold",
            type=float,
            default=0.01,
            metavar="C",
            help="a code is dead when its EMA count is below C (default %(default)s)",
        )
        g.add_argument(
            "--reinit-dead",
            action="store_true",
            help="give dead codes random vectors of the batch at every step",
        )
        g.add_argument(
            "--width",
            type=int,
            default=64,
            help="channels of the encoder and decoder (default %(default)s)",
        )
        g.add_argument(
            "--blocks",
            type=int,
            default=2,
            help="residual blocks in the encoder and in the decoder (default %(default)s)",
        )
        g.add_argument(
            "--downsample",
            type=int,
            default=2,
            metavar="S",
            help="stride-2 stages: the latent grid is H/2^S x W/2^S (default "
            "%(default)s: 2x2 for digits, 7x7 for MNIST)",
        )
        g.add_argument(
            "--mixtures",
            type=int,
            default=3,
            metavar="M",
            help="logistic mixture components per pixel (default %(default)s)",
        )

    def check_args(self, args) -> None:
        super().check_args(args)
        check_at_least(args, 1, "codes", "code_dim", "samples", "width", "mixtures")
        check_at_least(args, 0, "blocks", "downsample")
        if not 0.0 <= args.decay <= 1.0:
            raise UsageError(f"--decay must be in [0, 1]; got {args.decay}")
        for name in ("temperature", "eps"):
            value = getattr(args, name)
            if not (value > 0 and math.isfinite(value)):
                raise UsageError(f"--{name} must be a positive number; got {value}")
        for name in ("beta", "dead_threshold"):
            value = getattr(args, name)
            if not (value >= 0 and math.isfinite(value)):
                raise UsageError(f"--{name.replace('_', '-')} must be a number >= 0; got {value}")

    def build(self, args, data) -> torch.nn.Module:
        from dqkernels.models.vqvae import VQVAE

        C, H, W = data.image_shape
        if C not in (1, 3):
            raise UsageError(f"vqvae models 1 or 3 channels; {args.dataset} has {C}")
        f = 2**args.downsample
        if H % f or W % f:
            raise UsageError(
                f"--downsample {args.downsample}: {args.dataset}'s {H}x{W} images "
                f"are not divisible by 2^{args.downsample} = {f}"
            )
        # backend None: the ops follow the trainer's --backend (set for the whole run)
        return VQVAE(
            C,
            data.num_levels,
            (H, W),
            num_codes=args.codes,
            code_dim=args.code_dim,
            width=args.width,
            num_blocks=args.blocks,
            downsample=args.downsample,
            num_mixtures=args.mixtures,
            em=args.em,
            num_samples=args.samples,
            decay=args.decay,
            eps=args.eps,
            beta=args.beta,
            dead_threshold=args.dead_threshold,
            reinit_dead=args.reinit_dead,
            temperature=args.temperature,
        )

    def evaluate(self, model, x, args, *, final):
        return model(x)["bound"]

    def sample(self, model, n, generator):
        return model.sample(n, generator)

    def eval_step(self, model, x, args, *, final):
        stats = super().eval_step(model, x, args, final=final)
        if final:  # the codebook's statistics over the split, with the nearest codes
            stats.update(codebook_counts(model, x))
        return stats

    def eval_metrics(self, model, totals, count, args, *, final):
        return codebook_metrics(model, totals, count) if "usage" in totals else {}

    def extra_outputs(self, model, data, out_dir, args, metrics) -> list[str]:
        from dqkernels.plots import save_codebook_usage, save_image_grid

        dev = model.decoder[0].weight.device
        if "usage" not in metrics:  # (a run resumed from an older checkpoint after the end)
            metrics = codebook_statistics(model, data.test, args.eval_batch_size)
        path = os.path.join(out_dir, "vq_test_metrics.json")
        with open(path, "w") as f:
            json.dump({k: metrics[k] for k in _STAT_KEYS}, f, indent=1)
        written = [path]
        q = model.quantizer
        print(
            f"test: bound {metrics['bound_bpd']:.4f} bits/dim = recon "
            f"{metrics['recon_bpd']:.4f} + rate {metrics['rate_bpd']:.4f}; code perplexity "
            f"{metrics['perplexity']:.1f} of {q.num_codes}, used {metrics['used_codes']}/"
            f"{q.num_codes}, dead {metrics['dead_codes']} (EMA count < {q.dead_threshold:g})",
            flush=True,
        )

        n = min(RECON_IMAGES, data.test.shape[0])
        if n > 0:
            x = data.test[:n].to(dev).long()
            gen = torch.Generator(device=dev).manual_seed(args.seed)
            recon = model.reconstruct(x, gen)
            path = os.path.join(out_dir, "reconstructions.png")
            save_image_grid(
                torch.cat([x, recon]).cpu(),
                model.num_levels,
                path,
                f"{n} test images (top) and draws from p(x | their codes) (bottom), {q.em} EM",
            )
            written.append(path)
        path = os.path.join(out_dir, "codebook_usage.png")
        save_codebook_usage(
            metrics["usage"],
            q.cluster_size,
            path,
            f"{q.em} EM, K={q.num_codes}: test perplexity "
            f"{metrics['perplexity']:.1f}, {metrics['used_codes']} codes used",
            dead_threshold=q.dead_threshold,
        )
        written.append(path)
        return written

    def banner(self, model, args) -> str:
        q = model.quantizer
        h, w = model.latent_shape
        rate_bpd = model.rate / (
            model.in_channels * model.image_size[0] * model.image_size[1] * LN2
        )
        soft = f" ({q.num_samples} samples, T={q.temperature:g})" if q.em == "soft" else ""
        return (
            f"VQ-VAE: {q.em} EM{soft}, {q.num_codes} codes of dim {q.dim} on a {h}x{w} "
            f"latent grid (rate {rate_bpd:.3f} bits/dim), decay {q.decay:g}, beta "
            f"{q.beta:g}{', dead codes re-initialised' if q.reinit_dead else ''}; width "
            f"{args.width}, {args.blocks} residual blocks, {args.mixtures} logistic "
            f"mixtures per pixel"
        )


# what vq_test_metrics.json holds (codebook_metrics adds the usage counts)
_STAT_KEYS = (
    "images",
    "bound_nats",
    "recon_nats",
    "rate_nats",
    "bound_bpd",
    "recon_bpd",
    "rate_bpd",
    "perplexity",
    "used_codes",
    "num_codes",
    "dead_codes",
    "dead_threshold",
)


@torch.no_grad()
def codebook_counts(model, x: torch.Tensor) -> dict:
    """Additive statistics of the levels ``x`` under the nearest codes: the summed
    ``-log p(x | codes)`` in nats (float64, ``"recon_codes"``) and how many latents chose
    each code (int64 ``[K]``, ``"usage"``)."""
    codes = model.codes(x)
    usage = torch.bincount(codes.reshape(-1), minlength=model.num_codes)
    recon = model.nll(model.grid(x), model.decode(codes)).double().sum()
    return {"recon_codes": recon, "usage": usage}


def codebook_metrics(model, totals: dict, count: int) -> dict:
    """From :func:`codebook_counts` summed over ``count`` images: the mean bound, recon and
    rate in nats and bits/dim, the usage counts, their perplexity, the used codes, and the
    dead codes of the EMA counts."""
    usage = totals["usage"]
    recon = float(totals["recon_codes"]) / max(count, 1)
    dims = model.in_channels * model.image_size[0] * model.image_size[1]
    p = usage.double() / max(int(usage.sum()), 1)
    entropy = float(-(p[p > 0] * p[p > 0].log()).sum())
    return {
        "images": count,
        "bound_nats": recon + model.rate,
        "recon_nats": recon,
        "rate_nats": model.rate,
        "bound_bpd": (recon + model.rate) / (dims * LN2),
        "recon_bpd": recon / (dims * LN2),
        "rate_bpd": model.rate / (dims * LN2),
        "perplexity": math.exp(entropy),
        "used_codes": int((usage > 0).sum()),
        "num_codes": model.num_codes,
        "dead_codes": int(model.quantizer.dead_mask().sum()),
        "dead_threshold": model.quantizer.dead_threshold,
        "usage": usage.cpu(),
    }


@torch.no_grad()
def codebook_statistics(model, levels: torch.Tensor, batch_size: int = 256) -> dict:
    """Evaluate ``model`` (a :class:`~dqkernels.models.VQVAE`, eval mode) on ``levels``
    ``[N, C, H, W]`` in batches: :func:`codebook_metrics` of the whole set."""
    dev = model.decoder[0].weight.device
    totals: dict = {}
    for i in range(0, levels.shape[0], batch_size):
        counts = codebook_counts(model, levels[i : i + batch_size].to(dev).long())
        totals = {k: v + totals[k] if k in totals else v for k, v in counts.items()}
    if not totals:
        totals = {
            "recon_codes": 0.0,
            "usage": torch.zeros(model.num_codes, dtype=torch.int64, device=dev),
        }
    return codebook_metrics(model, totals, levels.shape[0])


TASK = VQVAETask()
