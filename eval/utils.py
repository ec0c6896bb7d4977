"""Helpers for the lm-eval tasks in this directory (referenced from the YAMLs as `!function utils.*`).

Kept free of the `mora` package on purpose: lm-eval loads this file by path, and the task YAMLs stay
usable with a bare `lm_eval --include_path eval/`.

Scoring modes. Every task scores the paper's way by default and lm-eval's standard way on request,
chosen by the `scoring` metadata key (`lm_eval --metadata '{"scoring": "standard"}'`, or
`benchmark.scoring=standard` through `mora.evaluate`); `load_split` stamps the mode on every document
and the `process_*` functions below read it. Both modes generate the same text; they differ in how an
output is checked and, for multiple choice, in how options are ranked:

    paper     GSM8K / MATH: MetaMath's eval_gsm8k.py / eval_math.py (+ util.py's is_equiv);
              AdaptLLM tasks: microsoft/LMOps adaptllm (options by mean per-token loss without BOS,
              ConvFinQA within 0.01, NER per-example F1, Headline F1 per sub-question)
    standard  lm-eval's own conventions: multiple choice by summed log-likelihood (`acc`), generations
              by `exact_match` as lm-eval's gsm8k / hendrycks_math tasks check them, one F1 over a task

Every rule below names its source; the code is written from the behaviour, not copied.

Data: every task reads its hub dataset through `load_split`, which first looks for a local copy under
the `data_dir` metadata key (`lm_eval --metadata '{"data_dir": "DIR"}'`, or `benchmark.data_dir=DIR`
through `mora.evaluate`), in either layout:

    DIR/<hub path>/<hub config or "default">/<split>.jsonl        this project's own layout
    DIR/<hub path>/<folder on the hub>/<split>.json               a copy of the hub repository

with any of .jsonl, .json (a list or JSON lines), .parquet (also `<split>-00000-of-00001.parquet`
shards), and .gz / .zst compressed JSON. The hub folder is the config's name except where the AdaptLLM
repositories name it otherwise (`HUB_FOLDERS`). Without a local copy it loads the hub dataset, so the
same YAML serves the offline miniatures and the paper-scale runs.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import math
import os
import re
from fractions import Fraction
from pathlib import Path

ANSWER_MARKER = "The answer is: "
SCORING_MODES = ("paper", "standard")

# ---------------------------------------------------------------------------------------------
# data

# Folders of the AdaptLLM hub repositories whose name is not the config's (the repos' README configs
# point `ConvFinQA` at ConviFinQA/test.json, and so on); every other config lives in a folder of its
# own name (AdaptLLM: FiQA_SA/, FPB/, Headline/, NER/, RCT/; cais/mmlu: anatomy/, ...; openai/gsm8k: main/).
HUB_FOLDERS = {
    ("AdaptLLM/finance-tasks", "ConvFinQA"): "ConviFinQA",
    ("AdaptLLM/medicine-tasks", "USMLE"): "usmle",
    ("AdaptLLM/medicine-tasks", "PubMedQA"): "pubmed_qa",
}
SPLIT_SUFFIXES = (".jsonl", ".json", ".parquet", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst")


def local_folders(data_dir: str | os.PathLike, hub_path: str, hub_name: str | None) -> list[Path]:
    """Where a local copy of one config may be: this project's layout, then the hub's."""
    base = Path(data_dir).expanduser() / hub_path
    names = [hub_name or "default", HUB_FOLDERS.get((hub_path, hub_name), hub_name or "default")]
    return [base / name for name in dict.fromkeys(names)]


def local_split_files(data_dir: str | os.PathLike, hub_path: str, hub_name: str | None, split: str) -> list[Path] | None:
    """The file(s) of one split in a local copy, or None when there is none."""
    for folder in local_folders(data_dir, hub_path, hub_name):
        for suffix in SPLIT_SUFFIXES:
            if (folder / f"{split}{suffix}").is_file():
                return [folder / f"{split}{suffix}"]
        shards = sorted(folder.glob(f"{split}-*.parquet"))
        if shards:
            return shards
    return None


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    if path.name.endswith(".zst"):
        import zstandard

        return io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(path.open("rb"), closefd=True), encoding="utf-8")
    return path.open(encoding="utf-8")


def read_rows(path: Path) -> list[dict]:
    """Rows of a .parquet file, a JSON list, or JSON lines (either under .json, as the hub's files vary)."""
    if path.name.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    with _open_text(path) as fh:
        text = fh.read()
    if text.lstrip().startswith("["):
        return json.loads(text)
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
    return rows


def check_rows(rows: list[dict], fields: list[str], where: str) -> None:
    if not rows:
        raise ValueError(f"{where}: no rows")
    for i, row in enumerate(rows):
        missing = [f for f in fields if f not in row]
        if missing:
            raise ValueError(
                f"{where}: row {i} lacks field(s) {missing} (has {sorted(row)}); this task expects rows with {fields}"
            )


def scoring_mode(scoring: str | None) -> str:
    mode = scoring or "paper"
    if mode not in SCORING_MODES:
        raise ValueError(f"scoring must be one of {SCORING_MODES}, got {scoring!r} (metadata key `scoring`)")
    return mode


def continuation_lengths(tokenizer, context: str, continuations: list[str]) -> list[int]:
    """How many tokens each continuation has after `context`, split as lm-eval's TemplateLM._encode_pair
    splits a causal pair (trailing spaces of the context move to the continuation; the continuation is
    what the whole encodes to beyond the context's encoding), without special tokens."""
    spaces = len(context) - len(context.rstrip())
    head, moved = (context[:-spaces], context[-spaces:]) if spaces else (context, "")
    ids = tokenizer([head] + [head + moved + c for c in continuations], add_special_tokens=False)["input_ids"]
    return [len(whole) - len(ids[0]) for whole in ids[1:]]


def load_tokenizer(tokenizer=None, pretrained=None, where: str = "this task"):
    """The model's tokenizer, named by the `tokenizer` metadata key or by lm-eval's `pretrained` model
    argument (lm-eval passes its model_args on to the tasks' metadata)."""
    name = tokenizer or pretrained
    if not name or not isinstance(name, (str, os.PathLike)):
        raise ValueError(
            f"{where}: the paper's scoring ranks options by their mean per-token loss, which needs the model's "
            "tokenizer: run lm_eval with --model_args pretrained=... (or --metadata '{\"tokenizer\": ...}'), "
            "or score lm-eval's standard way with --metadata '{\"scoring\": \"standard\"}'"
        )
    return _auto_tokenizer(str(name))


@functools.lru_cache(maxsize=4)
def _auto_tokenizer(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)


def _load_rows(hub_path: str, splits: list[str], hub_name: str | None, fields: list[str], data_dir: str | None,
               where: str) -> dict[str, list[dict]]:
    """{split: rows} from a local copy when `data_dir` holds one, else from the hub."""
    local = {s: local_split_files(data_dir, hub_path, hub_name, s) for s in splits} if data_dir else {}
    if local and all(local.values()):
        parts = {}
        for split, paths in local.items():
            rows = [row for path in paths for row in read_rows(path)]
            check_rows(rows, fields, f"{where} ({', '.join(str(p) for p in paths)})")
            parts[split] = rows
        return parts
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        folders = " or ".join(str(f) for f in local_folders(data_dir or "DIR", hub_path, hub_name))
        raise ValueError(
            f"{where}: the hub is offline (HF_HUB_OFFLINE=1) and there is no local copy; write "
            f"{'/'.join(splits)}.jsonl (or .json, .parquet, .jsonl.zst, ...) into {folders} "
            "(fixtures: python -m mora.evaluation.fixtures DIR) and pass data_dir=DIR in the metadata "
            "(benchmark.data_dir=DIR with mora.evaluate)"
        )
    import datasets

    loaded = datasets.load_dataset(hub_path, hub_name)
    parts = {s: list(loaded[s]) for s in splits}
    for split, rows in parts.items():
        check_rows(rows, fields, f"{where} ({hub_path}/{hub_name or 'default'} {split})")
    return parts


def load_split(hub_path: str, splits: list[str], hub_name: str | None = None, fields: list[str] | None = None,
               data_dir: str | None = None, task_name: str | None = None, scoring: str | None = None,
               option_scoring: str | None = None, tokenizer=None, pretrained=None, **_metadata):
    """A DatasetDict with `splits` (from `data_dir` when a local copy is there, else from the hub), every
    row stamped with the scoring mode. `option_scoring: adaptllm` (the AdaptLLM multiple-choice tasks):
    under the paper's scoring each row also gets `option_tokens`, the token count of each ' ' + option
    after the prompt, and `add_bos_token: false` (mora's harness then scores it without BOS; with bare
    lm-eval pass --model_args add_bos_token=False)."""
    import datasets

    where = task_name or f"{hub_path}/{hub_name or 'default'}"
    mode = scoring_mode(scoring)
    parts = _load_rows(hub_path, splits, hub_name, list(fields or []), data_dir, where)
    if option_scoring not in (None, "adaptllm"):
        raise ValueError(f"{where}: option_scoring must be adaptllm or absent, got {option_scoring!r}")
    tok = load_tokenizer(tokenizer, pretrained, where) if option_scoring and mode == "paper" else None
    out = {}
    for split, rows in parts.items():
        stamped = []
        for row in rows:
            extra = {"scoring": mode}
            if tok is not None:
                extra["option_tokens"] = continuation_lengths(tok, row["input"], [" " + o for o in row["options"]])
                extra["add_bos_token"] = False
            stamped.append({**row, **extra})
        out[split] = datasets.Dataset.from_list(stamped)
    return datasets.DatasetDict(out)


def mmlu_question(row: dict) -> str:
    """One question in lm-eval's standard MMLU format, up to `Answer:`."""
    options = "".join(f"\n{letter}. {text}" for letter, text in zip("ABCD", row["choices"]))
    return f"{row['question'].strip()}{options}\nAnswer:"


def load_mmlu_subjects(subjects: list[str], shots: int = 5, data_dir: str | None = None, **_metadata):
    """cais/mmlu test questions of several subjects as one split; each row's `prompt` carries the
    subject's description line and its first `shots` dev questions with their answers."""
    import datasets

    rows = []
    for subject in subjects:
        parts = load_split("cais/mmlu", ["test", "dev"], hub_name=subject, fields=["question", "choices", "answer"],
                           data_dir=data_dir, task_name=f"bio_mmlu ({subject})")
        header = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
        demos = "".join(f"{mmlu_question(d)} {'ABCD'[int(d['answer'])]}\n\n" for d in list(parts["dev"])[:shots])
        for row in parts["test"]:
            rows.append({"subject": subject, "prompt": header + demos + mmlu_question(row), "answer": int(row["answer"])})
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def load_mmlu_dev(data_dir: str | None = None, **_metadata):
    """The 281 real MMLU dev questions that lm-eval ships inside its flan CoT few-shot prompts
    (`lm_eval/tasks/mmlu/flan_cot_fewshot/_cot_prompts.json`), parsed into cais/mmlu's schema
    {question, subject, choices, answer}. The only real MMLU items available offline."""
    import datasets
    import lm_eval

    path = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "flan_cot_fewshot" / "_cot_prompts.json"
    rows = parse_cot_prompts(json.loads(path.read_text(encoding="utf-8")))
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


_COT_QUESTION = re.compile(r"Q: (?P<body>.*?)\nA: .*?The answer is \((?P<letter>[A-Z])\)\.", re.S)


def split_options(body: str) -> tuple[str, list[str]] | None:
    """'stem (A) a (B) b (C) c (D) d' -> (stem, [a, b, c, d]): the last (D) marker, then the last (C)
    before it, and so on; a marker opens a line or follows a space. Options may span lines."""
    cut, texts = len(body), []
    for letter in "DCBA":
        marks = [m.start() for m in re.finditer(rf"(?:(?<=\s)|^)\({letter}\) ", body[:cut])]
        if not marks:
            return None
        texts.append(body[marks[-1] + 4 : cut].strip())
        cut = marks[-1]
    stem = body[:cut].strip()
    return (stem, texts[::-1]) if stem and all(texts) else None


def parse_cot_prompts(prompts: dict[str, str]) -> list[dict]:
    """Split each subject's few-shot prompt into questions; keep those with options (A)-(D) and an
    answer among them (one college chemistry example answers (E) and is dropped: 281 remain)."""
    rows = []
    for subject, prompt in sorted(prompts.items()):
        for match in _COT_QUESTION.finditer(prompt):
            parsed = split_options(match["body"])
            if parsed is None or match["letter"] not in "ABCD":
                continue
            stem, texts = parsed
            rows.append({"question": stem, "subject": subject, "choices": texts, "answer": "ABCD".index(match["letter"])})
    return rows


# ---------------------------------------------------------------------------------------------
# lm-eval's exact_match (lm_eval/api/metrics.py, after HF evaluate's exact_match): drop every match of
# each regex from prediction and reference, optionally lower-case, then compare the strings


def exact_match(prediction: str, reference: str, regexes_to_ignore=(), ignore_case: bool = False) -> bool:
    for pattern in regexes_to_ignore:
        prediction, reference = re.sub(pattern, "", prediction), re.sub(pattern, "", reference)
    if ignore_case:
        prediction, reference = prediction.lower(), reference.lower()
    return prediction == reference


# lm-eval's gsm8k tasks: exact_match with ignore_case and these regexes_to_ignore
GSM8K_IGNORE = (",", "\\$", "(?s).*#### ", "\\.$")


# ---------------------------------------------------------------------------------------------
# GSM8K with MetaMath's prompt: the answer follows "The answer is: "


def after_marker(completion: str) -> str | None:
    """Text after the last "The answer is: " (MetaMath splits there and keeps the last part)."""
    parts = completion.split(ANSWER_MARKER)
    return parts[-1] if len(parts) > 1 else None


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


# MetaMath eval_gsm8k.py: the first number after the marker, read by this pattern
_METAMATH_NUMBER = re.compile(r"[\-+]?\d*[\.,/]?\d+")


def metamath_gsm8k_number(completion: str) -> int | None:
    """MetaMath's GSM8K answer (eval_gsm8k.py extract_answer_number): the first number after the last
    marker, commas dropped, a/b as a fraction (n/0 as n), rounded to an integer with Python's round
    (18.5 -> 18); None when there is no marker or number."""
    rest = after_marker(completion)
    match = _METAMATH_NUMBER.search(rest.strip()) if rest is not None else None
    if not match:
        return None
    token = match.group()
    if "/" in token:
        numerator, denominator = token.split("/")
        if not (_is_number(numerator) and _is_number(denominator)):
            return None
        if denominator == "0":
            return round(float(numerator.replace(",", "")))
        return round(float(Fraction(token.replace(",", ""))))
    value = float(token.replace(",", ""))
    return None if math.isinf(value) else round(value)


def gsm8k_gold(doc: dict) -> int:
    """MetaMath reads the gold as the integer after "#### " (commas dropped)."""
    return int(doc["answer"].split("#### ")[-1].replace(",", "").strip())


def gsm8k_paper(completion: str, doc: dict) -> bool:
    """MetaMath (eval_gsm8k.py): the first number after the last "The answer is: ", rounded to an
    integer, equals the integer after "#### "."""
    predicted = metamath_gsm8k_number(completion)
    return predicted is not None and float(predicted) == float(gsm8k_gold(doc))


# lm-eval's gsm8k-cot strict-match filter ("The answer is (\-?[0-9\.\,]+)."), on MetaMath's marker
_STRICT_ANSWER = re.compile(r"The answer is: (\-?[0-9\.\,]+)")


def gsm8k_standard(completion: str, doc: dict) -> bool:
    """lm-eval (gsm8k-cot's strict-match): the first number written right after "The answer is: ", as
    a string ("[invalid]" without one), equals the gold answer under exact_match ignoring case, commas,
    dollar signs, a final period and everything up to "#### "."""
    match = _STRICT_ANSWER.search(completion)
    predicted = match.group(1) if match else "[invalid]"
    return exact_match(predicted, doc["answer"], GSM8K_IGNORE, ignore_case=True)


# ---------------------------------------------------------------------------------------------
# MATH: both modes normalise answers with the MATH dataset's own `is_equiv` (Hendrycks et al.'s
# math_equivalence.py), which MetaMath's util.py and lm-eval's hendrycks_math task both use


def last_boxed(solution: str, fbox: bool = True) -> str | None:
    """The last `\\boxed{...}` of a solution, braces balanced (Hendrycks' last_boxed_only_string: the
    last \\boxed, else the last \\fbox, up to its closing brace), returned with its command; None when
    there is none or its braces do not close."""
    start = solution.rfind("\\boxed")
    if start < 0 and fbox:
        start = solution.rfind("\\fbox")
    if start < 0:
        return None
    depth = 0
    for i in range(start, len(solution)):
        if solution[i] == "{":
            depth += 1
        elif solution[i] == "}":
            depth -= 1
            if depth == 0:
                return solution[start : i + 1]
    return None


def boxed_content(boxed: str | None) -> str | None:
    """MetaMath's remove_boxed: the content of `\\boxed{...}`; None for anything else (an \\fbox too)."""
    if boxed is None or not boxed.startswith("\\boxed{") or not boxed.endswith("}"):
        return None
    return boxed[len("\\boxed{") : -1]


def _fix_fracs(s: str) -> str:
    """\\frac12 -> \\frac{1}{2}, \\frac1{b} -> \\frac{1}{b}; a \\frac with fewer than two characters
    after it leaves the string as it was; one at the very end raises (is_equiv then compares raw)."""
    pieces = s.split("\\frac")
    out = pieces[0]
    for piece in pieces[1:]:
        out += "\\frac"
        if piece[0] == "{":
            out += piece
            continue
        if len(piece) < 2:
            return s
        first, second, rest = piece[0], piece[1], piece[2:]
        out += "{" + first + "}" + ("{" + second + "}" if second != "{" else second) + rest
    return out


def _fix_a_slash_b(s: str) -> str:
    """An answer that is exactly int/int becomes \\frac{int}{int}."""
    parts = s.split("/")
    if len(parts) != 2:
        return s
    try:
        a, b = int(parts[0]), int(parts[1])
    except ValueError:
        return s
    return f"\\frac{{{a}}}{{{b}}}" if s == f"{a}/{b}" else s


def _remove_right_units(s: str) -> str:
    """Drop a unit written as "\\text{ ...}" on the right; more than one of them raises."""
    if "\\text{ " not in s:
        return s
    parts = s.split("\\text{ ")
    if len(parts) != 2:
        raise ValueError("more than one \\text{ unit")
    return parts[0]


def _fix_sqrt(s: str) -> str:
    """\\sqrt3 -> \\sqrt{3}; a \\sqrt at the very end raises."""
    pieces = s.split("\\sqrt")
    out = pieces[0]
    for piece in pieces[1:]:
        out += "\\sqrt" + (piece if piece[0] == "{" else "{" + piece[0] + "}" + piece[1:])
    return out


def strip_string(s: str) -> str:
    """The MATH normalisation, step by step in its order: new lines, `\\!`, doubled backslashes,
    t/dfrac, \\left/\\right, degrees, `\\$`, a right unit, `\\%` (a bare % and $ stay), a leading or
    inner bare decimal point, a short `k =` prefix, sqrt braces, spaces, frac braces, 0.5 as 1/2, a/b."""
    for old, new in (("\n", ""), ("\\!", ""), ("\\\\", "\\"), ("tfrac", "frac"), ("dfrac", "frac"),
                     ("\\left", ""), ("\\right", ""), ("^{\\circ}", ""), ("^\\circ", ""), ("\\$", "")):
        s = s.replace(old, new)
    s = _remove_right_units(s)
    s = s.replace("\\%", "").replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    sides = s.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:
        s = sides[1]
    s = _fix_sqrt(s).replace(" ", "")
    s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _fix_a_slash_b(s)


def is_equiv(a: str | None, b: str | None) -> bool:
    """MATH's is_equiv: both missing counts as equal, one missing as different; otherwise the
    normalised strings are compared, or the raw ones when normalising fails."""
    if a is None or b is None:
        return a is None and b is None
    try:
        return strip_string(a) == strip_string(b)
    except (IndexError, ValueError):
        return a == b


def metamath_math_answer(completion: str) -> str | None:
    """MetaMath's MATH answer (eval_math.py process_results): after the last marker, up to the first
    ".\\n", stripped, one final period dropped; None without the marker."""
    rest = after_marker(completion)
    if rest is None:
        return None
    answer = rest.split(".\n")[0].strip()
    return (answer[:-1] if answer.endswith(".") else answer).strip()


def math_paper(completion: str, doc: dict) -> bool:
    """MetaMath (eval_math.py): the answer after the last "The answer is: " (up to ".\\n", one final
    period dropped) is_equiv the content of the solution's last \\boxed{} (an \\fbox gold counts as
    missing, so nothing matches it)."""
    return is_equiv(metamath_math_answer(completion), boxed_content(last_boxed(doc["solution"])))


def math_standard(completion: str, doc: dict) -> bool:
    """lm-eval (hendrycks_math's process_results) on the text after the last "The answer is: ": the
    part between its first and last $ when it has two, else all of it, is_equiv the content of the
    solution's last \\boxed{} or \\fbox{}."""
    answer = after_marker(completion)
    if answer is not None:
        dollars = [i for i, c in enumerate(answer) if c == "$"]
        answer = answer[dollars[0] + 1 : dollars[-1]] if len(dollars) > 1 else answer
    return answer is not None and is_equiv(answer, hendrycks_gold(doc["solution"]))


def hendrycks_gold(solution: str) -> str | None:
    """lm-eval hendrycks_math's gold: what follows the last "\\boxed " up to a $ when the solution has
    one, else the content of its last \\boxed{} or \\fbox{}."""
    if "\\boxed " in solution:
        return solution.split("\\boxed ")[-1].split("$")[0]
    boxed = last_boxed(solution)
    return None if boxed is None else boxed[boxed.index("{") + 1 : -1]


# ---------------------------------------------------------------------------------------------
# AdaptLLM tasks


def _argmax(values) -> int:
    return max(range(len(values)), key=lambda i: values[i])


def choice_paper(doc: dict, lls: list[float]) -> int:
    """AdaptLLM: the option with the lowest mean per-token loss of ' ' + option (the highest mean
    log-likelihood over its `option_tokens`), scored without BOS."""
    if "option_tokens" not in doc:
        raise ValueError("paper scoring of a multiple-choice task needs the rows' option_tokens (load_split "
                         "with option_scoring: adaptllm and the model's tokenizer)")
    return _argmax([ll / max(n, 1) for ll, n in zip(lls, doc["option_tokens"])])


def choice_standard(doc: dict, lls: list[float]) -> int:
    """lm-eval's `acc`: the option with the highest summed log-likelihood of ' ' + option."""
    return _argmax(lls)


def choice_prediction(doc: dict, results) -> int:
    lls = [float(ll) for ll, _ in results]
    return RULES["process_choice"][doc["scoring"]](doc, lls)


def process_choice(doc: dict, results) -> dict[str, float]:
    """Accuracy of the option picked the scoring mode's way."""
    return {"acc": float(choice_prediction(doc, results) == int(doc["gold_index"]))}


def process_choice_f1(doc: dict, results) -> dict:
    """Accuracy and the (gold, predicted, sub-question, mode) item that `choice_f1` aggregates."""
    predicted, gold = choice_prediction(doc, results), int(doc["gold_index"])
    return {"acc": float(predicted == gold), "score": (gold, predicted, doc.get("class_id"), doc["scoring"])}


def weighted_f1(pairs) -> float:
    """F1 per gold class, averaged with weights = class support (sklearn's average='weighted')."""
    pairs = list(pairs)
    if not pairs:
        return 0.0
    total = 0.0
    for c in sorted({g for g, _ in pairs}):
        tp = sum(1 for g, p in pairs if g == c and p == c)
        fp = sum(1 for g, p in pairs if g != c and p == c)
        fn = sum(1 for g, p in pairs if g == c and p != c)
        f1 = 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)
        total += f1 * sum(1 for g, _ in pairs if g == c)
    return total / len(pairs)


