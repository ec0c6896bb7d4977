"""Speed switches change speed, not results: activation checkpointing and torch.compile give every
method the same loss curve and the same trained model as the plain run, restarts and the final merge
included; the run records which adapter path ran and how fast."""

import pytest
import torch
from safetensors.torch import load_file

import transformers.modeling_utils as modeling_utils
from mora import kernels
from mora.adapters import available_methods
from runner import RESTARTS, metrics_files, restarts, train_in_process

NO_EVAL = ["eval=none", "eval.metric=null"]


def method_args(method: str) -> list[str]:
    return [f"method={method}", "method.r=4", "train.lr=3e-3", *(RESTARTS if restarts(method) else [])]


def merged_weights(runs_dir) -> dict[str, torch.Tensor]:
    (metrics,) = metrics_files(runs_dir)
    return load_file(metrics.parent / "merged" / "model.safetensors")


def losses(metrics: dict) -> list[float]:
    return [loss for _, loss in metrics["train_loss"]]


@pytest.mark.parametrize("method", available_methods())
def test_activation_checkpointing_changes_nothing(tmp_path, monkeypatch, method):
    plain = train_in_process(tmp_path / "plain", *method_args(method), *NO_EVAL)
    recomputed = []
    checkpoint = modeling_utils.checkpoint

    def counting(function, *args, **kwargs):
        recomputed.append(1)
        return checkpoint(function, *args, **kwargs)

    monkeypatch.setattr(modeling_utils, "checkpoint", counting)  # a spy: the real function still runs
    saved = train_in_process(tmp_path / "ckpt", *method_args(method), *NO_EVAL, "train.gradient_checkpointing=true")
    assert len(recomputed) == 6 * 2  # every step, both decoder layers
    assert losses(saved) == pytest.approx(losses(plain), rel=1e-6)
    a, b = merged_weights(tmp_path / "plain"), merged_weights(tmp_path / "ckpt")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_run_records_paths_and_throughput(tmp_path):
    metrics = train_in_process(tmp_path, *method_args("mora"), *NO_EVAL)
    assert metrics["kernels"] == {"mora": {"reference": 6 * 2 * 7}}  # CPU: 6 steps x 2 layers x 7 projections
    speed = metrics["throughput"]
    assert speed["steps_timed"] == 5 and speed["seconds_per_step"] > 0
    assert speed["tokens_per_second"] == pytest.approx(8 * 74 / speed["seconds_per_step"], rel=0.2)


def test_compile_setting_is_checked_before_training(tmp_path):
    with pytest.raises(ValueError, match="train.compile must be true, false or a torch.compile backend"):
        train_in_process(tmp_path, *method_args("lora"), "train.compile=fast")
    assert not list(tmp_path.rglob("config.json"))


@pytest.mark.slow
@pytest.mark.parametrize("method", available_methods())
def test_compiled_blocks_change_nothing(tmp_path, method):
    """torch.compile's tracing and autograd (aot_eager: inductor's code generation is the GPU bench's
    business) over every method's fused path, through restarts and the final merge."""
    with kernels.fast_path("always"):
        eager = train_in_process(tmp_path / "eager", *method_args(method), *NO_EVAL)
        compiled = train_in_process(tmp_path / "compiled", *method_args(method), *NO_EVAL, "train.compile=aot_eager")
    assert losses(compiled) == pytest.approx(losses(eager), rel=1e-5)
    if method != "fft":
        assert set(compiled["kernels"][method]) == {"fused_traced"}, compiled["kernels"]
        assert set(eager["kernels"][method]) == {"fused"}
    a, b = merged_weights(tmp_path / "eager"), merged_weights(tmp_path / "compiled")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_training_runs_without_kv_cache_and_the_saved_model_keeps_it(tmp_path, monkeypatch):
    from transformers import AutoConfig, LlamaModel

    seen = []
    forward = LlamaModel.forward

    def spy(self, *args, **kwargs):  # the real forward runs; only what it was asked is noted
        seen.append((self.training, self.config.use_cache))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(LlamaModel, "forward", spy)
    train_in_process(tmp_path, *method_args("lora"), *NO_EVAL)
    assert seen and all(use_cache is False for training, use_cache in seen if training)
    (metrics,) = metrics_files(tmp_path)
    assert AutoConfig.from_pretrained(metrics.parent / "merged").use_cache is True
