"""Pretraining (masked LM, plus next-sentence prediction where the family has it): the recipe."""

from __future__ import annotations

import logging

import jax

from jaxtl import families, heads, hf, steps
from jaxtl.config import Config
from jaxtl.errors import ConfigError
from jaxtl.tasks import common
from jaxtl.train import EvalSet, Setup

log = logging.getLogger("jaxtl")


def setup(cfg: Config) -> Setup:
    from jaxtl.data import pretraining as pt_data
    from jaxtl.data.batching import PretrainingBatcher

    d, t, m = cfg.data, cfg.train, cfg.model
    tokenizer_folder = hf.resolve(m.tokenizer or m.pretrained)
    tokenizer = hf.tokenizer(tokenizer_folder)
    if m.pretrained:
        folder = hf.resolve(m.pretrained)
        family = hf.family_of(folder)
        base = hf.load_config(folder, **dict(m.overrides))
    else:
        folder = None
        family = families.get(m.family)
        # The tokenizer's pad id: RoBERTa-like families place padding tokens by it.
        from_tokenizer = {"vocab_size": len(tokenizer)}
        if tokenizer.pad_token_id is not None:
            from_tokenizer["pad_token_id"] = tokenizer.pad_token_id
        base = family.preset(m.size, **{**from_tokenizer, **dict(m.overrides)})
    if "mlm_logits" not in family.pretraining_outputs:
        raise ConfigError(
            f"`jaxtl pretrain` trains masked-LM heads; the {family.name} pretraining head "
            f"({family.architecture('pretraining')}) returns "
            f"{', '.join(family.pretraining_outputs)}, whose training data jaxtl does not build; "
            "fine-tune this checkpoint instead"
        )
    common.check_vocab(tokenizer, base, str(tokenizer_folder))
    if d.nsp and "nsp_logits" not in family.pretraining_outputs:
        sop = " or data.sop: true" if "sop_logits" in family.pretraining_outputs else ""
        raise ConfigError(
            f"data.nsp is true but {family.name}'s pretraining head has no next-sentence "
            f"prediction (it returns {', '.join(family.pretraining_outputs)}); "
            f"set data.nsp: false (masked LM only{sop})"
        )
    if d.sop and "sop_logits" not in family.pretraining_outputs:
        raise ConfigError(
            f"data.sop is true but {family.name}'s pretraining head has no sentence-order "
            f"prediction (it returns {', '.join(family.pretraining_outputs)}); "
            "set data.sop: false"
        )
    if d.max_seq_length > base.max_position_embeddings:
        raise ConfigError(
            f"data.max_seq_length={d.max_seq_length} exceeds the model's "
            f"max_position_embeddings={base.max_position_embeddings}"
        )
    config = common.model_config(cfg, base)
    head = "pretraining"
    model = family.build(config, head)
    pretrained = hf.pretrained_weights(folder, model) if folder is not None else None
    if d.prepared_dir is not None:  # memory-mapped shards, prepared once (on first use here)
        from jaxtl.data import prepared

        train_data, validation = prepared.open_prepared(
            d, tokenizer, tokenizer_folder, str(m.tokenizer or m.pretrained),
            model_vocab_size=config.vocab_size, may_prepare=jax.process_count() == 1)
    else:
        train_data, validation = pt_data.load_pretraining_data(
            d, tokenizer, model_vocab_size=config.vocab_size)
    accum = cfg.optim.grad_accum_steps
    micro = t.batch_size // accum
    eval_batch = t.eval_batch_size or 2 * t.batch_size
    procs = dict(seed=t.seed, process_index=jax.process_index(), process_count=jax.process_count())
    train_batches = PretrainingBatcher(train_data, batch_size=micro, **procs)
    eval_sets = []
    if validation is not None:
        # Floors to read the scores against, recorded with every validation result: always the
        # most frequent training token at exactly the masked positions, and the NSP majority label.
        # The unigram floor counts every process's masks: a one-process batcher sees them all.
        every_row = PretrainingBatcher(validation, batch_size=eval_batch, seed=t.seed)
        baselines = {"unigram_baseline": pt_data.unigram_baseline_accuracy(
            train_data, every_row.eval_batches())}
        if d.pairs:
            baselines["sop_baseline" if d.sop else "nsp_baseline"] = (
                pt_data.nsp_baseline_accuracy(validation))
        log.info("validation baselines: %s", ", ".join(f"{k}={v:.4f}" for k, v in baselines.items()))
        eval_batches = PretrainingBatcher(validation, batch_size=eval_batch, **procs)
        eval_sets.append(EvalSet(
            name="validation",
            batches=eval_batches.eval_batches,
            num_batches=eval_batches.num_eval_batches,
            finish=lambda outputs, index: dict(baselines),
        ))
    return Setup(
        model=model,
        task=(steps.PRETRAINING if d.nsp else steps.PRETRAINING_SOP if d.sop
              else steps.PRETRAINING_MLM_ONLY),
        export=common.exporter(model, tokenizer),
        pretrained=pretrained,
        train_batch=train_batches.train_batch,
        steps_per_epoch=train_batches.steps_per_epoch,
        tokens_per_batch=lambda b: int(b["attention_mask"].sum()),
        eval_sets=eval_sets,
        best_metric=heads.get(head).best_metric(config),
        flops_per_batch=common.flops_counter(config, head),
        meta=common.meta(family, head, config, tokenizer_folder),
    )
