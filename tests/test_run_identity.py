"""The run id (docs/results_store.md): one id for one run whatever the machine, directory, cache or
performance switches; a new id for anything that changes what the run computes; local data by content,
with the digest cached by stat; hub data by id, config and revision."""

from __future__ import annotations

import json
import os
import socket

import pytest
from omegaconf import OmegaConf

from mora.identity import ROOT_INERT, TRAIN_INERT, run_id, run_identity
from runner import ROOT, compose

C4_LOCAL = ["experiment=c4_pretrain_250m_mini"]


@pytest.fixture
def corpus(tmp_path):
    """Two small text files standing in for ../shared/data (c4_local's source)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("It is a truth universally acknowledged.\n" * 50)
    (data / "b.txt").write_text("In the beginning was the word.\n" * 50)
    return data


def container(*overrides: str) -> dict:
    return OmegaConf.to_container(compose(list(overrides)), resolve=True)


def rid(*overrides: str) -> str:
    return run_id(container(*overrides))


def test_the_same_run_has_one_id_on_any_machine_directory_or_cache(tmp_path, corpus, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative cache paths land here, not in the checkout
    source = f"data.builder.source={corpus}/*.txt"
    monkeypatch.delenv("MORA_CACHE_DIR", raising=False)
    base = rid(*C4_LOCAL, source)
    monkeypatch.setenv("MORA_CACHE_DIR", str(tmp_path / "job-1234" / "cache"))
    assert container(*C4_LOCAL, source)["data"]["builder"]["cache_dir"] == str(tmp_path / "job-1234" / "cache")
    assert rid(*C4_LOCAL, source) == base
    assert rid(*C4_LOCAL, source, f"paths.runs_dir={tmp_path / 'elsewhere'}") == base
    monkeypatch.setattr(socket, "gethostname", lambda: "gpu-node-17")
    monkeypatch.setenv("HOSTNAME", "gpu-node-17")
    assert rid(*C4_LOCAL, source) == base
    # the same files under another directory, named relative to another working directory
    other = tmp_path / "other" / "checkout"
    (other / "corpus").mkdir(parents=True)
    for f in corpus.iterdir():
        (other / "corpus" / f.name).write_bytes(f.read_bytes())
    monkeypatch.chdir(other)
    assert rid(*C4_LOCAL, "data.builder.source=corpus/*.txt") == base


@pytest.mark.parametrize(
    "one,other",
    [
        (["method=loraplus", "method.lr_ratio=4"], ["method=loraplus", "method.lr_ratio=4.0"]),
        (["method=loraplus", "method.lr_ratio=4"], ["method=loraplus"]),  # 4.0 is the YAML default
        (["method=mora", "method.kind=rotation"], ["method=mora", "method.mora_type=6"]),
        (["method=mora", "method.kind=rotation"], ["method=mora"]),  # auto at r 8 is rotation
        (["method=mora", "method.r=256", "method.kind=sharing"], ["method=mora", "method.r=256"]),
        (["method=mora", "method.kind=sharing"], ["method=mora", "method.kind=sharing", "method.overflow=fold"]),
        (["method=fft"], ["method=fft", "method.r=256"]),
        (["method=relora"], ["method=relora", "method.optimizer_keep=0.5"]),  # a full reset keeps nothing
        (["train.batch_size=32", "train.micro_batch_size=8"], ["train.batch_size=32", "train.micro_batch_size=32"]),
        (["train.compile=false"], ["train.compile=true"]),
        (["train.gradient_checkpointing=false"], ["train.gradient_checkpointing=true"]),
        ([], ["train/deepspeed=zero2"]),
        ([], ["train.save_every=7", "train.log_every=3", "train.progress_bar=false", "train.keep_checkpoints=true"]),
        ([], ["eval.metric.batch_size=3", "threads=1", "logger=none", "benchmark=spectrum", "artifact=fig3"]),
        (["train.schedule=constant"], ["train.schedule=constant", "train.min_lr_ratio=0.1"]),
    ],
)
def test_what_cannot_change_the_run_does_not_change_its_id(one, other):
    assert rid("experiment=uuid_mini", *one) == rid("experiment=uuid_mini", *other)


@pytest.mark.parametrize(
    "change",
    [
        "seed=1", "train.lr=0.5", "method.r=4", "method.alpha=8", "data.builder.n_pairs=9", "eval.steps=[2]",
        "train.precision=bf16", "train.batch_size=32", "train.schedule=cosine", "model.network.hidden_size=32",
        "eval.metric.sample=8", "experiment_name=another",
    ],
)
def test_what_changes_the_run_changes_its_id(change):
    assert rid("experiment=uuid_mini") != rid("experiment=uuid_mini", change)


def test_a_changed_local_file_changes_the_id(tmp_path, corpus, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = [f"data.builder.source={corpus}/*.txt", f"paths.cache_dir={tmp_path / 'cache'}"]
    base = rid(*C4_LOCAL, *source)
    target = corpus / "a.txt"
    text, stat = target.read_text(), target.stat()
    target.write_text(text.replace("truth", "TRUTH"))  # same size
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the old mtime: the digest cache must notice
    changed = rid(*C4_LOCAL, *source)
    assert changed != base
    target.write_text(text)
    assert rid(*C4_LOCAL, *source) == base
    (corpus / "c.txt").write_text("A third document.\n")
    assert rid(*C4_LOCAL, *source) not in (base, changed)


def test_a_changed_adapter_default_changes_the_id(monkeypatch):
    """The id holds every method option with its default filled in: a stored config that leaves an
    option out (written before the option existed) is the run that spells the default, and changing
    the default (conf/method/lora.yaml: a change to what the runs compute) names new runs."""
    from mora.adapters import config as adapter_config

    spelt = container("experiment=uuid_mini", "method=lora")
    left_out = {**spelt, "method": {k: v for k, v in spelt["method"].items() if k != "init"}}
    assert run_id(left_out) == run_id(spelt)
    yaml_defaults = adapter_config.method_defaults
    monkeypatch.setattr(adapter_config, "method_defaults", lambda m: {**yaml_defaults(m), "init": "orthogonal"})
    assert run_id(left_out) != run_id(spelt)


def test_no_path_enters_the_identity(tmp_path, corpus, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for experiment in ("c4_pretrain_250m_mini", "uuid_mini", "tulu_mmlu_mini"):
        overrides = [f"experiment={experiment}", f"paths.cache_dir={tmp_path / 'cache'}", f"paths.runs_dir={tmp_path / 'runs'}"]
        if experiment == "c4_pretrain_250m_mini":
            overrides.append(f"data.builder.source={corpus}/*.txt")
        if experiment == "tulu_mmlu_mini":
            fixture = tmp_path / "tulu.jsonl"
            fixture.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}) + "\n")
            overrides.append(f"data.builder.source={fixture}")
        text = json.dumps(run_identity(container(*overrides)))
        assert str(tmp_path) not in text and "cache_dir" not in text, text


def test_a_local_tokenizer_enters_by_its_files_content_not_its_cache(tmp_path, corpus, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = [*C4_LOCAL, "model=llama_250m_local", f"data.builder.source={corpus}/*.txt", f"model.tokenizer.files={corpus}/*.txt"]
    base = rid(*run, f"paths.cache_dir={tmp_path / 'a'}")
    assert rid(*run, f"paths.cache_dir={tmp_path / 'b'}") == base
    assert rid(*run, f"model.tokenizer.files=[{corpus}/b.txt,{corpus}/a.txt]") == base  # the same files, read sorted
    assert rid(*run, f"model.tokenizer.files={corpus}/a.txt") != base
    assert rid(*run, "model.tokenizer.vocab_size=32000") != base


def test_a_stored_config_naming_a_foreign_target_is_refused_without_importing_it():
    import sys

    from mora.builders import RefusedTarget

    config = container("experiment=uuid_mini")
    config["eval"]["metric"]["_target_"] = "mora_no_such_module_xyz.run"
    with pytest.raises(RefusedTarget, match="not one of this project's builders"):
        run_id(config)
    assert "mora_no_such_module_xyz" not in sys.modules


def test_the_digest_cache_is_used_while_the_stat_is_unchanged(tmp_path):
    from mora import fingerprint

    data = tmp_path / "big.txt"
    data.write_text("x" * 1000)
    cache = tmp_path / "cache"
    real = fingerprint.file_digest(data, cache)
    (entry,) = (cache / "fingerprints").glob("*.json")
    record = json.loads(entry.read_text())
    assert record["sha256"] == real and record["path"] == str(data.resolve())
    record["sha256"] = "f" * 64  # not what the bytes hash to: returned only if the cache is trusted
    entry.write_text(json.dumps(record))
    fingerprint._MEMO.clear()
    assert fingerprint.file_digest(data, cache) == "f" * 64
    data.touch()  # a new mtime: hashed again, the entry rewritten
    fingerprint._MEMO.clear()
    assert fingerprint.file_digest(data, cache) == real
    assert json.loads(entry.read_text())["sha256"] == real


def test_hub_data_enters_by_id_config_split_and_revision(tmp_path, monkeypatch):
    """The id takes the requested revision (known before loading); metrics.json records the commit it
    resolved to (here from a local hub cache, as offline runs find it)."""
    from huggingface_hub import constants

    from mora.data.corpus import CorpusTask
    from mora.data.registry import identity, provenance
    from mora.models import char_tokenizer

    node = {"_target_": "mora.data.build_task", "task": "c4", "source": "allenai/c4", "hub_config": "en",
            "streaming": True, "max_length": 512, "cache_dir": "/anywhere"}
    base = identity(node)
    assert base["source"] == {"hub": "allenai/c4"} and base["hub_config"] == "en" and "cache_dir" not in base
    assert identity({**node, "cache_dir": "/elsewhere"}) == base
    for change in ({"revision": "v2"}, {"hub_config": "realnewslike"}, {"split": "validation"}, {"source": "c4/other"}):
        assert identity({**node, **change}) != base, change

    commit = "0123456789abcdef0123456789abcdef01234567"
    refs = tmp_path / "hub" / "datasets--allenai--c4" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text(commit + "\n")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    task = CorpusTask(char_tokenizer(), "allenai/c4", 512, str(tmp_path / "cache"), hub_config="en", streaming=True)
    assert provenance(task) == {"hub": "allenai/c4", "config": "en", "split": "train", "revision": None, "commit": commit}
    pinned = CorpusTask(char_tokenizer(), "allenai/c4", 512, str(tmp_path / "cache"), revision="f" * 40)
    assert provenance(pinned)["commit"] == "f" * 40


def test_every_inert_key_is_explained_in_the_docs():
    docs = (ROOT / "docs" / "results_store.md").read_text()
    for key in [*ROOT_INERT, *(f"train.{k}" for k in TRAIN_INERT)]:
        assert f"`{key}`" in docs, key
