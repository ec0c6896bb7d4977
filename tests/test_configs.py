"""Every config in conf/ composes, and every experiment builds its objects on the tiny model."""

import dataclasses
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mora.adapters import apply_adapters, available_methods, config_from_dict, method_defaults
from mora.adapters.config import config_class, option_names
from mora.builders import build
from mora.schema import check_config, set_or_add_overrides
from runner import ROOT, compose

GROUPS = ["model", "method", "data", "train", "eval", "logger", "experiment"]
OFFLINE_MODELS = {"tiny_llama"}  # the others download from the hub (or need an optional extra)


def options(group: str) -> list[str]:
    """The options a user picks (`_base` and other `_` files are pieces the options include)."""
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml") if not p.stem.startswith("_"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS + ["benchmark"] for o in options(g)])
def test_every_option_composes(group, option):
    cfg = compose([f"{group}={option}"])
    assert OmegaConf.to_container(cfg, resolve=True)
    assert cfg.model.name and cfg.method.method and cfg.data.name
    check_config(cfg)  # every key conf/ sets is one the code reads (mora.schema)


def test_schema_comes_from_the_defaults_and_the_builders_signatures():
    # hub_tokenizer and pretrained take **kwargs (passed on to from_pretrained): any key is theirs
    check_config(compose(["model=llama2_7b", "+model.tokenizer.revision=main", "+model.network.attn_implementation=eager"]))
    with pytest.raises(ValueError, match=r"model.network.nam_or_path \(did you mean model.network.name_or_path\?\)"):
        check_config(compose(["model=llama2_7b", "+model.network.nam_or_path=x"]))
    # llama_from_config has no **kwargs: a key it does not take is refused
    with pytest.raises(ValueError, match=r"model.network.hidden \(did you mean model.network.hidden_size\?\)"):
        check_config(compose(["+model.network.hidden=8"]))
    # train.deepspeed's default is null, not a mapping: its content is DeepSpeed's to check
    check_config(compose(["train/deepspeed=zero2", "+train.deepspeed.zero_optimization.round_robin_gradients=true"]))
    # the mapping under a benchmark suite is validated by the suite itself (mora.evaluation.harness)
    check_config(compose(["benchmark=mmlu_dev", "+benchmark.suites.extra={tasks: [mmlu_dev]}"]))
    # a node that must be built needs its _target_
    with pytest.raises(ValueError, match=r"eval.metric has no _target_"):
        check_config(compose(["eval=none", "+eval.metric={batch_size: 4}"]))


def test_cli_overrides_reach_the_schema_as_set_or_add():
    argv = ["mora.train", "train.lrr=1e-3", "method=mora", "method.r=8", "+train.x=1", "~eval.metric", "-m",
            "hydra.run.dir=.", "train/deepspeed=zero2", "seed=3", "model.network.hidden_size=8,16"]
    assert set_or_add_overrides(argv) == [
        "mora.train", "++train.lrr=1e-3", "method=mora", "++method.r=8", "+train.x=1", "~eval.metric", "-m",
        "hydra.run.dir=.", "train/deepspeed=zero2", "seed=3", "++model.network.hidden_size=8,16"]


def test_every_registered_method_has_its_yaml_and_every_yaml_a_method():
    assert options("method") == available_methods()


@pytest.mark.parametrize("method", available_methods())
def test_every_method_config_is_valid_and_built_like_the_others(method):
    """A method node is built as model, data and eval nodes are (its `_target_`, mora.builders.build),
    and the options its YAML holds are every option of its dataclass: the defaults live there only."""
    cfg = compose([f"method={method}"])
    config = build(cfg, "method")
    assert config.method == method and config == config_from_dict(OmegaConf.to_container(cfg.method, resolve=True))
    assert set(cfg.method) - {"_target_"} == option_names(method)
    assert set(method_defaults(method)) == option_names(method) - {"method"}
    assert not [f.name for f in dataclasses.fields(config_class(method)) if f.default is not dataclasses.MISSING]


def test_python_callers_get_the_yaml_defaults():
    """`make_config("lora", 8)` and a partial dict (an old run's stored config) are filled from the YAML."""
    from mora.adapters import make_config

    lora = make_config("lora", 8)
    assert (lora.alpha, lora.init, lora.dropout) == (16, "kaiming", 0.0)
    assert make_config("asylora", 8).init == "orthogonal"  # its YAML overrides the LoRA default it extends
    assert config_from_dict({"method": "fft", "r": 8}).target_modules == tuple(method_defaults("lora")["target_modules"])


# The paper-task experiments are built and trained on the tiny model in tests/test_data_experiments.py.
@pytest.mark.parametrize("experiment", [e for e in options("experiment") if e.startswith("uuid")])
def test_every_experiment_instantiates_on_the_tiny_model(experiment):
    cfg = compose([f"experiment={experiment}", "model=tiny_llama", "method=mora", "data.builder.n_pairs=16"])
    assert cfg.experiment_name == experiment
    tokenizer = instantiate(cfg.model.tokenizer)
    task = instantiate(cfg.data.builder, tokenizer=tokenizer)
    rows = task.train_dataset()
    assert len(rows) == 16 and all(len(r["input_ids"]) == len(r["labels"]) for r in rows)
    evaluator = instantiate(cfg.eval.metric)
    model = instantiate(cfg.model.network, tokenizer=tokenizer)
    report = apply_adapters(model, OmegaConf.to_container(cfg.method, resolve=True))
    assert report.adapter_total > 0
    assert 0.0 <= evaluator(model, tokenizer, task)["char_acc"] <= 100.0


def test_experiment_files_only_override():
    for path in (ROOT / "conf" / "experiment").glob("*.yaml"):
        text = path.read_text()
        assert text.lstrip().startswith("# @package _global_"), path
        defaults = OmegaConf.load(path).get("defaults", [])
        for entry in defaults:
            assert isinstance(entry, (dict, type(OmegaConf.create({})))) and all(
                str(k).startswith("override ") for k in entry
            ), f"{path.name}: defaults entries must be overrides, got {entry}"


def test_paper_scale_experiment_matches_the_paper():
    cfg = compose(["experiment=uuid_memorization"])
    assert cfg.model.network.name_or_path == "meta-llama/Llama-2-7b-hf"
    assert cfg.data.builder.n_pairs == 10000
    assert cfg.train.batch_size == 1000 and cfg.train.max_steps == 1000
    assert list(cfg.eval.steps) == [300, 500, 700, 900]
    assert Path(ROOT / "conf" / "config.yaml").is_file()
