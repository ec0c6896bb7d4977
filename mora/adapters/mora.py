"""MoRA: one square trainable matrix M (r̂ x r̂) between a non-parametric compression and decompression.

`y = W0 x + f_decomp(M f_comp(dropout(x)))`, M = 0 at init, no scaling. The budget matches LoRA's:
r̂ = round_half_up(sqrt((d + k) r)), rounded down to even for the rotation kind.

Kinds (the authors' `mora_type` numbers are accepted as aliases):
  sharing    1  modulo compress (wrap-padded, sum of every r̂-th feature), tiling decompress   (Eq. 6)
  sharing    2  contiguous compress, contiguous decompress
  sharing    3  contiguous compress, tiling decompress
  sharing    4  modulo compress, contiguous decompress
  rotation   6  blocks of r̂ inputs, block b rotated RoPE-style by b * theta, shared M  (Eq. 9)
  decouple   -  rotation without the rotation (Eq. 8)
  truncation -  the first r̂ inputs in, M into the first r̂ outputs  (Eq. 4)
  auto       -  the default: rotation for r < 128, sharing for r >= 128 (the authors' rule, below)
ReMoRA adds merge-and-reinit restarts that move to the next sharing grouping after each merge.

`kind: auto` follows the authors' guidance (type 6 for small ranks, type 1 for large) with the paper's own
line between them: Sec. 3 calls r = 128 and r = 256 the "larger ranks" at which sharing is efficient (at
r = 128 on a 4096 x 4096 layer only 4 rows share a row of M, at r = 8 it is 16), and every experiment of
the paper uses sharing at r >= 128 (pretraining at 128, fine-tuning at 256) and rotation at r = 8. No
experiment falls between; there rotation is the safer pick, since in Table 4 it never scores below
sharing (64.2 vs 62.5 at r = 8, 67.9 for both at r = 256) and costs only time. The kind auto resolves to
is what the run records and what its id hashes, so `kind=auto` at r 8 and `kind=rotation` at r 8 are one run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..kernels.mora import BlockPlan, SharingGeometry, block_forward, sharing_forward, truncation_forward
from ..kernels.mora_tables import SHARING_GROUPINGS, RopeTables
from .config import AdapterConfig, RestartOptions, register
from .layer import AdapterLayer

KINDS = ("sharing", "rotation", "decouple", "truncation")
AUTO = "auto"
AUTO_SHARING_MIN_RANK = 128  # kind auto: sharing from this r up, rotation below (module docstring)
TYPE_ALIASES = {1: "sharing", 2: "sharing", 3: "sharing", 4: "sharing", 6: "rotation"}
OVERFLOWS = ("truncate", "fold")


def mora_rank(out_features: int, in_features: int, r: int, even: bool = False) -> int:
    """r̂ such that r̂² ≈ (d + k) r, rounded half up; the rotation kind needs it even."""
    r_hat = int(math.sqrt((out_features + in_features) * r) + 0.5)
    return r_hat - r_hat % 2 if even else r_hat


@register("mora")
@dataclass
class MoRAConfig(AdapterConfig):
    kind: str  # auto or one of KINDS; auto resolves by rank when the config is validated
    mora_type: int | None
    # rotation/decouple when the blocks yield more than d outputs: "truncate" (the authors' code: inputs
    # past about d get no update) or "fold" (sum the extra output blocks back into the first d).
    overflow: str

    def __post_init__(self) -> None:
        self._resolve_kind()
        super().__post_init__()

    def _resolve_kind(self) -> None:
        if self.mora_type is not None:
            if self.mora_type not in TYPE_ALIASES:
                raise ValueError(
                    f"{self.method}: mora_type must be one of {sorted(TYPE_ALIASES)}, got {self.mora_type!r}"
                )
            alias = TYPE_ALIASES[self.mora_type]
            if self.kind not in (None, AUTO, alias):
                raise ValueError(
                    f"{self.method}: kind={self.kind!r} contradicts mora_type={self.mora_type} ({alias}); set one"
                )
            self.kind = alias
        if self.kind in (None, AUTO):
            self.kind = self.auto_kind()
        if self.kind not in KINDS:
            raise ValueError(
                f"{self.method}: unknown kind {self.kind!r}; choose one of {(AUTO, *KINDS)} (or mora_type 1-4, 6)"
            )
        if self.mora_type is None:
            self.mora_type = {"sharing": 1, "rotation": 6}.get(self.kind)

    def auto_kind(self) -> str:
        """The authors' rule: rotation for small ranks, sharing for large (the module docstring says why 128)."""
        large = isinstance(self.r, int) and self.r >= AUTO_SHARING_MIN_RANK  # a bad r fails in validate()
        return "sharing" if large else "rotation"

    def inert_fields(self) -> set[str]:
        """`overflow` only matters to the kinds that lay blocks of inputs side by side."""
        return super().inert_fields() | (set() if issubclass(SCHEMES[self.kind], Blocks) else {"overflow"})

    def validate(self) -> None:
        super().validate()
        if self.overflow not in OVERFLOWS:
            raise ValueError(f"{self.method}: overflow must be one of {OVERFLOWS}, got {self.overflow!r}")

    def sharing_types(self) -> tuple[int, ...]:
        """Every sharing type this layer may use over its life (one, unless restarts cycle them)."""
        return (self.mora_type,) if self.kind == "sharing" else ()

    def sharing_type_after(self, restarts: int) -> int | None:
        return self.mora_type


