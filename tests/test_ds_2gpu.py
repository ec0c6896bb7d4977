"""bench/ds_2gpu.py, issue 18's 2-GPU DeepSpeed plan through `torchrun -m mora.train`, run end to end on
2 CPU processes (gloo) at toy sizes: the same launches, overrides and checks as on the GPUs.

Slow (`make test-deepspeed`), one phase per test (~1-2 min each on 2 cores):
- c4: ReMoRA under ZeRO-2 on the local corpus with a locally trained BPE restarts twice inside the run;
  the merged model, reloaded by plain transformers, gives the logits of the trained model as DeepSpeed's
  shards hold it (and a merged model changed by one entry does not);
- ft_mora / ft_fft (ZeRO-3, Tulu-schema chats of max_length tokens): SIGTERM to rank 1 stops both
  ranks at the same step with one checkpoint; the relaunch (deepspeed launcher) resumes there and ends
  with the undisturbed run's loss curve;
- each phase records tokens/s on 1 and 2 processes and every rank's peak memory (CPU numbers mean nothing).
Fast: the GPU plan's command lines compose and pass the checks mora.train makes before training.
"""

import json
import random
import shutil
import sys
from pathlib import Path

import pytest

from runner import ROOT, compose

pytest.importorskip("deepspeed")
sys.path.insert(0, str(ROOT / "bench"))
import ds_2gpu  # noqa: E402

WORDS = ("the", "of", "and", "a", "letter", "sister", "house", "morning", "said", "was", "not", "be", "with",
         "her", "his", "they", "walked", "garden", "evening", "before", "after", "would", "could", "never")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    """Two text files of seeded pseudo-prose (~40 KB each) standing in for ../shared/data."""
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    for name in ("a", "b"):
        lines = []
        for _ in range(800):
            words = [rng.choice(WORDS) for _ in range(rng.randint(5, 12))]
            lines.append(" ".join(words).capitalize() + rng.choice((".", "!", "?", ",")))
        (root / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return str(root / "*.txt")


@pytest.fixture(scope="module")
def plan(tmp_path_factory, corpus, shm_op):
    """plan(phase) -> (that phase's summary, its launch records, the launches' output), each phase run once."""
    out = tmp_path_factory.mktemp("plan")
    done: dict[str, tuple[dict, list[dict], str]] = {}

    def run(phase: str):
        if phase not in done:
            phase_out = out / phase
            argv = ["--cpu", "--tiny", "--phases", phase, "--corpus", corpus, "--cache", str(out / "cache"),
                    "--out", str(phase_out), "--budget-s", "900"]
            assert ds_2gpu.main(argv) == 0
            summary = json.loads((phase_out / "ds_2gpu_summary.json").read_text())
            records = [json.loads(line) for line in (phase_out / "ds_2gpu.jsonl").read_text().splitlines()]
            done[phase] = (summary["phases"][phase], records, (phase_out / "ds_2gpu.log").read_text())
        return done[phase]

    return run


def _launch(records: list[dict], name: str) -> dict:
    (rec,) = [r for r in records if r["name"] == name]
    assert "error" not in rec, rec
    return rec


# -- fast ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("phase", ds_2gpu.PHASES)
def test_the_gpu_plans_command_lines_pass_the_checks_before_training(phase, tmp_path):
    """Every launch of the GPU plan (paper sizes) composes with Hydra and passes mora.train's checks
    that come before anything is built: schema, DeepSpeed config vs the Hydra config on 1 and 2 GPUs."""
    from omegaconf import OmegaConf

    from mora.schema import check_config
    from mora.training.distributed import check_deepspeed_config

    args = ds_2gpu.parse_args(["--phases", phase, "--corpus", "data/*.txt", "--out", str(tmp_path)])
    if phase == "c4":
        launches = [(2, ds_2gpu.c4_overrides(args)), (1, ds_2gpu.c4_one_gpu(args))]
    else:
        overrides = ds_2gpu.ft_overrides(args, phase, tmp_path / "chats.jsonl")
        launches = [(2, overrides), (1, {**overrides, "train.max_steps": "6"})]
    for world, overrides in launches:
        cfg = compose([f"{k}={v}" for k, v in overrides.items()])
        check_config(cfg)
        accumulation = cfg.train.batch_size // (cfg.train.micro_batch_size * world)
        assert accumulation * cfg.train.micro_batch_size * world == cfg.train.batch_size
        check_deepspeed_config(OmegaConf.to_container(cfg.train.deepspeed), cfg.train, world, accumulation)
        assert cfg.train.precision == "bf16"
    cfg = compose([f"{k}={v}" for k, v in launches[0][1].items()])
    if phase == "c4":  # the paper's 1.3B shapes, and at least two merge-and-reinit restarts inside the run
        assert (cfg.model.name, cfg.model.tokenizer.vocab_size, cfg.model.network.hidden_size) == ("llama_1b_local", 32100, 2048)
        assert cfg.method.method == "remora" and cfg.train.deepspeed.zero_optimization.stage == 2
        assert len(range(cfg.method.merge_every, cfg.train.max_steps, cfg.method.merge_every)) >= 2
    else:
        assert (cfg.model.name, cfg.model.network.hidden_size, cfg.model.network.num_layers) == ("llama2_7b_random", 4096, 32)
        assert cfg.data.builder.max_length == 2048 and cfg.train.deepspeed.zero_optimization.stage == 3
        assert cfg.method.method == {"ft_mora": "mora", "ft_fft": "fft"}[phase]
        assert phase != "ft_mora" or cfg.method.r == 256


def test_long_chats_fill_max_length_tokens(tmp_path, corpus):
    """The fine-tune's data: Tulu-schema chats cut from the corpus, each at least max_length tokens with
    a reply inside the first max_length (the builder keeps that many; the fixtures' chats are under 100 tokens)."""
    from mora.builders import build

    path = ds_2gpu.write_long_chats(corpus, tmp_path / "chats.jsonl", rows=8, max_length=128)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 8 and len({r["messages"][1]["content"] for r in rows}) == 8
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in rows)
    args = ds_2gpu.parse_args(["--cpu", "--tiny", "--corpus", corpus, "--cache", str(tmp_path / "cache"), "--out", str(tmp_path)])
    cfg = compose([f"{k}={v}" for k, v in ds_2gpu.ft_overrides(args, "ft_mora", path).items()])
    assert cfg.data.builder.max_length == 128

    task = build(cfg, "data.builder", tokenizer=build(cfg, "model.tokenizer"))
    built = task.train_dataset()
    assert len(built) == 8
    assert all(len(row["input_ids"]) == 128 for row in built)
    assert all(any(label != -100 for label in row["labels"]) for row in built)


