"""A results store is data, never code (docs/reliability.md, "Security").

A colleague with write access to a shared store edits a finished run's `config.json`, a grid manifest,
an experiment spec or a checkpoint's pickles so that rebuilding the run would call a function of their
choosing (here one that writes a file). Every path that reads them refuses before anything is called,
naming the run (or file), the key and the target: mora.evaluate, the spectrum benchmark, a relaunch or
resume, mora.launch / mora.report, the manifest sweeper and slurm/array.sbatch. Each payload is first
shown to work when handed to Hydra or torch directly, so a refusal is what keeps the file unwritten.
"""

from __future__ import annotations

import json
import os
import pickle
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from mora.builders import BUILDERS, RefusedTarget, build, check_overrides, check_targets
from runner import ROOT, TINY_RUN, compose, metrics_files, run_cli, train_in_process

RUN = ["method=lora", "method.r=4"]
GROUPS = ["model.tokenizer", "model.network", "data.builder", "eval.metric"]


def _copy_file(src: Path, dst: Path) -> dict:
    """The standard library: shutil.copy(src, dst)."""
    return {"_target_": "shutil.copy", "_args_": [str(src), str(dst)]}


def _numpy_savetxt(src: Path, dst: Path) -> dict:
    """A third-party package: numpy.savetxt(dst, [1, 2])."""
    return {"_target_": "numpy.savetxt", "_args_": [str(dst), [1, 2]]}


PAYLOADS = {"shutil.copy": _copy_file, "numpy.savetxt": _numpy_savetxt}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """One finished tiny LoRA run (no spectrum snapshot, so the spectrum benchmark rebuilds the base)."""
    store = tmp_path_factory.mktemp("store")
    train_in_process(store, *RUN)
    (path,) = metrics_files(store)
    return path.parent


@pytest.fixture
def secret(tmp_path) -> tuple[Path, Path]:
    src, dst = tmp_path / "secret.txt", tmp_path / "stolen.txt"
    src.write_text("not for the store\n")
    return src, dst


def _tampered_copy(run: Path, store: Path, key: str, node) -> Path:
    """The finished run copied into `store` (same experiment/run id), its config.json's `key` replaced."""
    copy = store / run.parent.name / run.name
    shutil.copytree(run, copy)
    config = json.loads((copy / "config.json").read_text())
    *parents, last = key.split(".")
    at = config
    for name in parents:
        at = at[name]
    at[last] = node
    (copy / "config.json").write_text(json.dumps(config))
    return copy


@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_each_payload_writes_its_file_when_hydra_builds_it(secret, payload):
    """The control: Hydra's own instantiate runs these targets (its blocklist lets them through)."""
    src, dst = secret
    instantiate(PAYLOADS[payload](src, dst))
    assert dst.is_file()


@pytest.mark.parametrize("payload", list(PAYLOADS))
@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("reader", ["evaluate", "spectrum", "relaunch"])
def test_a_foreign_target_in_a_stored_config_is_refused_and_nothing_runs(tmp_path, finished_run, secret, reader, group,
                                                                         payload):
    from mora.evaluate import evaluate

    src, dst = secret
    store = tmp_path / "runs"
    run = _tampered_copy(finished_run, store, group, PAYLOADS[payload](src, dst))
    message = rf"^run {run}: {group}._target_='{payload}' is not one of this project's builders .*nothing was called$"
    with pytest.raises(RefusedTarget, match=message):
        if reader == "evaluate":  # scoring the finished run, found by its overrides
            evaluate(compose([*TINY_RUN, f"paths.runs_dir={store}", *RUN, "benchmark=mmlu_dev", "benchmark.limit=2"]))
        elif reader == "spectrum":
            evaluate(compose([*TINY_RUN, *RUN, "benchmark=spectrum", f"benchmark.run_dir={run}"]))
        else:
            train_in_process(store, *RUN)
    assert not dst.exists() and not Path(f"{dst}.npy").exists()
    assert json.loads((run / "metrics.json").read_text()) == json.loads((finished_run / "metrics.json").read_text())


