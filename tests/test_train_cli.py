"""The training entry point run for real on the tiny model: every method end to end, golden losses,
the results store (skip finished runs), wandb offline, and bad configs that must fail before training."""

import json

import pytest
import torch

from mora.adapters import available_methods
from runner import RESTARTS, metrics_files, restarts, run_cli, train_in_process


@pytest.mark.parametrize("method", available_methods())
def test_every_method_trains_and_records(tmp_path, method):
    metrics = train_in_process(tmp_path, f"method={method}", *(RESTARTS if restarts(method) else []))
    assert metrics["status"] == "completed"
    assert [e["step"] for e in metrics["evals"]] == [3, 6]
    assert all(0.0 <= e["char_acc"] <= 100.0 for e in metrics["evals"])
    assert [s for s, _ in metrics["train_loss"]] == [1, 2, 3, 4, 5, 6]
    (path,) = metrics_files(tmp_path)
    run_dir = path.parent
    assert json.loads(path.read_text())["summary"]["method"] == method
    assert (run_dir / "config.json").is_file() and (run_dir / "train.log").is_file()
    assert (run_dir / "adapter").is_dir() == (metrics["budget"]["adapter_total"] > 0)
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(run_dir / "merged")
    assert all(type(m).__name__ != "LoRALayer" for m in merged.modules())


# Losses of the first 6 steps of `TINY_RUN method=mora method.r=4 train.lr=3e-3 seed=0`, recorded
# from this code on torch 2.13 CPU. A change in data, init, adapter maths or optimizer moves them.
GOLDEN_MORA = [5.0389, 4.8625, 4.698, 4.5597, 4.4496, 4.3619]


def test_golden_loss(tmp_path):
    metrics = train_in_process(tmp_path, "method=mora", "method.r=4", "train.lr=3e-3", "seed=0")
    losses = [loss for _, loss in metrics["train_loss"]]
    assert losses == pytest.approx(GOLDEN_MORA, abs=2e-3)
    assert losses[-1] < losses[0]


def test_finished_run_is_skipped(tmp_path, caplog):
    first = train_in_process(tmp_path, "method=lora")
    (path,) = metrics_files(tmp_path)
    stamp = path.stat().st_mtime_ns
    with caplog.at_level("INFO", logger="mora"):
        again = train_in_process(tmp_path, "method=lora")
    assert again == first
    assert path.stat().st_mtime_ns == stamp
    assert any("already finished" in r.getMessage() for r in caplog.records)
    # A non-semantic change (logging cadence) is the same run; a semantic one (lr) is a new run.
    train_in_process(tmp_path, "method=lora", "train.log_every=2")
    assert len(metrics_files(tmp_path)) == 1
    train_in_process(tmp_path, "method=lora", "train.lr=5e-4")
    assert len(metrics_files(tmp_path)) == 2


def test_a_run_without_wandb_or_deepspeed_prints_neither(tmp_path):
    """WANDB_MODE=offline (as make and CI set it) made transformers print "Running in WANDB offline mode",
    and accelerate's import of DeepSpeed "Setting accelerator to CPU", on runs that use neither; FFT's
    budget header named a rank it does not have."""
    noise = ("WANDB offline mode", "Setting accelerator to CPU")
    first = run_cli(tmp_path, "method=fft")  # WANDB_MODE=offline, as make and CI set it
    assert first.returncode == 0, first.stderr[-2000:]
    out = first.stdout + first.stderr
    assert "parameter budget: fft (no adapter layers)" in out and "at r=" not in out
    assert "run " in out and "finished" in out and not [n for n in noise if n in out], out[-3000:]
    skipped = run_cli(tmp_path, "method=fft")  # WANDB_MODE=offline, as make and CI set it
    out = skipped.stdout + skipped.stderr
    assert "already finished" in out and not [n for n in noise if n in out], out


def test_loraplus_groups_and_restart_schedule(tmp_path):
    from mora.training.optim import jagged_factor

    base = dict(schedule="constant", warmup=0, total=100, min_ratio=0.0)
    factors = [jagged_factor(s, restart_every=10, rewarm=4, **base) for s in range(8, 16)]
    assert factors == pytest.approx([1, 1, 0.25, 0.5, 0.75, 1, 1, 1])
    metrics = train_in_process(tmp_path, "method=loraplus", "method.lr_ratio=4")
    assert metrics["status"] == "completed"


def test_wandb_offline_run_holds_the_metrics(tmp_path):
    metrics = train_in_process(tmp_path, "method=lora", "logger=wandb")
    (path,) = metrics_files(tmp_path)
    runs = list((path.parent / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list(path.parent.rglob("*"))
    assert any(f.suffix == ".wandb" and f.stat().st_size > 0 for f in runs[0].iterdir())
    assert metrics["status"] == "completed"


@pytest.mark.parametrize(
    "override,message,status",
    [
        ("method=nope", "Available options in 'method'", 1),  # Hydra's own error
        ("method.r=0", "error: lora: r must be a positive integer, got 0; set method.r >= 1", 2),
        ("method.target_modules=[nope_proj]", "match no nn.Linear", 2),
        ("train.micro_batch_size=3", "not a multiple", 2),
        ("data.builder.task=wiki", "error: unknown data builder 'wiki'; choose one of", 2),  # raised inside a builder
        ("train.lrr=1e-3", "error: unknown config key train.lrr (did you mean train.lr?); nothing was run", 2),
        ("+train.lrr=1e-3", "error: unknown config key train.lrr (did you mean train.lr?); nothing was run", 2),
    ],
)
def test_bad_config_fails_before_training(tmp_path, override, message, status):
    """The CLI side of docs/reliability.md's bad-input table (tests/test_bad_run_input.py, in-process):
    a non-zero exit status, the message on stderr, no traceback for our own errors, an empty store."""
    result = run_cli(tmp_path / "runs", "method=lora", override)
    assert result.returncode == status, result.stderr[-2000:]
    assert message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("method", ["relora", "remora"])
def test_restarts_merge_and_reset_optimizer_state(tmp_path, caplog, method):
    with caplog.at_level("INFO", logger="mora"):
        metrics = train_in_process(tmp_path, f"method={method}", *RESTARTS)
    restarts = [r.getMessage() for r in caplog.records if r.getMessage().startswith("restart at step")]
    assert [m.split(":")[0] for m in restarts] == ["restart at step 2", "restart at step 4"]
    # every adapter layer merged, and two moment tensors (exp_avg, exp_avg_sq) per restart parameter reset
    layers = sum(metrics["budget"]["layers"].values())
    per_layer = {"relora": 2, "remora": 1}[method]
    assert all(f"merged {layers} adapter layers, reset {2 * per_layer * layers} optimizer tensors" in m for m in restarts)


def test_run_id_ignores_only_non_semantic_keys():
    from mora.runs import run_id
    from runner import TINY_RUN, compose
    from omegaconf import OmegaConf

    def rid(*overrides):
        return run_id(OmegaConf.to_container(compose([*TINY_RUN, *overrides]), resolve=True))

    base = rid()
    for same in ["paths.runs_dir=/elsewhere", "logger=wandb", "threads=1", "train.save_every=2",
                 "train.progress_bar=true", "eval.metric.batch_size=4", "train.keep_checkpoints=true"]:
        assert rid(same) == base, same
    for different in ["seed=1", "train.lr=0.5", "method.r=2", "data.builder.n_pairs=9", "eval.steps=[2]"]:
        assert rid(different) != base, different
