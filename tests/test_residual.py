"""dqkernels.nn.ResidualBlock, the one residual block of the conditioning nets, the VQ-VAE
and PixelCNN: it reproduces each model's former block exactly (same parameters in the
same creation order with the same initialisation, same state_dict keys, same arithmetic),
so flow and VQ-VAE models built with a seed are bit for bit those of before."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import fresh_seed, require

from dqkernels.models import VQVAE, PixelCNN
from dqkernels.nn import ConditioningNet, MaskedConv2d, ResidualBlock
from dqkernels.reference.masked_conv2d import masked_conv2d_reference

ACTS = {"relu": torch.relu, "gelu": F.gelu, "elu": F.elu}


def _params(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach() for p in module.parameters()]


@pytest.mark.parametrize(
    "activation,pre", [("relu", None), ("gelu", None), ("elu", None), ("relu", "relu")]
)
def test_plain_block_init_is_two_default_convs(activation, pre):
    """A plain block draws its parameters as ``nn.Conv2d(w, w, k, padding=k // 2)`` then
    ``nn.Conv2d(w, w, 1)`` do (the former blocks of the coupling nets and the VQ-VAE):
    same generator draws in the same order, nothing else drawn."""
    seed = fresh_seed()
    for k in (1, 3, 5):
        torch.manual_seed(seed)
        block = ResidualBlock(6, activation, pre_activation=pre, kernel_size=k)
        after_block = torch.rand(3)
        torch.manual_seed(seed)
        convs = [nn.Conv2d(6, 6, k, padding=k // 2), nn.Conv2d(6, 6, 1)]
        after_convs = torch.rand(3)
        assert [n for n, _ in block.named_parameters()] == [
            "conv.weight",
            "conv.bias",
            "out.weight",
            "out.bias",
        ]
        for a, b in zip(_params(block), [p for c in convs for p in _params(c)], strict=True):
            assert torch.equal(a, b), (k, seed)
        assert torch.equal(after_block, after_convs), seed


@pytest.mark.parametrize("activation", ["relu", "gelu", "elu"])
def test_coupling_block_formula(activation):
    """``x + conv1x1(act(conv3x3(x)))``, bit for bit (the conditioning nets' block)."""
    seed = fresh_seed()
    torch.manual_seed(seed)
    block = ResidualBlock(5, activation)
    for p in block.out.parameters():  # nonzero everywhere
        nn.init.normal_(p)
    x = torch.randn(2, 5, 6, 7)
    c, o = block.conv, block.out
    want = x + F.conv2d(
        ACTS[activation](F.conv2d(x, c.weight, c.bias, padding=1)), o.weight, o.bias
    )
    assert torch.equal(block(x), want), seed


def test_vqvae_block_formula():
    """``x + conv1x1(relu(conv3x3(relu(x))))``, bit for bit (the VQ-VAE's block)."""
    seed = fresh_seed()
    torch.manual_seed(seed)
    block = ResidualBlock(5, "relu", pre_activation="relu")
    x = torch.randn(2, 5, 6, 7)
    c, o = block.conv, block.out
    want = x + F.conv2d(
        torch.relu(F.conv2d(torch.relu(x), c.weight, c.bias, padding=1)), o.weight, o.bias
    )
    assert torch.equal(block(x), want), seed


@pytest.mark.parametrize("backend", ["torch", "cpp"])
@pytest.mark.parametrize("gated", [True, False])
def test_pixelcnn_block_formula(backend, gated):
    """``x + conv1x1(dropout(gate(masked_conv_B(elu(x)))))`` (PixelCNN's block) on the
    ``masked_conv2d`` op, in float64 against the dense masked reference; the dropout (one
    draw, in training mode) sits between the gate and the 1x1 conv."""
    require(backend, "cpu", torch.float64)
    seed = fresh_seed()
    torch.manual_seed(seed)
    block = ResidualBlock(
        6,
        "gated" if gated else "relu",
        pre_activation="elu",
        masked=True,
        dropout=0.3,
        backend=backend,
    ).double()
    assert isinstance(block.conv, MaskedConv2d)
    assert (block.conv.mask_type, block.conv.groups) == ("B", 1)
    assert block.conv.weight.shape == ((12 if gated else 6), 6, 3, 3)
    x = torch.randn(2, 6, 5, 4, dtype=torch.float64)
    c, o = block.conv, block.out

    def old(x, training):
        h = masked_conv2d_reference(F.elu(x), c.weight, c.bias, "B")
        if gated:
            a, b = h.chunk(2, dim=1)
            h = torch.tanh(a) * torch.sigmoid(b)
        else:
            h = F.relu(h)
        return x + F.conv2d(F.dropout(h, 0.3, training), o.weight, o.bias)

    for training in (False, True):
        block.train(training)
        torch.manual_seed(seed + 1)
        got = block(x)
        torch.manual_seed(seed + 1)
        want = old(x, training)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=f"seed {seed}")


def test_state_dict_keys_unchanged():
    """The keys (and shapes) of the models' former blocks, so their checkpoints load."""
    assert list(ConditioningNet(3, 4, hidden=8, num_blocks=2).state_dict()) == [
        "inp.weight",
        "inp.bias",
        "mid.weight",
        "mid.bias",
        "blocks.0.conv.weight",
        "blocks.0.conv.bias",
        "blocks.0.out.weight",
        "blocks.0.out.bias",
        "blocks.1.conv.weight",
        "blocks.1.conv.bias",
        "blocks.1.out.weight",
        "blocks.1.out.bias",
        "out.weight",
        "out.bias",
    ]
    vq = VQVAE(1, 17, (8, 8), num_codes=8, code_dim=4, width=8, num_blocks=1, num_mixtures=2)
    assert list(vq.state_dict()) == [
        "quantizer.cluster_size",
        "quantizer.embed_sum",
        "quantizer.initialized",
        "encoder.0.weight",
        "encoder.0.bias",
        "encoder.2.weight",
        "encoder.2.bias",
        "encoder.4.weight",
        "encoder.4.bias",
        "encoder.5.conv.weight",
        "encoder.5.conv.bias",
        "encoder.5.out.weight",
        "encoder.5.out.bias",
        "encoder.7.weight",
        "encoder.7.bias",
        "decoder.0.weight",
        "decoder.0.bias",
        "decoder.1.conv.weight",
        "decoder.1.conv.bias",
        "decoder.1.out.weight",
        "decoder.1.out.bias",
        "decoder.3.weight",
        "decoder.3.bias",
        "decoder.5.weight",
        "decoder.5.bias",
        "decoder.7.weight",
        "decoder.7.bias",
    ]
    pc = PixelCNN(in_channels=3, num_levels=256, width=8, num_blocks=2, num_mixtures=2)
    assert {k: tuple(v.shape) for k, v in pc.state_dict().items()} == {
        "input.weight": (8, 4, 7, 7),
        "input.bias": (8,),
        "blocks.0.conv.weight": (16, 8, 3, 3),
        "blocks.0.conv.bias": (16,),
        "blocks.0.out.weight": (8, 8, 1, 1),
        "blocks.0.out.bias": (8,),
        "blocks.1.conv.weight": (16, 8, 3, 3),
        "blocks.1.conv.bias": (16,),
        "blocks.1.out.weight": (8, 8, 1, 1),
        "blocks.1.out.bias": (8,),
        "head1.weight": (8, 8, 1, 1),
        "head1.bias": (8,),
        "head2.weight": (20, 8, 1, 1),
        "head2.bias": (20,),
    }


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"activation": "tanh"}, r"activation must be one of relu, gelu, elu, gated; got 'tanh'"),
        (
            {"pre_activation": "gated"},
            r"pre_activation must be one of relu, gelu, elu; got "
            r"'gated'",
        ),
        ({"width": 0}, r"width must be >= 1; got 0"),
        ({"kernel_size": 2}, r"kernel_size must be odd and positive; got 2"),
        ({"dropout": 1.5}, r"dropout must be in \[0, 1\]; got 1.5"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match="ResidualBlock: " + message):
        ResidualBlock(**{"width": 4, **kwargs})
