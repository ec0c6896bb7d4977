"""Each MoRA kind against an independent formulation written from the spec text (docs: methods.md).

The reference ΔW below is built with plain Python loops over explicit index lists; nothing from
mora.adapters.mora's helpers is used.
"""

import math

import pytest
import torch
from torch import nn

from mora.adapters import make_adapter, make_config
from mora.adapters.mora import mora_rank


# -- reference formulation ---------------------------------------------------------------------------


def ref_r_hat(d, k, r, even=False):
    value = math.floor(math.sqrt((d + k) * r) + 0.5)
    if even and value % 2:
        value -= 1
    return value


def padded_source(k, r_hat):
    """For each position of the wrap-padded input: which original input feature sits there."""
    pad = (r_hat - k % r_hat) % r_hat
    return [j if j < k else j - k for j in range(k + pad)]


def modulo_groups(k, r_hat):
    """Group i sums x_pad[c * r̂ + i] over c (wrap padding included)."""
    src = padded_source(k, r_hat)
    groups = [[] for _ in range(r_hat)]
    for j, feature in enumerate(src):
        groups[j % r_hat].append(feature)
    return groups


def contiguous_groups(k, r_hat):
    """The first k - r̂ (k // r̂) groups sum k // r̂ + 1 consecutive features, the rest k // r̂."""
    nr = k // r_hat
    m = k - r_hat * nr
    groups, start = [], 0
    for i in range(r_hat):
        size = nr + 1 if i < m else nr
        groups.append(list(range(start, start + size)))
        start += size
    assert start == k
    return groups


def tile_outputs(d, r_hat):
    """out_o = y[o mod r̂]."""
    return [o % r_hat for o in range(d)]


def contiguous_outputs(d, r_hat):
    """repeat_interleave: the first d - r̂ (d // r̂) entries of y d // r̂ + 1 times, the rest d // r̂ times."""
    q = d // r_hat
    m = d - r_hat * q
    out = []
    for i in range(r_hat):
        out += [i] * (q + 1 if i < m else q)
    assert len(out) == d
    return out


SHARING = {
    1: (modulo_groups, tile_outputs),
    2: (contiguous_groups, contiguous_outputs),
    3: (contiguous_groups, tile_outputs),
    4: (modulo_groups, contiguous_outputs),
}


def ref_sharing(M, d, k, sharing_type):
    r_hat = M.shape[0]
    groups_fn, outputs_fn = SHARING[sharing_type]
    groups, outputs = groups_fn(k, r_hat), outputs_fn(d, r_hat)
    dw = torch.zeros(d, k, dtype=M.dtype)
    for o in range(d):
        row = outputs[o]
        for i in range(r_hat):
            for feature in groups[i]:
                dw[o, feature] += M[row, i]
    return dw


def rotation_matrix(r_hat, b, dtype):
    """R_b from explicit 2x2 rotations: feature j paired with j + r̂/2, angle b * theta_j."""
    h = r_hat // 2
    R = torch.zeros(r_hat, r_hat, dtype=dtype)
    for j in range(h):
        angle = b * 10000.0 ** (-2.0 * j / r_hat)
        c, s = math.cos(angle), math.sin(angle)
        # z_j = x_j cos - x_{j+h} sin ; z_{j+h} = x_j sin + x_{j+h} cos
        R[j, j], R[j, j + h] = c, -s
        R[j + h, j], R[j + h, j + h] = s, c
    return R


def ref_blocks(M, d, k, rotate, overflow):
    r_hat = M.shape[0]
    src = padded_source(k, r_hat)
    nb = len(src) // r_hat
    n = nb * r_hat
    # flat[f] = sum over the block's padded inputs
    flat = torch.zeros(n, k, dtype=M.dtype)
    for b in range(nb):
        block = M @ rotation_matrix(r_hat, b, M.dtype) if rotate else M
        for row in range(r_hat):
            for col in range(r_hat):
                flat[b * r_hat + row, src[b * r_hat + col]] += block[row, col]
    dw = torch.zeros(d, k, dtype=M.dtype)
    if n < d:  # tile the flat vector up to d
        for o in range(d):
            dw[o] = flat[o % n]
    elif overflow == "truncate":
        for o in range(d):
            dw[o] = flat[o]
    else:  # fold: flat entry f adds into output f mod d
        for f in range(n):
            dw[f % d] += flat[f]
    return dw