@register("remora")
@dataclass
class ReMoRAConfig(RestartOptions, MoRAConfig):
    """ReMoRA: MoRA + merge-and-reinit; after each merge the sharing grouping moves along `cycle`
    (the authors' default 1 -> 2 -> 3 -> 4 -> 1; the paper's appendix uses two groupings, e.g. [1, 2])."""

    cycle: tuple[int, ...]

    def auto_kind(self) -> str:
        """Sharing at any rank: the only kind with a grouping to move along after a merge."""
        return "sharing"

    def validate(self) -> None:
        MoRAConfig.validate(self)
        self.validate_restarts(self.method)
        if self.kind != "sharing":
            raise ValueError(
                f"remora: kind={self.kind!r} has no grouping to change after a merge; use kind=sharing "
                f"(mora_type 1-4), or mora for {self.kind} without restarts"
            )
        self.cycle = tuple(int(t) for t in self.cycle)
        if not self.cycle or any(t not in SHARING_GROUPINGS for t in self.cycle):
            raise ValueError(f"remora: cycle must list sharing types from {sorted(SHARING_GROUPINGS)}, got {self.cycle}")
        if self.mora_type not in self.cycle:
            raise ValueError(f"remora: the starting mora_type {self.mora_type} is not in cycle {self.cycle}")

    def sharing_types(self) -> tuple[int, ...]:
        return self.cycle

    def sharing_type_after(self, restarts: int) -> int:
        start = self.cycle.index(self.mora_type)
        return self.cycle[(start + restarts) % len(self.cycle)]


# ---------------------------------------------------------------------------------------------------
# Index arithmetic shared by the forward maps (reshapes) and the dense ΔW (gathers)


def _wrap_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad the last dim by repeating its first `pad` entries, as the authors' code does."""
    return torch.cat([x, x[..., :pad]], dim=-1) if pad else x


def _contiguous_sizes(n: int, groups: int) -> tuple[int, int]:
    """n items in `groups` runs: the first `m` runs hold `q + 1` items, the rest `q`."""
    q, m = divmod(n, groups)
    return q, m


def _contiguous_index(n: int, groups: int, device) -> torch.Tensor:
    """Group of each of n items under the contiguous split."""
    q, m = _contiguous_sizes(n, groups)
    counts = torch.full((groups,), q, dtype=torch.long, device=device)
    counts[:m] += 1
    return torch.repeat_interleave(torch.arange(groups, device=device), counts)


def _contiguous_sum(x: torch.Tensor, groups: int) -> torch.Tensor:
    q, m = _contiguous_sizes(x.shape[-1], groups)
    cut = m * (q + 1)
    head = x[..., :cut].unflatten(-1, (m, q + 1)).sum(-1)
    tail = x[..., cut:].unflatten(-1, (groups - m, q)).sum(-1)
    return torch.cat([head, tail], dim=-1)


def _contiguous_repeat(y: torch.Tensor, n: int) -> torch.Tensor:
    groups = y.shape[-1]
    q, m = _contiguous_sizes(n, groups)
    head = y[..., :m].unsqueeze(-1).expand(*y.shape[:-1], m, q + 1).flatten(-2)
    tail = y[..., m:].unsqueeze(-1).expand(*y.shape[:-1], groups - m, q).flatten(-2)
    return torch.cat([head, tail], dim=-1)


