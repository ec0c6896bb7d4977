"""The lm-eval tasks under eval/: answer extraction and metrics, every task loading offline from
fixtures in the hub schemas, and scores that mean something (a tiny model overfit on a task's items
scores ~1, a random one ~chance)."""

import importlib.util
import json

import pytest
import torch

from mora.evaluation.harness import EVAL_DIR, Suite, headline, run_suite, task_manager

spec = importlib.util.spec_from_file_location("eval_utils_under_test", EVAL_DIR / "utils.py")
utils = importlib.util.module_from_spec(spec)
spec.loader.exec_module(utils)


# Rows in the upstream schemas (invented content): openai/gsm8k, EleutherAI/hendrycks_math and
# AdaptLLM/finance-tasks ConvFinQA.
def gsm8k(gold: str) -> dict:
    return {"question": "Mia buys 3 pens at $6 each. How much does she pay?",
            "answer": f"Mia pays 3 * 6 = <<3*6=18>>18 dollars.\n#### {gold}"}


def hendrycks(boxed: str) -> dict:
    return {"problem": "Compute $2 + 3$.", "level": "Level 1", "type": "Algebra",
            "solution": f"Adding, $2 + 3 = {boxed}$."}


def convfinqa(label: str) -> dict:
    return {"id": "Single_ABC/2019/page_1.pdf-1", "input": "... what was the change in margin?\nAnswer:", "label": label}


# Issue 15's probes: (task, row, model output, verdict under scoring=paper, verdict under scoring=standard)
PROBES = [
    ("gsm8k", gsm8k("18"), "She pays 18.5 dollars.\nThe answer is: 18.5", True, False),
    ("math", hendrycks("\\boxed{5}"), "2 + 3 = 5.\nThe answer is: 5.0", False, False),
    ("math", hendrycks("\\fbox{2}"), "The answer is: 2", False, True),
    ("math", hendrycks("\\boxed{1000}"), "The answer is: 1,000", False, False),
    ("math", hendrycks("\\boxed{5}"), "The answer is: 5.\nExtra text", True, False),
    ("convfinqa", convfinqa("25%"), " 25", False, False),
    ("convfinqa", convfinqa("1234.5"), " 1240", False, False),
    ("convfinqa", convfinqa("0.004"), " 0.012", True, False),
    ("convfinqa", convfinqa("25%"), " 20% or 25%", True, False),
]


@pytest.mark.parametrize("kind,row,output,paper,standard", PROBES)
def test_the_issue_probes_score_as_each_mode_says(kind, row, output, paper, standard):
    process = getattr(utils, f"process_{kind}")
    metric = "score" if kind == "convfinqa" else "exact_match"
    assert process({**row, "scoring": "paper"}, [output])[metric] == float(paper)
    assert process({**row, "scoring": "standard"}, [output])[metric] == float(standard)


def test_gsm8k_answers_the_metamath_way_and_the_lm_eval_way():
    doc = {**gsm8k("1,234"), "scoring": "paper"}
    assert utils.gsm8k_gold(doc) == 1234
    right = ["So it is 1,234 in all.\nThe answer is: 1,234", "The answer is: $1234.00", "The answer is: 1234.4",
             "The answer is: 2468/2", "The answer is: 7\nThe answer is: 1234"]  # the last marker counts
    wrong = ["1234", "The answer is: 1233", "The answer is:1234", "The answer is: x"]
    assert [utils.process_gsm8k(doc, [o])["exact_match"] for o in right + wrong] == [1.0] * 5 + [0.0] * 4
    assert utils.metamath_gsm8k_number("The answer is: 2.5") == 2 and utils.metamath_gsm8k_number("The answer is: 3.5") == 4
    assert utils.metamath_gsm8k_number("The answer is: 7/0") == 7
    standard = {**doc, "scoring": "standard"}  # the first marker, then string equality up to , $ and a final .
    outputs = ["The answer is: 1,234.", "The answer is: $1234", "The answer is: 1234.0", "The answer is: 1233\nThe answer is: 1234"]
    assert [utils.process_gsm8k(standard, [o])["exact_match"] for o in outputs] == [1.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "predicted,gold,same",
    [
        ("\\frac{1}{2}", "\\dfrac12", True),
        ("0.5", "\\frac{1}{2}", True),
        ("x = 5", "5", True),
        ("10^\\circ", "10", True),
        ("\\$4.50", "4.50", True),
        ("3/4", "\\frac34", True),
        ("\\left( 1, 2 \\right)", "(1,2)", True),
        ("5 \\text{ cm}", "5", True),
        ("\\sqrt2", "\\sqrt{2}", True),
        (".5", "0.5", True),
        ("6", "5", False),
        ("5.0", "5", False),  # MATH's normalisation is textual: no numeric equality
        ("1,000", "1000", False),
        ("$5$", "5", False),  # a bare $ stays
        ("50\\%", "50", True),
        ("50%", "50", False),
        ("y\\frac", "y\\frac", True),  # normalising fails (a \\frac at the end): raw strings compared
        ("y\\frac", "z", False),
        (None, None, True),
        ("5", None, False),
    ],
)
def test_math_answers_compare_after_the_math_normalisation(predicted, gold, same):
    assert utils.is_equiv(predicted, gold) is same


