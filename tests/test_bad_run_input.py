"""The bad-input table of docs/reliability.md, a test per row: `mora.train` stops before training with an
error that names the fix, and the results store stays empty (not even a run directory). In-process, so
each row costs about a second; tests/test_train_cli.py::test_bad_config_fails_before_training shows the
CLI turning these errors into a non-zero exit status; the DeepSpeed and grid rows live beside their
code (tests/test_deepspeed.py, tests/test_launch.py)."""

from __future__ import annotations

import json
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
    "unknown-data-option": (["+data.builder.n_pair=8"], ValueError,
                            r"data builder 'uuid' takes no option\(s\) \['n_pair'\]; allowed: \[.*'n_pairs'"),
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


def test_unknown_experiment(tmp_path):
    assert_fails_before_training(tmp_path, ["experiment=uuid_nano"], MissingConfigException,
                          r"Could not find 'experiment/uuid_nano'.*Available options in 'experiment':.*uuid_mini")


# --- the dataset file ----------------------------------------------------------------------------


def test_dataset_file_missing(tmp_path):
    missing = tmp_path / "metamath.json"
    assert_fails_before_training(tmp_path, [*METAMATH, f"data.builder.source={missing}"], ValueError,
                          rf"data source '{missing}' matches no local file.*give an existing .jsonl/.json/.parquet/.txt file")


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
    from mora.train import build

    write_fixtures(tmp_path / "fixtures", n=16)
    source = tmp_path / "fixtures" / "metamath.json"
    cfg = compose([*METAMATH, f"data.builder.source={source}", f"paths.cache_dir={tmp_path / 'cache'}"])
    build(cfg.data.builder, tokenizer=build(cfg.model.tokenizer)).train_dataset()
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