def choice_f1(items) -> float:
    """`score` of FiQA SA, FPB and Headline. Paper (AdaptLLM, after BloombergGPT): weighted F1 within
    each sub-question (`class_id`: Headline asks 9 questions of every headline), averaged over the
    sub-questions; a task without class_id is one sub-question. Standard: one weighted F1 over all."""
    items = list(items)
    groups: dict = {}
    for gold, predicted, class_id, mode in items:
        groups.setdefault(class_id if mode == "paper" else None, []).append((gold, predicted))
    return sum(weighted_f1(pairs) for pairs in groups.values()) / len(groups) if groups else 0.0


_NUMBER = re.compile(r"(-?\d[\d,]*(?:\.\d+)?|-?\.\d+)(\s?%)?")


def numbers(text: str) -> list[float]:
    """Every number in `text` in order, commas dropped, one followed by % read as /100."""
    out = []
    for digits, percent in _NUMBER.findall(text):
        try:
            value = float(digits.replace(",", ""))
        except ValueError:
            continue
        out.append(value / 100 if percent else value)
    return out


def first_line(text: str) -> str:
    stripped = text.strip()
    return stripped.split("\n")[0] if stripped else ""


def _normal_text(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().strip(".").lower())


def convfinqa_paper(completion: str, doc: dict) -> bool:
    """AdaptLLM: right when any number in the first generated line is within an absolute 0.01 of the
    label's first number, % read as /100 on both sides (a label without a number, e.g. yes/no: the
    same text, case and spacing aside)."""
    line, label = first_line(completion), str(doc["label"])
    gold = numbers(label)
    if not gold:
        return _normal_text(line) == _normal_text(label)
    return any(math.isclose(x, gold[0], rel_tol=0.0, abs_tol=0.01) for x in numbers(line))