def test_math_gold_is_the_last_boxed_answer():
    solution = "First $\\boxed{1}$ is wrong; finally $x = \\boxed{\\frac{3}{4}}$, not \\fbox{9}."
    assert utils.last_boxed(solution) == "\\boxed{\\frac{3}{4}}" and utils.boxed_content(utils.last_boxed(solution)) == "\\frac{3}{4}"
    for mode in ("paper", "standard"):
        doc = {"solution": solution, "scoring": mode}
        assert utils.process_math(doc, ["... The answer is: 3/4"]) == {"exact_match": 1.0}
        assert utils.process_math(doc, ["The answer is: 1"]) == {"exact_match": 0.0}
        assert utils.process_math(doc, ["3/4"]) == {"exact_match": 0.0}  # no marker, no answer
    assert utils.metamath_math_answer("The answer is: \\frac{3}{4}. \nThe answer is: 7.\n\nDone.") == "7"
    assert utils.process_math({"solution": "$\\boxed{4}$", "scoring": "standard"}, ["The answer is: $4$ apples"])["exact_match"] == 1.0
    assert utils.hendrycks_gold("so \\boxed 7$.") == "7" and utils.boxed_content("\\fbox{2}") is None


def test_convfinqa_reads_numbers_and_percentages():
    assert utils.numbers("Up 1,234.5 or -3 (12 %), .5") == [1234.5, -3.0, 0.12, 0.5]
    paper = lambda label, out: utils.process_convfinqa({"label": label, "scoring": "paper"}, [out])["score"]  # noqa: E731
    assert paper("0.25", " 25%") == 1.0 and paper("25%", " 0.259") == 1.0 and paper("25%", " 0.27") == 0.0
    assert paper("12", " 30\n12") == 0.0  # the first line only
    assert paper("yes", " Yes.") == 1.0 and paper("yes", " no") == 0.0  # a label without a number: its text
    standard = lambda label, out: utils.process_convfinqa({"label": label, "scoring": "standard"}, [out])["score"]  # noqa: E731
    assert standard("1,234.5", " 1234.5\nmore") == 1.0 and standard("12%", "12%.") == 1.0 and standard("12%", "13%") == 0.0


def test_adaptllm_option_scoring_prefers_the_shorter_mean_loss():
    """AdaptLLM's length-bias probe: the gold option is long; summed log-likelihood prefers the short
    one, the mean per token (paper) the long one. Token counts are split as lm-eval splits the pair."""
    from mora.models import char_tokenizer

    row = {"input": "Q: which drug treats hypertension?\nAnswer:", "options": ["no", "lisinopril tablets"], "gold_index": 1}
    tok = char_tokenizer()
    counts = utils.continuation_lengths(tok, row["input"], [" " + o for o in row["options"]])
    assert counts == [3, 19]
    assert utils.continuation_lengths(tok, "Answer: ", ["yes"]) == [4]  # a trailing space moves to the option
    results = [(-4.5, False), (-9.5, False)]  # means -1.5 and -0.5
    assert utils.process_choice({**row, "scoring": "standard"}, results) == {"acc": 0.0}
    assert utils.process_choice({**row, "scoring": "paper", "option_tokens": counts}, results) == {"acc": 1.0}
    with pytest.raises(ValueError, match="option_tokens"):
        utils.process_choice({**row, "scoring": "paper"}, results)


