"""DeepSpeed on CPU (gloo, OMP_NUM_THREADS=1): one Hydra command line from 1 process to N.

Fast: launcher arguments never reach Hydra; a DeepSpeed config that contradicts the Hydra config fails
before anything is recorded. Slow (`make test-deepspeed`, 2 processes each):
- restarts under ZeRO-2 / ZeRO-2 offload / ZeRO-3 reach DeepSpeed's fp32 master weights and moments;
- LoRA+ (LoRA's layer with its B group at lambda x lr), MoRA and ReMoRA (two merges in 6 steps): one
  plain process at micro-batch 8 and 2 processes x micro-batch 4 under ZeRO-2 give the same loss curve,
  evaluations and merged model;
- ZeRO-3 (launched with the `deepspeed` launcher) ends with the same merged model as ZeRO-2.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from runner import ROOT, TINY_RUN, deepspeed_cpu_env, metrics_files, train_in_process

pytest.importorskip("deepspeed")

# Every method of the comparison at a learning rate where a lost LoRA+ group, a default HF schedule
# or a stale master weight moves the loss by > 1e-3 (measured: 3e-3 to 3e-2).
METHODS = {
    "loraplus": ["method=loraplus", "method.lr_ratio=4"],
    "mora": ["method=mora", "method.kind=sharing"],
    "remora": ["method=remora", "method.merge_every=2", "method.rewarm_steps=2"],
}
LOSS_TOL = 1e-4  # measured agreement: ~1e-6
WEIGHT_TOL = 1e-4  # max |a - b| / max |b| per tensor of the merged model; measured ~5e-6


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=ROOT, env=deepspeed_cpu_env(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-5000:])
    return result


def torchrun(*args: str) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args])


def deepspeed_launcher(*args: str) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus=2", f"--master_port={_free_port()}"]
    return _run([*launcher, *args])


def _cli(runs_dir: Path, overrides: list[str]) -> list[str]:
    return ["-m", "mora.train", *TINY_RUN, f"paths.runs_dir={runs_dir}", *overrides]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shm_op):
    """Runs shared by the slow tests, each trained once: runs(kind, method) -> its run directory."""
    root = tmp_path_factory.mktemp("ds")
    done: dict[tuple[str, str], Path] = {}

    def get(kind: str, method: str) -> Path:
        if (kind, method) not in done:
            runs_dir = root / f"{kind}-{method}"
            overrides = METHODS[method]
            if kind == "plain":
                train_in_process(runs_dir, "train.micro_batch_size=8", *overrides)
            elif kind == "zero2":
                torchrun(*_cli(runs_dir, ["train.micro_batch_size=4", "train/deepspeed=zero2", *overrides]))
            else:  # the deepspeed launcher appends --local_rank=N before the overrides
                cli = _cli(runs_dir, ["train.micro_batch_size=4", "train/deepspeed=zero3", *overrides])
                deepspeed_launcher("--module", *cli[1:])
            (path,) = metrics_files(runs_dir)
            done[(kind, method)] = path.parent
        return done[(kind, method)]

    return get


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def _merged(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "merged" / "model.safetensors"))


def _assert_same_run(a: Path, b: Path) -> None:
    ma, mb = _metrics(a), _metrics(b)
    assert ma["status"] == mb["status"] == "completed"
    assert [s for s, _ in ma["train_loss"]] == [s for s, _ in mb["train_loss"]] == [1, 2, 3, 4, 5, 6]
    assert [l for _, l in mb["train_loss"]] == pytest.approx([l for _, l in ma["train_loss"]], abs=LOSS_TOL)
    assert [e["step"] for e in ma["evals"]] == [e["step"] for e in mb["evals"]] == [3, 6]
    assert [e["char_acc"] for e in mb["evals"]] == pytest.approx([e["char_acc"] for e in ma["evals"]], abs=1e-6)
    wa, wb = _merged(a), _merged(b)
    assert wa.keys() == wb.keys()
    for key, ref in wa.items():
        assert wb[key].dtype == ref.dtype, key
        scale = ref.abs().max().clamp_min(1e-12)
        assert ((wb[key] - ref).abs().max() / scale).item() < WEIGHT_TOL, key


# -- fast ------------------------------------------------------------------------------------------


def test_launcher_arguments_are_not_hydra_overrides(monkeypatch):
    from mora.training.distributed import strip_launcher_args

    monkeypatch.setenv("LOCAL_RANK", "")  # recorded, so the teardown restores the variable's absence
    monkeypatch.delenv("LOCAL_RANK")
    argv = ["mora.train", "--local_rank=1", "method=mora", "--local-rank", "1", "train.lr=0.1"]
    assert strip_launcher_args(argv) == ["mora.train", "method=mora", "train.lr=0.1"]
    assert os.environ["LOCAL_RANK"] == "1"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.deepspeed.train_micro_batch_size_per_gpu=2"], "train_micro_batch_size_per_gpu=2 contradicts train.micro_batch_size=8"),
        (["train.deepspeed.train_batch_size=16"], "train_batch_size=16 contradicts train.batch_size=8"),
        (["train.deepspeed.gradient_accumulation_steps=4"], "gradient_accumulation_steps=4 contradicts train.batch_size=8"),
        (["train.deepspeed.bf16.enabled=true"], "bf16.enabled=True contradicts train.precision=fp32"),
        (["+train.deepspeed.optimizer.type=AdamW"], "train.deepspeed.optimizer would replace the run's own optimizer"),
    ],
)
def test_deepspeed_config_contradicting_hydra_fails_before_training(tmp_path, overrides, message):
    with pytest.raises(ValueError) as info:
        train_in_process(tmp_path, "method=lora", "train/deepspeed=zero2", *overrides)
    assert message in str(info.value)
    assert "Set those DeepSpeed keys to auto" in str(info.value) or "remove it and set train.lr" in str(info.value)
    assert not any(tmp_path.rglob("*")), "a rejected config left files in the results store"


def test_deepspeed_configs_compose():
    from runner import compose

    for name, stage in (("zero2", 2), ("zero3", 3), ("zero2_offload", 2)):
        ds = compose([*TINY_RUN, f"train/deepspeed={name}"]).train.deepspeed
        assert ds.zero_optimization.stage == stage
        assert ds.train_micro_batch_size_per_gpu == ds.train_batch_size == ds.gradient_accumulation_steps == "auto"
        assert "optimizer" not in ds and "scheduler" not in ds
    assert compose(TINY_RUN).train.deepspeed is None


# -- slow: several processes -----------------------------------------------------------------------


@pytest.mark.slow
def test_sharded_restart_reaches_master_weights_and_moments(shm_op):
    result = torchrun(str(ROOT / "tests" / "ds_restart_worker.py"))
    for what in ("ZeRO-2", "ZeRO-2 offload", "ZeRO-3"):
        assert result.stdout.count(f"{what} restart checks passed") == 2, result.stdout[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_zero2_two_processes_match_one_process(runs, method):
    _assert_same_run(runs("plain", method), runs("zero2", method))


@pytest.mark.slow
def test_zero3_merged_model_equals_zero2(runs):
    _assert_same_run(runs("zero2", "remora"), runs("zero3", "remora"))


class _Payload:
    """A pickle that makes a directory when loaded."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return os.makedirs, (self.path,)


