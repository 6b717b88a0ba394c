# switchboard — build, run and test.
#
#   make            build bin/switchboard and bin/sbctl (warnings are errors)
#   make deps       install missing Debian packages with apt-get
#   make run        deps + build + local redis-server if none answers + start switchboard
#   make check      deps + build + unit tests + corpus replay + integration tests: the quick loop
#   make test       what CI runs: `make check`, then `make asan`, then `make fuzz FUZZ_S=20`
#   make asan       unit, corpus replay and integration against an AddressSanitizer + UBSan build
#   make fuzz       every libFuzzer target in tests/fuzz/ for FUZZ_S seconds (default 60) each
#   make fuzz-replay  every file of tests/corpus/ once through every fuzz target (no libFuzzer)
#   make bench      push-path benchmark, switchboard vs. nginx (installs wrk, nginx); not in test
#   make format / make format-check
#
# Objects of the normal build live in build/, the sanitizer build in build-asan/ and
# bin-asan/, so the two never mix.

CC      ?= cc
BUILD   ?= build
BINDIR  ?= bin
PKGS    := libevent libevent_pthreads libevent_openssl libnghttp2 jansson hiredis openssl

WARN    := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
           -Wvla -Wformat=2 -Wpointer-arith -Wcast-qual -Wundef -Wno-unused-parameter
OPT     ?= -O2 -g
CFLAGS  += -std=c11 -D_GNU_SOURCE $(OPT) $(WARN) -Iinclude -MMD -MP
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null)
LDLIBS  += $(PKG_LIBS) -lhttp_parser -lpthread -lm

# Debian packages the build, the tests and `make run` need. prometheus provides promtool
# (tests check /metrics and deploy/ with it); its Recommends (node-exporter, smartmontools,
# ...) are not wanted, hence --no-install-recommends below.
DEB_PKGS := build-essential pkg-config libevent-dev libnghttp2-dev libjansson-dev \
            libhiredis-dev libssl-dev libhttp-parser-dev libcmocka-dev redis-server \
            redis-tools curl python3 python3-pytest clang-format nghttp2-client prometheus \
            openssl
# Fuzzing (tests/fuzz/): clang with libFuzzer and the sanitizer runtimes, llvm-symbolizer
# for readable stacks.
FUZZ_PKGS := clang libclang-rt-14-dev llvm
# Only for `make bench` (bench/README.md), installed on demand by that target.
BENCH_PKGS := wrk nginx

