# dsv4-batch build. `make` builds bin/dsv4-batch; `make test` installs the
# dependencies, builds everything and runs every test through the runner;
# `make demo` runs the demo job. Sources are found by wildcard, one folder per
# module, so adding a file to a module needs no edit here.

CC      ?= cc
PREFIX  ?= /usr/local
PKGS    := libarchive poppler-glib libxml-2.0 sqlite3 vulkan libzstd yaml-0.1 libpcre2-8 jansson libcrypto
CFLAGS  ?= -O2 -g
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -MMD -MP -I. -Ibuild \
           $(shell pkg-config --cflags $(PKGS))
LDLIBS  += $(shell pkg-config --libs $(PKGS)) -lm -lpthread
GLSLC   ?= glslc

MODULES   := engine ingest cache jobs pipeline
LIB_SRCS  := $(filter-out pipeline/main.c,$(wildcard $(addsuffix /*.c,$(MODULES))))
LIB_OBJS  := $(LIB_SRCS:%.c=build/%.o) build/shaders/embedded.o
TEST_SRCS := $(wildcard tests/test_*.c)
TEST_BINS := $(TEST_SRCS:tests/%.c=build/tests/%)
TEST_SUPPORT := $(filter-out tests/runner.c $(TEST_SRCS),$(wildcard tests/*.c))
TEST_SUPPORT_OBJS := $(TEST_SUPPORT:%.c=build/%.o)
SHADER_SRCS := $(wildcard shaders/*.comp shaders/*.glsl) shaders/shaders.list

all: bin/dsv4-batch

bin/dsv4-batch: build/pipeline/main.o build/libdsv4.a
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -o $@ $^ $(LDFLAGS) $(LDLIBS)

build/libdsv4.a: $(LIB_OBJS)
	@rm -f $@
	ar rcs $@ $^

build/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -c -o $@ $<

# Every shader is compiled to SPIR-V and embedded, so the installed program
# needs no shader files at run time.
build/shaders/embedded.c: $(SHADER_SRCS) scripts/build-shaders.sh
	GLSLC=$(GLSLC) scripts/build-shaders.sh shaders build/shaders

build/shaders/embedded.o: build/shaders/embedded.c
	$(CC) $(CFLAGS) -Wno-overlength-strings -c -o $@ $<

build/tests/runner: tests/runner.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -o $@ $< $(LDFLAGS)

build/tests/%: build/tests/%.o $(TEST_SUPPORT_OBJS) build/libdsv4.a
	$(CC) $(CFLAGS) -o $@ $^ $(LDFLAGS) $(LDLIBS)

# CPU reference code must round the same way everywhere.
build/tests/ref_%.o: CFLAGS += -ffp-contract=off

tests: $(TEST_BINS) build/tests/runner bin/dsv4-batch

deps:
	scripts/install-deps.sh

test: deps
	$(MAKE) tests
	build/tests/runner $(TEST_BINS)

asan:
	$(MAKE) BUILD_ASAN=1 CFLAGS="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer" \
	        LDFLAGS="-fsanitize=address,undefined" tests
	build/tests/runner $(TEST_BINS)

demo: deps
	$(MAKE) all
	scripts/demo.sh

install: bin/dsv4-batch
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 755 bin/dsv4-batch $(DESTDIR)$(PREFIX)/bin/dsv4-batch

clean:
	rm -rf build bin

.PHONY: all tests test deps asan demo install clean
-include $(shell find build -name '*.d' 2>/dev/null)