def convfinqa_standard(completion: str, doc: dict) -> bool:
    """lm-eval's exact_match of the first generated line with the label (stripped), ignoring case,
    commas, dollar signs and a final period as lm-eval's gsm8k does."""
    return exact_match(first_line(completion), str(doc["label"]).strip(), (",", "\\$", "\\.$"), ignore_case=True)


def process_convfinqa(doc: dict, results: list[str]) -> dict[str, float]:
    correct = float(RULES["process_convfinqa"][doc["scoring"]](results[0], doc))
    return {"exact_match": correct, "score": correct}


_PAREN_ENTITY = re.compile(r"([^,;\n()]+?)\s*\(([^()]+)\)")
_SINGLE_TOKEN_ENTITY = re.compile(r"(\S+)\s*\(([^()\s]+)\)")


def entity_set(text: str) -> set[tuple[str, str]]:
    """Entities with their types, lower case: AdaptLLM's `Borrower (person), Lender (person)` form,
    or else `entity, type` items separated by `;` or new lines."""
    items = {(_normal_text(name), _normal_text(kind)) for name, kind in _PAREN_ENTITY.findall(text) if name.strip()}
    if items:
        return items
    for part in re.split(r"[;\n]", text):
        name, sep, kind = part.rpartition(",")
        if sep and name.strip() and kind.strip():
            items.add((_normal_text(name), _normal_text(kind)))
    return items


