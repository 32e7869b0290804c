"""Public ops. Each is a ``torch.library`` custom op with a fake implementation and
autograd; the backend is chosen as described in :mod:`dqkernels.backends`."""
from dqkernels.ops.dmol import dmol_nll, dmol_sample, num_mixtures

__all__ = ["dmol_nll", "dmol_sample", "num_mixtures"]