def test_ner_and_headline_aggregates_match_a_worked_example():
    # NER, AdaptLLM rows {input, label}; outputs per example. Paper: names read as one token, so
    # "Tailspin Industries" matches "Fabrikam Industries"; per-example F1 = 2 tp / (predicted + gold).
    examples = [
        ("Ann (person), Contoso Capital (organization)", " Ann (person), Contoso Capital (organization)"),  # 2 of 2
        ("Ben (person), Boston (location)", " Ben (person)"),  # tp 1, predicted 1, gold 2
        ("Fabrikam Industries (organization)", " Tailspin Industries (organization)"),
    ]
    items = {mode: [utils.process_ner({"label": label, "scoring": mode}, [out])["score"] for label, out in examples]
             for mode in ("paper", "standard")}
    assert [i[:3] for i in items["paper"]] == [(2, 2, 2), (1, 1, 2), (1, 1, 1)]
    assert utils.entity_f1(items["paper"]) == pytest.approx((1 + 2 * 1 / (1 + 2) + 1) / 3)  # 8/9
    assert [i[:3] for i in items["standard"]] == [(2, 2, 2), (1, 1, 2), (0, 1, 1)]
    assert utils.entity_f1(items["standard"]) == pytest.approx(2 * 3 / (4 + 5))  # micro: tp 3, predicted 4, gold 5
    assert utils.single_token_entities("Contoso Capital (organization), Ann (person)") == {("capital", "organization"), ("ann", "person")}
    expected = {("ann", "person"), ("contoso capital", "organization"), ("boston", "location")}
    assert utils.entity_set(" Ann (person), Contoso Capital (organization), Boston (Location)") == expected
    assert utils.entity_set("Ann, person; Contoso Capital, organization\nBoston , location") == expected

    # Headline: (gold, predicted) by sub-question class_id. Question 0: (0,0) (1,1) (0,1); question 1:
    # (1,1) (1,1). Weighted F1 of question 0: class 0 (support 2) tp 1 fn 1 -> 2/3, class 1 (support 1)
    # tp 1 fp 1 -> 2/3, so 2/3; question 1: 1. Paper: their mean 5/6. Standard: all five at once,
    # class 0 (support 2) 2/3, class 1 (support 3) tp 3 fp 1 -> 6/7: (2 * 2/3 + 3 * 6/7) / 5.
    pairs = [(0, 0, 0), (1, 1, 0), (0, 1, 0), (1, 1, 1), (1, 1, 1)]
    lls = {0: [(-0.1, True), (-5.0, False)], 1: [(-5.0, False), (-0.1, True)]}  # picks `predicted`
    for mode, expected_score in (("paper", (2 / 3 + 1) / 2), ("standard", (2 * 2 / 3 + 3 * 6 / 7) / 5)):
        scored = []
        for gold, predicted, class_id in pairs:
            doc = {"input": "Headline: ...", "options": ["Yes", "No"], "gold_index": gold, "class_id": class_id,
                   "scoring": mode, "option_tokens": [3, 2]}
            scored.append(utils.process_choice_f1(doc, lls[predicted])["score"])
        assert utils.choice_f1(scored) == pytest.approx(expected_score)
    plain = [(0, 0), (0, 1), (1, 1), (1, 1), (2, 0)]  # FiQA SA / FPB: no class_id, both modes one weighted F1
    assert utils.weighted_f1(plain) == pytest.approx((2 * 0.5 + 2 * 0.8) / 5)
    assert utils.choice_f1([(g, p, None, "paper") for g, p in plain]) == pytest.approx(utils.weighted_f1(plain))


def test_the_281_real_mmlu_dev_questions_parse():
    rows = utils.load_mmlu_dev()["test"]
    assert len(rows) == 281 and len({r["subject"] for r in rows}) == 57
    assert all(len(r["choices"]) == 4 and 0 <= r["answer"] < 4 and r["question"] for r in rows)
    multi_line = [r for r in rows if "Step 4" in r["choices"][0]]
    assert multi_line and all(c.startswith("Step 3") for c in multi_line[0]["choices"])


