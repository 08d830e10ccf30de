"""DFE against a direct, per-image float64 evaluation of docs/method.md 1.2 with the module's
own weights; single-view identity, gradients, shapes, bad input."""
from __future__ import annotations

import pytest
import torch

from nnunetv2_sss.sss.dfe import DiscriminativeFeatureEnhancement

CHANNELS = (4, 6, 8)


def features(dim: int, batch: int = 3, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    sizes = [(9, 7, 5)[:dim], (5, 4, 3)[:dim], (2, 2, 2)[:dim]]
    return [torch.randn(batch, c, *s, generator=generator, dtype=torch.float64) for c, s in zip(CHANNELS, sizes)]


def pointwise(conv: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution as a matrix product over the channel axis: x (C, *spatial)."""
    weight = conv.weight.reshape(conv.weight.shape[0], -1)
    return torch.einsum("oc,c...->o...", weight, x) + conv.bias.reshape(-1, *([1] * (x.dim() - 1)))


def direct_dfe(scale, f_a: torch.Tensor, f_b: torch.Tensor) -> torch.Tensor:
    """Steps 1–7 of docs/method.md 1.2, one image at a time."""
    first, second = scale.mlp[0], scale.mlp[2]
    out = []
    for a, b in zip(f_a, f_b):
        v_a, v_b = a.reshape(a.shape[0], -1).mean(1), b.reshape(b.shape[0], -1).mean(1)
        s = torch.dot(v_a, v_b) / (v_a.norm() * v_b.norm())
        w = 1 / (1 + torch.exp(-s))
        mlp = lambda x: pointwise(second, torch.nn.functional.gelu(pointwise(first, x)))
        fused = w * mlp(a) + (1 - w) * mlp(b)
        adjusted = fused + (1 - s) * (b - a)
        out.append(pointwise(scale.project, torch.cat([a, adjusted])))
    return torch.stack(out)


@pytest.mark.parametrize("dim", [2, 3])
def test_two_views_match_direct_formula(dim):
    torch.manual_seed(0)
    dfe = DiscriminativeFeatureEnhancement(CHANNELS, dim, mlp_hidden_ratio=1.5).double()
    f_a, f_b = features(dim, seed=1), features(dim, seed=2)
    with torch.no_grad():
        out = dfe(f_a, f_b)
        swapped = dfe(f_b, f_a)
        for i, scale in enumerate(dfe.per_scale.values()):
            assert out[i].shape == f_a[i].shape
            torch.testing.assert_close(out[i], direct_dfe(scale, f_a[i], f_b[i]), rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(swapped[i], direct_dfe(scale, f_b[i], f_a[i]), rtol=1e-10, atol=1e-10)
            assert not torch.allclose(out[i], swapped[i])


@pytest.mark.parametrize("dim", [2, 3])
def test_single_view_is_dfe_of_the_same_features(dim):
    torch.manual_seed(0)
    dfe = DiscriminativeFeatureEnhancement(CHANNELS, dim).double()
    f = features(dim, seed=3)
    with torch.no_grad():
        single, same_list, copies = dfe(f), dfe(f, f), dfe(f, [x.clone() for x in f])
        for i, scale in enumerate(dfe.per_scale.values()):
            assert torch.equal(single[i], same_list[i])
            # S = 1, ΔF = 0, F_adj = MLP(F): the two-view formula on equal copies agrees
            torch.testing.assert_close(copies[i], single[i], rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(single[i], direct_dfe(scale, f[i], f[i]), rtol=1e-10, atol=1e-10)


def test_gradients_reach_both_views_and_every_parameter():
    torch.manual_seed(0)
    dfe = DiscriminativeFeatureEnhancement(CHANNELS, 3)
    f_a = [x.float().requires_grad_() for x in features(3, seed=4)]
    f_b = [x.float().requires_grad_() for x in features(3, seed=5)]
    sum(o.square().mean() for o in dfe(f_a, f_b)).backward()
    for x in f_a + f_b:
        assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in dfe.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_selected_scales_only():
    dfe = DiscriminativeFeatureEnhancement(CHANNELS, 2, scales=[1, 2])
    assert sorted(dfe.per_scale.keys()) == ["1", "2"]
    f_a, f_b = [x.float() for x in features(2, seed=6)], [x.float() for x in features(2, seed=7)]
    out = dfe(f_a, f_b)
    assert out[0] is f_a[0]
    assert [o.shape for o in out] == [x.shape for x in f_a]
    assert not torch.allclose(out[1], f_a[1])


@pytest.mark.parametrize("kwargs, message", [
    (dict(channels_per_scale=[], dim=2), "channels_per_scale"),
    (dict(channels_per_scale=[4], dim=1), "dim"),
    (dict(channels_per_scale=[4], dim=2, scales=[1]), "scales"),
    (dict(channels_per_scale=[4], dim=2, mlp_hidden_ratio=0), "mlp_hidden_ratio"),
])
def test_bad_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DiscriminativeFeatureEnhancement(**kwargs)


def test_bad_features():
    dfe = DiscriminativeFeatureEnhancement(CHANNELS, 2)
    f = [x.float() for x in features(2)]
    with pytest.raises(ValueError, match="features_a has 2 scales"):
        dfe(f[:2])
    with pytest.raises(ValueError, match=r"features_b\[1\]"):
        dfe(f, [f[0], f[1][:, :3], f[2]])
    with pytest.raises(ValueError, match="differ in shape"):
        dfe(f, [f[0], f[1][:, :, :2], f[2]])
    with pytest.raises(ValueError, match=r"features_a\[0\]"):
        dfe([f[0][..., None]] + f[1:])


@pytest.mark.parametrize("scales", [None, [0, 2]])
def test_pair_equals_both_directions(scales):
    torch.manual_seed(0)
    dfe = DiscriminativeFeatureEnhancement(CHANNELS, 3, scales=scales).double()
    f_a, f_b = features(3, seed=8), features(3, seed=9)
    with torch.no_grad():
        out_a, out_b = dfe.pair(f_a, f_b)
        for got, expected in zip(out_a + out_b, dfe(f_a, f_b) + dfe(f_b, f_a)):
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
