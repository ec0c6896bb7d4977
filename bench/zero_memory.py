"""Per-GPU memory of each paper experiment at each ZeRO stage: the one-GPU peaks that
`bench/cost_table.py` measured through `mora.train` (docs/cost.md), split into model states and the
rest, and the model states each DeepSpeed stage keeps per GPU.

    python bench/zero_memory.py bench/results/2026-12-02-h200/cost_call*.jsonl

Counts: Ψt = trainable parameters (the record's own count), Ψf = frozen ones (the LLaMA shape's
parameters from conf/model: L x (4h² + 3hf) projections, 2Vh embedding + head, (2L + 1)h norms;
frozen = all of them under an adapter, the projections alone in pretraining, where embeddings, norms
and head train; none under FFT). Bytes per parameter:

- measured, one GPU, no DeepSpeed (mora.train's precision policy, docs/precision.md): the base in its
  dtype (2: LLaMA-2 7B in bf16; 4: the fp32 from-scratch models; the FFT rows ran the 7B in fp32), 16
  per trainable parameter (fp32 weight 4 + fp32 gradient 4 + Adam moments 8). Activations and
  buffers A = measured peak - those model states (an upper bound under DeepSpeed: it includes the bf16
  copies autocast makes of fp32 weights, up to 2 bytes per trainable parameter).
- ZeRO-0 (no sharding: plain DDP, or one GPU): every GPU needs the measured one-GPU peak.
- DeepSpeed bf16 casts the whole module to bf16 (2 bytes per parameter) and keeps, per trainable
  parameter, 18 more bytes (bf16 gradient 2, fp32 gradient 4, fp32 master 4, Adam moments 8: the terms
  of DeepSpeed's own `estimate_zero{2,3}_model_states_mem_needs`):
  - ZeRO-2 (optimizer state and gradients sharded): 2 Ψf + 2 Ψt + 18 Ψt / N + A
  - ZeRO-2 with the optimizer offloaded (`zero2_offload`): GPU 2 Ψf + 2 Ψt + A; the CPU holds 16 Ψt
    per node (fp32 master, moments, fp32 gradients; DeepSpeed's estimator adds 50 % buffers)
  - ZeRO-3 (parameters sharded too): (2 Ψf + 18 Ψt) / N + 4 Vh (the largest layer, the embedding,
    gathered in fp32 at once: DeepSpeed's estimator's term) + A
Every number this prints is computed from those formulas, except the measured column. The paper's
global batch is reached by accumulation, so the micro batch per GPU, hence A, is the measured one.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from cost_report import load

ROOT = Path(__file__).resolve().parents[1]
GiB = 2**30
GPUS = (2, 8)
H200_GIB = 139.8  # usable on one H200 (143,771 MiB less the CUDA context)


@dataclass(frozen=True)
class Shape:
    model: str  # conf/model/<model>.yaml: the architecture (and base dtype) the cost runs used
    pretraining: bool  # embeddings, norms and head train (conf/experiment/c4_pretrain_*.yaml)


# bench/cost_table.py's shapes (tests/test_zero_memory.py checks that the two agree).
SHAPES = {
    "tulu_2048": Shape("llama2_7b_random", False),
    "metamath_512": Shape("llama2_7b_random", False),
    "uuid": Shape("llama2_7b_random", False),
    "c4_250m": Shape("llama_250m_local", True),
    "c4_1b": Shape("llama_1b_local", True),
}
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


def architecture(model: str) -> dict[str, int]:
    """Parameter counts of a conf/model LLaMA (no biases, as many KV heads as heads), and its base's
    bytes per parameter."""
    conf = yaml.safe_load((ROOT / "conf" / "model" / f"{model}.yaml").read_text())
    net = conf["network"]
    h, layers, f, vocab = net["hidden_size"], net["num_layers"], net["intermediate_size"], conf["tokenizer"]["vocab_size"]
    return {
        "projections": layers * (4 * h * h + 3 * h * f),
        "embeddings": 2 * vocab * h,  # input embedding and untied head
        "norms": (2 * layers + 1) * h,
        "largest": vocab * h,
        "base_bytes": DTYPE_BYTES[net["dtype"]],
    }


def counts(record: dict) -> tuple[int, int, int]:
    """(frozen, trainable, largest layer) parameters of one cost record."""
    shape = SHAPES[record["shape"]]
    arch = architecture(shape.model)
    if "method=fft" in record["overrides"]:
        frozen = 0
    elif shape.pretraining:
        frozen = arch["projections"]
    else:
        frozen = arch["projections"] + arch["embeddings"] + arch["norms"]
    return frozen, int(record["trainable"]), arch["largest"]


def measured_states(record: dict) -> float:
    """Bytes of model states in the measured run (no DeepSpeed)."""
    frozen, trainable, _ = counts(record)
    return architecture(SHAPES[record["shape"]].model)["base_bytes"] * frozen + 16 * trainable


def per_gpu_gib(record: dict, stage: str, gpus: int) -> float:
    """Computed per-GPU GiB of `record`'s run under `stage` (zero2, zero2_offload, zero3) on `gpus` GPUs."""
    frozen, trainable, largest = counts(record)
    activations = record["peak_memory_gib"] * GiB - measured_states(record)
    if stage == "zero2":
        states = 2 * frozen + 2 * trainable + 18 * trainable / gpus
    elif stage == "zero2_offload":
        states = 2 * frozen + 2 * trainable
    elif stage == "zero3":
        states = (2 * frozen + 18 * trainable) / gpus + 4 * largest
    else:
        raise ValueError(f"unknown stage {stage!r}")
    return (states + activations) / GiB


def table(records: list[dict]) -> str:
    stages = [("zero2", n) for n in GPUS] + [("zero2_offload", 2)] + [("zero3", n) for n in (1, *GPUS)]
    head = ["experiments", "method", "micro x seq", "frozen / trainable", "ZeRO-0 (measured, 1 GPU)", "A (derived)"]
    head += [f"ZeRO-2 N={n}" if s == "zero2" else "ZeRO-2 offload (GPU, any N)" if s == "zero2_offload"
             else f"ZeRO-3 N={n}" for s, n in stages]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for record in sorted((r for r in records if "error" not in r), key=lambda r: (r["shape"], r["row"])):
        frozen, trainable, _ = counts(record)
        activations = record["peak_memory_gib"] - measured_states(record) / GiB
        seq = record["seq"] if record["seq"] else "UUID pairs"
        cells = [", ".join(record["covers"]), record["row"], f"{record['micro_batch']} x {seq}",
                 f"{frozen / 1e9:.2f}B / {trainable / 1e9:.3f}B", f"**{record['peak_memory_gib']:.1f}**", f"{activations:.1f}"]
        cells += [f"{per_gpu_gib(record, s, n):.1f}" for s, n in stages]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    print(table(load(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
