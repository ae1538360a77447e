# dsv4-batch build. `make` builds bin/dsv4-batch; `make test` installs the
# dependencies, builds everything and runs every test through the runner;
# `make demo` runs the demo job. Sources are found by wildcard, one folder per
# module, so adding a file to a module needs no edit here.

CC      ?= cc
PREFIX  ?= /usr/local
PKGS    := libarchive poppler-glib libxml-2.0 sqlite3 vulkan libzstd yaml-0.1 libpcre2-8 jansson libcrypto
# Output folders. `make asan` sets them to build-asan/ and bin-asan/ so a
# sanitizer build never mixes its objects with a normal one. Set with := so
# only the command line changes them, never a stray environment variable.
BUILD_DIR := build
BIN_DIR   := bin
CFLAGS  ?= -O2 -g
# override: flags given on the command line (make CFLAGS=... or CC=clang) are
# kept and these are added, so `make CFLAGS="-O1 -fsanitize=address"` works.
override CFLAGS += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -MMD -MP -I. -I$(BUILD_DIR) \
           $(shell pkg-config --cflags $(PKGS))
LDLIBS  += $(shell pkg-config --libs $(PKGS)) -lm -lpthread
GLSLC   ?= glslc
# Debian 13's glslc for the cooperative-matrix shaders (Debian 12's cannot
# compile them); scripts/install-deps.sh unpacks it here, outside BUILD_DIR so
# the asan build shares it.
GLSLC_COOPMAT ?= build/tools/trixie/glslc

