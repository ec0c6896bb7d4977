"""Hydra entry point: score a finished run on its benchmark (lm-eval suites, perplexity, spectrum).

    python -m mora.evaluate experiment=metamath_gsm8k_mini method=mora method.r=8 benchmark=math_mini
    python -m mora.evaluate benchmark=mmlu_dev benchmark.run_dir=runs/tulu_mmlu_mini/0123456789ab

The run is found the way `mora.train` names it (the same overrides give the same run id; the
benchmark is not part of the id), or given as `benchmark.run_dir`, and its model is read from the store.
`mora.train` calls the same code right after training when the benchmark says `after_training: true`,
handing over the merged model, tokenizer and task it holds; before training it calls `before_training`,
where a benchmark keeps what it needs of the untrained model (the spectrum's initial weights).

Written into the run directory: `lm_eval/<suite>.json` (lm-eval's results JSON), `spectrum.json`, and
in `metrics.json`: `scores` (headline numbers, in percent for accuracies: what the tables read),
`benchmarks` (per suite: tasks, shots, limit, scoring mode, file) and `spectrum` (the per-module-type means). A
suite already scored with the same settings is not scored again (`benchmark.force=true` redoes it).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Callable

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from .builders import Parts, build_parts, check_targets
from .runs import CONFIG_NAME, STATUS_COMPLETED, RunDir, read_json, write_json_atomic
from .safe_load import weights_only
from .schema import check_config, set_or_add_overrides

log = logging.getLogger("mora")
LM_EVAL_DIR = "lm_eval"


def _as_dict(cfg: Any) -> dict:
    if cfg is None:
        return {}
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return dict(cfg)


def wants_evaluation(bench: Any) -> bool:
    bench = _as_dict(bench)
    return bool(bench.get("suites") or bench.get("perplexity") or bench.get("spectrum"))


def after_training(bench: Any) -> bool:
    """The benchmark asks to be scored right after training (conf/benchmark: after_training)."""
    return bool(_as_dict(bench).get("after_training")) and wants_evaluation(bench)


def before_training(bench: Any, model, run_path: Path) -> None:
    """The benchmark's hook on the model before it trains: the spectrum's ΔW is taken from these weights."""
    if _as_dict(bench).get("spectrum"):
        from .evaluation.spectrum import snapshot_initial_weights

        snapshot_initial_weights(model, run_path)


def load_model(run_path: Path, run_config: dict, which: str = "merged", dtype: str | None = None):
    """(model, tokenizer) of a finished run: its merged model (a plain transformers checkpoint), or
    the base model rebuilt from the run's config plus its saved adapter."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if which == "merged":
        merged = run_path / "merged"
        if not (merged / "config.json").is_file():
            raise ValueError(f"{merged} holds no saved model; the run did not finish (see {run_path / 'metrics.json'})")
        kwargs = {"dtype": dtype} if dtype else {}
        with weights_only():  # a stored model is data: safetensors or weights-only pickles, no code of its own
            model = AutoModelForCausalLM.from_pretrained(merged, trust_remote_code=False, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(merged, trust_remote_code=False)
        return model, tokenizer
    if which != "adapter":
        raise ValueError(f"benchmark.model must be merged or adapter, got {which!r}")
    from .adapters import load_adapter

    if not (run_path / "adapter").is_dir():
        method = run_config.get("method", {}).get("method")
        raise ValueError(f"{run_path} has no adapter/ (method {method} trains the whole model): use benchmark.model=merged")
    model, tokenizer = rebuild_base(run_config, f"run {run_path}")
    load_adapter(model, run_path / "adapter")
    return model, tokenizer


def rebuild_base(run_config: dict, origin: str = "the run's config"):
    """(model, tokenizer) before training, built as train.py builds them (mora.builders.build_parts)."""
    parts = build_parts(run_config, origin)
    return parts.model, parts.tokenizer


def initial_weights(run_path: Path, run_config: dict) -> dict[str, torch.Tensor]:
    """The projections' weights before training: the snapshot `before_training` wrote, else the base network
    rebuilt from the run's config under its seed (exact for pretrained bases; for random-init ones it
    repeats train.py's construction order, which the tests check against a snapshot)."""
    from .evaluation.spectrum import SNAPSHOT_NAME, load_snapshot, projection_weights

    snapshot = run_path / SNAPSHOT_NAME
    if snapshot.is_file():
        return load_snapshot(snapshot)
    log.warning("%s has no %s: rebuilding the initial weights from the config and seed", run_path, SNAPSHOT_NAME)
    model, _ = rebuild_base(run_config, f"run {run_path}")
    return {name: w.detach().to("cpu") for name, w in projection_weights(model).items()}


def _suite_key(suite: dict, bench: dict) -> dict:
    return {
        "tasks": list(suite.get("tasks") or []),
        "num_fewshot": suite.get("num_fewshot"),
        "scores": dict(suite.get("scores") or {}),
        "limit": bench.get("limit"),
        "gen_kwargs": bench.get("gen_kwargs"),
        "model": bench.get("model", "merged"),
        "scoring": bench.get("scoring", "paper"),
    }


def evaluate_run(
    run_path: str | Path,
    bench: Any,
    run_config: dict | None = None,
    on_scores: Callable[[dict[str, float]], None] | None = None,
    trained: Parts | None = None,
) -> dict[str, Any]:
    """Score the finished run in `run_path` on `bench` (a conf/benchmark config); returns the updated
    metrics. `trained`: the run's merged model, tokenizer and task, still in memory after training
    (else they are read from the store). Each finished piece is written to metrics.json at once, so an
    interrupted evaluation keeps what it has."""
    from .evaluation.harness import EVAL_DIR, SCORING_MODES, Suite, headline, run_suite

    run_path = Path(run_path)
    bench = _as_dict(bench)
    metrics_path = run_path / "metrics.json"
    if not metrics_path.is_file():
        raise ValueError(f"{run_path} is not a run directory (no metrics.json); train it first with mora.train")
    metrics = read_json(metrics_path)
    if metrics.get("status") != STATUS_COMPLETED:
        raise ValueError(f"run {run_path} is {metrics.get('status')!r}, not completed; finish training it first")
    run_config = run_config if run_config is not None else read_json(run_path / CONFIG_NAME)
    check_targets(run_config, f"run {run_path}")  # the store is data: a foreign builder anywhere stops here
    suites = {name: Suite.from_dict(name, spec) for name, spec in (bench.get("suites") or {}).items()}
    if bench.get("scoring", "paper") not in SCORING_MODES:
        raise ValueError(f"benchmark.scoring must be one of {SCORING_MODES}, got {bench.get('scoring')!r}")
    force = bool(bench.get("force"))
    done = metrics.setdefault("benchmarks", {})
    todo = [s for s in suites.values() if force or done.get(s.name, {}).get("key") != _suite_key(bench["suites"][s.name], bench)]
    wanted_threshold = bench["spectrum"].get("threshold") if isinstance(bench.get("spectrum"), dict) else None
    have_threshold = (metrics.get("spectrum") or {}).get("threshold")
    need_spectrum = bool(bench.get("spectrum")) and (
        force or have_threshold is None or (wanted_threshold is not None and float(wanted_threshold) != have_threshold)
    )
    need_ppl = bool(bench.get("perplexity")) and (force or "perplexity" not in metrics.get("scores", {}))
    _say_cached(run_path.name, metrics, [s.name for s in suites.values() if s not in todo],
                bool(bench.get("perplexity")) and not need_ppl, bool(bench.get("spectrum")) and not need_spectrum)
    if not (todo or need_spectrum or need_ppl):
        return metrics

    if bench.get("write_fixtures"):
        if not bench.get("data_dir"):
            raise ValueError("benchmark.write_fixtures needs benchmark.data_dir (where to write them)")
        from .evaluation.fixtures import write_fixtures

        write_fixtures(bench["data_dir"])
    if trained is not None and bench.get("model", "merged") == "merged":
        model, tokenizer = trained.model, trained.tokenizer
        if bench.get("dtype"):
            from .models import torch_dtype

            model.to(torch_dtype(bench["dtype"]))
    else:
        model, tokenizer = load_model(run_path, run_config, bench.get("model", "merged"), bench.get("dtype"))
    device = bench.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    scores = metrics.setdefault("scores", {})
    new_scores: dict[str, float] = {}

    def save() -> None:
        write_json_atomic(metrics_path, metrics)

    for suite in todo:
        log.info("run %s: lm-eval suite %s (%s)", run_path.name, suite.name, ", ".join(suite.tasks))
        results = run_suite(
            model,
            tokenizer,
            suite,
            include_path=Path(bench.get("include_path") or EVAL_DIR),
            data_dir=bench.get("data_dir"),
            batch_size=int(bench.get("batch_size", 8)),
            limit=bench.get("limit"),
            gen_kwargs=bench.get("gen_kwargs"),
            max_length=bench.get("max_length"),
            scoring=bench.get("scoring", "paper"),
        )
        out = run_path / LM_EVAL_DIR / f"{suite.name}.json"
        write_json_atomic(out, results)
        values = headline(results, suite)
        scores.update(values)
        new_scores.update(values)
        done[suite.name] = {
            "key": _suite_key(bench["suites"][suite.name], bench),
            "file": str(out.relative_to(run_path)),
            "scoring": bench.get("scoring", "paper"),
            "lm_eval_version": results.get("lm_eval_version"),
            "versions": results.get("versions", {}),
            "n_samples": {t: v.get("effective", v.get("original")) for t, v in results.get("n-samples", {}).items()},
            "scores": values,
        }
        log.info("run %s: %s", run_path.name, ", ".join(f"{k} {v:.2f}" for k, v in values.items()))
        save()

    if need_ppl:
        from .evaluation.perplexity import Perplexity

        options = bench["perplexity"] if isinstance(bench["perplexity"], dict) else {}
        task = trained.task if trained is not None else build_parts(run_config, f"run {run_path}", network=False).task
        values = Perplexity(**options)(model, tokenizer, task)
        scores.update(values)
        new_scores.update(values)
        log.info("run %s: perplexity %.3f", run_path.name, values["perplexity"])
        save()

    if need_spectrum:
        from .evaluation.spectrum import THRESHOLD, final_weights, spectrum

        options = bench["spectrum"] if isinstance(bench["spectrum"], dict) else {}
        result = spectrum(initial_weights(run_path, run_config), final_weights(model), float(options.get("threshold", THRESHOLD)))
        write_json_atomic(run_path / "spectrum.json", result)
        metrics["spectrum"] = {k: result[k] for k in ("threshold", "by_type", "layers")}
        new_scores.update({f"spectrum/{k}": v for k, v in result["by_type"].items()})
        log.info("run %s: singular values > %g per module type: %s", run_path.name, result["threshold"], result["by_type"])
        save()

    if on_scores and new_scores:
        on_scores(new_scores)
    return metrics


def _say_cached(run_name: str, metrics: dict, suites: list[str], perplexity: bool, spectrum: bool) -> None:
    """One line per score that is not computed again: it was, with the same settings, and is read back."""
    scores = metrics.get("scores", {})
    cached = {name: metrics["benchmarks"][name].get("scores", {}) for name in suites}
    if perplexity:
        cached["perplexity"] = {"perplexity": scores["perplexity"]}
    if spectrum:
        cached["spectrum"] = {f"spectrum/{k}": v for k, v in metrics["spectrum"]["by_type"].items()}
    for name, values in cached.items():
        shown = ", ".join(f"{k} {v:.4g}" for k, v in values.items())
        log.info("run %s: %s is cached (scored before with these settings): %s; benchmark.force=true scores it again",
                 run_name, name, shown)


def find_run(cfg: DictConfig) -> tuple[Path, dict]:
    """The run directory `cfg` names: benchmark.run_dir, or the run id of the composed config."""
    given = cfg.benchmark.get("run_dir")
    if given:
        path = Path(given)
        if not (path / CONFIG_NAME).is_file():
            raise ValueError(f"benchmark.run_dir={given} is not a run directory (no {CONFIG_NAME})")
        return path, read_json(path / CONFIG_NAME)
    container = OmegaConf.to_container(cfg, resolve=True)
    run = RunDir(cfg.paths.runs_dir, cfg.experiment_name, container)
    if not run.metrics_path.is_file():
        raise ValueError(
            f"no run {run.id} in {run.path.parent}: train it first with the same overrides "
            "(python -m mora.train ...), or point benchmark.run_dir at a run directory"
        )
    return run.path, read_json(run.path / CONFIG_NAME)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    check_config(cfg)
    if not wants_evaluation(cfg.benchmark):
        raise ValueError("benchmark has nothing to run (no suites, perplexity or spectrum): pick one, e.g. benchmark=mmlu_dev")
    path, config = find_run(cfg)
    wandb_settings = _as_dict(cfg.logger.get("wandb")) if cfg.get("logger") else {}
    on_scores = None
    if wandb_settings:
        from .training.wandb_log import log_evaluation

        summary = read_json(path / "metrics.json").get("summary", {})
        group = config.get("artifact") or summary.get("experiment")
        on_scores = lambda scores: log_evaluation(wandb_settings, str(path), path.name, summary, group, scores)  # noqa: E731
    return evaluate_run(path, cfg.benchmark, config, on_scores)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def hydra_main(cfg: DictConfig) -> None:
    torch.set_num_threads(int(cfg.threads) if cfg.get("threads") else torch.get_num_threads())
    try:
        metrics = evaluate(cfg)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    for name, value in sorted(metrics.get("scores", {}).items()):
        print(f"{name}: {value:.4g}")


def main() -> None:
    """`python -m mora.evaluate`: a misspelt key reaches check_config (mora.schema) to be named."""
    sys.argv = set_or_add_overrides(sys.argv)
    hydra_main()


if __name__ == "__main__":
    main()
