"""`python -m mora.data.preview`: the first rows of a data config as the model sees them (loss tokens
marked, counts, truncation), and an eval task's prompts, options or targets and answer rule."""

import json

import pytest

from mora.data.preview import main


def test_training_rows_show_the_prompt_the_loss_tokens_and_the_cut(tmp_path, capsys):
    rows = [
        {"type": "GSM_FOBAR", "query": "Ann has x pens and buys 2.\nIf we know the answer to the above question is 5, what is x?",
         "original_question": "Ann has 3 pens and buys 2.", "response": "x + 2 = 5, so x = 3.\nThe answer is: 3"},
        {"type": "GSM_AnsAug", "query": "What is 2+3?", "response": "2+3=5.\nThe answer is: " + "5" * 400},
    ]
    path = tmp_path / "metamath.json"
    path.write_text(json.dumps(rows))
    main(["data=metamath", f"data.builder.source={path}", f"paths.cache_dir={tmp_path / 'cache'}", "--n", "2"])
    out = capsys.readouterr().out
    first, second = out.split("row 2 of the first 2")
    # printed indented by two spaces
    assert "### Input:\n  If we know the answer to the above question is 5, what is x?\n\n  ### Response:⟦x + 2 = 5" in first
    assert "The answer is: 3</s>⟧" in first and "fits max_length 512" in first
    instruction, rest = rows[0]["query"].split("\n", 1)
    prompt = ("Below is an instruction that describes a task, paired with an input that provides further context. Write a "
              f"response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{rest}"
              "\n\n### Response:")
    loss = len(rows[0]["response"]) + 1  # the character tokenizer: a token a character, EOS one token
    assert f"{1 + len(prompt) + loss} tokens (BOS + {len(prompt)} prompt, {loss} loss)" in first
    assert "TRUNCATED to max_length 512" in second and "✂ [max_length 512]" in second
    assert not list((tmp_path / "cache").glob("*/meta.json"))  # nothing was cached


def test_corpus_rows_show_the_mined_document_and_its_held_out_tail(tmp_path, capsys):
    from mora.data.fixtures import write_fixtures

    paths = write_fixtures(tmp_path / "fx", n=2)
    main(["experiment=biomed_cpt_mini", f"data.builder.source={paths['pubmed']}", "+data.builder.holdout_fraction=0.1",
          "--n", "1", "--max-chars", "0"])
    out = capsys.readouterr().out
    assert "pubmed.jsonl.zst · streamed in source order" in out and "all carry loss" in out
    assert "held out for validation" in out and "Question: What is a suitable title for the text above?" in out


def test_eval_tasks_show_prompt_options_and_the_rule_of_each_mode(tmp_path, capsys):
    common = ["benchmark=biomed_mini", f"paths.cache_dir={tmp_path}", "--eval", "adaptllm_usmle", "--n", "1"]
    main(common)
    paper = capsys.readouterr().out
    assert "adaptllm_usmle · scoring: paper · multiple_choice" in paper and "lowest mean per-token loss" in paper
    assert "options (continuation scored after the prompt, no BOS):" in paper and "✓ gold" in paper
    assert "Which drug is the usual first-line treatment?" in paper and "' lisinopril'  (11 tokens)" in paper  # a token a character
    main([*common, "--scoring", "standard"])
    standard = capsys.readouterr().out
    assert "highest summed log-likelihood" in standard and "no BOS" not in standard and "tokens)" not in standard.split("options")[1]
    main(["benchmark=math_mini", f"paths.cache_dir={tmp_path}", "--eval", "metamath_gsm8k", "--n", "1"])
    gsm8k = capsys.readouterr().out
    assert "rounded to an integer" in gsm8k and "target: '" in gsm8k and "up to 48 tokens, stops at ['Question'" in gsm8k


def test_bad_overrides_fail_with_a_message(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["data.builder.no_such_key=1"])
    assert exit_info.value.code == 2 and "error: " in capsys.readouterr().err
