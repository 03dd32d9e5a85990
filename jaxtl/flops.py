"""Analytic FLOPs of a BERT train step, a measured matmul peak, and model FLOPs utilisation (MFU).

    flops = train_step_flops(config, batch=32, seq_len=128, head="classification")
    peak = measured_peak_flops()                  # FLOP/s of a large matmul on this device
    print(mfu(step_seconds, flops, peak))         # fraction of that peak the step reaches

Only the FLOPs the model *needs* are counted (the PaLM-paper convention for MFU): the matrix
multiplies of the encoder layers, of attention (``Q K^T`` and ``P V``) and of the heads. Left
out, because they are a few percent at most and not what limits speed on any chip: embeddings
(gathers), LayerNorm, GELU, softmax, dropout, residual adds, the loss and the optimizer update.
Recomputation (``remat``) is not counted either: it is work the model does not need. A multiply-
add is 2 FLOPs. The backward pass costs twice the forward (one matmul for the gradient of the
input and one for the gradient of the weight per forward matmul), so a train step is 3x forward.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp


# Dense bf16 peak FLOP/s per chip from the vendors' data sheets (no sparsity). Matched against
# ``jax.devices()[0].device_kind`` by substring, first match wins (so "H100 PCIe" before "H100").
VENDOR_PEAK_BF16 = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("A100", 312e12),
    ("L4", 121e12),
    ("TPU v6 lite", 918e12),  # v6e (Trillium)
    ("TPU v5 lite", 197e12),  # v5e
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),  # v5p reports "TPU v5"
    ("TPU v4", 275e12),
    ("TPU v3", 123e12),
)


def layer_forward_flops(config, batch: int, seq_len: int) -> int:
    """Matmul FLOPs of one encoder layer's forward pass on ``[batch, seq_len]`` tokens.

    Per token: Q, K, V and the attention output projection (4 x D x D), the two FFN matrices
    (2 x D x F); per sequence: ``Q K^T`` and ``P V``, each L x L x D summed over heads.
    """
    D, F, L = config.hidden_size, config.intermediate_size, seq_len
    tokens = batch * seq_len
    projections = 2 * tokens * (4 * D * D + 2 * D * F)
    attention = 2 * batch * (2 * L * L * D)
    return projections + attention


def forward_flops(
    config,
    batch: int,
    seq_len: int,
    head: str | None = "classification",
    *,
    masked_positions: int | None = None,
) -> int:
    """Matmul FLOPs of a forward pass of ``families.build(config, head)`` (BERT-shaped trunks:
ALBERT's embedding projection and DistilBERT's missing pooler are a few percent either way).

    ``head``: None (trunk + pooler), ``"classification"`` (pooler + classifier) or
    ``"pretraining"`` (MLM transform + vocabulary decoder at ``masked_positions`` per row — all
    ``seq_len`` positions when None — plus pooler + NSP).
    """
    D = config.hidden_size
    flops = config.num_hidden_layers * layer_forward_flops(config, batch, seq_len)
    flops += 2 * batch * D * D  # pooler dense on [CLS]
    if head == "classification":
        flops += 2 * batch * D * config.num_labels
    elif head == "pretraining":
        P = seq_len if masked_positions is None else masked_positions
        flops += 2 * batch * P * (D * D + D * config.vocab_size)  # transform + tied decoder
        flops += 2 * batch * D * 2  # NSP
    elif head is not None:
        raise ValueError(f"head={head!r}: use None, 'classification' or 'pretraining'")
    return flops


def train_step_flops(
    config,
    batch: int,
    seq_len: int,
    head: str | None = "classification",
    *,
    masked_positions: int | None = None,
) -> int:
    """Matmul FLOPs of one train step (forward + backward = 3 x forward)."""
    return 3 * forward_flops(config, batch, seq_len, head, masked_positions=masked_positions)


@functools.cache
def measured_peak_flops(dtype: str = "float32", size: int | None = None, device=None) -> float:
    """FLOP/s of a square ``size``^3 matmul in ``dtype`` on ``device`` (best of 5; cached).

    ``size`` defaults to 2048 on CPU (about 0.1 s a matmul on two cores) and 8192 on GPU/TPU,
    large enough to reach the matmul units' sustained rate. This is the peak a step could
    reach on this device with these libraries — a fairer denominator than a data sheet on CPU.
    """
    device = device or jax.devices()[0]
    if size is None:
        size = 2048 if device.platform == "cpu" else 8192
    keys = jax.random.split(jax.random.key(0))
    a = jax.device_put(jax.random.normal(keys[0], (size, size), dtype), device)
    b = jax.device_put(jax.random.normal(keys[1], (size, size), dtype), device)
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()  # compile and warm up
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def vendor_peak_flops(device=None) -> float | None:
    """The data-sheet dense bf16 peak of ``device`` (default: the first), None when unknown."""
    kind = (device or jax.devices()[0]).device_kind
    for name, peak in VENDOR_PEAK_BF16:
        if name.lower() in kind.lower():
            return peak
    return None


def mfu(step_seconds: float, flops: float, peak_flops_per_s: float) -> float:
    """Model FLOPs utilisation: the fraction of ``peak_flops_per_s`` a step of ``flops`` reaches."""
    return flops / step_seconds / peak_flops_per_s
