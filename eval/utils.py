"""Helpers for the lm-eval tasks in this directory (referenced from the YAMLs as `!function utils.*`).

Kept free of the `mora` package on purpose: lm-eval loads this file by path, and the task YAMLs stay
usable with a bare `lm_eval --include_path eval/`.

Data: every task reads its hub dataset through `load_split`, which first looks for a local copy
under the `data_dir` metadata key (`lm_eval --metadata '{"data_dir": "DIR"}'`, or
`benchmark.data_dir=DIR` through `mora.evaluate`):

    DIR/<hub path>/<hub config or "default">/<split>.jsonl     (or .json: a JSON list)

e.g. `DIR/AdaptLLM/medicine-tasks/PubMedQA/test.jsonl`. Without a local copy it loads the hub
dataset, so the same YAML serves the offline miniatures and the paper-scale runs.
"""

from __future__ import annotations

import json
import math
import os
import re
from fractions import Fraction
from pathlib import Path

ANSWER_MARKER = "The answer is: "


# ---------------------------------------------------------------------------------------------
# data


def local_split_path(data_dir: str | os.PathLike, hub_path: str, hub_name: str | None, split: str) -> Path | None:
    base = Path(data_dir).expanduser() / hub_path / (hub_name or "default")
    for suffix in (".jsonl", ".json"):
        if (base / f"{split}{suffix}").is_file():
            return base / f"{split}{suffix}"
    return None


