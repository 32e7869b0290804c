"""Public ops. Each is a ``torch.library`` custom op with a fake implementation and
autograd; the backend is chosen as described in :mod:`dqkernels.backends`."""

from dqkernels.ops.affine_coupling import affine_coupling
from dqkernels.ops.bernoulli_flip import bernoulli_flip_loglik
from dqkernels.ops.dmol import dmol_nll, dmol_sample, num_mixtures
from dqkernels.ops.masked_conv2d import masked_conv2d
from dqkernels.ops.masked_linear import masked_linear
from dqkernels.ops.mixlogcdf_coupling import mixlogcdf_coupling
from dqkernels.ops.vq import vq_ema_update, vq_nearest, vq_sample

__all__ = [
    "affine_coupling",
    "bernoulli_flip_loglik",
    "dmol_nll",
    "dmol_sample",
    "masked_conv2d",
    "masked_linear",
    "mixlogcdf_coupling",
    "num_mixtures",
    "vq_ema_update",
    "vq_nearest",
    "vq_sample",
]
