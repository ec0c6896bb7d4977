"""The paper-task experiments: the paper-scale configs carry Table 5, and each offline `*_mini` twin
trains a few steps through the real entry point on fixtures (or ../shared/data for C4)."""

import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from mora.data.fixtures import write_fixtures
from runner import ROOT, compose

SHARED_TEXT = ROOT.parent / "shared" / "data"
FAST = ["logger=none", "train.progress_bar=false", "train.log_every=1", "train.batch_size=8", "train.micro_batch_size=8"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One cache for the module (C4's text is tokenized once), with the fixtures where the minis look."""
    cache = tmp_path_factory.mktemp("mora_cache")
    write_fixtures(cache / "fixtures", n=16)
    return cache


def run(cache_dir, runs_dir, experiment, *overrides):
    from mora.train import train

    paths = [f"paths.cache_dir={cache_dir}", f"paths.runs_dir={runs_dir}"]
    return train(compose([f"experiment={experiment}", *paths, *FAST, *overrides]))


@pytest.mark.parametrize("experiment,steps", [("tulu_mmlu_mini", 2 * 2), ("metamath_gsm8k_mini", 3 * 2)])
def test_sft_minis_train_for_their_epochs(tmp_path, cache_dir, experiment, steps):
    metrics = run(cache_dir, tmp_path, experiment)  # 16 fixture rows, batch 8: epochs x 2 steps
    assert metrics["status"] == "completed"
    assert [s for s, _ in metrics["train_loss"]] == list(range(1, steps + 1))
    assert metrics["summary"]["max_steps"] == steps


@pytest.mark.parametrize("experiment", ["biomed_cpt_mini", "finance_cpt_mini"])
def test_cpt_minis_train(tmp_path, cache_dir, experiment):
    metrics = run(cache_dir, tmp_path, experiment, "train.epochs=null", "train.max_steps=2", "data.builder.max_length=128")
    assert metrics["status"] == "completed" and len(metrics["train_loss"]) == 2


@pytest.mark.skipif(not SHARED_TEXT.is_dir(), reason="../shared/data is not beside the checkout")
@pytest.mark.parametrize("experiment", ["c4_pretrain_250m_mini", "c4_pretrain_1b_mini"])
def test_pretraining_minis_train_on_shared_text_and_report_perplexity(tmp_path, cache_dir, experiment):
    metrics = run(
        cache_dir, tmp_path, experiment, f"data.builder.source={SHARED_TEXT}/*.txt",
        "train.max_steps=2", "eval.steps=[2]", "eval.metric.max_sequences=8", "eval.metric.batch_size=8",
    )
    assert metrics["status"] == "completed"
    (final,) = metrics["evals"]
    assert final["step"] == 2 and math.isclose(final["perplexity"], math.exp(final["val_loss"]), rel_tol=1e-9)
    assert math.isfinite(final["val_loss"]) and final["perplexity"] > 1.0
    budget = metrics["budget"]  # embeddings, norms and lm_head train beside the adapters, as in the paper
    assert budget["trainable_total"] > budget["adapter_total"] + 2 * 100 * 64
    (meta,) = [json.loads(p.read_text()) for p in Path(cache_dir).glob("c4-*/meta.json")]
    files = {Path(f["path"]).name for f in meta["keys"]["source"]["files"]}
    assert files == {"austen.txt", "kjv.txt"}
    total = meta["arrays"]["train"]["tokens"] + meta["arrays"]["validation"]["tokens"]
    assert 0.04 < meta["arrays"]["validation"]["tokens"] / total < 0.06


def test_perplexity_is_the_models_own_loss(cache_dir, make_tiny_llama):
    from mora.data import build_task
    from mora.evaluation.perplexity import Perplexity
    from mora.models import char_tokenizer

    tok = char_tokenizer()
    fixture = Path(cache_dir) / "fixtures" / "pubmed.jsonl.zst"
    task = build_task("c4", tok, source=str(fixture), max_length=48, cache_dir=str(cache_dir), holdout_fraction=0.2)
    model = make_tiny_llama(vocab_size=len(tok))
    rows = task.validation_dataset()
    result = Perplexity(batch_size=4, max_sequences=1)(model, tok, task)
    with torch.no_grad():
        ids = torch.tensor([rows[0]["input_ids"]])
        expected = model(input_ids=ids, labels=ids).loss.item()
    assert result["val_loss"] == pytest.approx(expected, rel=1e-5)


def test_epochs_and_max_steps_are_exclusive(tmp_path, cache_dir):
    with pytest.raises(ValueError, match=r"set exactly one of train.max_steps \(5\) and train.epochs \(2\)"):
        run(cache_dir, tmp_path, "tulu_mmlu_mini", "train.max_steps=5")
    assert not list(tmp_path.rglob("metrics.json"))


def test_training_refuses_a_cache_with_other_keys(tmp_path, cache_dir):
    cache = tmp_path / "cache"
    write_fixtures(cache / "fixtures", n=4)
    run(cache, tmp_path / "runs", "metamath_gsm8k_mini")
    (meta_path,) = cache.glob("metamath-*/meta.json")
    meta = json.loads(meta_path.read_text())
    meta["keys"]["version"] = 0
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="built with different version than this run"):
        run(cache, tmp_path / "runs2", "metamath_gsm8k_mini")
    assert not (tmp_path / "runs2").exists()


# experiment -> (model, data source, schedule, warmup, epochs or max_steps, batch, LR of the default method)
PAPER = {
    "tulu_mmlu": ("meta-llama/Llama-2-7b-hf", "allenai/tulu-v2-sft-mixture", "cosine", 500, {"epochs": 2}, 128, 1e-4),
    "metamath_gsm8k": ("meta-llama/Llama-2-7b-hf", "meta-math/MetaMathQA", "cosine", 300, {"epochs": 3}, 128, 1e-4),
    "biomed_cpt": ("meta-llama/Llama-2-7b-hf", "hwang2006/PUBMED_title_abstracts_2020_baseline", "linear", 150, {"epochs": 1}, 128, 3e-4),
    "finance_cpt": ("meta-llama/Llama-2-7b-hf", "ashraq/financial-news-articles", "linear", 150, {"epochs": 1}, 128, 3e-4),
    "c4_pretrain_250m": ("t5-base", "allenai/c4", "cosine", 1000, {"max_steps": 10000}, 1024, 5e-4),
    "c4_pretrain_1b": ("t5-base", "allenai/c4", "cosine", 1000, {"max_steps": 10000}, 1024, 5e-4),
}


@pytest.mark.parametrize("experiment", sorted(PAPER))
def test_paper_scale_experiments_carry_table5(experiment):
    model, source, schedule, warmup, length, batch, lr = PAPER[experiment]
    cfg = compose([f"experiment={experiment}"])
    assert cfg.model.tokenizer.name_or_path == model and cfg.data.builder.source == source
    assert (cfg.train.schedule, cfg.train.warmup_steps, cfg.train.batch_size, cfg.train.lr) == (schedule, warmup, batch, lr)
    assert {k: cfg.train[k] for k in length} == length
    assert cfg.data.builder.cache_dir == cfg.paths.cache_dir
    if experiment.startswith("c4"):
        assert cfg.data.builder.max_length == 512 and cfg.data.builder.streaming and cfg.data.builder.hub_config == "en"
        assert cfg.method.r == 128 and list(cfg.method.trainable_modules) == ["embed_tokens", ".*norm", "lm_head"]
        assert compose([f"experiment={experiment}", "method=relora"]).method.merge_every == 2000
        assert compose([f"experiment={experiment}", "method=remora"]).method.merge_every == 2000
    mini = compose([f"experiment={experiment}_mini"])
    assert mini.model.name == "tiny_llama" and mini.train.schedule == schedule
    assert OmegaConf.to_container(mini, resolve=True)


@pytest.mark.skipif(not SHARED_TEXT.is_dir(), reason="../shared/data is not beside the checkout")
def test_the_gpu_pretraining_experiment_trains_shrunk_on_cpu(tmp_path, caplog):
    """c4_gpu (Table 3's gpu section) as the GPU runs it, only narrower and shorter: its own 32100-token
    BPE (trained on a slice of the local text, padded with extra ids), bf16 autocast over fp32 weights,
    ReMoRA merging inside the run, perplexity and the Figure 5 spectrum recorded."""
    corpus = tmp_path / "text"
    corpus.mkdir()
    for source in sorted(SHARED_TEXT.glob("*.txt")):  # 40 kB a file: the BPE trains in well under a second
        (corpus / source.name).write_text(source.read_text()[:40_000])
    shrunk = ["model.network.hidden_size=32", "model.network.num_layers=2", "model.network.num_heads=4",
              "model.network.intermediate_size=64", "method.r=8"]
    steps = ["train.max_steps=4", "train.warmup_steps=1", "method.merge_every=2", "method.rewarm_steps=1",
             "eval.steps=[2,4]", "eval.metric.max_sequences=4", "eval.metric.batch_size=4", "data.builder.max_length=64"]
    with caplog.at_level("INFO", logger="mora"):
        metrics = run(tmp_path / "cache", tmp_path / "runs", "c4_gpu", "method=remora", "benchmark=spectrum",
                      f"data.builder.source={corpus}/*.txt", f"model.tokenizer.files={corpus}/*.txt", *shrunk, *steps)
    assert metrics["status"] == "completed" and metrics["summary"]["max_steps"] == 4
    assert [e["step"] for e in metrics["evals"]] == [2, 4] and all(math.isfinite(e["perplexity"]) for e in metrics["evals"])
    assert [m.split(":")[0] for m in caplog.messages if m.startswith("restart at step")] == ["restart at step 2"]
    (config,) = (tmp_path / "runs" / "c4_gpu").glob("*/config.json")
    recorded = json.loads(config.read_text())
    assert (recorded["train"]["precision"], recorded["model"]["network"]["dtype"]) == ("bf16", "float32")
    assert metrics["budget"]["trainable_total"] > metrics["budget"]["adapter_total"] + 2 * 32100 * 32  # embeddings, head
    assert set(metrics["spectrum"]["by_type"]) == {"q", "k", "v", "o", "up", "down", "gate"}