def test_the_issue_scenario_on_the_command_line(tmp_path, finished_run, secret):
    """`python -m mora.evaluate benchmark=spectrum benchmark.run_dir=<run>` with model.tokenizer replaced
    by shutil.copy: one line, exit status 2, the file not copied."""
    src, dst = secret
    run = _tampered_copy(finished_run, tmp_path / "runs", "model.tokenizer", _copy_file(src, dst))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "mora.evaluate", "benchmark=spectrum", f"benchmark.run_dir={run}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: run {run}: model.tokenizer._target_='shutil.copy' is not one of this project's builders "
        "(mora/builders.py); refused, nothing was called")
    assert not dst.exists()


def test_a_foreign_target_nested_in_a_builder_argument_is_refused(tmp_path, finished_run, secret):
    from mora.evaluate import initial_weights

    src, dst = secret
    run = _tampered_copy(finished_run, tmp_path / "runs", "data.builder.n_pairs", _copy_file(src, dst))
    with pytest.raises(RefusedTarget, match=rf"run {run}: data.builder.n_pairs._target_='shutil.copy'"):
        initial_weights(run, json.loads((run / "config.json").read_text()))
    assert not dst.exists()


def test_normal_runs_still_rebuild_evaluate_and_relaunch(finished_run):
    """The untouched run: its base rebuilds through the registered builders, and a relaunch skips it."""
    from mora.evaluate import rebuild_base

    model, tokenizer = rebuild_base(json.loads((finished_run / "config.json").read_text()))
    assert type(model).__name__ == "LlamaForCausalLM" and len(tokenizer) > 90
    again = train_in_process(finished_run.parent.parent, *RUN)
    assert again["status"] == "completed"


# --- the rule itself ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "node,refused",
    [
        ({"_target_": "shutil.copy", "_args_": ["a", "b"]}, "x._target_='shutil.copy'"),
        # a prefix rule would take these: Hydra resolves them to shutil.copy and a private helper
        ({"_target_": "mora.train.shutil.copy", "_args_": ["a", "b"]}, "x._target_='mora.train.shutil.copy'"),
        ({"_target_": "mora.models._resolve", "_args_": ["a"]}, "x._target_='mora.models._resolve'"),
        ({"_target_": "mora.models.char_tokenizer", "alphabet": {"_target_": "os.getcwd"}}, "x.alphabet._target_='os.getcwd'"),
        ({"_target_": "mora.models.char_tokenizer", "_args_": [{"_target_": "os.getcwd"}]}, r"x._args_\[0\]._target_='os.getcwd'"),
        ({"_target_": "mora.models.char_tokenizer", "_partial_": True}, "x._partial_ asks for a callable"),
        ({"_target_": ["shutil.copy"]}, r"x._target_=\['shutil.copy'\]"),
    ],
)
def test_build_refuses_anything_but_registered_builders_before_any_call(monkeypatch, node, refused):
    called = []
    monkeypatch.setattr("hydra._internal.instantiate._instantiate2._call_target", lambda *a, **k: called.append(a))
    with pytest.raises(RefusedTarget, match=rf"^somewhere: {refused}"):
        build({"x": node}, "x", "somewhere")
    assert not called


def test_the_prefix_trick_really_reaches_the_standard_library():
    """Why BUILDERS lists names instead of accepting `mora.*`: Hydra follows attributes through modules."""
    from hydra._internal.utils import _locate

    assert _locate("mora.train.shutil.copy") is shutil.copy


def test_build_keeps_a_builders_own_value_error():
    cfg = compose([*TINY_RUN, "data.builder.task=wiki"])
    with pytest.raises(ValueError, match="unknown data builder 'wiki'") as info:
        build(cfg, "data.builder", tokenizer=build(cfg, "model.tokenizer"))
    assert type(info.value) is ValueError


