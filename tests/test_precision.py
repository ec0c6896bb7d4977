"""The precision policy (docs/precision.md): trainable tensors are fp32 whatever the base's dtype, so
every AdamW step at the paper's smallest learning rates moves every trainable tensor; a configuration
that would update bf16 weights with no fp32 copy fails before training; a bf16-base run follows the
fp32 run of the same model."""

import pytest
import torch
from omegaconf import OmegaConf

from mora.adapters import apply_adapters, available_methods
from mora.models import torch_dtype
from mora.training.optim import build_optimizer
from mora.training.precision import check_trainable_precision, deepspeed_keeps_fp32_master
from runner import compose, metrics_files, run_cli, train_in_process

PAPER_EXPERIMENTS = [
    "uuid_memorization",
    "tulu_mmlu",
    "metamath_gsm8k",
    "biomed_cpt",
    "finance_cpt",
    "c4_pretrain_250m",
    "c4_pretrain_1b",
]
# The smallest learning rate Table 5 gives each family (FFT 2e-5 on Tulu / MetaMath, MoRA r 256 3e-5);
# pretraining from scratch uses 5e-4 throughout. The smallest is where bf16 weights lose most steps.
FINE_TUNING_LR = {"fft": 2e-5}
ADAPTER_LR = 3e-5
PRETRAINING_LR = 5e-4
STEPS = 5


def paper_setting(experiment: str) -> tuple[torch.dtype, str, list[str], float]:
    cfg = compose([f"experiment={experiment}"])
    dtype = torch_dtype(cfg.model.network.get("dtype", "float32"))
    trainable = list(OmegaConf.to_container(cfg.method)["trainable_modules"])
    return dtype, cfg.train.precision, trainable, float(cfg.train.lr)


def method_options(method: str, trainable: list[str]) -> dict:
    options = {"method": method, "r": 4, "trainable_modules": trainable}
    if method in ("relora", "remora"):
        options.update(merge_every=1000)  # no restart inside these steps
    return options


def changed_fraction(before: dict, model) -> dict[str, float]:
    return {
        name: (param.detach() != before[name]).float().mean().item()
        for name, param in model.named_parameters()
        if param.requires_grad
    }