LIB_SRCS := $(filter-out src/main.c src/sbctl.c,$(wildcard src/*.c))
LIB_OBJS := $(LIB_SRCS:src/%.c=$(BUILD)/%.o)
UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/tests/%)

REDIS_URL ?= redis://127.0.0.1:6379
LISTEN    ?= 127.0.0.1:8080
PY        := /usr/bin/python3

.PHONY: all deps run test check unit integration peers asan bench format format-check clean \
        fuzz fuzz-build fuzz-bins fuzz-replay
all: $(BINDIR)/switchboard $(if $(wildcard src/sbctl.c),$(BINDIR)/sbctl)

$(BUILD)/%.o: src/%.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(PKG_CFLAGS) -c $< -o $@

$(BUILD)/libswitchboard.a: $(LIB_OBJS)
	@rm -f $@
	ar rcs $@ $^

$(BINDIR)/switchboard: $(BUILD)/main.o $(BUILD)/libswitchboard.a
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -o $@ $^ $(LDFLAGS) $(LDLIBS)

$(BINDIR)/sbctl: $(BUILD)/sbctl.o $(BUILD)/libswitchboard.a
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -o $@ $^ $(LDFLAGS) $(LDLIBS)

$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/libswitchboard.a
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(PKG_CFLAGS) -o $@ $< $(BUILD)/libswitchboard.a $(LDFLAGS) $(LDLIBS) -lcmocka

# Installs only what is missing, so a prepared machine pays one dpkg query.
deps:
	@missing=""; for p in $(DEB_PKGS) $(EXTRA_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null || exit 1; \
	fi

run: deps
	@$(MAKE) --no-print-directory all
	@tools/run-local.sh "$(REDIS_URL)" "$(LISTEN)"

unit: $(UNIT_BINS)
	@tools/run-unit.sh $(UNIT_BINS)

# Test peers written in C (tests/peers/*.c): the HTTP/2-only agent.
PEER_BINS := $(BUILD)/peers/h2_agent
$(BUILD)/peers/%: tests/peers/%.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(PKG_CFLAGS) -o $@ $< $(LDFLAGS) $(LDLIBS)

peers: $(PEER_BINS)

integration: all $(PEER_BINS)
	@SB_BIN=$(abspath $(BINDIR)) SB_PEERS=$(abspath $(BUILD))/peers $(PY) -m pytest -q -p no:cacheprovider tests/integration

test: deps
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory unit
	@$(MAKE) --no-print-directory fuzz-replay
	@$(MAKE) --no-print-directory integration
	@$(MAKE) --no-print-directory asan
	@$(MAKE) --no-print-directory fuzz FUZZ_S=$(TEST_FUZZ_S)

check: deps
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory unit
	@$(MAKE) --no-print-directory fuzz-replay
	@$(MAKE) --no-print-directory integration

# The sanitizer build reuses every rule above with other directories and flags.
asan: deps
	@$(MAKE) --no-print-directory BUILD=build-asan BINDIR=bin-asan \
	  OPT="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined" \
	  LDFLAGS="-fsanitize=address,undefined" all unit fuzz-replay integration

# ---- fuzzing: tests/fuzz/fuzz_<target>.c, seeds in tests/corpus/<target>/ ----
# Each target links two ways: with replay.c (any compiler, this build's flags) to run the
# corpus as a regression suite, and with libFuzzer (clang, ASan + UBSan) to search.
FUZZ_TARGETS := $(patsubst tests/fuzz/fuzz_%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_S      ?= 60
TEST_FUZZ_S ?= 20
FUZZ_CC     ?= clang
FUZZ_BUILD  ?= build-fuzz
FUZZ_SAN    := -fsanitize=address,undefined -fno-sanitize-recover=undefined
REPLAY_BINS := $(FUZZ_TARGETS:%=$(BUILD)/replay/%)
FUZZ_BINS   := $(FUZZ_TARGETS:%=$(BUILD)/fuzz/%)
FUZZ_DEPS   := tests/fuzz/fuzz.h tests/fuzz/codec_harness.h $(BUILD)/libswitchboard.a

$(BUILD)/replay/%: tests/fuzz/fuzz_%.c tests/fuzz/replay.c $(FUZZ_DEPS)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(PKG_CFLAGS) -o $@ $< tests/fuzz/replay.c $(BUILD)/libswitchboard.a \
	  $(LDFLAGS) $(LDLIBS)

$(BUILD)/fuzz/%: tests/fuzz/fuzz_%.c $(FUZZ_DEPS)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(PKG_CFLAGS) -fsanitize=fuzzer -o $@ $< $(BUILD)/libswitchboard.a \
	  $(LDFLAGS) $(LDLIBS)

# Every corpus file through every target: a crash, leak or fuzz_check failure fails.
fuzz-replay: $(REPLAY_BINS)
	@for b in $(REPLAY_BINS); do $$b tests/corpus || exit 1; done

fuzz-bins: $(FUZZ_BINS)

# The library itself is instrumented for coverage (fuzzer-no-link) and sanitizers. clang,
# unlike gcc, reports the const cast inside OpenSSL's SSL_CTX_set1_groups_list macro.
fuzz-build: deps
	@$(MAKE) --no-print-directory BUILD=$(FUZZ_BUILD) BINDIR=$(FUZZ_BUILD)/bin CC=$(FUZZ_CC) \
	  WARN="$(WARN) -Wno-cast-qual" \
	  OPT="-O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer-no-link $(FUZZ_SAN)" \
	  LDFLAGS="$(FUZZ_SAN)" fuzz-bins

fuzz: fuzz-build
	@tools/fuzz-run.sh $(FUZZ_S) $(FUZZ_BUILD) $(FUZZ_TARGETS)

# Bounded: four runs of BENCH_DURATION_S (default 10 s) each; see bench/README.md.
bench:
	@$(MAKE) --no-print-directory deps EXTRA_PKGS="$(BENCH_PKGS)"
	@$(MAKE) --no-print-directory all
	@bench/run.sh

format:
	clang-format -i src/*.c include/switchboard/*.h tests/unit/*.c tests/fuzz/*.[ch]

format-check:
	clang-format --dry-run --Werror src/*.c include/switchboard/*.h tests/unit/*.c tests/fuzz/*.[ch]

clean:
	rm -rf build build-asan bin bin-asan $(FUZZ_BUILD)

-include $(LIB_OBJS:.o=.d) $(BUILD)/main.d $(BUILD)/sbctl.d
