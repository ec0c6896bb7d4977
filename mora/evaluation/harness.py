"""lm-eval on an in-memory model: the task YAMLs under eval/ (plus lm-eval's own, e.g. `mmlu`, when a
suite names one), results as lm-eval's JSON, and the headline numbers a table reads.

Scoring modes (eval/utils.py): `scoring="paper"` (the default) checks answers as the paper's sources do,
`"standard"` as lm-eval's own tasks do; the mode reaches the tasks as lm-eval metadata, with the model's
tokenizer (the paper's option ranking counts tokens). Rows that ask for no BOS token (AdaptLLM's multiple
choice under the paper's scoring) are scored without one, the others as lm-eval's HFLM does.

lm-eval is imported inside the functions: importing it costs seconds, and `import mora.train` must not.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("mora")
EVAL_DIR = Path(__file__).resolve().parents[2] / "eval"
SCORING_MODES = ("paper", "standard")


@functools.cache
def eval_utils():
    """eval/utils.py as a module (lm-eval loads it by path; it stays free of `mora`)."""
    spec = importlib.util.spec_from_file_location("mora_eval_utils", EVAL_DIR / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Suite:
    """One lm-eval call: `tasks` (task or group names) at `num_fewshot` (None: each task's own), and
    `scores`: headline name -> "task/metric" (lm-eval's `metric,filter` key; filter `none` if omitted),
    stored x `scale` (100: percent, as the paper reports)."""

    name: str
    tasks: list[str]
    scores: dict[str, str] = field(default_factory=dict)
    num_fewshot: int | None = None
    scale: float = 100.0

    @classmethod
    def from_dict(cls, name: str, spec: dict[str, Any]) -> "Suite":
        unknown = set(spec) - {"tasks", "scores", "num_fewshot", "scale"}
        if unknown:
            raise ValueError(f"benchmark suite {name!r}: unknown key(s) {sorted(unknown)}; allowed: tasks, scores, num_fewshot, scale")
        tasks = list(spec.get("tasks") or [])
        if not tasks:
            raise ValueError(f"benchmark suite {name!r} names no lm-eval tasks (benchmark.suites.{name}.tasks)")
        scores = dict(spec.get("scores") or {})
        for key, where in scores.items():
            if "/" not in str(where):
                raise ValueError(f"benchmark suite {name!r}: score {key!r} = {where!r}; write it as task/metric, e.g. mmlu/acc")
        return cls(name, tasks, scores, spec.get("num_fewshot"), float(spec.get("scale", 100.0)))


def task_manager(tasks: list[str], include_path: Path = EVAL_DIR, metadata: dict | None = None):
    """A TaskManager over eval/; lm-eval's built-in tasks are indexed only when a task needs them
    (indexing them all takes seconds)."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(include_path), include_defaults=False, metadata=metadata)
    if all(t in manager.all_tasks for t in tasks):
        return manager
    manager = TaskManager(include_path=str(include_path), include_defaults=True, metadata=metadata)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ValueError(
            f"unknown lm-eval task(s) {unknown}: not in {include_path} nor in lm-eval's own tasks "
            "(`lm_eval ls tasks` lists them)"
        )
    return manager


def run_suite(
    model,
    tokenizer,
    suite: Suite,
    *,
    include_path: Path = EVAL_DIR,
    data_dir: str | None = None,
    batch_size: int = 8,
    limit: int | float | None = None,
    gen_kwargs: dict | None = None,
    max_length: int | None = None,
    log_samples: bool = False,
    scoring: str = "paper",
) -> dict[str, Any]:
    """Score `model` on the suite's tasks the `scoring` way; returns lm-eval's results dict (JSON-safe)."""
    from lm_eval import simple_evaluate

    if scoring not in SCORING_MODES:
        raise ValueError(f"benchmark.scoring must be one of {SCORING_MODES}, got {scoring!r}")
    was_training = model.training
    model.eval()
    lm = _context_checked(row_bos_lm())(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
    lm.suite_name = suite.name
    lm_log = logging.getLogger("lm_eval.models.huggingface")  # HFLM's module
    lm_log.addFilter(_drop_truncation_warnings)
    with tempfile.TemporaryDirectory(prefix="mora_tokenizer_") as saved:
        tokenizer.save_pretrained(saved)  # the tasks count option tokens with it (paper scoring)
        metadata = {"scoring": scoring, "tokenizer": saved, **({"data_dir": str(data_dir)} if data_dir else {})}
        manager = task_manager(suite.tasks, include_path, metadata)
        try:
            results = simple_evaluate(
                model=lm,
                tasks=list(suite.tasks),
                num_fewshot=suite.num_fewshot,
                task_manager=manager,
                limit=limit,
                gen_kwargs=dict(gen_kwargs) if gen_kwargs else None,
                bootstrap_iters=0,
                log_samples=log_samples,
            )
        finally:
            lm_log.removeFilter(_drop_truncation_warnings)
            model.train(was_training)
    if results is None:
        import os

        ranks = {k: os.environ[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE") if k in os.environ}
        raise ValueError(f"lm-eval returned no results: it only reports on rank 0, and this process looks like another rank {ranks}")
    return json.loads(json.dumps(results, default=_json_default))


@functools.cache
def row_bos_lm():
    """lm-eval's HFLM, except that a request whose row says `add_bos_token` (true or false) is tokenized
    with that setting instead of the model-wide one."""
    from lm_eval.models.huggingface import HFLM

    class RowBosLM(HFLM):
        def loglikelihood(self, requests, disable_tqdm: bool = False):
            groups: dict[Any, list[int]] = {}
            for i, request in enumerate(requests):
                flag = request.doc.get("add_bos_token") if isinstance(request.doc, dict) else None
                groups.setdefault(flag, []).append(i)
            out: list[Any] = [None] * len(requests)
            default = self.add_bos_token
            try:
                for flag, indices in groups.items():
                    self.add_bos_token = default if flag is None else bool(flag)
                    scored = super().loglikelihood([requests[i] for i in indices], disable_tqdm=disable_tqdm)
                    for i, result in zip(indices, scored):
                        out[i] = result
            finally:
                self.add_bos_token = default
            return out

    return RowBosLM


def _drop_truncation_warnings(record: logging.LogRecord) -> bool:
    """lm-eval warns once per prompt it cuts to the model's context: hundreds of lines on a short-context
    model. _context_checked says it once, with the count, before scoring starts."""
    return not record.getMessage().startswith(("Combined length of context", "Left truncation applied"))


def _context_checked(hflm: type) -> type:
    """lm-eval's HFLM (passed in: lm-eval is imported lazily) that counts, before it scores them, the
    prompts longer than the model's context, and warns once with the count."""
    from lm_eval.models.utils import normalize_gen_kwargs

    class ContextCheckedLM(hflm):
        suite_name = "lm-eval"

        def _warn(self, too_long: set[str], prompts: set[str], room: str) -> None:
            if too_long:
                log.warning(
                    "%s: %d of %d prompts are longer than the model's context (%s) and are cut from the left, "
                    "so those items are scored on a truncated prompt",
                    self.suite_name, len(too_long), len(prompts), room,
                )

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
            # requests: ((context, continuation), context tokens, continuation tokens); the model sees at
            # most max_length + 1 of them (the last token is only predicted)
            too_long = {ctx for (ctx, _), c, t in requests if len(c) + len(t) > self.max_length + 1}
            self._warn(too_long, {ctx for (ctx, _), _, _ in requests}, f"{self.max_length} tokens")
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)

        def generate_until(self, requests, disable_tqdm: bool = False):
            too_long, longest_answer = set(), 0
            for context, gen_kwargs in (r.args for r in requests):
                answer = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)["max_gen_toks"]
                longest_answer = max(longest_answer, answer)
                if len(self.tok_encode(context)) > self.max_length - answer:
                    too_long.add(context)
            room = f"{self.max_length} tokens, {longest_answer} of them kept for the answer"
            self._warn(too_long, {r.args[0] for r in requests}, room)
            return super().generate_until(requests, disable_tqdm=disable_tqdm)

    return ContextCheckedLM


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def metric_value(results: dict[str, Any], task: str, metric: str) -> float:
    """results["results"][task]["metric,filter"] as a float; a ValueError names what is there."""
    table = results.get("results", {})
    if task not in table:
        raise ValueError(f"lm-eval results have no task {task!r}; they have {sorted(table)}")
    key = metric if "," in metric else f"{metric},none"
    entry = table[task]
    if key not in entry:
        have = sorted(k for k in entry if "," in k and "stderr" not in k)
        raise ValueError(f"lm-eval results for {task!r} have no metric {key!r}; they have {have}")
    value = float(entry[key])
    if math.isnan(value):
        raise ValueError(f"lm-eval {task}/{key} is NaN")
    return value


def headline(results: dict[str, Any], suite: Suite) -> dict[str, float]:
    """The suite's named scores from an lm-eval result, x its scale."""
    out = {}
    for name, where in suite.scores.items():
        task, _, metric = str(where).partition("/")
        out[name] = metric_value(results, task, metric) * suite.scale
    return out