@pytest.mark.slow
def test_zero2_resume_loads_its_shards_weights_only_and_refuses_a_crafted_one(runs, tmp_path):
    """DeepSpeed loads its shards with weights_only=False; mora.train forces weights-only loading (with
    DeepSpeed's three plain state classes allowed): a ZeRO-2 run resumed from checkpoint-3 ends as the
    undisturbed one, and a crafted shard stops the relaunch before anything in it runs."""
    runs_dir = tmp_path / "runs"
    cli = _cli(runs_dir, ["train.micro_batch_size=4", "train/deepspeed=zero2", *METHODS["mora"], "train.keep_checkpoints=true"])
    torchrun(*cli)
    (metrics_path,) = metrics_files(runs_dir)
    run = metrics_path.parent
    shutil.rmtree(run / "checkpoints" / "checkpoint-6")  # as if it stopped after step 3
    shutil.rmtree(run / "merged")
    metrics = _metrics(run)
    metrics.update(status="interrupted", evals=[e for e in metrics["evals"] if e["step"] <= 3])
    (metrics_path).write_text(json.dumps(metrics))

    shard = run / "checkpoints" / "checkpoint-3" / "global_step3" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    good = shard.read_bytes()
    marker = tmp_path / "ran"
    torch.save({"optimizer_state_dict": _Payload(marker)}, shard)
    refused = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *cli],
                             cwd=ROOT, env=deepspeed_cpu_env(), capture_output=True, text=True, timeout=900)
    assert refused.returncode != 0
    assert "global_step3/zero_pp_rank_0_mp_rank_00_optim_states.pt would call os.makedirs" in refused.stderr, refused.stderr[-3000:]
    assert not marker.exists()

    shard.write_bytes(good)
    resumed = torchrun(*cli)
    assert "resuming from checkpoint-3" in resumed.stdout + resumed.stderr
    _assert_same_run(runs("zero2", "mora"), run)