def test_every_target_in_conf_is_registered_and_every_builder_is_a_public_callable_of_this_project():
    import yaml
    from hydra._internal.utils import _locate

    def targets(node):
        if isinstance(node, dict):
            yield from ([node["_target_"]] if "_target_" in node else [])
            for value in node.values():
                yield from targets(value)
        elif isinstance(node, list):
            for value in node:
                yield from targets(value)

    used = {t for path in (ROOT / "conf").rglob("*.yaml") for t in targets(yaml.safe_load(path.read_text()))}
    assert used == set(BUILDERS)
    for name in BUILDERS:
        assert not any(part.startswith("_") for part in name.split(".")), name
        target = _locate(name)
        assert callable(target) and target.__module__.startswith("mora."), name


def test_registered_model_builders_run_no_code_shipped_with_a_model(tmp_path):
    from mora.models import char_tokenizer, hub_tokenizer, pretrained

    for call in (lambda: hub_tokenizer(str(tmp_path), trust_remote_code=True),
                 lambda: pretrained(char_tokenizer(), str(tmp_path), trust_remote_code=True)):
        with pytest.raises(ValueError, match="trust_remote_code: mora-bench runs no code shipped with a model"):
            call()


def test_a_stored_model_that_ships_code_is_loaded_without_running_it(tmp_path, finished_run, secret):
    """merged/config.json pointing at a modeling file of its own (auto_map): never imported."""
    from mora.evaluate import load_model

    src, dst = secret
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "merged" / "modeling_evil.py").write_text(f"import shutil\nshutil.copy({str(src)!r}, {str(dst)!r})\n")
    config = json.loads((run / "merged" / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.Evil", "AutoConfig": "modeling_evil.EvilConfig"}
    (run / "merged" / "config.json").write_text(json.dumps(config))
    try:
        load_model(run, json.loads((run / "config.json").read_text()), "merged")
    except ValueError as exc:
        assert "trust_remote_code" in str(exc)
    assert not dst.exists()


# --- overrides: specs, manifests, the sbatch array -------------------------------------------------


@pytest.mark.parametrize(
    "override,refused",
    [
        ("model.tokenizer._target_=shutil.copy", "model.tokenizer._target_='shutil.copy'"),
        ("model.tokenizer={_target_:numpy.savetxt,_args_:[x,[1]]}", "model.tokenizer._target_='numpy.savetxt'"),
        ("+data.builder.extra._target_=shutil.copy", "data.builder.extra._target_='shutil.copy'"),
        ("eval.metric._partial_=true", "eval.metric._partial_ asks for a callable"),
        ("+hydra.callbacks.x._target_=shutil.copy", "changes Hydra's own config"),
        ("hydra.job_logging.handlers.console.class=shutil.copy", "changes Hydra's own config"),
        ("hydra/launcher=basic", "changes Hydra's own config"),
    ],
)
def test_overrides_are_values_never_callables(override, refused):
    with pytest.raises(RefusedTarget, match=rf"^spec.yaml / row: .*{refused}"):
        check_overrides(["method=lora", override], "spec.yaml / row")
    check_overrides(["method=lora", "model.tokenizer._target_=mora.models.char_tokenizer", "data.builder.n_pairs=8"],
                    "fine")


SPEC = """\
artifact: tinygrid
kind: table
metric: char_acc
mini:
  experiment: uuid_mini
  columns: [3]
  rows:
    - {{label: LoRA, overrides: [method=lora, "{override}"], lr_grid: [1e-2]}}
"""


@pytest.mark.parametrize("override", ["model.tokenizer._target_=shutil.copy", "+hydra.callbacks.x._target_=shutil.copy"])
def test_launch_and_report_refuse_a_spec_that_names_a_callable(tmp_path, capsys, override):
    from mora import launch, report

    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(override=override))
    store = tmp_path / "runs"
    assert launch.main([str(spec), "--section", "mini", "--runs-dir", str(store), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"error: {spec}: mini / LoRA" in err and ("shutil.copy" in err or "Hydra's own config" in err), err
    assert not store.exists()
    (tmp_path / "other").mkdir()
    with pytest.raises(RefusedTarget, match="LoRA"):
        report.render(spec, tmp_path / "other", tmp_path / "out", wandb_log=False)
    assert not (tmp_path / "out").exists()


def test_the_manifest_sweeper_refuses_a_manifest_with_a_foreign_line(tmp_path):
    from hydra_plugins.mora_manifest_sweeper import read_manifest

    (tmp_path / "m.txt").write_text("method=lora seed=0\nmethod=lora model.tokenizer._target_=shutil.copy\n")
    with pytest.raises(RefusedTarget, match=rf"^{tmp_path / 'm.txt'}:2: model.tokenizer._target_='shutil.copy'"):
        read_manifest(tmp_path / "m.txt")


def test_hydra_itself_calls_targets_under_hydra_before_any_of_our_code(tmp_path, secret):
    """The control for refusing `hydra.*` in manifests: given to mora.train, Hydra builds the callback
    (and copies the file) even though the run itself is refused (method.r=0) before anything is built."""
    src, dst = secret
    done = run_cli(tmp_path / "runs", "+hydra.callbacks.x._target_=shutil.copy", f"+hydra.callbacks.x._args_=[{src},{dst}]",
                   "method.r=0")
    assert done.returncode == 2 and "r must be a positive integer" in done.stderr, done.stderr[-2000:]
    assert dst.is_file()


def _array_task(manifest: Path, task: int) -> subprocess.CompletedProcess:
    """slurm/array.sbatch as Slurm starts task `task` of the array (no Slurm needed up to the trainer)."""
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": str(task), "MORA_ROOT": str(ROOT), "MORA_PYTHON": sys.executable,
           "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    return subprocess.run(["bash", str(ROOT / "slurm" / "array.sbatch"), str(manifest)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("line", [
    "model.tokenizer._target_=shutil.copy '+model.tokenizer._args_=[{src},{dst}]'",
    "'+hydra.callbacks.evil._target_=shutil.copy' '+hydra.callbacks.evil._args_=[{src},{dst}]'",  # Hydra runs these itself
])
def test_the_sbatch_array_refuses_a_foreign_manifest_line_before_starting_the_trainer(tmp_path, secret, line):
    src, dst = secret
    manifest = tmp_path / "manifest.txt"
    manifest.write_text("experiment=uuid_mini\n" + " ".join(TINY_RUN) + " " + line.format(src=src, dst=dst) + "\n")
    for task in (0, 1):  # the manifest as a whole is refused: the clean line 1 too
        done = _array_task(manifest, task)
        assert done.returncode == 2, done.stdout + done.stderr
        assert f"error: {manifest}:2: " in done.stderr and "refused" in done.stderr, done.stderr
        assert "python -m mora.train" not in done.stdout
    assert not dst.exists()


def test_the_sbatch_array_still_trains_a_clean_line(tmp_path):
    from mora.launch import hydra_string

    store = tmp_path / "runs dir"  # a space: the line is split as a shell would
    manifest = tmp_path / "manifest.txt"
    manifest.write_text(" ".join(shlex.quote(o) for o in [*TINY_RUN, *RUN, f"paths.runs_dir={hydra_string(store)}"]) + "\n")
    done = _array_task(manifest, 0)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (path,) = metrics_files(store)
    assert json.loads(path.read_text())["status"] == "completed"


# --- pickles: checkpoints are loaded weights-only ---------------------------------------------------


class _Payload:
    """A pickle that copies a file when loaded."""

    def __init__(self, src: Path, dst: Path):
        self.src, self.dst = str(src), str(dst)

    def __reduce__(self):
        return shutil.copy, (self.src, self.dst)


def test_the_crafted_pickle_runs_when_loaded_the_old_way(tmp_path, secret):
    src, dst = secret
    torch.save({"state": _Payload(src, dst)}, tmp_path / "optimizer.pt")
    torch.load(tmp_path / "optimizer.pt", weights_only=False)
    assert dst.is_file()


def test_weights_only_forces_safe_loading_even_when_a_library_asks_for_pickles(tmp_path, secret):
    """DeepSpeed loads its shards with weights_only=False; inside `weights_only()` that still refuses."""
    from mora.safe_load import FORCE, weights_only

    src, dst = secret
    torch.save({"state": _Payload(src, dst)}, tmp_path / "shard.pt")
    torch.save({"w": torch.ones(2), "step": 3}, tmp_path / "good.pt")
    before = os.environ.get(FORCE)
    with weights_only():
        with pytest.raises(pickle.UnpicklingError, match="shutil.copy"):
            torch.load(tmp_path / "shard.pt", weights_only=False)
        assert torch.load(tmp_path / "good.pt", weights_only=False)["step"] == 3
    assert not dst.exists() and os.environ.get(FORCE) == before


class Crash(Exception):
    pass


@pytest.fixture
def interrupted_run(tmp_path, monkeypatch):
    """A run that crashed at step 4, after its complete checkpoint-3: (store, checkpoint-3)."""
    from mora.training.callbacks import RunRecorder

    recorded = RunRecorder.on_step_end

    def crash_at_4(self, args, state, control, **kwargs):
        if state.global_step == 4:
            raise Crash()
        return recorded(self, args, state, control, **kwargs)

    store = tmp_path / "runs"
    with monkeypatch.context() as patched:
        patched.setattr(RunRecorder, "on_step_end", crash_at_4)
        with pytest.raises(Crash):
            train_in_process(store, *RUN)
    (path,) = metrics_files(store)
    checkpoint = path.parent / "checkpoints" / "checkpoint-3"
    assert (checkpoint / "COMPLETE").is_file() and (checkpoint / "optimizer.pt").is_file()
    return store, checkpoint


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt", "rng_state.pth"])
def test_a_crafted_pickle_in_a_checkpoint_is_refused_not_run_and_the_restored_run_resumes(interrupted_run, secret, name):
    src, dst = secret
    store, checkpoint = interrupted_run
    good = (checkpoint / name).read_bytes()
    torch.save({"state": _Payload(src, dst)}, checkpoint / name)
    run = checkpoint.parent.parent
    with pytest.raises(ValueError, match=rf"^run {run}: checkpoint-3/{name} would call shutil.copy when loaded; .*"
                                         rf"refused, nothing in it was loaded: delete {checkpoint} to resume"):
        train_in_process(store, *RUN)
    assert not dst.exists()

    (checkpoint / name).write_bytes(good)
    done = train_in_process(store, *RUN)
    assert done["status"] == "completed" and [e["step"] for e in done["evals"]] == [3, 6]


def test_without_the_check_the_trainer_still_loads_checkpoints_weights_only(interrupted_run, secret, monkeypatch):
    """The second wall: were the pre-resume check gone, the Trainer's weights-only load refuses the pickle."""
    src, dst = secret
    store, checkpoint = interrupted_run
    torch.save({"state": _Payload(src, dst)}, checkpoint / "optimizer.pt")
    monkeypatch.setattr("mora.train.check_checkpoint", lambda *args: None)
    with pytest.raises(pickle.UnpicklingError, match="shutil.copy"):
        train_in_process(store, *RUN)
    assert not dst.exists()


def test_a_checkpoint_file_that_is_no_torch_archive_is_refused(interrupted_run, secret):
    src, dst = secret
    store, checkpoint = interrupted_run
    (checkpoint / "rng_state.pth").write_bytes(pickle.dumps(_Payload(src, dst)))
    with pytest.raises(ValueError, match=r"checkpoint-3/rng_state.pth is not a torch.save file of tensors and values"):
        train_in_process(store, *RUN)
    assert not dst.exists()


def test_check_checkpoint_passes_what_the_trainer_writes(interrupted_run):
    from mora.safe_load import check_checkpoint

    store, checkpoint = interrupted_run
    check_checkpoint(checkpoint, "run")  # optimizer, scheduler, numpy RNG state; training_args.bin is never read
    assert (checkpoint / "training_args.bin").is_file()