def _tile(y: torch.Tensor, n: int) -> torch.Tensor:
    reps = -(-n // y.shape[-1])
    return y.repeat(*([1] * (y.dim() - 1)), reps)[..., :n]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def _fold_pad_columns(padded: torch.Tensor, k: int, pad: int) -> torch.Tensor:
    """Columns k..k+pad act on the wrapped copies of inputs 0..pad: add them back to their sources."""
    if padded.shape[1] == k:
        return padded
    weight = padded[:, :k].clone()
    weight[:, :pad] += padded[:, k:]
    return weight


class Sharing:
    """Types 1-4 (Eq. 6 and the contiguous groupings): x compressed to r̂ features, through M, decompressed to d."""

    def __init__(self, layer: MoRALayer):
        self.geometry = SharingGeometry.of(layer.sharing_type, layer.r_hat, layer.pad)

    @staticmethod
    def wraps(config: MoRAConfig) -> bool:
        """Whether the layer wrap-pads its inputs (a modulo compression, at some point of its life)."""
        return any(SHARING_GROUPINGS[t][0] == "modulo" for t in config.sharing_types())

    def delta(self, layer: MoRALayer, x: torch.Tensor) -> torch.Tensor:
        geo = self.geometry
        if geo.compress == "modulo":
            z = _wrap_pad(x, layer.pad).unflatten(-1, (layer.n_blocks, layer.r_hat)).sum(-2)
        else:
            z = _contiguous_sum(x, layer.r_hat)
        y = z @ layer.mora_M.t()
        return _tile(y, layer.out_features) if geo.decompress == "tile" else _contiguous_repeat(y, layer.out_features)

    def weight(self, layer: MoRALayer) -> torch.Tensor:
        M, device = layer.mora_M, layer.mora_M.device
        if self.geometry.compress == "modulo":
            cols = torch.arange(layer.in_features + layer.pad, device=device) % layer.r_hat
        else:
            cols = _contiguous_index(layer.in_features, layer.r_hat, device)
        if self.geometry.decompress == "tile":
            rows = torch.arange(layer.out_features, device=device) % layer.r_hat
        else:
            rows = _contiguous_index(layer.out_features, layer.r_hat, device)
        return _fold_pad_columns(M[rows.unsqueeze(1), cols.unsqueeze(0)], layer.in_features, layer.pad)

    def fused(self, layer: MoRALayer, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return sharing_forward(x, layer.base, layer.mora_M, self.geometry, dtype)


class Blocks:
    """Decouple (Eq. 8): the wrap-padded x in blocks of r̂ inputs, each block through M, the flat outputs
    tiled up to d, or past d truncated (the authors' code) or folded back (`overflow`)."""

    rotate = False

    def __init__(self, layer: MoRALayer):
        self.rope = RopeTables(layer.r_hat, layer.n_blocks) if self.rotate else None
        self.plan = BlockPlan.of(layer.r_hat, layer.in_features, layer.out_features, layer.pad, layer.config.overflow)

    @staticmethod
    def wraps(config: MoRAConfig) -> bool:
        return True

    def delta(self, layer: MoRALayer, x: torch.Tensor) -> torch.Tensor:
        blocks = _wrap_pad(x, layer.pad).unflatten(-1, (layer.n_blocks, layer.r_hat))
        if self.rope is not None:
            cos, sin = self.rope.exact(x.device, x.dtype)
            blocks = blocks * cos + _rotate_half(blocks) * sin
        flat = (blocks @ layer.mora_M.t()).flatten(-2)
        d, n = layer.out_features, flat.shape[-1]
        if n < d:
            return _tile(flat, d)
        if layer.config.overflow == "truncate" or n == d:
            return flat[..., :d]
        folds = -(-n // d)
        padded = torch.nn.functional.pad(flat, (0, folds * d - n))
        return padded.unflatten(-1, (folds, d)).sum(-2)

    def matrices(self, layer: MoRALayer) -> torch.Tensor:
        """(n_blocks, r̂, r̂): the map from block b's inputs to its outputs, M R_b (rotation) or M."""
        M = layer.mora_M
        if self.rope is None:
            return M.unsqueeze(0).expand(layer.n_blocks, -1, -1)
        cos, sin = self.rope.exact(M.device, M.dtype)
        # M R_b = M diag(cos_b) + M diag(sin_b) Rh, where (A Rh) = [A[:, h:], -A[:, :h]] for rotate-half Rh.
        scaled = M.unsqueeze(0) * sin.unsqueeze(1)
        half = layer.r_hat // 2
        return M.unsqueeze(0) * cos.unsqueeze(1) + torch.cat([scaled[..., half:], -scaled[..., :half]], dim=-1)

    def weight(self, layer: MoRALayer) -> torch.Tensor:
        r_hat, nb, d = layer.r_hat, layer.n_blocks, layer.out_features
        n_flat = nb * r_hat
        device = layer.mora_M.device
        blocks = self.matrices(layer)
        fold = layer.config.overflow == "fold" and n_flat > d
        flat_rows = torch.arange(n_flat if fold else d, device=device)
        if not fold:
            flat_rows = flat_rows % n_flat  # truncation keeps the first d; tiling wraps around
        which_block, row_in_block = flat_rows // r_hat, flat_rows % r_hat
        dense = blocks.new_zeros(flat_rows.numel(), nb, r_hat)
        dense[torch.arange(flat_rows.numel(), device=device), which_block] = blocks[which_block, row_in_block]
        dense = dense.flatten(1)
        if fold:
            dense = dense.new_zeros(d, n_flat).index_add_(0, flat_rows % d, dense)
        return _fold_pad_columns(dense, layer.in_features, layer.pad)

    def fused(self, layer: MoRALayer, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
        if self.plan is None:  # folded overflow: the reference path
            return None
        return block_forward(x, layer.base, layer.mora_M, self.plan, self.rope, dtype)


class Rotation(Blocks):
    """Eq. 9: decouple with block b rotated RoPE-style by b * theta before M (mora_tables)."""

    rotate = True


class Truncation:
    """Eq. 4: the first r̂ inputs through M into the first r̂ outputs."""

    def __init__(self, layer: MoRALayer):
        pass

    @staticmethod
    def wraps(config: MoRAConfig) -> bool:
        return False

    def delta(self, layer: MoRALayer, x: torch.Tensor) -> torch.Tensor:
        r_hat, d, k = layer.r_hat, layer.out_features, layer.in_features
        z = x[..., :r_hat]
        if k < r_hat:
            z = torch.nn.functional.pad(z, (0, r_hat - k))
        y = z @ layer.mora_M.t()
        return y[..., :d] if d <= r_hat else torch.nn.functional.pad(y, (0, d - r_hat))

    def weight(self, layer: MoRALayer) -> torch.Tensor:
        d, k, r_hat = layer.out_features, layer.in_features, layer.r_hat
        weight = layer.mora_M.new_zeros(d, k)
        rows, cols = min(d, r_hat), min(k, r_hat)
        weight[:rows, :cols] = layer.mora_M[:rows, :cols]
        return weight

    def fused(self, layer: MoRALayer, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return truncation_forward(x, layer.base, layer.mora_M, dtype)


# The one place MoRA's kind is dispatched: each kind's reference map, dense ΔW and fused path.
SCHEMES: dict[str, type] = {"sharing": Sharing, "rotation": Rotation, "decouple": Blocks, "truncation": Truncation}


class MoRALayer(AdapterLayer):
    def __init__(self, base: nn.Linear, config: MoRAConfig):
        super().__init__(base, config)
        d, k = self.out_features, self.in_features
        scheme = SCHEMES[config.kind]
        self.r_hat = r_hat = mora_rank(d, k, config.r, even=scheme is Rotation)
        if r_hat < 1 or (scheme is Rotation and r_hat < 2):
            raise ValueError(f"{config.method}: r={config.r} gives r̂={r_hat} on a {d}x{k} layer; raise r")
        self.pad = (r_hat - k % r_hat) % r_hat
        if scheme.wraps(config) and self.pad > k:
            raise ValueError(
                f"{config.method}: wrap padding needs {self.pad} extra inputs but the layer has only {k} "
                f"(r̂={r_hat} from r={config.r} on {d}x{k}); lower r, or use kind=truncation or a contiguous "
                f"sharing type (mora_type 2 or 3)"
            )
        self.n_blocks = (k + self.pad) // r_hat
        self.mora_M = self.new_parameter(r_hat, r_hat)
        if config.restart_options() is not None:
            self.register_buffer("restarts", torch.zeros((), dtype=torch.long, device=base.weight.device))
        self._set_grouping(config.sharing_type_after(0))
        self.reset_adapter()

    def _set_grouping(self, sharing_type: int | None) -> None:
        self.sharing_type = sharing_type
        self.scheme = SCHEMES[self.config.kind](self)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if "restarts" in self._buffers:
            self._set_grouping(self.config.sharing_type_after(int(self.restarts)))

    @torch.no_grad()
    def reset_adapter(self) -> None:
        self.mora_M.zero_()

    def restart_parameters(self) -> list[nn.Parameter]:
        return [self.mora_M]

    @torch.no_grad()
    def merge_and_reinit(self) -> None:
        """ReMoRA restart: W0 += ΔW, M = 0 in place, next sharing grouping."""
        if "restarts" not in self._buffers:
            raise ValueError(f"{self.config.method} has no merge-and-reinit restart; use remora")
        if self.merged:
            raise RuntimeError("merge_and_reinit on a merged layer; unmerge it first")
        self.add_to_base(self.delta_weight())
        self.reset_adapter()
        self.restarts += 1
        self._set_grouping(self.config.sharing_type_after(int(self.restarts)))

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        return self.scheme.delta(self, x)

    def delta_weight(self) -> torch.Tensor:
        """Dense ΔW by gathers, no loop over features."""
        return self.scheme.weight(self)

    def fused_forward(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
        return self.scheme.fused(self, x, dtype)

    def extra_repr(self) -> str:
        grouping = f", type={self.sharing_type}" if self.sharing_type is not None else ""
        return f"{super().extra_repr()}, kind={self.config.kind}{grouping}, r_hat={self.r_hat}"


MoRAConfig.layer_class = MoRALayer
ReMoRAConfig.layer_class = MoRALayer