def read_rows(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" and text.lstrip().startswith("["):
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


def load_split(hub_path: str, splits: list[str], hub_name: str | None = None, fields: list[str] | None = None,
               data_dir: str | None = None, task_name: str | None = None, **_metadata):
    """A DatasetDict with `splits`, from `data_dir` when a local copy is there, else from the hub."""
    import datasets

    where = task_name or f"{hub_path}/{hub_name or 'default'}"
    local = {s: local_split_path(data_dir, hub_path, hub_name, s) for s in splits} if data_dir else {}
    if local and all(local.values()):
        parts = {}
        for split, path in local.items():
            rows = read_rows(path)
            check_rows(rows, fields or [], f"{where} ({path})")
            parts[split] = datasets.Dataset.from_list(rows)
        return datasets.DatasetDict(parts)
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        wanted = ", ".join(f"{data_dir or 'DIR'}/{hub_path}/{hub_name or 'default'}/{s}.jsonl" for s in splits)
        raise ValueError(
            f"{where}: the hub is offline (HF_HUB_OFFLINE=1) and there is no local copy; write {wanted} "
            "(fixtures: python -m mora.evaluation.fixtures DIR) and pass data_dir=DIR in the metadata "
            "(benchmark.data_dir=DIR with mora.evaluate)"
        )
    loaded = datasets.load_dataset(hub_path, hub_name)
    return datasets.DatasetDict({s: loaded[s] for s in splits})


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
# GSM8K / MATH with MetaMath's prompt: the answer is what follows "The answer is: "


def after_marker(completion: str) -> str | None:
    if ANSWER_MARKER.strip() not in completion:
        return None
    return completion.split(ANSWER_MARKER.strip())[-1].strip()


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")


def parse_number(text: str | None) -> float | None:
    """The first number in `text` (commas dropped, a/b as a fraction)."""
    if text is None:
        return None
    match = _NUMBER.search(text.replace("$", ""))
    if not match:
        return None
    token = match.group(0).replace(",", "")
    try:
        return float(Fraction(token)) if "/" in token else float(token)
    except (ValueError, ZeroDivisionError):
        return None


def gsm8k_gold(doc: dict) -> float:
    return float(doc["answer"].split("####")[-1].strip().replace(",", ""))


def process_gsm8k(doc: dict, results: list[str]) -> dict[str, float]:
    predicted = parse_number(after_marker(results[0]))
    gold = gsm8k_gold(doc)
    correct = predicted is not None and math.isclose(predicted, gold, rel_tol=0, abs_tol=1e-6)
    return {"exact_match": float(correct)}


def last_boxed(solution: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}) in a MATH solution, braces balanced."""
    start = max(solution.rfind("\\boxed"), solution.rfind("\\fbox"))
    if start < 0:
        return None
    rest = solution[start:]
    if rest.startswith("\\boxed ") and "{" not in rest.split("$")[0]:
        return rest[len("\\boxed ") :].split("$")[0].strip()
    open_at = rest.find("{")
    if open_at < 0:
        return None
    depth = 0
    for i in range(open_at, len(rest)):
        depth += {"{": 1, "}": -1}.get(rest[i], 0)
        if depth == 0:
            return rest[open_at + 1 : i]
    return None


def _fix_frac_braces(s: str) -> str:
    """\\frac12 -> \\frac{1}{2}, \\frac1{b} -> \\frac{1}{b}."""
    out, i = [], 0
    while i < len(s):
        if s.startswith("\\frac", i):
            out.append("\\frac")
            i += 5
            for _ in range(2):
                if i < len(s) and s[i] != "{":
                    out.append("{" + s[i] + "}")
                    i += 1
                elif i < len(s):
                    depth, j = 0, i
                    while j < len(s):
                        depth += {"{": 1, "}": -1}.get(s[j], 0)
                        j += 1
                        if depth == 0:
                            break
                    out.append(s[i:j])
                    i = j
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def normalize_math(answer: str | None) -> str | None:
    """A canonical form of a MATH answer, so that equal answers written differently compare equal
    (spacing, \\left/\\right, \\dfrac, degrees, units in \\text{}, dollar signs, a leading `x =`,
    missing braces, a simple a/b, a bare leading decimal point)."""
    if answer is None:
        return None
    s = answer.strip().replace("\n", "").rstrip(".")
    s = s.replace("\\!", "").replace("\\\\", "\\").replace("\\$", "").replace("$", "")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac").replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\%", "").replace("%", "")
    s = re.sub(r"\\text\{\s*[a-zA-Z ]*\}\s*$", "", s).strip() if not s.startswith("\\text") else s
    s = re.sub(r"\\(?:text|mbox|mathrm)\{([^{}]*)\}", r"\1", s)
    if re.match(r"^[a-zA-Z]\s*=", s):
        s = s.split("=", 1)[1]
    s = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)
    s = s.replace(" ", "")
    s = _fix_frac_braces(s)
    if re.fullmatch(r"-?\d+/\d+", s):
        num, den = s.split("/")
        s = f"\\frac{{{num}}}{{{den}}}"
    if s.startswith("."):
        s = "0" + s
    if s == "0.5":
        s = "\\frac{1}{2}"
    return s


def math_equivalent(predicted: str | None, gold: str | None) -> bool:
    a, b = normalize_math(predicted), normalize_math(gold)
    if a is None or b is None:
        return False
    if a == b:
        return True
    x, y = parse_number(a), parse_number(b)
    plain = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
    return x is not None and y is not None and bool(plain.fullmatch(a)) and bool(plain.fullmatch(b)) and math.isclose(x, y, abs_tol=1e-9)


def process_math(doc: dict, results: list[str]) -> dict[str, float]:
    return {"exact_match": float(math_equivalent(after_marker(results[0]), last_boxed(doc["solution"])))}


# ---------------------------------------------------------------------------------------------
# AdaptLLM tasks


def _argmax(values) -> int:
    return max(range(len(values)), key=lambda i: values[i])


def process_choice_f1(doc: dict, results) -> dict:
    """Multiple choice scored by accuracy and by the weighted F1 AdaptLLM reports (`score`)."""
    lls = [ll for ll, _ in results]
    predicted, gold = _argmax(lls), int(doc["gold_index"])
    return {"acc": float(predicted == gold), "score": (gold, predicted)}


def weighted_f1(pairs) -> float:
    """F1 per gold class, averaged with weights = class support (sklearn's average='weighted')."""
    pairs = list(pairs)
    if not pairs:
        return 0.0
    classes = sorted({g for g, _ in pairs})
    total = 0.0
    for c in classes:
        tp = sum(1 for g, p in pairs if g == c and p == c)
        fp = sum(1 for g, p in pairs if g != c and p == c)
        fn = sum(1 for g, p in pairs if g == c and p != c)
        f1 = 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)
        total += f1 * sum(1 for g, _ in pairs if g == c)
    return total / len(pairs)


def _normal_answer(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().strip(".").lower())


def process_convfinqa(doc: dict, results: list[str]) -> dict[str, float]:
    """Exact match on the first generated line: equal text, or equal numbers (1% relative, % signs
    and commas ignored)."""
    predicted = results[0].strip().split("\n")[0]
    gold = str(doc["label"])
    same = _normal_answer(predicted) == _normal_answer(gold)
    if not same:
        x, y = parse_number(predicted.replace("%", "")), parse_number(gold.replace("%", ""))
        same = x is not None and y is not None and math.isclose(x, y, rel_tol=1e-2, abs_tol=1e-6)
    return {"exact_match": float(same), "score": float(same)}


_PAREN_ENTITY = re.compile(r"([^,;\n()]+?)\s*\(([^()]+)\)")


def entity_set(text: str) -> set[tuple[str, str]]:
    """Entities with their types, lower case: AdaptLLM's `Borrower (person), Lender (person)` form,
    or else `entity, type` items separated by `;` or new lines."""
    items = {(_normal_answer(name), _normal_answer(kind)) for name, kind in _PAREN_ENTITY.findall(text) if name.strip()}
    if items:
        return items
    for part in re.split(r"[;\n]", text):
        name, sep, kind = part.rpartition(",")
        if sep and name.strip() and kind.strip():
            items.add((_normal_answer(name), _normal_answer(kind)))
    return items


def process_ner(doc: dict, results: list[str]) -> dict:
    predicted, gold = entity_set(results[0]), entity_set(str(doc["label"]))
    return {"score": (len(predicted & gold), len(predicted), len(gold))}


def entity_f1(counts) -> float:
    """Micro F1 over every document's (true positives, predicted, gold) entity counts."""
    tp = sum(c[0] for c in counts)
    predicted = sum(c[1] for c in counts)
    gold = sum(c[2] for c in counts)
    return 0.0 if tp == 0 else 2 * tp / (predicted + gold)
