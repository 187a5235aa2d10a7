# Two commands on a fresh machine: `make demo` and `make test`. Each builds what it needs once;
# stamps keyed on setup.py make later runs skip the installs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
# llm2vec 0.2.3 pins transformers<=4.44.2, so its reference numbers come from a venv of its own.
REF_VENV := .venv-llm2vec
REF_PINS := torch==2.13.0 transformers==4.44.2 tokenizers==0.19.1 peft==0.12.0 accelerate==1.15.0
SETUP_HASH := $(shell cat setup.py Makefile | sha256sum | cut -c1-12)
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
export PYTHONUNBUFFERED := 1
# glibc >= 2.35: malloc asks for transparent huge pages. XLA:CPU's multi-GB per-step temporaries
# otherwise cost millions of 4 KiB page faults: a demo supervised step takes 6.0 s instead of 8.0 s.
export GLIBC_TUNABLES := glibc.malloc.hugetlb=1

.PHONY: setup demo test assets test-assets ref-venv bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.setup-$(SETUP_HASH): | $(PY)
	$(PIP) --upgrade pip
	$(PIP) -e ".[assets]"
	touch $@

$(VENV)/.test-$(SETUP_HASH): $(VENV)/.setup-$(SETUP_HASH)
	$(PIP) -e ".[assets,test]"
	touch $@

$(REF_VENV)/.ref-$(SETUP_HASH):
	$(PYTHON) -m venv $(REF_VENV)
	$(REF_VENV)/bin/python -m pip install --quiet --disable-pip-version-check $(REF_PINS) numpy tqdm
	$(REF_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps llm2vec==0.2.3
	touch $@

setup: $(VENV)/.setup-$(SETUP_HASH)

assets: setup
	$(PY) -m data_pipelines.assets --group=demo

test-assets: setup
	$(PY) -m data_pipelines.assets --group=test

ref-venv: $(REF_VENV)/.ref-$(SETUP_HASH)

# The paper's pipeline in miniature: LLM2VEC4CXR-small (MNTP -> supervised; a finished stage is
# reused), then LLM2CLIP4CXR with that export as its bidirectional text side.
DEMO_TEXT := runs/llm2vec4cxr_demo
demo: assets
	$(PY) -m cxrclip_jax.main --config=configs/llm2vec4cxr.py --workdir=$(DEMO_TEXT)
	$(PY) -m cxrclip_jax.main --config=configs/llm2clip.py --workdir=runs/demo \
	  --config.text.model_dir=$(DEMO_TEXT)/export --config.text.bidirectional=True

test: $(VENV)/.test-$(SETUP_HASH) test-assets ref-venv
	$(PY) -m pytest -q tests

bench: $(VENV)/.test-$(SETUP_HASH) test-assets
	$(PY) benchmarks/text_encoder.py

clean:
	rm -rf $(VENV) $(REF_VENV) runs *.egg-info
