"""Evaluation after training: the spectrum of ΔW (Figure 5), perplexity, and `mora.evaluate` scoring a
finished run with lm-eval (automatically after training, or by hand), results kept in the run dir."""

import json
import math
import time

import pytest
import torch

from mora.evaluation.spectrum import count_above, module_type, projection_weights, spectrum
from runner import compose, metrics_files, train_in_process


def _low_rank(rank: int, shape=(48, 40), scale=1.0, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    left = torch.linalg.qr(torch.randn(shape[0], rank, generator=g))[0]
    right = torch.linalg.qr(torch.randn(shape[1], rank, generator=g))[0]
    values = torch.linspace(2.0, 0.5, rank) * scale
    return left @ torch.diag(values) @ right.T


@pytest.mark.parametrize("rank", [1, 5, 17])
def test_spectrum_counter_returns_the_rank_of_a_known_low_rank_delta(rank):
    delta = _low_rank(rank) + 1e-4 * torch.randn(48, 40)  # noise far below the 0.1 threshold
    count, values = count_above(delta)
    assert count == rank
    assert values[rank - 1] > 0.1 > values[rank]


def test_spectrum_averages_counts_per_module_type():
    names = [f"model.layers.{i}.self_attn.q_proj" for i in range(2)] + ["model.layers.0.mlp.down_proj", "lm_head"]
    initial = {n: torch.zeros(48, 40) for n in names}
    final = {names[0]: _low_rank(2), names[1]: _low_rank(4), names[2]: _low_rank(3), names[3]: _low_rank(9)}
    result = spectrum(initial, final)
    assert result["by_type"] == {"q": 3.0, "down": 3.0}  # lm_head is no projection: ignored
    assert result["layers"] == {"q": 2, "down": 1}
    assert result["modules"][names[1]]["count"] == 4
    assert module_type("model.layers.3.mlp.gate_proj.weight") == "gate" and module_type("lm_head") is None


def test_spectrum_of_merged_adapters_is_their_rank(make_tiny_llama, randomize):
    """LoRA at r 3 can only add rank 3; MoRA at the same budget reaches far higher ranks (the paper's
    point), measured the same way: merged weight minus initial weight."""
    from mora.adapters import apply_adapters, merge_and_unload

    counts = {}
    for method in ({"method": "lora", "r": 3, "alpha": 3}, {"method": "mora", "r": 3, "kind": "sharing"}):
        model = make_tiny_llama()
        initial = {k: v.detach().clone() for k, v in projection_weights(model).items()}
        apply_adapters(model, method)
        assert set(projection_weights(model)) == set(initial)  # wrapped layers report their base weight
        randomize(model, std=0.5)
        merge_and_unload(model)
        counts[method["method"]] = spectrum(initial, projection_weights(model), threshold=1e-3)["by_type"]
    assert set(counts["lora"].values()) == {3.0}
    assert min(counts["mora"].values()) > 3.0


class _Rows:
    """The validation interface Perplexity reads: validation_dataset() rows and a collator."""

    def __init__(self, rows, pad):
        self.rows, self.pad = rows, pad

    def validation_dataset(self):
        return self.rows

    def collator(self):
        from mora.data.collate import PadCollator

        return PadCollator(self.pad)


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size(make_tiny_llama):
    from mora.evaluation.perplexity import Perplexity

    model = make_tiny_llama()
    torch.nn.init.zeros_(model.lm_head.weight)  # every next token equally likely
    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": ids, "labels": ids} for ids in (torch.randint(0, 50, (n,), generator=g).tolist() for n in (9, 17, 5))]
    rows[1]["labels"] = [-100] * 4 + rows[1]["labels"][4:]  # masked positions do not count
    result = Perplexity(batch_size=2)(model, None, _Rows(rows, pad=0))
    assert result["perplexity"] == pytest.approx(50.0, rel=1e-5)
    assert result["val_loss"] == pytest.approx(math.log(50.0), rel=1e-6)


# -- mora.evaluate on real runs ---------------------------------------------------------------------

BENCH = ["benchmark=biomed_mini", "benchmark.limit=4", "benchmark.batch_size=4"]


def _offline_record(run_dir, tokens, timeout_s=30.0) -> bytes:
    """The run's offline wandb file, once it holds `tokens`: wandb's service process writes it, and may
    still be flushing when `run.finish()` returns (seen on a loaded CI machine: only the file header)."""
    deadline = time.monotonic() + timeout_s
    while True:
        (record,) = (run_dir / "wandb").glob("offline-run-*/*.wandb")
        raw = record.read_bytes()
        if all(t in raw for t in tokens) or time.monotonic() > deadline:
            return raw
        time.sleep(0.2)


def test_benchmark_runs_after_training_and_is_kept_in_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    data = tmp_path / "eval_data"
    metrics = train_in_process(tmp_path / "runs", "method=lora", *BENCH, f"benchmark.data_dir={data}", "logger=wandb")
    (path,) = metrics_files(tmp_path / "runs")
    run_dir = path.parent
    scores = metrics["scores"]
    assert set(scores) == {"biomed", "pubmedqa", "usmle", "bio_mmlu", "rct"}
    assert scores["biomed"] == pytest.approx((scores["pubmedqa"] + scores["usmle"] + scores["bio_mmlu"] + scores["rct"]) / 4)
    assert all(0.0 <= v <= 100.0 for v in scores.values())
    stored = json.loads((run_dir / "lm_eval" / "biomed.json").read_text())
    assert stored["results"]["adaptllm_biomed"]["acc,none"] * 100 == pytest.approx(scores["biomed"])
    assert metrics["benchmarks"]["biomed"]["n_samples"]["adaptllm_pubmedqa"] == 4
    assert metrics["benchmarks"]["biomed"]["scoring"] == "paper"  # the default: the paper's checks
    assert stored["configs"]["adaptllm_usmle"]["metadata"]["scoring"] == "paper"
    assert metrics["status"] == "completed" and metrics["evals"]  # training's own record is untouched
    # the wandb run (offline) holds the dashboard keys and the scores: job type = method; a run started by
    # hand logs to its experiment's group, not to a paper artifact's (mora.launch passes artifact=)
    tokens = (b"uuid_mini", b"lora", b"method", b"rank", b"kind", b"seed", b"task", b"run_id", b"artifact", b"eval/biomed")
    raw = _offline_record(run_dir, tokens)
    for token in tokens:
        assert token in raw, token
    assert b"table2" not in raw

    # Asked again: the run is found finished, and the suite already scored is not scored again.
    stamp = path.stat().st_mtime_ns
    again = train_in_process(tmp_path / "runs", "method=lora", *BENCH, f"benchmark.data_dir={data}", "logger=wandb")
    assert again == metrics and path.stat().st_mtime_ns == stamp


def test_mora_evaluate_scores_a_finished_run_by_its_overrides(tmp_path, caplog):
    from mora.evaluate import evaluate

    train_in_process(tmp_path / "runs", "method=mora", "method.r=4")
    (path,) = metrics_files(tmp_path / "runs")
    assert "scores" not in json.loads(path.read_text())
    from runner import TINY_RUN

    cfg = compose([*TINY_RUN, f"paths.runs_dir={tmp_path / 'runs'}", "method=mora", "method.r=4", "benchmark=mmlu_dev",
                   "benchmark.limit=5", "~benchmark.suites.mmlu_5shot"])
    metrics = evaluate(cfg)
    assert set(metrics["scores"]) == {"mmlu0"} and metrics["benchmarks"]["mmlu_0shot"]["n_samples"] == {"mmlu_dev": 5}
    assert json.loads(path.read_text())["scores"] == metrics["scores"]
    assert metrics["benchmarks"]["mmlu_0shot"]["scoring"] == "paper"
    # another scoring mode is another result: scored again, and recorded
    standard_cfg = compose([*TINY_RUN, f"paths.runs_dir={tmp_path / 'runs'}", "method=mora", "method.r=4",
                            "benchmark=mmlu_dev", "benchmark.limit=5", "~benchmark.suites.mmlu_5shot",
                            "benchmark.scoring=standard"])
    standard = evaluate(standard_cfg)
    assert standard["benchmarks"]["mmlu_0shot"]["scoring"] == "standard"
    assert standard["benchmarks"]["mmlu_0shot"]["key"]["scoring"] == "standard"
    with pytest.raises(ValueError, match=r"benchmark.scoring must be one of \('paper', 'standard'\), got 'lenient'"):
        evaluate(compose([*TINY_RUN, f"paths.runs_dir={tmp_path / 'runs'}", "method=mora", "method.r=4",
                          "benchmark=mmlu_dev", "benchmark.scoring=lenient"]))

    # asked again (the last mode scored): nothing is scored, and the log says the score is the stored one
    stamp = path.stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level("INFO", logger="mora"):
        assert evaluate(standard_cfg)["scores"] == standard["scores"]
    said = [r.getMessage() for r in caplog.records if r.name == "mora"]
    assert said == [f"run {path.parent.name}: mmlu_0shot is cached (scored before with these settings): "
                    f"mmlu0 {standard['scores']['mmlu0']:.4g}; benchmark.force=true scores it again"]
    assert path.stat().st_mtime_ns == stamp

    missing = compose([*TINY_RUN, f"paths.runs_dir={tmp_path / 'runs'}", "method=mora", "method.r=8", "benchmark=mmlu_dev"])
    with pytest.raises(ValueError, match="train it first"):
        evaluate(missing)


def test_prompts_longer_than_the_context_are_counted_once_and_lm_evals_own_lines_silenced(tmp_path, caplog):
    """PubMedQA (multiple choice) and ConvFinQA (generation) at a 24-token context: one warning per kind
    of request, with the count, before scoring; none of lm-eval's per-prompt lines. With room for every
    prompt, no warning."""
    import logging

    from mora.evaluation.fixtures import write_fixtures
    from mora.evaluation.harness import Suite, run_suite
    from mora.models import char_tokenizer, llama_from_config

    write_fixtures(tmp_path, n=6, seed=3)
    tokenizer = char_tokenizer()
    model = llama_from_config(tokenizer, hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64, max_position=64)
    suite = Suite("check", ["adaptllm_pubmedqa", "adaptllm_convfinqa"], {"pubmedqa": "adaptllm_pubmedqa/acc"})
    kwargs = dict(data_dir=str(tmp_path), batch_size=8, gen_kwargs={"max_gen_toks": 8})
    assert logging.getLogger("lm_eval.models.huggingface").propagate  # so caplog would see lm-eval's lines
    with caplog.at_level("INFO"):
        run_suite(model, tokenizer, suite, max_length=24, **kwargs)
    said = [r.getMessage() for r in caplog.records]
    assert [m for m in said if "longer than the model's context" in m] == [
        "check: 6 of 6 prompts are longer than the model's context (24 tokens) and are cut from the left, "
        "so those items are scored on a truncated prompt",
        "check: 6 of 6 prompts are longer than the model's context (24 tokens, 8 of them kept for the answer) "
        "and are cut from the left, so those items are scored on a truncated prompt",
    ]
    assert not [m for m in said if m.startswith(("Combined length of context", "Left truncation applied"))]

    caplog.clear()
    with caplog.at_level("INFO"):
        run_suite(model, tokenizer, suite, max_length=4096, **kwargs)
    assert not [r for r in caplog.records if "longer than the model's context" in r.getMessage()]


def test_spectrum_benchmark_snapshots_initial_weights_and_counts_the_lora_rank(tmp_path):
    """Trained LoRA at r 4 (hidden 32): every ΔW has exactly 4 singular values above 1e-6. The
    initial weights rebuilt from config + seed (no snapshot) are the snapshot, bit for bit."""
    from mora.evaluate import initial_weights
    from mora.evaluation.spectrum import SNAPSHOT_NAME, load_snapshot

    metrics = train_in_process(tmp_path, "method=lora", "method.r=4", "benchmark=spectrum", "benchmark.spectrum.threshold=1e-6")
    (path,) = metrics_files(tmp_path)
    run_dir = path.parent
    assert metrics["spectrum"]["by_type"] == {t: 4.0 for t in ("q", "k", "v", "o", "up", "down", "gate")}
    assert metrics["spectrum"]["layers"]["q"] == 2
    detail = json.loads((run_dir / "spectrum.json").read_text())
    assert len(detail["modules"]) == 14 and detail["modules"]["model.layers.0.self_attn.q_proj"]["count"] == 4

    snapshot = load_snapshot(run_dir / SNAPSHOT_NAME)
    (run_dir / SNAPSHOT_NAME).unlink()
    rebuilt = initial_weights(run_dir, json.loads((run_dir / "config.json").read_text()))
    assert set(rebuilt) == set(snapshot)
    assert all(torch.equal(rebuilt[k], snapshot[k]) for k in snapshot)


def test_every_benchmark_composes_and_names_known_tasks():
    from pathlib import Path

    from mora.evaluation.harness import Suite

    names = sorted(p.stem for p in (Path(__file__).parent.parent / "conf" / "benchmark").glob("*.yaml") if not p.stem.startswith("_"))
    assert {"none", "mmlu", "mmlu_dev", "math", "biomed", "finance", "spectrum"} <= set(names)
    eval_tasks = {p.stem for p in (Path(__file__).parent.parent / "eval").glob("*.yaml")} | {"mmlu"}
    for name in names:
        bench = compose([f"benchmark={name}"]).benchmark
        for suite_name, suite in (bench.suites or {}).items():
            parsed = Suite.from_dict(suite_name, dict(suite))
            assert set(parsed.tasks) <= eval_tasks, (name, parsed.tasks)
            assert all(where.split("/")[0] in eval_tasks for where in parsed.scores.values())


def test_base_plus_adapter_is_the_merged_model(tmp_path):
    """benchmark.model=adapter rebuilds the base (here a random init, from the seed) and loads the
    adapter: the same function as the merged checkpoint."""
    from mora.evaluate import load_model

    train_in_process(tmp_path, "method=mora", "method.r=4")
    (path,) = metrics_files(tmp_path)
    config = json.loads((path.parent / "config.json").read_text())
    merged, tokenizer = load_model(path.parent, config, "merged")
    adapted, _ = load_model(path.parent, config, "adapter")
    ids = tokenizer("0f6a1c2e-3b4d:", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, adapted.eval()(ids).logits, atol=1e-4)
    import shutil

    shutil.rmtree(path.parent / "adapter")  # as an FFT run leaves it
    with pytest.raises(ValueError, match="no adapter/.*use benchmark.model=merged"):
        load_model(path.parent, config, "adapter")


def test_after_training_the_benchmark_scores_the_merged_model_in_memory(tmp_path, monkeypatch):
    """mora.train hands the benchmark its merged model as a freshly loaded one would compute: adapters
    merged, blocks no longer compiled, accelerate's bf16-autocast forward gone. Nothing is read back
    from the store (here there is nothing to read: train.save_model=false)."""
    import mora.train
    from mora.adapters import adapter_layers

    handed = []
    evaluate_run = mora.train.evaluate_run
    monkeypatch.setattr("mora.train.evaluate_run", lambda *args: handed.append(args[-1]) or evaluate_run(*args))

    def read_back(*args, **kwargs):
        raise AssertionError("the trained model was read back from the store")

    monkeypatch.setattr("mora.evaluate.load_model", read_back)
    metrics = train_in_process(tmp_path, "method=lora", "method.r=4", "train.precision=bf16", "train.compile=aot_eager",
                               "train.save_model=false", "benchmark=spectrum", "benchmark.spectrum.threshold=1e-6")
    assert metrics["spectrum"]["by_type"] == {t: 4.0 for t in ("q", "k", "v", "o", "up", "down", "gate")}
    (path,) = metrics_files(tmp_path)
    assert not (path.parent / "merged").exists()
    (trained,) = handed
    model = trained.model
    assert not adapter_layers(model) and "_original_forward" not in vars(model)
    assert model.forward.__func__ is type(model).forward
    assert all(m._compiled_call_impl is None for m in model.modules())