def ref_truncation(M, d, k):
    r_hat = M.shape[0]
    dw = torch.zeros(d, k, dtype=M.dtype)
    for o in range(min(d, r_hat)):
        for c in range(min(k, r_hat)):
            dw[o, c] = M[o, c]
    return dw


def reference_delta(layer, kind, sharing_type=None, overflow="truncate"):
    M = layer.mora_M.detach()
    d, k = layer.out_features, layer.in_features
    if kind == "sharing":
        return ref_sharing(M, d, k, sharing_type)
    if kind == "rotation":
        return ref_blocks(M, d, k, rotate=True, overflow=overflow)
    if kind == "decouple":
        return ref_blocks(M, d, k, rotate=False, overflow=overflow)
    return ref_truncation(M, d, k)


# -- the tests -----------------------------------------------------------------------------------------

KINDS = [
    ("sharing", {"mora_type": 1}),
    ("sharing", {"mora_type": 2}),
    ("sharing", {"mora_type": 3}),
    ("sharing", {"mora_type": 4}),
    ("rotation", {"kind": "rotation"}),
    ("rotation", {"mora_type": 6}),
    ("decouple", {"kind": "decouple"}),
    ("truncation", {"kind": "truncation"}),
    ("rotation", {"kind": "rotation", "overflow": "fold"}),
    ("decouple", {"kind": "decouple", "overflow": "fold"}),
]
SHAPES = [(16, 16), (40, 12), (12, 40), (37, 23), (3, 5), (5, 3), (29, 11)]


def _id(item):
    return "-".join(f"{k}={v}" for k, v in item[1].items())


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("kind_opts", KINDS, ids=_id)
def test_kind_matches_reference(kind_opts, shape):
    kind, opts = kind_opts
    d, k = shape
    layer = make_adapter(nn.Linear(k, d, bias=False, dtype=torch.float64), "mora", 2, **opts)
    assert layer.r_hat == ref_r_hat(d, k, 2, even=kind == "rotation")
    with torch.no_grad():
        layer.mora_M.normal_()
    want = reference_delta(layer, kind, opts.get("mora_type"), opts.get("overflow", "truncate"))
    assert want.abs().max() > 0.1

    torch.testing.assert_close(layer.delta_weight(), want, rtol=1e-10, atol=1e-10)
    x = torch.randn(7, k, dtype=torch.float64)
    with torch.no_grad():
        got = layer(x) - layer.base(x)
    torch.testing.assert_close(got, x @ want.T, rtol=1e-10, atol=1e-10)


