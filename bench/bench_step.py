"""Fixed-shape fine-tuning train step: jaxtl vs HF PyTorch eager vs KerasHub (JAX), side by side.

One step = forward + backward + global-norm clip 1.0 + AdamW update of a BERT classifier
(pooler -> dropout -> dense, 2 labels), dropout 0.1 on, fp32, on the same [B, L] batch of random
token ids whose rows are padded to random lengths in [L/4, L] (the padded pad-to-L situation:
every framework computes over all L positions). All three load the **same weights** from one
Hugging Face folder (MiniLM-L6 = the jaxtl asset all-MiniLM-L6-v2; BERT-base = a random-init
``transformers.BertModel`` saved once to a temp folder); each adds its own new classifier head.

Frameworks are measured **in alternation** — after each one's first (compiling) step and warm-up,
round r times one step of each, in an order rotated every round — so a load change on the shared
machine hits all of them alike and the ratios stay fair; each reports the median of the rounds.
MFU = analytic train-step FLOPs (jaxtl.flops) / median step time / the FLOP/s of a 2048^3 fp32
matmul measured in the same process (JAX; torch's own matmul peak is printed beside it).

    python bench/bench_step.py --quick                       # MiniLM x 128 only, 3 rounds
    python bench/bench_step.py --models minilm,base --shapes 128,512
    python bench/bench_step.py --jaxtl-variants default,bernoulli  # also jaxtl with another dropout mask

``--jaxtl-variants`` runs extra jaxtl contenders with a candidate speed fix monkeypatched in (see
VARIANTS); set XLA flags with the environment (``XLA_FLAGS=... python bench/bench_step.py``).
KerasHub needs the bench venv (bench/setup.sh); without keras_hub installed it is skipped.
Appends one record per run to bench/results/step.json (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import numpy as np  # noqa: E402

MODELS = ("minilm", "base")
NUM_LABELS = 2
LR = 1e-4


def model_folder(name: str) -> Path:
    """An HF folder holding the weights every framework loads."""
    from jaxtl import hf

    if name == "minilm":
        return hf.resolve("asset:all-MiniLM-L6-v2")
    folder = Path.home() / ".cache" / "jaxtl" / "bench-bert-base-random"
    if not (folder / "config.json").exists():
        import torch
        import transformers

        torch.manual_seed(0)
        transformers.BertModel(transformers.BertConfig()).save_pretrained(folder)
    return folder


def make_batch(batch: int, seq_len: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(seq_len // 4, seq_len + 1, batch)
    lengths[0] = seq_len  # one full row, as a pad-to-longest batch always has
    mask = (np.arange(seq_len)[None, :] < lengths[:, None]).astype(np.int32)
    ids = rng.integers(1000, 20000, (batch, seq_len)).astype(np.int32) * mask
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids),
            "labels": rng.integers(0, NUM_LABELS, batch).astype(np.int32)}


# --- jaxtl -----------------------------------------------------------------------------------

def apply_variant(name: str):
    """Monkeypatch one candidate fix into jaxtl (in this process). Returns an undo function."""
    import jax

    if name == "default":
        return lambda: None
    if name == "bernoulli":
        # The dropout masks flax's nn.Dropout draws (one threefry hash per element), jaxtl's
        # before 681d19f: the in-process "before" of the four-lanes-per-hash keep_mask.
        from jaxtl.families import layers

        original = layers.keep_mask
        layers.keep_mask = lambda key, shape, rate: jax.random.bernoulli(key, 1.0 - rate, shape)
        return lambda: setattr(layers, "keep_mask", original)
    if name in ("rbg", "unsafe_rbg"):
        # Dropout masks from jax.random.bernoulli over XLA's RngBitGenerator (keep_mask falls
        # back to bernoulli for keys that are not threefry).
        jax.config.update("jax_default_prng_impl", name)
        return lambda: jax.config.update("jax_default_prng_impl", "threefry2x32")
    if name == "no_attn_dropout":
        # What attention-probability dropout costs (changes the model: a measurement, not a fix).
        return "attention_probs_dropout_prob=0.0"
    raise SystemExit(f"unknown jaxtl variant {name!r}; use one of {sorted(VARIANTS)}")


VARIANTS = {"default", "bernoulli", "rbg", "unsafe_rbg", "no_attn_dropout"}


class Jaxtl:
    def __init__(self, folder: Path, batch: dict, variant: str = "default"):
        import jax

        from jaxtl import config as config_lib, hf, optim, steps
        from flax.training.train_state import TrainState

        self.name = "jaxtl" if variant == "default" else f"jaxtl[{variant}]"
        undo = apply_variant(variant)
        overrides = {}
        if isinstance(undo, str):
            key, value = undo.split("=")
            overrides[key], undo = float(value), (lambda: None)
        self.undo = undo
        model, params = hf.load(folder, head="classification", num_labels=NUM_LABELS, **overrides)
        self.config = model.config
        cfg = config_lib.OptimConfig(lr=LR, schedule="constant", warmup_steps=0)
        tx, _ = optim.make_optimizer(cfg, params, total_steps=1000,
                                     num_layers=model.config.num_hidden_layers)
        self.state = TrainState.create(apply_fn=model.apply, params=params, tx=tx)
        self.step_fn = jax.jit(steps.make_train_step(steps.CLASSIFICATION), donate_argnums=0)
        data = dict(batch, example_weight=np.ones(len(batch["labels"]), np.float32))
        self.batch = jax.device_put(data)
        self.rng = jax.random.key(0)

    def step(self):
        import jax

        self.state, metrics = self.step_fn(self.state, self.batch, self.rng)
        return float(jax.block_until_ready(metrics["loss_sum"]))


# --- HF PyTorch eager --------------------------------------------------------------------------

class Torch:
    name = "hf_torch"

    def __init__(self, folder: Path, batch: dict):
        import torch
        import transformers

        torch.manual_seed(0)
        self.model = transformers.BertForSequenceClassification.from_pretrained(
            str(folder), num_labels=NUM_LABELS)
        self.model.train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=LR, weight_decay=0.01, eps=1e-6)
        self.batch = {k: torch.from_numpy(v.astype(np.int64)) for k, v in batch.items()}

    def step(self):
        import torch

        loss = self.model(**self.batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss)


# --- KerasHub on the JAX backend ---------------------------------------------------------------

class KerasHub:
    name = "kerashub"

    def __init__(self, folder: Path, batch: dict):
        import keras
        import keras_hub

        keras.utils.set_random_seed(0)
        backbone = keras_hub.models.BertBackbone.from_preset(str(folder))
        self.model = keras_hub.models.BertTextClassifier(
            backbone=backbone, num_classes=NUM_LABELS, preprocessor=None)  # dropout 0.1
        self.model.compile(
            optimizer=keras.optimizers.AdamW(LR, weight_decay=0.01, epsilon=1e-6, global_clipnorm=1.0),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[], jit_compile=True)
        self.x = {"token_ids": batch["input_ids"], "segment_ids": batch["token_type_ids"],
                  "padding_mask": batch["attention_mask"]}
        self.y = batch["labels"]

    def step(self):
        return float(np.asarray(self.model.train_on_batch(self.x, self.y)).reshape(-1)[0])


def have_keras_hub() -> bool:
    try:
        import keras_hub  # noqa: F401
    except ImportError:
        return False
    return os.environ.get("KERAS_BACKEND") == "jax"


def torch_matmul_peak(size: int = 2048) -> float:
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def measure(model_name: str, seq_len: int, args, peaks: dict) -> dict:
    from jaxtl import flops

    folder = model_folder(model_name)
    batch = make_batch(args.batch_size, seq_len)
    contenders, first_step_s = [], {}
    builders = [lambda v=v: Jaxtl(folder, batch, v) for v in args.jaxtl_variants]
    if "torch" in args.frameworks:
        builders.append(lambda: Torch(folder, batch))
    if "kerashub" in args.frameworks and have_keras_hub():
        builders.append(lambda: KerasHub(folder, batch))
    for build in builders:
        start = time.perf_counter()
        contender = build()
        contender.step()  # compiles (JAX) / allocates (torch)
        first_step_s[contender.name] = time.perf_counter() - start
        for _ in range(args.warmup):
            contender.step()
        if hasattr(contender, "undo"):
            contender.undo()  # the compiled step keeps the variant; the next builds stay clean
        contenders.append(contender)
        print(f"  {contender.name}: ready, first step (build + compile) {first_step_s[contender.name]:.1f}s",
              flush=True)
    times = {c.name: [] for c in contenders}
    for r in range(args.steps):
        order = contenders[r % len(contenders):] + contenders[: r % len(contenders)]
        for contender in order:
            start = time.perf_counter()
            contender.step()
            times[contender.name].append(time.perf_counter() - start)
        print(f"  round {r + 1}: " + ", ".join(f"{n} {t[-1]:.2f}s" for n, t in times.items()), flush=True)

    from jaxtl import hf

    # the FLOPs count, whichever frameworks ran
    config = hf.load_config(folder, labels=tuple(f"LABEL_{i}" for i in range(NUM_LABELS)))
    step_flops = flops.train_step_flops(config, args.batch_size, seq_len, "classification")
    results = {}
    for name, ts in times.items():
        median = statistics.median(ts)
        results[name] = {
            "step_s": median, "step_s_all": ts, "examples_per_s": args.batch_size / median,
            "first_step_s": first_step_s[name],
            "mfu_vs_jax_matmul": flops.mfu(median, step_flops, peaks["jax_fp32_matmul"]),
            "mfu_vs_torch_matmul": flops.mfu(median, step_flops, peaks["torch_fp32_matmul"]),
        }
    for name in results:
        if name.startswith("jaxtl"):
            for peer in ("hf_torch", "kerashub"):
                if peer in results:
                    results[name][f"ratio_vs_{peer}"] = (
                        results[name]["examples_per_s"] / results[peer]["examples_per_s"])
    return {"model": model_name, "batch": [args.batch_size, seq_len],
            "layers_x_hidden": [config.num_hidden_layers, config.hidden_size],
            "train_step_gflops": step_flops / 1e9, "results": results}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="minilm", help="comma list of: minilm, base")
    p.add_argument("--shapes", default="128", help="comma list of sequence lengths")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=3, help="timed rounds (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps after the first")
    p.add_argument("--frameworks", default="jaxtl,torch,kerashub")
    p.add_argument("--jaxtl-variants", default="default",
                   help=f"comma list of jaxtl contenders: {sorted(VARIANTS)}")
    p.add_argument("--quick", action="store_true", help="MiniLM x 128 only")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "step.json"))
    args = p.parse_args()
    args.frameworks = args.frameworks.split(",")
    args.jaxtl_variants = args.jaxtl_variants.split(",") if "jaxtl" in args.frameworks else []
    if args.quick:
        args.models, args.shapes = "minilm", "128"

    import jax
    import torch

    from jaxtl import flops

    torch.set_num_threads(os.cpu_count())
    peaks = {"jax_fp32_matmul": flops.measured_peak_flops("float32"),
             "torch_fp32_matmul": torch_matmul_peak()}
    print(f"fp32 2048^3 matmul: jax {peaks['jax_fp32_matmul'] / 1e9:.0f} GFLOP/s, "
          f"torch {peaks['torch_fp32_matmul'] / 1e9:.0f} GFLOP/s", flush=True)
    record = {
        "command": "python " + " ".join(os.sys.argv),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "device": jax.devices()[0].device_kind, "load_avg_start": os.getloadavg()},
        "peaks_flops": peaks, "runs": [],
    }
    for model_name in args.models.split(","):
        for seq_len in map(int, args.shapes.split(",")):
            print(f"{model_name}, batch {args.batch_size} x {seq_len}", flush=True)
            record["runs"].append(measure(model_name, seq_len, args, peaks))
    record["machine"]["load_avg_end"] = os.getloadavg()

    print(f"\n{'model':<8}{'shape':>9}  {'framework':<22}{'step s':>8}{'ex/s':>8}{'MFU':>7}"
          f"{'vs HF':>8}{'vs Keras':>10}")
    for run in record["runs"]:
        for name, r in run["results"].items():
            vs_hf, vs_keras = r.get("ratio_vs_hf_torch"), r.get("ratio_vs_kerashub")
            print(f"{run['model']:<8}{'%dx%d' % tuple(run['batch']):>9}  {name:<22}{r['step_s']:>8.2f}"
                  f"{r['examples_per_s']:>8.2f}{r['mfu_vs_jax_matmul']:>7.0%}"
                  f"{(f'{vs_hf:.2f}x' if vs_hf else ''):>8}{(f'{vs_keras:.2f}x' if vs_keras else ''):>10}")
    print(f"load average start {record['machine']['load_avg_start']}, end {record['machine']['load_avg_end']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    history = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps(history + [record], indent=2) + "\n")


if __name__ == "__main__":
    main()