@pytest.fixture(scope="module")
def saved_tokenizer(tmp_path_factory):
    """The character tokenizer saved as a model directory: what paper scoring counts option tokens with."""
    from mora.models import char_tokenizer

    path = tmp_path_factory.mktemp("tokenizer")
    char_tokenizer().save_pretrained(path)
    return str(path)


def test_every_task_loads_offline_from_fixtures(tmp_path, saved_tokenizer):
    from mora.evaluation.fixtures import fixture_tables, write_fixtures

    write_fixtures(tmp_path, n=8)
    assert (tmp_path / "AdaptLLM" / "finance-tasks" / "ConviFinQA" / "test.json").is_file()  # the hub's layout
    groups = ["metamath_gsm8k", "metamath_math", "adaptllm_biomed", "adaptllm_finance", "mmlu_dev"]
    manager = task_manager(groups, metadata={"data_dir": str(tmp_path), "tokenizer": saved_tokenizer})
    loaded = manager.load(groups)
    assert set(loaded["groups"]) == {"metamath_math", "adaptllm_biomed", "adaptllm_finance"}
    tables = fixture_tables(8)
    docs = {name: list(task.test_docs()) for name, task in loaded["tasks"].items()}
    assert len(docs["metamath_gsm8k"]) == len(tables[("openai/gsm8k", "main", "test")])
    assert len(docs["adaptllm_ner"]) == len(tables[("AdaptLLM/finance-tasks", "NER", "test")])
    assert len(docs["bio_mmlu"]) == 6 * len(tables[("cais/mmlu", "anatomy", "test")])
    assert len(docs["mmlu_dev"]) == 281
    assert {d["scoring"] for name, rows in docs.items() if name not in ("bio_mmlu", "mmlu_dev") for d in rows} == {"paper"}
    usmle = docs["adaptllm_usmle"][0]  # paper scoring: option token counts, no BOS
    assert usmle["add_bos_token"] is False and usmle["option_tokens"] == [1 + len(o) for o in usmle["options"]]
    assert {d["class_id"] for d in docs["adaptllm_headline"]} == set(range(8))  # 8 rows: questions 0-7
    gsm8k = loaded["tasks"]["metamath_gsm8k"]
    prompt = gsm8k.doc_to_text(docs["metamath_gsm8k"][0])
    assert prompt.startswith("Below is an instruction that describes a task.") and prompt.endswith("### Response: Let's think step by step.")
    assert loaded["tasks"]["metamath_math_algebra"].config.generation_kwargs["max_gen_toks"] == 2048  # MetaMath's eval_math.py
    assert loaded["tasks"]["metamath_gsm8k"].config.generation_kwargs["max_gen_toks"] == 512
    assert loaded["tasks"]["adaptllm_convfinqa"].config.generation_kwargs["max_gen_toks"] == 100
    bio = loaded["tasks"]["bio_mmlu"]
    assert bio.doc_to_text(docs["bio_mmlu"][0]).count("Answer:") == 6  # five shots + the question

    standard = task_manager(["adaptllm_usmle"], metadata={"data_dir": str(tmp_path), "scoring": "standard"})
    (row, *_) = standard.load(["adaptllm_usmle"])["tasks"]["adaptllm_usmle"].test_docs()
    assert row["scoring"] == "standard" and "option_tokens" not in row and "add_bos_token" not in row
    with pytest.raises(ValueError, match=r"needs the model's tokenizer: run lm_eval with --model_args pretrained="):
        task_manager(["adaptllm_usmle"], metadata={"data_dir": str(tmp_path)}).load(["adaptllm_usmle"])
    with pytest.raises(ValueError, match=r"scoring must be one of \('paper', 'standard'\), got 'exact'"):
        utils.load_split("openai/gsm8k", ["test"], hub_name="main", data_dir=str(tmp_path), scoring="exact")