def test_reference_rotation_is_rotate_half_rope():
    """Sanity of the test's own 2x2 construction: R_0 = I, R_b orthogonal, and R_b x equals the
    rotate-half form x cos + [-x2, x1] sin with angles duplicated over the halves."""
    r_hat, b = 8, 3
    assert torch.equal(rotation_matrix(r_hat, 0, torch.float64), torch.eye(r_hat, dtype=torch.float64))
    R = rotation_matrix(r_hat, b, torch.float64)
    torch.testing.assert_close(R @ R.T, torch.eye(r_hat, dtype=torch.float64))
    x = torch.randn(r_hat, dtype=torch.float64)
    theta = torch.tensor([10000.0 ** (-2 * j / r_hat) for j in range(r_hat // 2)], dtype=torch.float64)
    ang = torch.cat([b * theta, b * theta])
    rotated = x * ang.cos() + torch.cat([-x[r_hat // 2 :], x[: r_hat // 2]]) * ang.sin()
    torch.testing.assert_close(R @ x, rotated)


def test_modulo_groups_wrap_padding_example():
    """k = 5, r̂ = 4: x_pad = [x0..x4, x0, x1, x2]; group i = {x_i, x_{4+i}}."""
    assert modulo_groups(5, 4) == [[0, 4], [1, 0], [2, 1], [3, 2]]
    assert contiguous_groups(10, 4) == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
    assert contiguous_outputs(10, 4) == [0, 0, 0, 1, 1, 1, 2, 2, 3, 3]
    assert tile_outputs(6, 4) == [0, 1, 2, 3, 0, 1]


def test_sharing_type1_forward_on_explicit_vector():
    """k = 5, d = 6, r = 1 -> r̂ = round(sqrt(11)) = 3; check the forward on one vector by hand."""
    layer = make_adapter(nn.Linear(5, 6, bias=False, dtype=torch.float64), "mora", 1, kind="sharing")
    assert layer.r_hat == 3 and layer.pad == 1 and layer.n_blocks == 2
    M = torch.arange(1.0, 10.0, dtype=torch.float64).reshape(3, 3)
    with torch.no_grad():
        layer.mora_M.copy_(M)
    x = torch.tensor([1.0, 10.0, 100.0, 1000.0, 10000.0], dtype=torch.float64)
    z = torch.tensor([1.0 + 1000.0, 10.0 + 10000.0, 100.0 + 1.0], dtype=torch.float64)  # x_pad = x + [x0]
    y = M @ z
    want = torch.cat([y, y])  # tile to d = 6
    with torch.no_grad():
        torch.testing.assert_close(layer(x) - layer.base(x), want)


def test_rotation_layer_attributes():
    layer = make_adapter(nn.Linear(23, 37, bias=False), "mora", 2, kind="rotation")
    assert layer.r_hat == 10 and layer.pad == 7 and layer.n_blocks == 3
    sharing = make_adapter(nn.Linear(23, 37, bias=False), "mora", 2, kind="sharing")
    assert sharing.r_hat == 11 and sharing.pad == 10 and sharing.n_blocks == 3
    assert sharing.sharing_type == 1


def test_fold_uses_every_input_while_truncate_drops_some():
    """k > d: with truncate the inputs past the kept blocks get no update, fold sums them back in."""
    d, k = 12, 40
    trunc = make_adapter(nn.Linear(k, d, bias=False, dtype=torch.float64), "mora", 2, kind="rotation")
    fold = make_adapter(nn.Linear(k, d, bias=False, dtype=torch.float64), "mora", 2, kind="rotation", overflow="fold")
    with torch.no_grad():
        trunc.mora_M.normal_()
        fold.mora_M.copy_(trunc.mora_M)
    dead_trunc = (trunc.delta_weight().abs().sum(0) == 0).sum().item()
    dead_fold = (fold.delta_weight().abs().sum(0) == 0).sum().item()
    assert dead_trunc > 0
    assert dead_fold == 0


# -- rank properties ------------------------------------------------------------------------------


def _rank(t):
    return torch.linalg.matrix_rank(t.double()).item()


@pytest.mark.parametrize("mora_type", [1, 2, 3, 4])
def test_sharing_rank_at_most_r_hat(mora_type):
    layer = make_adapter(nn.Linear(64, 64, bias=False, dtype=torch.float64), "mora", 2, mora_type=mora_type)
    assert layer.r_hat == 16
    with torch.no_grad():
        layer.mora_M.normal_()
    assert _rank(layer.delta_weight()) == 16  # <= r̂, and a random M reaches it
    uneven = make_adapter(nn.Linear(57, 71, bias=False, dtype=torch.float64), "mora", 2, mora_type=mora_type)
    with torch.no_grad():
        uneven.mora_M.normal_()
    assert _rank(uneven.delta_weight()) <= uneven.r_hat


@pytest.mark.parametrize("kind", ["rotation", "decouple"])
@pytest.mark.parametrize("size", [64, 40])
def test_block_kinds_full_rank_on_square(kind, size):
    layer = make_adapter(nn.Linear(size, size, bias=False, dtype=torch.float64), "mora", 2, kind=kind)
    assert layer.r_hat < size // 2
    with torch.no_grad():
        layer.mora_M.normal_()
    assert _rank(layer.delta_weight()) == size


def test_truncation_rank_and_lora_rank():
    trunc = make_adapter(nn.Linear(64, 64, bias=False, dtype=torch.float64), "mora", 2, kind="truncation")
    lora = make_adapter(nn.Linear(64, 64, bias=False, dtype=torch.float64), "lora", 4)
    with torch.no_grad():
        trunc.mora_M.normal_()
        lora.lora_B.normal_()
    assert _rank(trunc.delta_weight()) == 16
    assert _rank(lora.delta_weight()) == 4  # <= r, reached with random A, B


# -- r̂ and the kind names ------------------------------------------------------------------------


def test_r_hat_values_llama7b():
    assert mora_rank(4096, 4096, 8) == 256
    assert mora_rank(11008, 4096, 8) == 348
    assert mora_rank(4096, 11008, 8) == 348
    assert mora_rank(4096, 4096, 256) == 1448
    assert mora_rank(11008, 4096, 256) == 1966
    # round half up, not down: sqrt(120832) = 347.6
    assert math.sqrt((4096 + 11008) * 8) < 348
    for d, k, r in [(37, 23, 2), (100, 7, 3), (4096, 4096, 8), (11008, 4096, 8), (5, 3, 1)]:
        assert mora_rank(d, k, r) == ref_r_hat(d, k, r)
        assert mora_rank(d, k, r, even=True) == ref_r_hat(d, k, r, even=True)


def test_rotation_rounds_r_hat_down_to_even():
    assert mora_rank(37, 23, 2) == 11
    assert mora_rank(37, 23, 2, even=True) == 10
    assert mora_rank(4096, 4096, 8, even=True) == 256
    assert make_adapter(nn.Linear(23, 37), "mora", 2, kind="rotation").r_hat == 10
    assert make_adapter(nn.Linear(23, 37), "mora", 2, kind="decouple").r_hat == 11


def test_mora_type_aliases():
    assert make_config("mora", 8, mora_type=1).kind == "sharing"
    for t in (2, 3, 4):
        assert make_config("mora", 8, mora_type=t).kind == "sharing"
    assert make_config("mora", 8, mora_type=6).kind == "rotation"
    assert make_config("mora", 8, kind="sharing").mora_type == 1
    assert make_config("mora", 8, kind="rotation").mora_type == 6
    layer = make_adapter(nn.Linear(16, 16), "mora", 2, mora_type=3)
    assert layer.sharing_type == 3


@pytest.mark.parametrize("kind,mora_type", [("rotation", 1), ("sharing", 6), ("decouple", 6), ("truncation", 2)])
def test_kind_and_mora_type_contradiction_raises(kind, mora_type):
    with pytest.raises(ValueError, match="contradicts"):
        make_config("mora", 8, kind=kind, mora_type=mora_type)


def test_unknown_mora_type_raises():
    with pytest.raises(ValueError, match="mora_type must be one of"):
        make_config("mora", 8, mora_type=5)


@pytest.mark.parametrize("r,kind,mora_type", [(1, "rotation", 6), (8, "rotation", 6), (127, "rotation", 6),
                                              (128, "sharing", 1), (256, "sharing", 1)])
def test_auto_kind_is_the_authors_rule(r, kind, mora_type):
    """The default kind resolves by rank (rotation below 128, sharing from 128: the paper's small / large
    ranks), at validation, so the config and the run record the resolved kind; None means auto too."""
    for options in ({}, {"kind": "auto"}, {"kind": None}):
        config = make_config("mora", r, **options)
        assert (config.kind, config.mora_type) == (kind, mora_type)
        assert config.to_dict()["kind"] == kind
    assert make_config("mora", r, kind="auto", mora_type=2).kind == "sharing"  # an explicit type wins over auto
    assert make_config("remora", r).kind == "sharing"  # the only kind ReMoRA can cycle


def test_conf_method_mora_defaults_to_auto_and_takes_mora_type_from_the_command_line():
    from omegaconf import OmegaConf

    from mora.adapters import config_from_dict
    from runner import compose

    def kind(*overrides):
        method = OmegaConf.to_container(compose(["method=mora", *overrides]), resolve=True)["method"]
        config = config_from_dict(method)
        return config.kind, config.mora_type

    assert kind() == ("rotation", 6)
    assert kind("method.r=256") == ("sharing", 1)
    assert kind("method.mora_type=1") == ("sharing", 1)
    assert kind("method.mora_type=3", "method.r=256") == ("sharing", 3)
    assert kind("method.mora_type=6", "method.r=256") == ("rotation", 6)
