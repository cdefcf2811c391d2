"""Swap the model's ``nn.Linear`` layers for oneDNN linears with prepacked weights.

At the batch sizes a chat server sees (1-16 rows per decode step), a plain
``F.linear`` spends much of its time re-packing the weight matrix on every call:
measured here at batch 16, 219 us for a 576x1536 projection and 12.2 ms for the
49152-row output head. oneDNN with the weight packed once at load takes 71 us and
2.6 ms, and gives the same result for a row whatever the batch around it (so a
request's greedy tokens do not depend on who else is being served).

The swap is checked against ``F.linear`` on load and skipped, with a log line,
where oneDNN is missing or disagrees.

``kernels="bf16"`` (``CHAT_KERNELS=bf16``, opt-in) is the lossy variant: the weight
is packed in bf16 and each call rounds its input rows to bf16, so the CPU's
AVX512_BF16 dot products (twice the fp32 rate) and half the weight bytes do the
matmul; oneDNN accumulates in fp32 and the output is rounded to bf16, then turned
back into fp32. Only the linear layers change: norms, attention, softmax, the
residual stream and sampling stay fp32. Greedy replies then differ from fp32 ones
for some prompts (``bench/lossy_kernels.py`` measures how many); they still do not
depend on the batch around a row (see ``PackedBf16Linear``).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from app.engine.cpu_features import KERNELS, has_native_bf16

log = logging.getLogger(__name__)

PACK_BATCH_HINT = 16
# bf16 keeps 8 bits of mantissa: a row's output is within ~2^-8 of its largest value
BF16_TOLERANCE = 2e-2


class KernelsUnavailable(RuntimeError):
    """The asked-for kernels cannot run on this CPU or this torch build; the message says which."""


def _linear_pointwise_available() -> bool:
    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class PackedLinear(nn.Module):
    """A frozen linear layer whose weight is kept in oneDNN's packed layout."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        weight = linear.weight.detach().contiguous()
        # kept for anyone reading .weight (tied embeddings, get_output_embeddings)
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, PACK_BATCH_HINT)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        flat = inputs.reshape(-1, self.in_features)
        out = torch.ops.mkldnn._linear_pointwise(flat, self.packed, self.bias, "none", [], "")
        return out.reshape(*inputs.shape[:-1], self.out_features)


class PackedBf16Linear(PackedLinear):
    """A frozen linear layer whose matmul runs in bf16 on a oneDNN-packed bf16 weight (lossy).

    One row alone is computed as two (itself twice): oneDNN takes another path for a
    single row, which at 1536 inputs (SmolLM2's down projection) sums in another order
    than for two rows or more, fp32 and bf16 alike. With the pad, a row's output was the
    same bitwise for every row count from 1 to 600 at SmolLM2's shapes, so a reply under
    bf16 is the same alone or in a batch.
    """

    def __init__(self, linear: nn.Linear) -> None:
        nn.Module.__init__(self)
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        weight = linear.weight.detach().contiguous()
        self.weight = nn.Parameter(weight, requires_grad=False)  # fp32, for tied embeddings and readers
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)
        self.bias_bf16 = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16)
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.to(torch.bfloat16), PACK_BATCH_HINT)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        flat = inputs.reshape(-1, self.in_features).to(torch.bfloat16)
        single = flat.shape[0] == 1
        if single:
            flat = flat.expand(2, -1).contiguous()
        out = torch.ops.mkldnn._linear_pointwise(flat, self.packed, self.bias_bf16, "none", [], "")
        if single:
            out = out[:1]
        return out.to(inputs.dtype).reshape(*inputs.shape[:-1], self.out_features)


def _agrees(linear: nn.Linear, packed: PackedLinear) -> bool:
    """The packed layer computes what ``F.linear`` does: exactly enough for fp32, to bf16's precision else."""
    sample = torch.randn(3, linear.in_features, dtype=linear.weight.dtype)
    with torch.inference_mode():
        expected, got = linear(sample), packed(sample)
    if type(packed) is PackedLinear:
        return torch.allclose(expected, got, rtol=1e-4, atol=1e-4)
    scale = expected.abs().max().clamp_min(1e-6)
    return bool(((expected - got).abs().max() / scale) <= BF16_TOLERANCE)


def check_kernels(kernels: str) -> None:
    """Raise ``KernelsUnavailable`` with one sentence when ``kernels`` cannot run here.

    bf16 is refused, not quietly swapped for fp32, on a CPU without native bf16: the
    operator asked for speed at the cost of exactness and would get neither.
    """
    if kernels not in KERNELS:
        raise KernelsUnavailable(f"kernels must be one of {', '.join(KERNELS)}, not {kernels!r}")
    if kernels == "bf16":
        if not has_native_bf16():
            raise KernelsUnavailable(
                "bf16 kernels need a CPU with AVX512_BF16 or AMX (this one has neither): use fp32"
            )
        if not _linear_pointwise_available() or not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            raise KernelsUnavailable("bf16 kernels need torch built with oneDNN bf16 support: use fp32")


def pack_linear_layers(model: Any, kernels: str = "fp32") -> int:
    """Replace every fp32 ``nn.Linear`` in ``model`` in place; returns how many were replaced.

    ``kernels="fp32"`` (the default) is exact; ``"bf16"`` is the opt-in lossy path and
    raises ``KernelsUnavailable`` where it cannot run.
    """
    check_kernels(kernels)
    if not _linear_pointwise_available():
        log.warning("oneDNN linear not available: using stock matmuls")
        return 0
    layer = PackedBf16Linear if kernels == "bf16" else PackedLinear
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear or child.weight.dtype != torch.float32:
                continue
            try:
                packed = layer(child)
            except RuntimeError as error:
                log.warning("cannot pack %s (%s): using stock matmuls", name, error)
                return replaced
            if not _agrees(child, packed):
                log.warning("packed linear disagrees with F.linear: using stock matmuls for %s", name)
                continue
            setattr(parent, name, packed)
            replaced += 1
    return replaced
