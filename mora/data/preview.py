"""Look at data before spending GPU time on it: the first rows as the model sees them.

    python -m mora.data.preview data=metamath data.builder.source=my_rows.jsonl [--n 3]
    python -m mora.data.preview experiment=biomed_cpt_mini model=smollm2_135m --n 2
    python -m mora.data.preview --eval metamath_gsm8k benchmark=math_mini [--scoring standard]

Training data (any Hydra overrides of `mora.train`): each of the first `--n` source rows rendered as
the builder renders it, the tokens that carry loss highlighted (or wrapped in ⟦ ⟧ when the output is
not a terminal, or with --plain), its token count and what `max_length` cuts. Corpora show each
document after the AdaptLLM mining with its held-out tail. Nothing is cached or trained.

Evaluation (`--eval TASK`, a task or group of eval/, offline data from `benchmark.data_dir`): each
of the first rows' prompt with its token count, the options (the gold one marked, with each option's
token count under the paper's scoring) or the target and the generation settings, and the rule that
checks the answer under the scoring mode.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from itertools import islice

from ..conf import CONF_DIR


class Style:
    """ANSI highlighting on a terminal; plain brackets elsewhere (pipes, files, NO_COLOR)."""

    def __init__(self, color: bool):
        self.color = color

    def _wrap(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.color and text else text

    def loss(self, text: str) -> str:
        return self._wrap("1;32", text) if self.color else f"⟦{text}⟧"

    def dim(self, text: str) -> str:
        return self._wrap("2", text)

    def head(self, text: str) -> str:
        return self._wrap("1;36", text)

    def cut(self, text: str) -> str:
        return self._wrap("1;31", text)


def marked(text: str, loss: list[bool], style: Style) -> str:
    """`text` with each run of loss-carrying characters highlighted."""
    out, start = [], 0
    for i in range(1, len(text) + 1):
        if i == len(text) or loss[i] != loss[start]:
            piece = text[start:i]
            out.append(style.loss(piece) if loss[start] else piece)
            start = i
    return "".join(out)


def _shorten(text: str, limit: int) -> tuple[str, str]:
    if limit <= 0 or len(text) <= limit:
        return text, ""
    return text[:limit], f" … ({len(text) - limit:,} more characters)"


def _bar(style: Style, title: str) -> str:
    return style.head(f"── {title} " + "─" * max(4, 96 - len(title)))


# ---------------------------------------------------------------------------------------------
# training data


def chat_row(task, row: dict, style: Style, max_chars: int) -> str:
    """A supervised row: the rendered text, loss tokens highlighted, the cut at max_length."""
    text, _ = task.render(row)
    ids, mask = task.encode([row])[0]
    bos = len(task.bos())
    offsets = task.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    loss = [False] * len(text)
    for (a, b), carries in zip(offsets, mask[bos:]):
        if carries:
            loss[a:b] = [True] * (b - a)
    kept = task.max_length - bos
    cut_at = offsets[kept][0] if 0 <= kept < len(offsets) else len(text)
    n, n_loss = len(ids), int(mask.sum())
    if n <= task.max_length:
        fate = f"fits max_length {task.max_length}"
    elif mask[: task.max_length].any():
        fate = f"TRUNCATED to max_length {task.max_length}: {n - task.max_length} tokens cut ({int(mask[task.max_length:].sum())} of them loss)"
    else:
        fate = f"DROPPED: no loss token within max_length {task.max_length}"
    shown, more = _shorten(text, max_chars)
    body = marked(shown[:cut_at], loss[:cut_at], style)
    if cut_at < len(shown):
        body += style.cut(f"✂ [max_length {task.max_length}]") + style.dim(shown[cut_at:])
    lines = [f"{n} tokens ({'BOS + ' if bos else ''}{n - n_loss - bos} prompt, {n_loss} loss) · {fate}",
             "", (style.dim(task.tokenizer.bos_token) if bos else "") + body + style.dim(more)]
    return "\n".join(lines)


def corpus_row(task, row: dict, style: Style, max_chars: int) -> str:
    """A pretraining document: the text after mining, its held-out tail, its tokens and packed rows."""
    from .corpus import holdout_cut

    text = task.document(row)
    cut = holdout_cut(text, task.holdout_fraction)
    head_ids = task.encode([text[:cut]])[0]
    info = f"{len(head_ids)} tokens incl. BOS/EOS, all carry loss · {len(head_ids) / task.max_length:.2f} rows of max_length {task.max_length} once packed"
    if task.holdout_fraction:
        info += f" · last {len(text) - cut} characters held out for validation"
    shown, more = _shorten(text, max_chars)
    body = shown[:cut] + (style.dim(shown[cut:]) if cut < len(shown) else "")
    return f"{info}\n\n{body}{style.dim(more)}"


def token_row(task, row: dict, style: Style) -> str:
    """A row of a generated task ({input_ids, labels}): its text, loss tokens highlighted."""
    ids, loss = row["input_ids"], [label != -100 for label in row["labels"]]
    pieces, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or loss[i] != loss[start]:
            text = task.tokenizer.decode(ids[start:i])
            pieces.append(style.loss(text) if loss[start] else text)
            start = i
    return f"{len(ids)} tokens, {sum(loss)} carry loss\n\n" + "".join(pieces)


def preview_data(cfg, n: int, style: Style, max_chars: int) -> str:
    from omegaconf import OmegaConf

    from ..builders import build
    from .chat import ChatTask
    from .corpus import CorpusTask

    options = OmegaConf.to_container(cfg.data.builder, resolve=True)
    task = build(cfg, "data.builder", tokenizer=build(cfg, "model.tokenizer"))
    title = f"data={cfg.data.name} · builder {options.get('task')}"
    out = []
    if isinstance(task, (ChatTask, CorpusTask)):
        source = task.source
        out.append(_bar(style, f"{title} · source {source.name} · {'streamed' if source.streaming else 'read'} in source order"))
        rows = list(islice(source.rows(task.schema), n))
        for i, row in enumerate(rows):
            body = chat_row(task, row, style, max_chars) if isinstance(task, ChatTask) else corpus_row(task, row, style, max_chars)
            out += ["", style.head(f"row {i + 1} of the first {len(rows)}"), textwrap.indent(body, "  ")]
        if isinstance(task, ChatTask):
            out += ["", style.dim("loss: " + style.loss("highlighted") + "; the rest is context (label -100)")]
    else:
        rows = task.train_dataset()
        out.append(_bar(style, f"{title} · {len(rows)} rows, training order"))
        for i in range(min(n, len(rows))):
            out += ["", style.head(f"row {i + 1}"), textwrap.indent(token_row(task, rows[i], style), "  ")]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# evaluation tasks


def _rule(task, mode: str) -> list[str]:
    """How an answer is checked, in the words of eval/utils.py's rule docstrings."""
    from ..evaluation.harness import eval_utils

    utils = eval_utils()
    process = task.config.process_results
    name = getattr(process, "__name__", None)
    if name in utils.RULES:
        lines = [" ".join(utils.RULES[name][mode].__doc__.split())]
        for metric in task.config.metric_list or []:
            aggregate = metric.get("aggregation")
            if callable(aggregate) and aggregate.__doc__:
                lines.append(f"`{metric['metric']}` over the task: " + " ".join(aggregate.__doc__.split()))
        return lines
    if task.OUTPUT_TYPE == "multiple_choice":
        return ["lm-eval's `acc` (both modes): the option with the highest summed log-likelihood, BOS as the model's tokenizer adds it"]
    return [f"lm-eval's {', '.join(m['metric'] for m in task.config.metric_list or [])}"]


