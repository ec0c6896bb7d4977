"""bench/zero_memory.py: the per-GPU memory docs/deepspeed.md quotes for each ZeRO stage, checked
against DeepSpeed's own estimator (all parameters trainable) and against the parameter counts the
H200 cost runs recorded (the LoRA layer's own formula, r x (in + out) per projection)."""

import sys

import pytest

from runner import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import zero_memory  # noqa: E402
from cost_report import load  # noqa: E402

RECORDS = sorted((ROOT / "bench" / "results" / "2026-12-02-h200").glob("cost_call*.jsonl"))


@pytest.fixture(scope="module")
def records():
    loaded = [r for r in load([str(p) for p in RECORDS]) if "error" not in r]
    assert len(loaded) == 27
    return {(r["shape"], r["row"]): r for r in loaded}


def test_shapes_are_the_cost_runs_shapes():
    cost_table = pytest.importorskip("cost_table")
    assert {s.name: s.model for s in cost_table.SHAPES} == {k: [f"model={v.model}"] for k, v in zero_memory.SHAPES.items()}


def test_counts_agree_with_the_parameters_the_runs_trained(records):
    fft = records[("tulu_2048", "FFT (fp32 master, checkpointing)")]
    assert zero_memory.counts(fft)[:2] == (0, 6_738_415_616)
    for shape, model, hidden, layers, ffn in (("c4_1b", "llama_1b_local", 2048, 24, 5461),
                                                ("c4_250m", "llama_250m_local", 768, 24, 2560)):
        lora = records[(shape, "LoRA r128")]
        arch = zero_memory.architecture(model)
        per_layer = 128 * (4 * 2 * hidden + 2 * (hidden + ffn) + (ffn + hidden))  # q,k,v,o; gate, up; down
        assert lora["trainable"] - arch["embeddings"] - arch["norms"] == layers * per_layer
        assert zero_memory.counts(lora)[0] == arch["projections"]
    seven_b = records[("tulu_2048", "LoRA r8 (= LoRA+, AsyLoRA, ReLoRA)")]
    assert zero_memory.counts(seven_b)[0] == 6_738_415_616
    assert seven_b["trainable"] == 32 * 8 * (4 * 2 * 4096 + 3 * (4096 + 11008))


@pytest.mark.parametrize("gpus", [1, 2, 8])
def test_all_trainable_model_states_match_deepspeeds_estimator(records, gpus):
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    fft = records[("tulu_2048", "FFT (fp32 master, checkpointing)")]
    _, params, largest = zero_memory.counts(fft)
    activations = fft["peak_memory_gib"] - zero_memory.measured_states(fft) / zero_memory.GiB
    assert activations == pytest.approx(19.3, abs=0.05)  # 119.7 measured - 16 bytes x 6.74B

    def states(stage):
        return (zero_memory.per_gpu_gib(fft, stage, gpus) - activations) * zero_memory.GiB

    _, zero2 = estimate_zero2_model_states_mem_needs(params, gpus, 1, cpu_offload=False)
    _, offload = estimate_zero2_model_states_mem_needs(params, gpus, 1, cpu_offload=True)
    _, zero3, _ = estimate_zero3_model_states_mem_needs(params, largest, gpus, 1, cpu_offload=False)
    assert states("zero2") == pytest.approx(zero2, rel=1e-9)
    assert states("zero2_offload") == pytest.approx(offload, rel=1e-9)
    assert states("zero3") == pytest.approx(zero3, rel=1e-9)


def test_table_lists_every_measured_row_with_its_measured_peak(records):
    table = zero_memory.table(list(records.values()))
    lines = table.splitlines()[2:]
    assert len(lines) == len(records)
    fft = next(line for line in lines if line.startswith("| tulu_mmlu") and "FFT" in line)
    assert "**119.7**" in fft and "| 76.2 |" in fft  # ZeRO-3 on 2 GPUs: 9 bytes x 6.74B + embedding + A
