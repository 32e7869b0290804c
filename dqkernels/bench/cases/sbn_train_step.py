"""End to end: one training step of a linear sigmoid belief network with Tokui & Sato's
estimator (``dqk train sbn --estimator tokui``) on binarized-MNIST-sized data (D = 784,
layers of 200), one and two stochastic layers, batches of 24 and 100.

The ``eager`` row computes the estimator as its public code does
(:mod:`dqkernels.reference.sbn_tokui`: for every unit, a copy of the whole sample with
that bit flipped, layers above re-sampled with the same uniforms, the terms of ``f`` from
layer ``l - 1`` up evaluated on the ``B * H_l`` copies, x's 784-wide likelihood included
for ``l = 1``); ``compile`` is
``torch.compile`` of that loss. Each backend row runs :class:`~dqkernels.models.
sbn_estimators.Tokui` with the fused ``bernoulli_flip_loglik`` on that backend (no
``[B, H, D]`` tensor; the layers above a flipped unit re-simulated from rank-one logit
changes). Every row draws the same uniforms, so all compute the same gradients and the
float64 check applies."""

from __future__ import annotations

import torch

from dqkernels.bench.spec import Case, TrainStepOp

D, H = 784, 200


def _case(B: int, L: int, quick: bool = False) -> Case:
    name = "tiny" if quick else f"mnist-b{B}-l{L}"
    d, h = (12, 5) if quick else (D, H)
    layers = "-".join([str(h)] * L)
    return Case(name, {"B": B, "D": d, "H": h, "L": L}, f"B={B} {layers}-{d}", quick=quick)


class SBNTrainStepBench(TrainStepOp):
    name = "sbn_train_step"
    family = "bernoulli_flip"
    description = (
        "one training step of a linear SBN with the Tokui-Sato estimator: loss = minus "
        "the one-sample ELBO averaged over the batch, carrying the estimator's gradient; "
        "zero_grad, backward to every parameter and an Adam step."
    )
    notes = (
        "eager: the estimator laid out as the paper's public code does "
        "(dqkernels.reference.sbn_tokui: B*H_l flipped copies of the sample, the terms of "
        "layers >= l-1 evaluated on every copy, x's likelihood included for l = 1); "
        "compile: torch.compile of that loss",
        "backend rows: dqkernels.models.sbn_estimators.Tokui with the fused "
        "bernoulli_flip_loglik on that backend for the layer below each flipped unit and "
        "rank-one logit changes for the layer above",
        "every row uses the same parameters, batch and uniforms, so all compute the same "
        "gradients (grad_rel_err against the float64 eager row) in fp32 up to a bit whose "
        "u falls within rounding of its probability (the two paths round the re-sampled "
        "layer's logits differently); in bf16/fp16 such bits are common and grad_rel_err "
        "compares different draws: measure SBNs in fp32",
        "no FLOP count or bytes_min: a whole training step has no single ceiling; the op "
        "alone is dqk bench bernoulli_flip_loglik",
    )

    def cases(self) -> list[Case]:
        return [
            _case(3, 2, quick=True),
            _case(24, 1),
            _case(24, 2),
            _case(100, 1),
            _case(100, 2),
        ]

    def build_model(self, case: Case, backend: str):
        from dqkernels.models.sbn import SBN
        from dqkernels.models.sbn_estimators import SBNTraining, make_estimator

        torch.manual_seed(0)
        sbn = SBN(case.dims["D"], (case.dims["H"],) * case.dims["L"], backend=backend)
        if backend == "torch":  # the eager / compile rows: the public code's way
            from dqkernels.reference.sbn_tokui import TokuiResimulate

            return SBNTraining(sbn, TokuiResimulate())
        return SBNTraining(sbn, make_estimator("tokui", sbn))

    def make_batch(self, model, case, dtype, device, seed):
        g = torch.Generator().manual_seed(seed)
        B, d = case.dims["B"], case.dims["D"]
        x = (torch.rand(B, d, generator=g) < 0.3).to(device=device, dtype=dtype)
        u = [None] + [
            torch.rand(B, h, generator=g).to(device=device, dtype=dtype) for h in model.sbn.layers
        ]
        return {"x": x, "u": u}

    def loss(self, model, x, u):
        # u in x's dtype: the float64 gold gets the rows' uniforms exactly (they are
        # float32 values), whatever the harness converts
        u = [None if t is None else t.to(x.dtype) for t in u]
        return model.estimator(model.sbn, x, u).loss.mean()


OP = SBNTrainStepBench()