def eval_doc(task, doc: dict, tokenizer, style: Style, max_chars: int, gen_kwargs: dict | None = None) -> str:
    context = task.fewshot_context(doc, task.config.num_fewshot or 0)
    n_prompt = len(tokenizer(context, add_special_tokens=False)["input_ids"])
    shown, more = _shorten(context, max_chars)
    lines = [f"prompt ({n_prompt} tokens):", textwrap.indent(shown + style.dim(more), "  │ ", lambda _: True)]
    if task.OUTPUT_TYPE == "multiple_choice":
        gold = task.doc_to_target(doc)
        counts = doc.get("option_tokens")
        bos = doc.get("add_bos_token")
        lines.append("options (continuation scored after the prompt" + (", no BOS" if bos is False else "") + "):")
        for i, option in enumerate(task.doc_to_choice(doc)):
            mark = style.head("✓ gold") if i == gold else "      "
            tokens = f"  ({counts[i]} tokens)" if counts else ""
            lines.append(f"  {mark} {i}: {task.config.target_delimiter + option!r}{tokens}")
    else:
        settings = {**(task.config.generation_kwargs or {}), **(gen_kwargs or {})}  # as mora.evaluate runs it
        lines.append(f"target: {task.doc_to_target(doc)!r}")
        lines.append(f"generation: greedy, up to {settings.get('max_gen_toks', 256)} tokens, stops at {settings.get('until')}")
    return "\n".join(lines)