# -- slow: the plan on 2 CPU processes ---------------------------------------------------------------


@pytest.mark.slow
def test_c4_remora_zero2_restarts_twice_and_the_merged_model_gives_the_sharded_logits(plan, tmp_path):
    summary, records, _ = plan("c4")
    two = _launch(records, "c4 zero2 2 procs")
    assert two["rc"] == 0 and two["status"] == "completed"
    assert two["restarts"] == [2, 4]  # two merge-and-reinit restarts inside the 6-step run
    assert [e["step"] for e in two["evals"]] == [2, 6]
    check = summary["merged_vs_sharded"]
    assert check["checkpoint"] == "checkpoint-6" and check["ok"], check
    assert check["max_abs_logit"] > 0.1 and check["argmax_agree"] == 1.0

    # The check has teeth: one changed entry of the merged model is seen.
    run = Path(two["run_dir"])
    changed = tmp_path / "changed"
    shutil.copytree(run, changed, ignore=shutil.ignore_patterns(".lock"))
    from safetensors.torch import load_file, save_file

    weights = load_file(str(changed / "merged" / "model.safetensors"))
    key = "model.layers.1.self_attn.o_proj.weight"
    weights[key][0, 0] += 0.5
    save_file(weights, str(changed / "merged" / "model.safetensors"), metadata={"format": "pt"})
    assert not ds_2gpu.merged_agreement(changed)["ok"]


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["ft_mora", "ft_fft"])
def test_zero3_sigterm_to_one_rank_checkpoints_all_and_the_relaunch_ends_as_undisturbed(plan, phase):
    summary, records, output = plan(phase)
    undisturbed = _launch(records, f"{phase} zero3 2 procs")
    stopped = _launch(records, f"{phase} zero3 2 procs, SIGTERM to rank 1")
    resumed = _launch(records, f"{phase} zero3 2 procs, relaunched")
    p = summary["preemption"]
    assert p["sigterm_after_logged_steps"] == 4
    # Both ranks stopped after the step in flight, wrote one checkpoint and left: rank 0 had no signal.
    assert stopped["rc"] != 0 and stopped["status"] == "interrupted"
    assert 4 <= p["stopped_at_step"] < 8
    assert resumed["launcher"] == "deepspeed" and resumed["resumed_from"] == f"checkpoint-{p['stopped_at_step']}"
    assert resumed["rc"] == 0 and resumed["status"] == "completed"
    steps = [s for s, _ in undisturbed["train_loss"]]
    assert steps == [s for s, _ in resumed["train_loss"]] == list(range(1, 9))
    assert [l for _, l in resumed["train_loss"]] == pytest.approx([l for _, l in undisturbed["train_loss"]], abs=1e-6)
    assert p["ok"] and p["relative_difference"] <= 1e-6
    # One checkpoint, at the stop step, its weights written once: DeepSpeed's shards of both ranks, no
    # model file of the Trainer's (nor, under ZeRO-3, the same shards written twice).
    stop = p["stopped_at_step"]
    files = stopped["checkpoints"]
    assert {f.split("/")[0] for f in files} == {f"checkpoint-{stop}"}
    shards = {f.split("/")[-1] for f in files if f.startswith(f"checkpoint-{stop}/global_step{stop}/")}
    assert {"zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_model_states.pt"} <= shards
    assert not any(f.endswith((".safetensors", "pytorch_model.bin")) for f in files), files
    assert "Saving the full checkpoint instead" not in output


@pytest.mark.slow
def test_every_phase_records_tokens_per_s_on_1_and_2_processes_and_each_ranks_peak(plan):
    for phase in ds_2gpu.PHASES:
        summary, _, _ = plan(phase)
        scaling = summary["scaling"]
        assert scaling["tokens_per_s_1"] > 0 and scaling["tokens_per_s_2"] > 0
        assert scaling["ratio"] == pytest.approx(scaling["tokens_per_s_2"] / scaling["tokens_per_s_1"])
        assert summary["peak_memory_gib_per_rank"] == [None, None]  # no accelerator here: no peak to read
