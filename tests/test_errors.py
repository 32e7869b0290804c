"""Bad input raises ValueError/TypeError naming the argument, expected and given values."""

from __future__ import annotations

import pytest
import torch

from dqkernels.ops import dmol_nll, dmol_sample


def good(C=3, M=2, B=2, H=3, W=4, dtype=torch.float32):
    P = M * (10 if C == 3 else 3)
    return torch.zeros(B, C, H, W, dtype=dtype), torch.zeros(B, P, H, W, dtype=dtype)


def test_params_channels_fit_no_mixture_count():
    x, _ = good(C=3)
    with pytest.raises(
        ValueError,
        match=r"params has 21 channels, which fits no mixture "
        r"count for C=3: expected a positive multiple of 10 \(M \* \(1 \+ 3\*3\)\)",
    ):
        dmol_nll(x, torch.zeros(2, 21, 3, 4))
    x, _ = good(C=1)
    with pytest.raises(ValueError, match=r"params has 4 channels.*C=1.*multiple of 3"):
        dmol_nll(x, torch.zeros(2, 4, 3, 4))
    with pytest.raises(ValueError, match=r"params has 0 channels"):
        dmol_nll(x, torch.zeros(2, 0, 3, 4))


def test_x_wrong_rank_and_channels():
    _, p = good()
    with pytest.raises(
        ValueError,
        match=r"dmol_nll: x must have 4 dimensions \[B, C, H, W\]; "
        r"got shape \(2, 3, 4\)",
    ):
        dmol_nll(torch.zeros(2, 3, 4), p)
    with pytest.raises(
        ValueError,
        match=r"x's channel count C \(dimension 1\) must be 1 or 3; "
        r"got 2",
    ):
        dmol_nll(torch.zeros(2, 2, 3, 4), torch.zeros(2, 14, 3, 4))


def test_x_params_shape_mismatch():
    x, p = good()
    with pytest.raises(
        ValueError,
        match=r"x and params must agree in batch and spatial size "
        r"\[B, \*, H, W\]; got x \(2, 3, 3, 4\) and params \(2, 20, 3, 5\)",
    ):
        dmol_nll(x, torch.zeros(2, 20, 3, 5))
    with pytest.raises(ValueError, match=r"got x \(2, 3, 3, 4\) and params \(1, 20, 3, 4\)"):
        dmol_nll(x, p[:1])


def test_dtype_errors():
    x, p = good()
    with pytest.raises(
        TypeError,
        match=r"x and params must have the same dtype; got x "
        r"float16 and params float32",
    ):
        dmol_nll(x.half(), p)
    with pytest.raises(TypeError, match=r"x must be a floating tensor .*; got dtype int64"):
        dmol_nll(x.long(), p)
    with pytest.raises(TypeError, match=r"params must be a floating tensor .*got dtype complex64"):
        dmol_nll(x, p.to(torch.complex64))
    with pytest.raises(TypeError, match=r"x must be a torch.Tensor; got list"):
        dmol_nll([0.0], p)


def test_device_mismatch():
    x, p = good()
    with pytest.raises(
        ValueError,
        match=r"x and params must be on the same device; got x on "
        r"meta and params on cpu",
    ):
        dmol_nll(x.to("meta"), p)


def test_scalar_arguments():
    x, p = good()
    with pytest.raises(ValueError, match=r"num_levels must be >= 2; got 1"):
        dmol_nll(x, p, num_levels=1)
    with pytest.raises(TypeError, match=r"num_levels must be an int; got float"):
        dmol_nll(x, p, num_levels=255.0)
    with pytest.raises(ValueError, match=r"min_log_scale must be finite; got nan"):
        dmol_nll(x, p, min_log_scale=float("nan"))
    with pytest.raises(
        ValueError,
        match=r"backend must be one of torch, cpp, cuda, triton, "
        r"auto; got 'cudnn'",
    ):
        dmol_nll(x, p, backend="cudnn")


def test_sample_errors():
    _, p = good(C=3)
    with pytest.raises(ValueError, match=r"dmol_sample: num_channels must be 1 or 3; got 2"):
        dmol_sample(p, 2)
    with pytest.raises(
        ValueError,
        match=r"dmol_sample: params has 20 channels, which fits no "
        r"mixture count for C=1",
    ):
        dmol_sample(torch.zeros(2, 20, 3, 4), 1)
    with pytest.raises(ValueError, match=r"dmol_sample: params must have 4 dimensions"):
        dmol_sample(torch.zeros(20, 3, 4), 3)
