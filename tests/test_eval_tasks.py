"""The lm-eval tasks under eval/: answer extraction and metrics, every task loading offline from
fixtures in the hub schemas, and scores that mean something (a tiny model overfit on a task's items
scores ~1, a random one ~chance)."""

import importlib.util

import pytest
import torch

from mora.evaluation.harness import EVAL_DIR, Suite, headline, run_suite, task_manager

spec = importlib.util.spec_from_file_location("eval_utils_under_test", EVAL_DIR / "utils.py")
utils = importlib.util.module_from_spec(spec)
spec.loader.exec_module(utils)


def test_gsm8k_answer_is_read_after_the_marker():
    doc = {"answer": "Tom has 3 + 4 = <<3+4=7>>7 apples.\n#### 1,234"}
    assert utils.gsm8k_gold(doc) == 1234
    assert utils.process_gsm8k(doc, ["So it is 1,234 in all.\nThe answer is: 1,234"]) == {"exact_match": 1.0}
    assert utils.process_gsm8k(doc, ["The answer is: $1234.00"]) == {"exact_match": 1.0}
    # no marker: MetaMath's extraction finds nothing, even if the number appears
    assert utils.process_gsm8k(doc, ["1234"]) == {"exact_match": 0.0}
    assert utils.process_gsm8k(doc, ["The answer is: 1233"]) == {"exact_match": 0.0}
    assert utils.parse_number("The answer is: -3/4 cups") == -0.75


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
        ("6", "5", False),
        ("\\sqrt2", "\\sqrt{2}", True),
    ],
)
def test_math_answers_compare_after_normalisation(predicted, gold, same):
    assert utils.math_equivalent(predicted, gold) is same


def test_math_gold_is_the_last_boxed_answer():
    solution = "First $\\boxed{1}$ is wrong; finally $x = \\boxed{\\frac{3}{4}}$."
    assert utils.last_boxed(solution) == "\\frac{3}{4}"
    assert utils.process_math({"solution": solution}, ["... The answer is: 3/4"]) == {"exact_match": 1.0}
    assert utils.process_math({"solution": solution}, ["The answer is: 1"]) == {"exact_match": 0.0}


def test_f1_metrics_match_hand_computed_values():
    # (gold, predicted): class 0 tp 1 fp 1 fn 1 -> F1 1/2; class 1 tp 2 fp 1 -> 4/5; class 2 -> 0;
    # weighted by support (2, 2, 1): (2 * 1/2 + 2 * 4/5 + 0) / 5
    pairs = [(0, 0), (0, 1), (1, 1), (1, 1), (2, 0)]
    assert utils.weighted_f1(pairs) == pytest.approx((2 * 0.5 + 2 * 0.8) / 5)
    expected = {("ann", "person"), ("contoso capital", "organization"), ("boston", "location")}
    assert utils.entity_set(" Ann (person), Contoso Capital (organization), Boston (Location)") == expected
    assert utils.entity_set("Ann, person; Contoso Capital, organization\nBoston , location") == expected
    counts = [utils.process_ner({"label": "Ann (person), Boston (location)"}, [" Ann (person), Paris (location)"])["score"]]
    assert utils.entity_f1(counts) == pytest.approx(0.5)
    assert utils.process_convfinqa({"label": "1,234.5"}, [" 1234.5\nmore"])["score"] == 1.0
    assert utils.process_convfinqa({"label": "12%"}, ["13%"])["score"] == 0.0


def test_the_281_real_mmlu_dev_questions_parse():
    rows = utils.load_mmlu_dev()["test"]
    assert len(rows) == 281 and len({r["subject"] for r in rows}) == 57
    assert all(len(r["choices"]) == 4 and 0 <= r["answer"] < 4 and r["question"] for r in rows)
    multi_line = [r for r in rows if "Step 4" in r["choices"][0]]
    assert multi_line and all(c.startswith("Step 3") for c in multi_line[0]["choices"])


def test_every_task_loads_offline_from_fixtures(tmp_path):
    from mora.evaluation.fixtures import fixture_tables, write_fixtures

    write_fixtures(tmp_path, n=8)
    groups = ["metamath_gsm8k", "metamath_math", "adaptllm_biomed", "adaptllm_finance", "mmlu_dev"]
    manager = task_manager(groups, metadata={"data_dir": str(tmp_path)})
    loaded = manager.load(groups)
    assert set(loaded["groups"]) == {"metamath_math", "adaptllm_biomed", "adaptllm_finance"}
    tables = fixture_tables(8)
    sizes = {name: len(list(task.test_docs())) for name, task in loaded["tasks"].items()}
    assert sizes["metamath_gsm8k"] == len(tables[("openai/gsm8k", "main", "test")])
    assert sizes["adaptllm_ner"] == len(tables[("AdaptLLM/finance-tasks", "NER", "test")])
    assert sizes["bio_mmlu"] == 6 * len(tables[("cais/mmlu", "anatomy", "test")])
    assert sizes["mmlu_dev"] == 281
    gsm8k = loaded["tasks"]["metamath_gsm8k"]
    prompt = gsm8k.doc_to_text(next(iter(gsm8k.test_docs())))
    assert prompt.startswith("Below is an instruction that describes a task.") and prompt.endswith("### Response: Let's think step by step.")
    bio = loaded["tasks"]["bio_mmlu"]
    assert bio.doc_to_text(next(iter(bio.test_docs()))).count("Answer:") == 6  # five shots + the question


def test_a_missing_local_copy_offline_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="no local copy.*mora.evaluation.fixtures"):
        utils.load_split("AdaptLLM/medicine-tasks", ["test"], hub_name="PubMedQA", data_dir=str(tmp_path), task_name="adaptllm_pubmedqa")
    bad = tmp_path / "AdaptLLM" / "medicine-tasks" / "PubMedQA"
    bad.mkdir(parents=True)
    (bad / "test.jsonl").write_text('{"input": "q", "options": ["yes"]}\n')
    with pytest.raises(ValueError, match=r"lacks field\(s\) \['gold_index'\]"):
        utils.load_split("AdaptLLM/medicine-tasks", ["test"], hub_name="PubMedQA", fields=["input", "options", "gold_index"],
                         data_dir=str(tmp_path))


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


def test_overfit_model_scores_one_and_random_model_scores_chance(tmp_path):
    """Through the real task YAMLs: PubMedQA (multiple choice, 3 options) and ConvFinQA (generation,
    exact match on the first line)."""
    from mora.evaluation.fixtures import write_fixtures
    from mora.models import char_tokenizer

    write_fixtures(tmp_path, n=8, seed=3)
    suite = Suite("check", ["adaptllm_pubmedqa", "adaptllm_convfinqa"],
                  {"pubmedqa": "adaptllm_pubmedqa/acc", "convfinqa": "adaptllm_convfinqa/exact_match"})
    tokenizer = char_tokenizer()
    tasks = task_manager(suite.tasks, metadata={"data_dir": str(tmp_path)}).load(suite.tasks)["tasks"]
    kwargs = dict(data_dir=str(tmp_path), batch_size=8)

    chance = headline(run_suite(_tiny_model(tokenizer, seed=1), tokenizer, suite, **kwargs), suite)
    assert chance["convfinqa"] == 0.0
    assert chance["pubmedqa"] <= 75.0  # 3 options: chance is 33 %; 8 items leave room

    model = _tiny_model(tokenizer, seed=1)
    _overfit(model, tokenizer, _pairs(tasks), steps=STEPS)
    trained = headline(run_suite(model, tokenizer, suite, **kwargs), suite)
    assert trained == {"pubmedqa": 100.0, "convfinqa": 100.0}