MODULES   := engine ingest cache jobs pipeline
LIB_SRCS  := $(filter-out pipeline/main.c,$(wildcard $(addsuffix /*.c,$(MODULES))))
LIB_OBJS  := $(LIB_SRCS:%.c=$(BUILD_DIR)/%.o) $(BUILD_DIR)/shaders/embedded.o
TEST_SRCS := $(wildcard tests/test_*.c)
TEST_BINS := $(TEST_SRCS:tests/%.c=$(BUILD_DIR)/tests/%)
TEST_SUPPORT := $(filter-out tests/runner.c $(TEST_SRCS),$(wildcard tests/*.c))
TEST_SUPPORT_OBJS := $(TEST_SUPPORT:%.c=$(BUILD_DIR)/%.o)
SHADER_SRCS := $(wildcard shaders/*.comp shaders/*.glsl) shaders/shaders.list

all: $(BIN_DIR)/dsv4-batch

# SAN_OBJS: objects only sanitizer builds link into the programs the tests
# start (`make asan`).
SAN_OBJS :=
$(BIN_DIR)/dsv4-batch: $(BUILD_DIR)/pipeline/main.o $(BUILD_DIR)/libdsv4.a $(SAN_OBJS)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -o $@ $^ $(LDFLAGS) $(LDLIBS)

$(BUILD_DIR)/libdsv4.a: $(LIB_OBJS)
	@rm -f $@
	ar rcs $@ $^

$(BUILD_DIR)/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -c -o $@ $<

# Every shader is compiled to SPIR-V and embedded, so the installed program
# needs no shader files at run time.
$(BUILD_DIR)/shaders/embedded.c: $(SHADER_SRCS) scripts/build-shaders.sh | $(GLSLC_COOPMAT)
	GLSLC=$(GLSLC) GLSLC_COOPMAT=$(GLSLC_COOPMAT) scripts/build-shaders.sh shaders $(BUILD_DIR)/shaders

build/tools/trixie/glslc:
	scripts/install-deps.sh coopmat-glslc

$(BUILD_DIR)/shaders/embedded.o: $(BUILD_DIR)/shaders/embedded.c
	$(CC) $(CFLAGS) -Wno-overlength-strings -c -o $@ $<

$(BUILD_DIR)/ingest/tokenizer_embed.o: models/deepseek-v4-tokenizer/tokenizer.json

# Measurement tools (not installed): time to first token with and without the cache.
$(BUILD_DIR)/tools/ttft: bench/ttft.c $(BUILD_DIR)/libdsv4.a
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -o $@ $^ $(LDFLAGS) $(LDLIBS)

# GEMM kernel timings (docs/benchmarks.md): every variant at V4-Flash sizes.
$(BUILD_DIR)/tools/gemm_bench: bench/gemm_bench.c $(BUILD_DIR)/libdsv4.a
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -o $@ $^ $(LDFLAGS) $(LDLIBS)

# bench and conformance alone, linked --as-needed: on a GPU machine it needs
# only the Vulkan loader, jansson and libcrypto (bench/dsv4_bench_main.c).
$(BIN_DIR)/dsv4-bench: bench/dsv4_bench_main.c $(BUILD_DIR)/libdsv4.a $(SAN_OBJS)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -o $@ $^ $(LDFLAGS) -Wl,--as-needed $(LDLIBS)

$(BUILD_DIR)/tests/runner: tests/runner.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -o $@ $< $(LDFLAGS)

$(BUILD_DIR)/tests/%: $(BUILD_DIR)/tests/%.o $(TEST_SUPPORT_OBJS) $(BUILD_DIR)/libdsv4.a
	$(CC) $(CFLAGS) -o $@ $^ $(LDFLAGS) $(LDLIBS)

# Keep the test objects: without this make deletes them as intermediates
# after a first build and compiles them all again on the next one.
.SECONDARY: $(TEST_BINS:=.o) $(TEST_SUPPORT_OBJS)

# CPU reference code must round the same way everywhere.
$(BUILD_DIR)/tests/ref_%.o: override CFLAGS += -ffp-contract=off

tests: $(TEST_BINS) $(BUILD_DIR)/tests/runner $(BIN_DIR)/dsv4-batch $(BUILD_DIR)/tools/gemm_bench $(BIN_DIR)/dsv4-bench

deps:
	scripts/install-deps.sh

test: deps
	$(MAKE) -j$$(nproc) tests
	$(BUILD_DIR)/tests/runner $(TEST_BINS)

# Sanitizers: everything is built again into build-asan/ and bin-asan/ with
# ASan+UBSan, and every test runs from build-asan/root, a tree of links to
# this one in which bin/ is bin-asan/ (the tests run bin/dsv4-batch), so the
# CLI processes the tests start are checked too. Leaks are reported;
# tests/lsan.supp silences only leaks inside the Vulkan driver (Mesa/LLVM),
# which tests/asan_keep_driver.c keeps loaded so that their frames have names.
SAN_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer
SAN_ENV   := ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
             LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp:print_suppressions=0
asan:
	$(MAKE) BUILD_DIR=build-asan BIN_DIR=bin-asan CFLAGS="-O1 -g $(SAN_FLAGS)" LDFLAGS="$(SAN_FLAGS)" \
	    SAN_OBJS=build-asan/tests/asan_keep_driver.o tests
	@rm -rf build-asan/root && mkdir -p build-asan/root
	@for f in * .[!.]*; do case "$$f" in bin|bin-asan|build|build-asan|.git) ;; \
	    *) ln -s "$(CURDIR)/$$f" "build-asan/root/$$f" ;; esac; done
	@ln -s "$(CURDIR)/bin-asan" build-asan/root/bin
	cd build-asan/root && $(SAN_ENV) $(CURDIR)/build-asan/tests/runner \
	    $(patsubst $(BUILD_DIR)/%,$(CURDIR)/build-asan/%,$(TEST_BINS))

demo: deps
	$(MAKE) -j$$(nproc) all
	scripts/demo.sh

install: $(BIN_DIR)/dsv4-batch
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 755 $(BIN_DIR)/dsv4-batch $(DESTDIR)$(PREFIX)/bin/dsv4-batch

# What scripts/gpu-report.sh runs, for a GPU machine that has a Vulkan driver
# and little else: built --as-needed into build-gpu/ (each then needs only the
# Vulkan loader, jansson and libcrypto), stripped, in gpu-bundle/; there:
# BUILD=gpu-bundle BIN=gpu-bundle/bin scripts/gpu-report.sh OUTDIR.
GPU_TESTS := test_vk_ops test_engine_state test_engine_golden test_engine_fork test_engine_chunks test_engine_split
gpu-bundle: deps
	$(MAKE) -j$$(nproc) BUILD_DIR=build-gpu BIN_DIR=build-gpu/bin LDFLAGS="$(LDFLAGS) -Wl,--as-needed" \
	    $(GPU_TESTS:%=build-gpu/tests/%) build-gpu/tools/gemm_bench build-gpu/bin/dsv4-bench
	rm -rf gpu-bundle && mkdir -p gpu-bundle/tests gpu-bundle/tools gpu-bundle/bin
	cp $(GPU_TESTS:%=build-gpu/tests/%) gpu-bundle/tests/
	cp build-gpu/tools/gemm_bench gpu-bundle/tools/
	cp build-gpu/bin/dsv4-bench gpu-bundle/bin/
	strip gpu-bundle/tests/* gpu-bundle/tools/* gpu-bundle/bin/*

clean:
	rm -rf build bin build-asan bin-asan build-gpu gpu-bundle

.PHONY: all tests test deps asan demo install clean gpu-bundle
-include $(shell find $(BUILD_DIR) -name '*.d' -type f -not -path '*/tools/*' 2>/dev/null)

# ---- fuzzing (ingest/) ----------------------------------------------------
# `make fuzz` builds one libFuzzer program per parser entry point
# (build/fuzz/fuzz_NAME, clang -fsanitize=fuzzer,address,undefined) and the
# same targets as plain replay programs (build/fuzz/replay_NAME, any compiler).
# `make fuzz-smoke` runs each fuzzer FUZZ_SECONDS (default 10) from its seed
# corpus; new inputs go to build/fuzz/corpus/NAME, crashes to
# build/fuzz/artifacts/. docs/fuzzing.md says how to run them long. The seeds
# are also replayed by tests/test_fuzz_replay in `make test`.
FUZZ_CC       ?= clang
FUZZ_SECONDS  ?= 10
FUZZ_NAMES    := $(patsubst tests/fuzz/fuzz_%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_LIB_SRCS := $(filter-out ingest/tokenizer%,$(wildcard ingest/*.c))
FUZZ_BASE     := -g -O1 -std=c11 -D_GNU_SOURCE -I. $(shell pkg-config --cflags $(PKGS))
FUZZ_SAN      := -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
FUZZ_SAN_OBJS := $(FUZZ_LIB_SRCS:%.c=build/fuzz/san/%.o)
FUZZ_PLAIN_OBJS := $(FUZZ_LIB_SRCS:%.c=build/fuzz/plain/%.o)

fuzz: $(FUZZ_NAMES:%=build/fuzz/fuzz_%) $(FUZZ_NAMES:%=build/fuzz/replay_%)

build/fuzz/san/%.o: %.c
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_BASE) $(FUZZ_SAN) -fsanitize=fuzzer-no-link -MMD -MP -c -o $@ $<

build/fuzz/plain/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(FUZZ_BASE) -Wall -Wextra -Werror -MMD -MP -c -o $@ $<

build/fuzz/fuzz_%: build/fuzz/san/tests/fuzz/fuzz_%.o $(FUZZ_SAN_OBJS)
	$(FUZZ_CC) $(FUZZ_SAN) -fsanitize=fuzzer -o $@ $^ $(LDLIBS)

build/fuzz/replay_%: build/fuzz/plain/tests/fuzz/fuzz_%.o build/fuzz/plain/tests/fuzz/replay_main.o $(FUZZ_PLAIN_OBJS)
	$(CC) -o $@ $^ $(LDLIBS)

fuzz-smoke: fuzz
	@mkdir -p build/fuzz/artifacts; for t in $(FUZZ_NAMES); do \
	    mkdir -p build/fuzz/corpus/$$t; \
	    echo "fuzz-smoke: $$t for $(FUZZ_SECONDS) s"; \
	    build/fuzz/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -timeout=20 -rss_limit_mb=2048 -malloc_limit_mb=8192 \
	        -max_len=262144 -print_final_stats=1 -artifact_prefix=build/fuzz/artifacts/$$t- \
	        build/fuzz/corpus/$$t tests/fuzz/corpus/$$t > build/fuzz/$$t.log 2>&1 \
	        || { tail -40 build/fuzz/$$t.log; echo "fuzz-smoke: $$t FAILED"; exit 1; }; \
	    grep -E 'stat::number_of_executed_units' build/fuzz/$$t.log; \
	done; echo "fuzz-smoke: no crashes, leaks or sanitizer reports"

fuzz-replay: $(FUZZ_NAMES:%=build/fuzz/replay_%)
	@for t in $(FUZZ_NAMES); do build/fuzz/replay_$$t tests/fuzz/corpus/$$t || exit 1; done

.PHONY: fuzz fuzz-smoke fuzz-replay