def single_token_entities(text: str) -> set[tuple[str, str]]:
    """AdaptLLM's NER parse: each `name (type)` read as the one whitespace-free token before the
    parenthesised type, so "Contoso Capital (organization)" is ("capital", "organization"); lower case."""
    return {(name.strip(",;").lower(), kind.lower()) for name, kind in _SINGLE_TOKEN_ENTITY.findall(text)}


def ner_paper(completion: str, doc: dict) -> tuple[int, int, int]:
    """AdaptLLM: the entities of the generated text and of the label, each `name (type)` with the name
    cut to the one whitespace-free token before the parenthesis, as (true positives, predicted, gold)
    of this example."""
    predicted, gold = single_token_entities(completion), single_token_entities(str(doc["label"]))
    return len(predicted & gold), len(predicted), len(gold)


def ner_standard(completion: str, doc: dict) -> tuple[int, int, int]:
    """The entities of the generated text and of the label as (whole name, type) pairs, lower case
    (`name (type)` items, or `name, type` lines), as (true positives, predicted, gold) of this example."""
    predicted, gold = entity_set(completion), entity_set(str(doc["label"]))
    return len(predicted & gold), len(predicted), len(gold)


def process_ner(doc: dict, results: list[str]) -> dict:
    mode = doc["scoring"]
    return {"score": (*RULES["process_ner"][mode](results[0], doc), mode)}


