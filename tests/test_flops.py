"""The analytic FLOPs count against a hand count and against XLA's own count of the compiled step."""

import jax
import jax.numpy as jnp
import optax
import pytest
from flax.training.train_state import TrainState

from jaxtl import families, flops, hf, steps
from jaxtl.families.bert import BertConfig


def tiny(**sizes):
    base = dict(vocab_size=100, hidden_size=4, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=8, max_position_embeddings=512)
    return BertConfig(**{**base, **sizes})


def test_hand_count_of_a_tiny_classifier():
    # 1 layer, D=4, F=8, batch 1 x 2 tokens, 2 labels, written out matmul by matmul:
    qkv_and_output = 4 * (2 * 2 * 4 * 4)  # four [2 tokens, 4] x [4, 4] projections: 256
    ffn = 2 * (2 * 2 * 4 * 8)  # [2, 4] x [4, 8] and [2, 8] x [8, 4]: 256
    scores_and_mix = 2 * (2 * 2 * 2 * 4)  # Q K^T and P V: [2, 4] x [4, 2] and [2, 2] x [2, 4]: 64
    pooler, classifier = 2 * 4 * 4, 2 * 4 * 2  # 32, 16
    forward = qkv_and_output + ffn + scores_and_mix + pooler + classifier
    assert flops.forward_flops(tiny(), 1, 2, "classification") == forward == 624
    assert flops.train_step_flops(tiny(), 1, 2, "classification") == 3 * forward


def test_pretraining_counts_the_decoder_at_masked_positions_only():
    config = tiny()
    full = flops.forward_flops(config, 2, 8, "pretraining")
    three = flops.forward_flops(config, 2, 8, "pretraining", masked_positions=3)
    per_position = 2 * 2 * (4 * 4 + 4 * 100)  # transform + decoder, for 2 rows
    assert full - three == 5 * per_position


def compiled_step_flops(config: BertConfig, batch: int, seq_len: int) -> float:
    model = families.build(config, "classification")
    params = hf.init_params(model, jax.random.key(0))
    state = TrainState.create(apply_fn=model.apply, params=params, tx=optax.adamw(1e-4))
    shape = (batch, seq_len)
    data = {"input_ids": jnp.ones(shape, jnp.int32), "attention_mask": jnp.ones(shape, jnp.int32),
            "token_type_ids": jnp.zeros(shape, jnp.int32), "labels": jnp.zeros(batch, jnp.int32),
            "example_weight": jnp.ones(batch)}
    step = jax.jit(steps.make_train_step(steps.CLASSIFICATION))
    cost = step.lower(state, data, jax.random.key(0)).compile().cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost)["flops"]


@pytest.mark.parametrize("layers,hidden,heads_,batch,seq_len", [(2, 256, 4, 4, 128), (1, 384, 6, 2, 512)])
def test_analytic_count_matches_xla_cost_analysis(layers, hidden, heads_, batch, seq_len):
    """XLA counts every FLOP of the compiled step; the analytic count only the matmuls.

    So XLA's number must be at least the analytic one (a missed or double-counted matmul would
    show up as XLA < analytic or as a gap beyond the tolerance), and above it by no more than the
    elementwise work: LayerNorm, GELU, softmax over [B, H, L, L], dropout, the AdamW update —
    a handful of FLOPs per activation or parameter against ~2·D per activation for the matmuls,
    measured 4-5 % at these sizes. A tolerance of 10 % still catches a missing FFN matrix (~30 %)
    or a forgotten attention matmul at L=512 (~10 % each; both together ~20 %).
    """
    config = tiny(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads_,
                  intermediate_size=4 * hidden, vocab_size=1000)
    analytic = flops.train_step_flops(config, batch, seq_len, "classification")
    xla = compiled_step_flops(config, batch, seq_len)
    assert analytic <= xla <= 1.10 * analytic, (analytic, xla, xla / analytic)


def test_mfu_and_measured_peak():
    assert flops.mfu(2.0, 100.0, 10.0) == pytest.approx(5.0)
    peak = flops.measured_peak_flops("float32", 256)
    assert 1e6 < peak < 1e16
    assert flops.measured_peak_flops("float32", 256) == peak  # cached: measured once a process


def test_vendor_peak_by_device_kind():
    class Device:
        device_kind = "NVIDIA H100 80GB HBM3"

    assert flops.vendor_peak_flops(Device()) == 989e12
    Device.device_kind = "TPU v5 lite"
    assert flops.vendor_peak_flops(Device()) == 197e12
    Device.device_kind = "cpu"
    assert flops.vendor_peak_flops(Device()) is None