def test_a_copy_laid_out_as_on_the_hub_is_found(tmp_path, saved_tokenizer):
    """AdaptLLM's folders differ from its config names (ConvFinQA -> ConviFinQA/, USMLE -> usmle/,
    PubMedQA -> pubmed_qa/) and hold test.json (a JSON list or JSON lines); other repos hold parquet
    shards; local copies may be compressed."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    fin, med = tmp_path / "AdaptLLM" / "finance-tasks", tmp_path / "AdaptLLM" / "medicine-tasks"
    for folder in (fin / "ConviFinQA", med / "usmle", med / "pubmed_qa", tmp_path / "openai" / "gsm8k" / "main"):
        folder.mkdir(parents=True)
    (fin / "ConviFinQA" / "test.json").write_text(json.dumps([convfinqa("25%"), convfinqa("3")]))
    usmle = {"id": 0, "input": "Which drug?\nAnswer:", "options": ["a", "bb", "ccc", "dddd"], "gold_index": 2}
    (med / "usmle" / "test.json").write_text(json.dumps(usmle) + "\n" + json.dumps({**usmle, "id": 1}) + "\n")
    pubmedqa = {"id": 0, "input": "Does it work?\nAnswer:", "options": ["yes", "no", "maybe"], "gold_index": 0}
    (med / "pubmed_qa" / "test.json.zst").write_bytes(zstandard.ZstdCompressor().compress(json.dumps([pubmedqa]).encode()))
    pq.write_table(pa.Table.from_pylist([gsm8k("18")]), tmp_path / "openai" / "gsm8k" / "main" / "test-00000-of-00001.parquet")
    tasks = ["adaptllm_convfinqa", "adaptllm_usmle", "adaptllm_pubmedqa", "metamath_gsm8k"]
    loaded = task_manager(tasks, metadata={"data_dir": str(tmp_path), "tokenizer": saved_tokenizer}).load(tasks)["tasks"]
    docs = {name: list(task.test_docs()) for name, task in loaded.items()}
    assert [d["label"] for d in docs["adaptllm_convfinqa"]] == ["25%", "3"]
    assert [d["id"] for d in docs["adaptllm_usmle"]] == [0, 1] and docs["adaptllm_usmle"][0]["option_tokens"] == [2, 3, 4, 5]
    assert docs["adaptllm_pubmedqa"][0]["options"] == ["yes", "no", "maybe"]
    assert docs["metamath_gsm8k"][0]["answer"].endswith("#### 18")
    # the verdict the task itself gives on the length-bias probe, by mode (gold: the 3-token option)
    results = [(-2.0, False), (-2.5, False), (-3.0, False), (-9.0, False)]  # sums favour "a"; means favour "ccc"
    usmle_task = loaded["adaptllm_usmle"]
    assert usmle_task.process_results(docs["adaptllm_usmle"][0], results) == {"acc": 1.0}
    assert usmle_task.process_results({**docs["adaptllm_usmle"][0], "scoring": "standard"}, results) == {"acc": 0.0}


def test_a_missing_local_copy_offline_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"no local copy; write test.jsonl .* into .*PubMedQA or .*pubmed_qa .*mora.evaluation.fixtures"):
        utils.load_split("AdaptLLM/medicine-tasks", ["test"], hub_name="PubMedQA", data_dir=str(tmp_path), task_name="adaptllm_pubmedqa")
    bad = tmp_path / "AdaptLLM" / "medicine-tasks" / "PubMedQA"
    bad.mkdir(parents=True)
    (bad / "test.jsonl").write_text('{"input": "q", "options": ["yes"]}\n')
    with pytest.raises(ValueError, match=r"lacks field\(s\) \['gold_index'\]"):
        utils.load_split("AdaptLLM/medicine-tasks", ["test"], hub_name="PubMedQA", fields=["input", "options", "gold_index"],
                         data_dir=str(tmp_path))


def test_rows_without_bos_are_scored_without_it():
    """The harness's LM scores a row that says add_bos_token: false without BOS, the others as HFLM
    does (here with BOS): both equal the summed log-probabilities of a direct forward pass."""
    from lm_eval.api.instance import Instance
    from tokenizers.processors import TemplateProcessing

    from mora.evaluation.harness import row_bos_lm
    from mora.models import char_tokenizer

    tok = char_tokenizer()
    tok.backend_tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)])
    assert tok("ab")["input_ids"][0] == tok.bos_token_id
    model = _tiny_model(tok).eval()
    lm = row_bos_lm()(pretrained=model, tokenizer=tok, batch_size=2)
    context, continuation = "Q: up?\nAnswer:", " yes"
    docs = [{"add_bos_token": False}, {}]
    requests = [Instance("loglikelihood", doc, (context, continuation), i, ("t", i, 1)) for i, doc in enumerate(docs)]
    scored = [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]

    def direct(bos: bool) -> float:
        ids = tok(context + continuation, add_special_tokens=bos)["input_ids"]
        n = len(tok(continuation, add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1], -1)
        return sum(logprobs[i - 1, ids[i]].item() for i in range(len(ids) - n, len(ids)))

    assert scored == pytest.approx([direct(False), direct(True)], abs=1e-4)
    assert abs(scored[0] - scored[1]) > 1e-3 and lm.add_bos_token is None


# -- scores mean something ------------------------------------------------------------------------


def _tiny_model(tokenizer, seed=0):
    from mora.models import llama_from_config

    torch.manual_seed(seed)
    return llama_from_config(tokenizer, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, max_position=512,
                             initializer_range=0.125)


def _pairs(tasks: dict) -> list[tuple[str, str]]:
    """(context, right answer) exactly as lm-eval will score them: multiple choice = delimiter + gold
    choice; generation = delimiter + label + the stop sequence."""
    pairs = []
    for task in tasks.values():
        for doc in task.test_docs():
            context, delimiter = task.doc_to_text(doc), task.config.target_delimiter
            if task.OUTPUT_TYPE == "multiple_choice":
                pairs.append((context, delimiter + task.doc_to_choice(doc)[task.doc_to_target(doc)]))
            else:
                pairs.append((context, delimiter + str(task.doc_to_target(doc)) + "\n"))
    return pairs


STEPS = 40  # 30 already reach 100 / 100 (answer-only loss, lr 1e-2)


def _overfit(model, tokenizer, pairs: list[tuple[str, str]], steps: int) -> None:
    """Full-batch AdamW with the loss on the answers only."""
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    rows = [(encode(c), encode(c + a)) for c, a in pairs]
    width = max(len(full) for _, full in rows)
    batch = torch.full((len(rows), width), tokenizer.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (context, full) in enumerate(rows):
        batch[i, : len(full)] = torch.tensor(full)
        labels[i, len(context) : len(full)] = torch.tensor(full[len(context) :])
        mask[i, : len(full)] = 1
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=batch, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def test_overfit_model_scores_one_and_random_model_scores_chance(tmp_path, saved_tokenizer):
    """Through the real task YAMLs: PubMedQA (multiple choice, 3 options) and ConvFinQA (generation,
    exact match on the first line)."""
    from mora.evaluation.fixtures import write_fixtures
    from mora.models import char_tokenizer

    write_fixtures(tmp_path, n=8, seed=3)
    suite = Suite("check", ["adaptllm_pubmedqa", "adaptllm_convfinqa"],
                  {"pubmedqa": "adaptllm_pubmedqa/acc", "convfinqa": "adaptllm_convfinqa/exact_match"})
    tokenizer = char_tokenizer()
    tasks = task_manager(suite.tasks, metadata={"data_dir": str(tmp_path), "tokenizer": saved_tokenizer}).load(suite.tasks)["tasks"]
    kwargs = dict(data_dir=str(tmp_path), batch_size=8)

    chance = headline(run_suite(_tiny_model(tokenizer, seed=1), tokenizer, suite, **kwargs), suite)
    assert chance["convfinqa"] == 0.0
    assert chance["pubmedqa"] <= 75.0  # 3 options: chance is 33 %; 8 items leave room

    model = _tiny_model(tokenizer, seed=1)
    _overfit(model, tokenizer, _pairs(tasks), steps=STEPS)
    trained = headline(run_suite(model, tokenizer, suite, **kwargs), suite)
    assert trained == {"pubmedqa": 100.0, "convfinqa": 100.0}
