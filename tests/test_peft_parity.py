"""Parity with HF peft 0.21 (LoRA, rsLoRA, DoRA): same outputs and same merged weights for the same
adapter weights. The measured relative errors are printed (`pytest -s`) and written to
/tmp/parity_errors.txt."""

from pathlib import Path

import pytest
import torch

from mora.adapters import adapter_layers, apply_adapters, merge_and_unload, method_defaults

peft = pytest.importorskip("peft")

ERRORS_FILE = Path("/tmp/parity_errors.txt")
R, ALPHA = 3, 10.0  # scaling 10/3 (10/sqrt(3) with rsLoRA): not a power of two


@pytest.fixture(scope="module", autouse=True)
def _errors_file():
    ERRORS_FILE.write_text("# max relative errors, ours vs peft %s\n" % peft.__version__)
    yield


def _record(label: str, errors: dict) -> None:
    line = label + ": " + ", ".join(f"{k}={v:.3e}" for k, v in errors.items())
    print("\n" + line)
    with ERRORS_FILE.open("a") as fh:
        fh.write(line + "\n")


def _rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).abs().max() / b.abs().max()).item()


CASES = [
    ("lora", {}, dict(use_dora=False, use_rslora=False)),
    ("lora-rslora", {"rslora": True}, dict(use_dora=False, use_rslora=True)),
    ("dora", {}, dict(use_dora=True, use_rslora=False)),
    ("dora-rslora", {"rslora": True}, dict(use_dora=True, use_rslora=True)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("label,ours_opts,peft_opts", CASES, ids=[c[0] for c in CASES])
def test_parity_with_peft(label, ours_opts, peft_opts, dtype, make_tiny_llama):
    from peft import LoraConfig, get_peft_model

    method = "dora" if peft_opts["use_dora"] else "lora"
    theirs_base = make_tiny_llama(seed=3).to(dtype)
    ours = make_tiny_llama(seed=3).to(dtype)
    w0 = {k: v.clone() for k, v in ours.state_dict().items()}
    for key, value in theirs_base.state_dict().items():
        assert torch.equal(value, w0[key])

    theirs = get_peft_model(
        theirs_base,
        LoraConfig(r=R, lora_alpha=ALPHA, target_modules=list(method_defaults("lora")["target_modules"]), lora_dropout=0.0, **peft_opts),
    )
    apply_adapters(ours, {"method": method, "r": R, "alpha": ALPHA, **ours_opts})
    theirs.eval()
    ours.eval()

    inner = theirs.base_model.model
    layers = adapter_layers(ours)
    assert len(layers) == 7 * 2
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, layer in layers:
            peft_layer = inner.get_submodule(name)
            if method == "dora":
                # same magnitude init: the row norms of W0
                init_m = peft_layer.lora_magnitude_vector["default"].weight
                torch.testing.assert_close(layer.dora_magnitude, init_m, rtol=1e-6, atol=0)
            a = peft_layer.lora_A["default"].weight
            b = peft_layer.lora_B["default"].weight
            a.copy_(torch.randn(a.shape, generator=gen, dtype=dtype) * 0.3)
            b.copy_(torch.randn(b.shape, generator=gen, dtype=dtype) * 0.3)
            layer.lora_A.copy_(a)
            layer.lora_B.copy_(b)
            if method == "dora":
                m = peft_layer.lora_magnitude_vector["default"].weight
                m.mul_(torch.rand(m.shape, generator=gen, dtype=dtype) + 0.5)
                layer.dora_magnitude.copy_(m)
            assert layer.scaling == pytest.approx(peft_layer.scaling["default"])

    ids = torch.randint(0, 50, (2, 9), generator=gen)
    with torch.no_grad():
        base_logits = make_tiny_llama(seed=3).to(dtype)(ids).logits
        want = theirs(input_ids=ids).logits
        got = ours(ids).logits
    # the adapters really change the output
    assert _rel(want, base_logits) > 1e-2
    out_err = _rel(got, want)

    merged_theirs = theirs.merge_and_unload().state_dict()
    merged_ours = merge_and_unload(ours).state_dict()
    assert set(merged_theirs) == set(merged_ours)
    w_err = max(_rel(merged_ours[k], merged_theirs[k]) for k in merged_ours)
    changed = [k for k in merged_ours if not torch.equal(merged_ours[k], w0[k])]
    assert len(changed) == 14  # every adapted projection, nothing else

    with torch.no_grad():
        merged_err = _rel(ours(ids).logits, want)
    _record(
        f"{label} {str(dtype).replace('torch.', '')}",
        {"outputs": out_err, "merged_weights": w_err, "merged_outputs": merged_err},
    )
    # fp32: peft computes ((x A^T) B^T) s, we compute (x A^T)(s B)^T; the rounding differs and two decoder
    # layers carry it to the logits. The merged weights are formed the same way and agree exactly.
    tol = 2e-5 if dtype == torch.float32 else 1e-12
    assert out_err < tol
    assert w_err < tol / 2
    assert merged_err < tol


@pytest.mark.parametrize("label,ours_opts,peft_opts", CASES, ids=[c[0] for c in CASES])
def test_parity_single_linear_with_bias(label, ours_opts, peft_opts, randomize):
    """One nn.Linear with a bias inside a small module, float64 (the tiny LLaMA's RMSNorm computes in
    float32, which hides float64 differences at the model level). DoRA leaves the bias unscaled."""
    from peft import LoraConfig, get_peft_model

    from mora.adapters import make_adapter

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(24, 10, dtype=torch.float64)

        def forward(self, x):
            return self.proj(x)

    method = "dora" if peft_opts["use_dora"] else "lora"
    torch.manual_seed(5)
    net = Net()
    with torch.no_grad():
        net.proj.bias.normal_()
    base = torch.nn.Linear(24, 10, dtype=torch.float64)
    base.load_state_dict(net.proj.state_dict())
    theirs = get_peft_model(net, LoraConfig(r=R, lora_alpha=ALPHA, target_modules=["proj"], **peft_opts))
    ours = make_adapter(base, method, R, alpha=ALPHA, **ours_opts)
    randomize(ours)
    peft_layer = theirs.base_model.model.proj
    with torch.no_grad():
        peft_layer.lora_A["default"].weight.copy_(ours.lora_A)
        peft_layer.lora_B["default"].weight.copy_(ours.lora_B)
        if method == "dora":
            peft_layer.lora_magnitude_vector["default"].weight.copy_(ours.dora_magnitude)
        x = torch.randn(6, 24, dtype=torch.float64)
        want = theirs(x)
        assert _rel(want, base(x)) > 1e-2
        out_err = _rel(ours(x), want)
    ours.merge()
    merged = theirs.merge_and_unload().proj
    w_err = _rel(ours.base.weight, merged.weight)
    assert torch.equal(ours.base.bias, merged.bias)
    _record(f"{label} single Linear+bias float64", {"outputs": out_err, "merged_weights": w_err})
    assert out_err < 1e-12
    assert w_err < 1e-12


# -- adapter/ in peft's layout: PeftModel.from_pretrained loads what mora-bench saved -------------------

SAVED = [
    ("lora", {}),
    ("lora", {"rslora": True}),
    ("dora", {}),
    ("loraplus", {}),
    ("asylora", {"freeze_A": True}),
    ("relora", {"merge_every": 2}),  # restarted twice below: part of the update is in the base weights
    ("lora", {"target_modules": [r"model\.layers\.0\..*_proj"], "trainable_modules": ["embed_tokens", ".*norm"]}),
]


@pytest.mark.parametrize("method,opts", SAVED, ids=["lora", "rslora", "dora", "loraplus", "asylora", "relora",
                                                      "regex-targets+trained-modules"])
def test_peft_loads_our_adapter_with_the_same_logits(method, opts, make_tiny_llama, randomize, tmp_path):
    from peft import PeftModel

    from mora.adapters import load_adapter, merge_and_reinit, save_adapter

    ours = make_tiny_llama(seed=3)
    apply_adapters(ours, {"method": method, "r": R, "alpha": ALPHA, **opts})
    randomize(ours, std=0.1)
    if method == "relora":
        for _ in range(2):
            merge_and_reinit(ours)
            randomize(ours, std=0.1)
    with torch.no_grad():
        for name, param in ours.named_parameters():
            if param.requires_grad and "lora_" not in name and "magnitude" not in name:
                param.add_(torch.randn_like(param) * 0.1)  # the modules trained whole moved too
    save_adapter(ours, tmp_path)

    ids = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        want = ours(ids).logits
        base = make_tiny_llama(seed=3)
        assert _rel(base(ids).logits, want) > 1e-2
        theirs = PeftModel.from_pretrained(base, tmp_path).eval()
        got = theirs(ids).logits
        reloaded = load_adapter(make_tiny_llama(seed=3), tmp_path).eval()
    _record(f"peft loads our {method} {sorted(opts)}", {"outputs": _rel(got, want)})
    assert _rel(got, want) < 2e-5
    assert _rel(reloaded(ids).logits, want) < 1e-6
    n_lora = sum(1 for n, _ in theirs.named_modules() if n.endswith("lora_A"))
    assert n_lora == (7 if opts.get("target_modules") else 14)  # the regex picks layer 0's projections


def test_a_trained_run_adapter_loads_into_peft_on_the_base_rebuilt_from_the_run(tmp_path):
    """The real CLI path: mora.train writes run/adapter; the base is rebuilt from the run's config (a
    random init under its seed); peft's model gives the logits of the run's merged model."""
    import json

    from peft import PeftModel

    from mora.evaluate import load_model, rebuild_base
    from runner import metrics_files, train_in_process

    train_in_process(tmp_path, "method=relora", "method.r=4", "method.merge_every=2", "method.rewarm_steps=1")
    (path,) = metrics_files(tmp_path)
    run = path.parent
    config = json.loads((run / "config.json").read_text())
    merged, tokenizer = load_model(run, config, "merged")
    base, _ = rebuild_base(config)
    theirs = PeftModel.from_pretrained(base, run / "adapter").eval()
    ids = tokenizer("0f6a1c2e-3b4d-4e5f:", return_tensors="pt").input_ids
    with torch.no_grad():
        assert _rel(theirs(ids).logits, merged.eval()(ids).logits) < 1e-5


def test_mora_adapters_are_not_taken_for_peft_and_old_runs_still_load(make_tiny_llama, randomize, tmp_path):
    import json

    from safetensors.torch import save_file

    from mora.adapters import load_adapter, save_adapter
    from mora.adapters.inject import _adapter_state, _layer_shapes, adapter_config
    from peft import PeftModel

    model = make_tiny_llama()
    apply_adapters(model, {"method": "mora", "r": 2})
    randomize(model, std=0.1)
    save_adapter(model, tmp_path / "mora")
    assert sorted(p.name for p in (tmp_path / "mora").iterdir()) == ["mora_bench_adapter.json",
                                                                      "mora_bench_adapter.safetensors"]
    with pytest.raises(ValueError, match="adapter_config.json"):
        PeftModel.from_pretrained(make_tiny_llama(), tmp_path / "mora")

    # the layout runs had before: our names under peft's file names, {format: 1, config, layers}
    old = tmp_path / "old"
    old.mkdir()
    save_file(_adapter_state(model), str(old / "adapter_model.safetensors"))
    meta = {"format": 1, "config": adapter_config(model).to_dict(), "layers": _layer_shapes(model)}
    (old / "adapter_config.json").write_text(json.dumps(meta))
    ids = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        assert _rel(load_adapter(make_tiny_llama(), old).eval()(ids).logits, model(ids).logits) < 1e-6


def test_the_examples_of_docs_adapters_run_on_a_trained_run(tmp_path, monkeypatch):
    """docs/adapters.md's Python, on a tiny run in place of its `runs/uuid_mini/0123456789ab`: peft's
    model, ours and the exported merged model give the same logits."""
    import re

    from runner import ROOT, metrics_files, train_in_process

    train_in_process(tmp_path / "runs", "method=dora")
    (path,) = metrics_files(tmp_path / "runs")
    text = (ROOT / "docs" / "adapters.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "/data/models" not in b]
    assert len(blocks) == 3, "docs/adapters.md: the examples on a run changed; update this test"
    monkeypatch.chdir(tmp_path)  # `exported/` lands here
    scope: dict = {}
    for block in blocks:
        exec(block.replace("runs/uuid_mini/0123456789ab", str(path.parent)), scope)
    logits = scope["logits"]  # peft's, from the first block
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "exported").eval()
    with torch.no_grad():
        assert _rel(exported(scope["ids"]).logits, logits) < 1e-5
