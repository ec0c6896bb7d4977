"""The bad-input table of docs/reliability.md, a test per row: `mora.train` stops before training with an
error that names the fix, and the results store stays empty (not even a run directory). In-process, so
each row costs about a second; tests/test_train_cli.py::test_bad_config_fails_before_training shows the
CLI turning these errors into a non-zero exit status; the DeepSpeed and grid rows live beside their
code (tests/test_deepspeed.py, tests/test_launch.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hydra.errors import MissingConfigException

from mora.data.fixtures import write_fixtures
from runner import TINY_RUN, compose

METAMATH = ["experiment=metamath_gsm8k_mini", "logger=none", "train.progress_bar=false", "train.batch_size=8",
            "train.micro_batch_size=8", "train.epochs=null", "train.max_steps=2"]


def assert_fails_before_training(tmp_path: Path, overrides: list[str], error: type[Exception], fix: str):
    """Compose and train `overrides`; expect `error` matching `fix` and an untouched results store."""
    from mora.train import train

    runs = tmp_path / "runs"
    paths = [f"paths.runs_dir={runs}", f"paths.cache_dir={tmp_path / 'cache'}"]
    with pytest.raises(error, match="(?s)" + fix) as info:  # (?s): Hydra's messages span lines
        train(compose([*overrides, *paths]))
    assert not runs.exists(), sorted(str(p) for p in runs.rglob("*"))
    return info.value


ROWS = {
    "unknown-method": (["method=vera"], MissingConfigException,
                       r"Could not find 'method/vera'.*Available options in 'method':.*\bmora\b"),
    "unknown-method-name": (["method.method=vera"], ValueError, r"unknown method 'vera'; choose one of \[.*'mora'"),
    "unknown-kind": (["method=mora", "method.kind=spiral"], ValueError,
                     r"unknown kind 'spiral'; choose one of \('auto', 'sharing', 'rotation'"),
    "unknown-model": (["model=gpt5"], MissingConfigException,
                      r"Could not find 'model/gpt5'.*Available options in 'model':.*tiny_llama"),
    "unknown-data": (["data=wiki"], MissingConfigException, r"Could not find 'data/wiki'.*Available options in 'data':.*uuid"),
    "unknown-data-builder": (["data.builder.task=wiki"], ValueError, r"unknown data builder 'wiki'; choose one of \[.*'uuid'"),
    "r-zero": (["method.r=0"], ValueError, r"r must be a positive integer, got 0; set method.r >= 1"),
    "r-negative": (["method=mora", "method.r=-4"], ValueError, r"r must be a positive integer, got -4; set method.r >= 1"),
    "alpha-zero": (["method.alpha=0"], ValueError, r"alpha must be > 0, got 0; set method.alpha > 0"),
    "alpha-negative": (["method=dora", "method.alpha=-1"], ValueError, r"alpha must be > 0, got -1; set method.alpha > 0"),
    "targets-match-nothing": (["method.target_modules=[nope_proj]"], ValueError,
                              r"\['nope_proj'\] match no nn.Linear.*'q_proj'.*set method.target_modules to some of them"),
    "wrap-padding-impossible": (["method=mora", "method.kind=rotation", "method.r=100"], ValueError,
                                r"wrap padding needs 48 extra inputs but the layer has only 32.*lower r, or use "
                                r"kind=truncation"),
    "batch-not-a-multiple": (["train.micro_batch_size=3"], ValueError,
                             r"train.batch_size=8 is not a multiple of train.micro_batch_size=3.*change one of them"),
    "steps-and-epochs": (["train.epochs=2"], ValueError, r"set exactly one of train.max_steps \(6\) and train.epochs \(2\)"),
}


@pytest.mark.parametrize("row", list(ROWS))
def test_bad_run_config(tmp_path, row):
    overrides, error, fix = ROWS[row]
    assert_fails_before_training(tmp_path, [*TINY_RUN, *overrides], error, fix)


# A misspelt key, one per config group (mora.schema): named with the closest valid key. Given with `+`
# here (Hydra's compose refuses a key the config lacks without it); the CLI, which accepts both
# spellings, is tested in tests/test_train_cli.py.
TYPOS = {
    "top-level": ("+sed=1", "sed (did you mean seed?)"),
    "paths": ("+paths.run_dir=elsewhere", "paths.run_dir (did you mean paths.runs_dir?)"),
    "model": ("+model.nmae=x", "model.nmae (did you mean model.name?)"),
    "model-network": ("+model.network.hiden_size=16", "model.network.hiden_size (did you mean model.network.hidden_size?)"),
    "model-tokenizer": ("+model.tokenizer.alphabt=abc", "model.tokenizer.alphabt (did you mean model.tokenizer.alphabet?)"),
    "method": ("+method.alhpa=8", "method.alhpa (did you mean method.alpha?)"),
    "data": ("+data.builder.n_pair=8", "data.builder.n_pair (did you mean data.builder.n_pairs?)"),
    "train": ("+train.lrr=1e-3", "train.lrr (did you mean train.lr?)"),
    "eval": ("+eval.stepz=[3]", "eval.stepz (did you mean eval.steps?)"),
    "eval-metric": ("+eval.metric.batch_szie=4", "eval.metric.batch_szie (did you mean eval.metric.batch_size?)"),
    "logger": ("+logger.wandb.projet=x", "logger.wandb.projet (did you mean logger.wandb.project?)"),
    "benchmark": ("+benchmark.limt=3", "benchmark.limt (did you mean benchmark.limit?)"),
}


@pytest.mark.parametrize("group", list(TYPOS))
def test_misspelt_key_is_named_with_the_closest_valid_one(tmp_path, group):
    override, named = TYPOS[group]
    overrides = [o for o in TINY_RUN if o != "logger=none"] if group == "logger" else TINY_RUN
    assert_fails_before_training(tmp_path, [*overrides, override], ValueError, f"unknown config key {re.escape(named)}")


def test_keys_without_a_near_match_are_listed_and_every_typo_is_named_at_once(tmp_path):
    err = assert_fails_before_training(tmp_path, [*TINY_RUN, "method=mora", "+method.ranks=4", "+eval.stepz=[3]"],
                                       ValueError, r"unknown config keys method.ranks")
    assert "method.ranks (method takes _target_, dropout, kind, method, mora_type, overflow, r, target_modules," in str(err)
    assert "eval.stepz (did you mean eval.steps?)" in str(err)


def test_evaluate_rejects_a_misspelt_key_before_looking_for_the_run(tmp_path):
    from mora.evaluate import evaluate

    with pytest.raises(ValueError, match=re.escape("unknown config key benchmark.limt (did you mean benchmark.limit?)")):
        evaluate(compose([*TINY_RUN, f"paths.runs_dir={tmp_path}", "benchmark=mmlu_dev", "+benchmark.limt=3"]))


def test_unknown_experiment(tmp_path):
    assert_fails_before_training(tmp_path, ["experiment=uuid_nano"], MissingConfigException,
                          r"Could not find 'experiment/uuid_nano'.*Available options in 'experiment':.*uuid_mini")


# --- the dataset file ----------------------------------------------------------------------------


def test_dataset_file_missing(tmp_path):
    missing = tmp_path / "metamath.json"
    assert_fails_before_training(tmp_path, [*METAMATH, f"data.builder.source={missing}"], ValueError,
                          rf"data source '{missing}' matches no local file.*give an existing \.jsonl, \.json or \.txt \(each also as \.gz or \.zst\) or \.parquet file")


@pytest.mark.parametrize("name,content", [("empty.jsonl", ""), ("empty.json", ""), ("empty_list.json", "[]")],
                         ids=["empty-jsonl", "empty-json", "json-empty-list"])
def test_dataset_file_empty(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    assert_fails_before_training(tmp_path, [*METAMATH, f"data.builder.source={path}"], ValueError,
                          rf"data source '{path}' holds no rows.*point data.builder.source at a file with rows like "
                          r"\{query: str, response: str\}")


def test_dataset_file_with_the_wrong_schema(tmp_path):
    path = tmp_path / "gsm8k.jsonl"  # GSM8K's own schema, not MetaMathQA's
    path.write_text(json.dumps({"question": "1 + 1?", "answer": "2"}) + "\n")
    assert_fails_before_training(tmp_path, [*METAMATH, f"data.builder.source={path}"], ValueError,
                          r"gsm8k.jsonl line 1: field 'query' is missing \(fields present: \['answer', 'question'\]\); "
                          r"this builder expects rows like \{query: str, response: str\}: convert the data")


# --- the tokenized-data cache ------------------------------------------------------------------


@pytest.fixture
def built_cache(tmp_path):
    """A metamath fixture tokenized into tmp_path/cache as a real run leaves it; returns (source, entry)."""
    from mora.builders import build

    write_fixtures(tmp_path / "fixtures", n=16)
    source = tmp_path / "fixtures" / "metamath.json"
    cfg = compose([*METAMATH, f"data.builder.source={source}", f"paths.cache_dir={tmp_path / 'cache'}"])
    build(cfg, "data.builder", tokenizer=build(cfg, "model.tokenizer")).train_dataset()
    (entry,) = (tmp_path / "cache").glob("metamath-*")
    return source, entry


def test_data_cache_built_with_another_tokenizer(tmp_path, built_cache):
    source, entry = built_cache
    meta = json.loads((entry / "meta.json").read_text())
    meta["keys"]["tokenizer"]["sha256"] = "0" * 64  # an entry copied in from a run with another tokenizer
    (entry / "meta.json").write_text(json.dumps(meta))
    assert_fails_before_training(tmp_path, [*METAMATH, f"data.builder.source={source}"], ValueError,
                          rf"data cache {entry} was built with different tokenizer than this run.*refusing to train on "
                          rf"it: delete {entry} or point paths.cache_dir elsewhere")


def test_data_cache_damaged(tmp_path, built_cache):
    source, entry = built_cache
    tokens = entry / "train.tokens.bin"
    tokens.write_bytes(tokens.read_bytes()[:-4])  # cut short, e.g. a disk that filled up
    assert_fails_before_training(tmp_path, [*METAMATH, f"data.builder.source={source}"], ValueError,
                          rf"data cache {entry} is damaged \(train.tokens.bin\); delete the directory to rebuild it")