def preview_eval(cfg, name: str, n: int, scoring: str, style: Style, max_chars: int) -> str:
    import logging
    import tempfile

    from ..builders import build
    from ..evaluation.harness import task_manager

    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # its notes on metadata are not for this reader

    bench = cfg.benchmark
    if bench.get("write_fixtures") and bench.get("data_dir"):
        from ..evaluation.fixtures import write_fixtures

        write_fixtures(bench.data_dir)
    tokenizer = build(cfg, "model.tokenizer")
    out = []
    with tempfile.TemporaryDirectory(prefix="mora_preview_") as saved:
        tokenizer.save_pretrained(saved)
        metadata = {"scoring": scoring, "tokenizer": saved, **({"data_dir": str(bench.data_dir)} if bench.get("data_dir") else {})}
        tasks = task_manager([name], metadata=metadata).load([name])["tasks"]
        for task_name, task in tasks.items():
            docs = list(islice(task.test_docs() if task.has_test_docs() else task.validation_docs(), n))
            out.append(_bar(style, f"{task_name} · scoring: {scoring} · {task.OUTPUT_TYPE}"))
            out.append(textwrap.indent("\n".join(textwrap.fill(r, 100) for r in _rule(task, scoring)), "  "))
            for i, doc in enumerate(docs):
                out += ["", style.head(f"row {i + 1} of the first {len(docs)}"),
                        textwrap.indent(eval_doc(task, doc, tokenizer, style, max_chars, bench.get("gen_kwargs")), "  ")]
            out.append("")
    return "\n".join(out)


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for mora.train (data=..., data.builder.source=...)")
    parser.add_argument("--n", type=int, default=3, help="rows to show (default 3)")
    parser.add_argument("--eval", metavar="TASK", help="an eval/ task or group instead of the training data")
    parser.add_argument("--scoring", choices=("paper", "standard"), help="with --eval: default benchmark.scoring")
    parser.add_argument("--max-chars", type=int, default=4000, help="characters of each row to print (0: all)")
    parser.add_argument("--plain", action="store_true", help="no colours: loss tokens in ⟦ ⟧")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be at least 1")
    style = Style(not args.plain and sys.stdout.isatty() and not os.environ.get("NO_COLOR"))
    from hydra.errors import HydraException

    try:
        cfg = compose(args.overrides)
        if args.eval:
            text = preview_eval(cfg, args.eval, args.n, args.scoring or cfg.benchmark.get("scoring", "paper"), style, args.max_chars)
        else:
            text = preview_data(cfg, args.n, style, args.max_chars)
    except (ValueError, HydraException) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(text)


if __name__ == "__main__":
    main()
