"""Bad input raises ValueError/TypeError naming the argument, expected and given values."""

from __future__ import annotations

import pytest
import torch

from dqkernels.ops import dmol_nll, dmol_sample

Z = torch.zeros


def good(C=3, M=2, B=2, H=3, W=4, dtype=torch.float32):
    P = M * (10 if C == 3 else 3)
    return torch.zeros(B, C, H, W, dtype=dtype), torch.zeros(B, P, H, W, dtype=dtype)


X, P = good()  # x [2, 3, 3, 4] and params [2, 20, 3, 4] that agree
X1, _ = good(C=1)  # one channel

# (the exception, a pattern its message matches, the call that raises it), by what is wrong
REFUSED = {
    "params channels fit no mixture count, C=3": (
        ValueError,
        r"params has 21 channels, which fits no mixture count for C=3: expected a positive "
        r"multiple of 10 \(M \* \(1 \+ 3\*3\)\)",
        lambda: dmol_nll(X, Z(2, 21, 3, 4)),
    ),
    "params channels fit no mixture count, C=1": (
        ValueError,
        r"params has 4 channels.*C=1.*multiple of 3",
        lambda: dmol_nll(X1, Z(2, 4, 3, 4)),
    ),
    "no params channels": (
        ValueError,
        r"params has 0 channels",
        lambda: dmol_nll(X1, Z(2, 0, 3, 4)),
    ),
    "x of rank 3": (
        ValueError,
        r"dmol_nll: x must have 4 dimensions \[B, C, H, W\]; got shape \(2, 3, 4\)",
        lambda: dmol_nll(Z(2, 3, 4), P),
    ),
    "x of 2 channels": (
        ValueError,
        r"x's channel count C \(dimension 1\) must be 1 or 3; got 2",
        lambda: dmol_nll(Z(2, 2, 3, 4), Z(2, 14, 3, 4)),
    ),
    "x and params differ in width": (
        ValueError,
        r"x and params must agree in batch and spatial size \[B, \*, H, W\]; got x "
        r"\(2, 3, 3, 4\) and params \(2, 20, 3, 5\)",
        lambda: dmol_nll(X, Z(2, 20, 3, 5)),
    ),
    "x and params differ in batch": (
        ValueError,
        r"got x \(2, 3, 3, 4\) and params \(1, 20, 3, 4\)",
        lambda: dmol_nll(X, P[:1]),
    ),
    "x and params differ in dtype": (
        TypeError,
        r"x and params must have the same dtype; got x float16 and params float32",
        lambda: dmol_nll(X.half(), P),
    ),
    "integer x": (
        TypeError,
        r"x must be a floating tensor .*; got dtype int64",
        lambda: dmol_nll(X.long(), P),
    ),
    "complex params": (
        TypeError,
        r"params must be a floating tensor .*got dtype complex64",
        lambda: dmol_nll(X, P.to(torch.complex64)),
    ),
    "x a list": (TypeError, r"x must be a torch.Tensor; got list", lambda: dmol_nll([0.0], P)),
    "x and params on different devices": (
        ValueError,
        r"x and params must be on the same device; got x on meta and params on cpu",
        lambda: dmol_nll(X.to("meta"), P),
    ),
    "num_levels 1": (
        ValueError,
        r"num_levels must be >= 2; got 1",
        lambda: dmol_nll(X, P, num_levels=1),
    ),
    "num_levels a float": (
        TypeError,
        r"num_levels must be an int; got float",
        lambda: dmol_nll(X, P, num_levels=255.0),
    ),
    "min_log_scale nan": (
        ValueError,
        r"min_log_scale must be finite; got nan",
        lambda: dmol_nll(X, P, min_log_scale=float("nan")),
    ),
    "unknown backend": (
        ValueError,
        r"backend must be one of torch, cpp, cuda, triton, auto; got 'cudnn'",
        lambda: dmol_nll(X, P, backend="cudnn"),
    ),
    "sample of 2 channels": (
        ValueError,
        r"dmol_sample: num_channels must be 1 or 3; got 2",
        lambda: dmol_sample(P, 2),
    ),
    "sample params fit no mixture count": (
        ValueError,
        r"dmol_sample: params has 20 channels, which fits no mixture count for C=1",
        lambda: dmol_sample(Z(2, 20, 3, 4), 1),
    ),
    "sample params of rank 3": (
        ValueError,
        r"dmol_sample: params must have 4 dimensions",
        lambda: dmol_sample(Z(20, 3, 4), 3),
    ),
}


@pytest.mark.parametrize("case", REFUSED)
def test_bad_input_is_refused(case):
    exc, pattern, call = REFUSED[case]
    with pytest.raises(exc, match=pattern):
        call()