def adamw_steps(model, lr: float, precision: str, steps: int = STEPS) -> dict[str, float]:
    train_cfg = OmegaConf.create(
        {"optimizer": "adamw", "lr": lr, "weight_decay": 0.0, "adam_betas": [0.9, 0.999], "adam_eps": 1e-8}
    )
    optimizer = build_optimizer(model, train_cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    # every token of the vocabulary at a position that predicts a next token, so every embedding row
    # gets a gradient (the last position has no label)
    order = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    ids = torch.cat([(order % model.config.vocab_size).view(4, 16), torch.zeros(4, 1, dtype=torch.long)], dim=1)
    model.train()
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return changed_fraction(before, model)


@pytest.mark.parametrize("experiment", PAPER_EXPERIMENTS)
@pytest.mark.parametrize("method", available_methods())
def test_every_trainable_tensor_moves_at_the_papers_precision_and_lr(make_tiny_llama, experiment, method):
    dtype, precision, trainable, lr = paper_setting(experiment)
    if not experiment.startswith("c4_"):
        lr = FINE_TUNING_LR.get(method, ADAPTER_LR)
    model = make_tiny_llama().to(dtype)
    apply_adapters(model, method_options(method, trainable))
    if any(p.requires_grad and p.dtype == torch.bfloat16 for p in model.parameters()):
        # FFT on the paper's bf16 checkpoint: refused, with the fix named; the fix is an fp32 model.
        with pytest.raises(ValueError, match="model.network.dtype=float32"):
            check_trainable_precision(model, precision)
        model.float()
    check_trainable_precision(model, precision)
    moved = adamw_steps(model, lr, precision)
    assert moved and all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    stuck = {name: round(f, 3) for name, f in moved.items() if f < 0.99}
    assert not stuck, f"{method} in {experiment}'s setting (lr {lr}): entries that never moved: {stuck}"


def test_bf16_weights_would_lose_these_steps(make_tiny_llama):
    """The control: the same steps on bf16 trainable weights leave most entries unchanged."""
    model = make_tiny_llama().to(torch.bfloat16)
    apply_adapters(model, {"method": "fft"})
    moved = adamw_steps(model, FINE_TUNING_LR["fft"], "bf16")
    big = {n: f for n, f in moved.items() if n.endswith("proj.weight")}
    assert big and max(big.values()) < 0.5


def test_deepspeed_bf16_counts_as_an_fp32_master(make_tiny_llama):
    model = make_tiny_llama().to(torch.bfloat16)
    apply_adapters(model, {"method": "fft"})
    for config, precision in (({"bf16": {"enabled": True}}, "fp32"), ({"bf16": {"enabled": "auto"}}, "bf16")):
        assert deepspeed_keeps_fp32_master(config, precision)
        check_trainable_precision(model, precision, config)
    assert not deepspeed_keeps_fp32_master({"bf16": {"enabled": "auto"}}, "fp32")
    with pytest.raises(ValueError, match="no fp32 master copy"):
        check_trainable_precision(model, "fp32", {"bf16": {"enabled": "auto"}})


def test_fft_on_a_bf16_base_fails_before_training(tmp_path):
    result = run_cli(tmp_path, "method=fft", "model.network.dtype=bfloat16", "train.precision=bf16")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "model.network.dtype=float32" in result.stderr and "docs/precision.md" in result.stderr
    assert not metrics_files(tmp_path) and not list(tmp_path.rglob("config.json"))


# Largest relative gap allowed between the bf16-base (autocast) and fp32 loss curves over TINY_RUN's 6
# steps, in which the loss falls by ~14 %. Measured on torch 2.13 CPU: lora 0.009 %, dora 0.023 %,
# mora 0.014 %, remora 0.13 % (two merges into the bf16 base); the bound is ~4x the largest.
LOSS_TOLERANCE = 0.005


@pytest.mark.parametrize("method", ["lora", "dora", "mora", "remora"])
def test_bf16_base_run_follows_the_fp32_run(tmp_path, method):
    extra = ["method.merge_every=2", "method.rewarm_steps=1"] if method == "remora" else []
    common = [f"method={method}", "method.r=4", "train.lr=3e-3", *extra]
    wide = train_in_process(tmp_path / "fp32", *common)
    narrow = train_in_process(tmp_path / "bf16", *common, "model.network.dtype=bfloat16", "train.precision=bf16")
    a = [loss for _, loss in wide["train_loss"]]
    b = [loss for _, loss in narrow["train_loss"]]
    assert len(a) == len(b) == 6 and a[-1] < a[0] - 0.1
    gaps = [abs(x - y) / x for x, y in zip(a, b)]
    assert max(gaps) < LOSS_TOLERANCE, (a, b)


def _fft_cells():
    """(spec, section, experiment, row overrides) for every FFT row of every artifact spec."""
    import yaml

    from runner import ROOT

    for spec in sorted((ROOT / "experiments").glob("*.yaml")):
        for name, section in yaml.safe_load(spec.read_text()).items():
            if not isinstance(section, dict) or "rows" not in section:
                continue
            experiments = [section["experiment"]] if "experiment" in section else []
            experiments += [g["experiment"] for g in (section.get("groups") or {}).values()]
            for row in section["rows"]:
                if "method=fft" in row.get("overrides", []):
                    for experiment in experiments:
                        yield spec.stem, name, experiment, row["overrides"]


@pytest.mark.parametrize("spec,section,experiment,overrides", list(_fft_cells()))
def test_every_fft_cell_of_the_specs_trains_fp32_weights(spec, section, experiment, overrides):
    """A spec's FFT row on a bf16 checkpoint (LLaMA-2 7B) must load it in fp32 (or use DeepSpeed bf16):
    otherwise the run would be refused at launch time, not when the grid is planned."""
    cfg = compose([f"experiment={experiment}", *overrides])
    dtype = cfg.model.network.get("dtype", "float32")
    ds = OmegaConf.to_container(cfg.train.deepspeed) if cfg.train.deepspeed else None
    assert dtype in ("float32", "float64") or deepspeed_keeps_fp32_master(ds, cfg.train.precision), (
        f"{spec}.yaml {section}: FFT on {experiment} trains {dtype} weights with no fp32 master"
    )