def _f1(tp: int, predicted: int, gold: int) -> float:
    if not predicted and not gold:
        return 1.0  # nothing to find and nothing found (where AdaptLLM's rule is silent)
    return 2 * tp / (predicted + gold)


def entity_f1(counts) -> float:
    """`score` of NER. Paper (AdaptLLM): the mean over examples of each example's F1. Standard: one
    micro F1 over every example's (true positives, predicted, gold) entity counts."""
    counts = list(counts)
    if not counts:
        return 0.0
    if counts[0][3] == "paper":
        return sum(_f1(tp, p, g) for tp, p, g, _ in counts) / len(counts)
    return _f1(sum(c[0] for c in counts), sum(c[1] for c in counts), sum(c[2] for c in counts))


# ---------------------------------------------------------------------------------------------
# the tasks' process_results, and the rule each mode applies (the preview prints their docstrings)


def process_gsm8k(doc: dict, results: list[str]) -> dict[str, float]:
    return {"exact_match": float(RULES["process_gsm8k"][doc["scoring"]](results[0], doc))}


def process_math(doc: dict, results: list[str]) -> dict[str, float]:
    return {"exact_match": float(RULES["process_math"][doc["scoring"]](results[0], doc))}


RULES = {
    "process_gsm8k": {"paper": gsm8k_paper, "standard": gsm8k_standard},
    "process_math": {"paper": math_paper, "standard": math_standard},
    "process_choice": {"paper": choice_paper, "standard": choice_standard},
    "process_choice_f1": {"paper": choice_paper, "standard": choice_standard},
    "process_convfinqa": {"paper": convfinqa_paper, "standard": convfinqa_standard},
    "process_ner": {"paper": ner_paper, "standard": ner_standard},
}
