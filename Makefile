# switchboard — build, run, test and install.
#
#   make            build bin/switchboard and bin/sbctl (warnings are errors)
#   make deps       install missing Debian packages that building and running need
#   make test-deps  deps + what the tests add (apt-get, tools/deb-tool.sh, npm ci, clang for fuzzing)
#   make run        deps + build + a local redis-server of its own (AOF, noeviction) + switchboard;
#                   the admin token is kept in run/admin-token and reused
#   make check      test-deps + layer check + build + unit tests + corpus replay + integration
#                   tests: the quick loop
#   make test       what CI runs: `make check`, then `make asan`, then `make fuzz FUZZ_S=20`
#   make install    binaries, man pages, systemd unit, default env file (PREFIX, DESTDIR)
#   make asan       unit, corpus replay and integration against an AddressSanitizer + UBSan build
#   make fuzz       every libFuzzer target in tests/fuzz/ for FUZZ_S seconds (default 60) each
#   make fuzz-replay  every file of tests/corpus/ once through every fuzz target (no libFuzzer)
#   make bench      issue-11 table vs. nginx and HAProxy, queue throughput 1 vs 3 masters; not in test
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
# libcurl is sbctl's HTTP client only; the daemon does not link it.
CURL_CFLAGS = $(shell pkg-config --cflags libcurl 2>/dev/null)
CURL_LIBS   = $(shell pkg-config --libs libcurl 2>/dev/null)

# Debian packages, by who needs them. RUN_PKGS: building and `make run` (the compiler,
# the libraries — libcurl for sbctl only —, redis-server). TEST_PKGS: what the tests add — cmocka, pytest, h2load,
# clang-format, node + npm for examples/js-agent, systemd-analyze, man, docker-compose,
# python3-yaml/python3-kubernetes for the deploy/ checks, and redis-sentinel for the
# Sentinel failover tests (tests/integration/test_redis_sentinel.py).
RUN_PKGS := build-essential pkg-config libevent-dev libnghttp2-dev libjansson-dev \
            libhiredis-dev libssl-dev libhttp-parser-dev libcurl4-openssl-dev redis-server \
            redis-tools curl openssl python3
TEST_PKGS := libcmocka-dev python3-pytest python3-yaml python3-kubernetes clang-format \
             nghttp2-client nodejs systemd man-db groff-base docker-compose redis-sentinel
# promtool and haproxy come inside packages that would also install and start a service
# (Debian's prometheus starts the Prometheus server on :9090, haproxy a haproxy.service).
# The tests need only the programs: tools/deb-tool.sh copies them out of the downloaded
# .deb into $(TOOLS)/bin without installing the package; their shared libraries are
# plain library packages (TOOL_LIB_PKGS). A promtool/haproxy already on PATH is used.
TOOLS         := build/tools
TOOL_LIB_PKGS := liblua5.3-0 libopentracing-c-wrapper0 libpcre2-8-0
JS_AGENT      := examples/js-agent
# Fuzzing (tests/fuzz/): clang with libFuzzer and the sanitizer runtimes, llvm-symbolizer
# for readable stacks. Installed by test-deps.
FUZZ_PKGS := clang libclang-rt-14-dev llvm
# Only for `make bench` (bench/README.md), installed on demand by that target: the load
# generators (wrk, h2load) and the reference front (nginx); HAProxy as for the tests.
BENCH_PKGS := wrk nginx nghttp2-client

LIB_SRCS := $(filter-out src/main.c src/sbctl%.c,$(wildcard src/*.c))
LIB_OBJS := $(LIB_SRCS:src/%.c=$(BUILD)/%.o)
SBCTL_OBJS := $(patsubst src/%.c,$(BUILD)/%.o,$(wildcard src/sbctl*.c))
UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/tests/%)

# make run: empty REDIS_URL = a redis-server of its own on RUN_REDIS_PORT (tools/run-local.sh)
REDIS_URL ?=
RUN_REDIS_PORT ?= 6380
LISTEN    ?= 127.0.0.1:8080
PY        := /usr/bin/python3

.PHONY: all deps test-deps run test check unit integration peers asan bench format format-check \
        clean install uninstall layers fuzz fuzz-build fuzz-bins fuzz-replay
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

$(SBCTL_OBJS): PKG_CFLAGS += $(CURL_CFLAGS)
$(BINDIR)/sbctl: $(SBCTL_OBJS) $(BUILD)/libswitchboard.a
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -o $@ $^ $(LDFLAGS) $(CURL_LIBS) $(LDLIBS)

$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/libswitchboard.a
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(PKG_CFLAGS) -o $@ $< $(BUILD)/libswitchboard.a $(LDFLAGS) $(LDLIBS) -lcmocka

# Installs only what is missing, so a prepared machine pays one dpkg query.
define apt_install
missing=""; for p in $(1); do \
  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
done; \
if [ -n "$$missing" ]; then \
  echo "installing:$$missing"; \
  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null || exit 1; \
fi
endef

deps:
	@$(call apt_install,$(RUN_PKGS) $(EXTRA_PKGS))

# npm comes with NodeSource's nodejs; Debian's nodejs needs the npm package beside it.
test-deps: deps
	@$(call apt_install,$(TEST_PKGS) $(FUZZ_PKGS) $(TOOL_LIB_PKGS) $(if $(shell command -v npm),,npm))
	@command -v promtool >/dev/null || tools/deb-tool.sh $(TOOLS) prometheus usr/bin/promtool
	@command -v haproxy >/dev/null || tools/deb-tool.sh $(TOOLS) haproxy usr/sbin/haproxy
	@$(MAKE) --no-print-directory $(JS_AGENT)/node_modules/.package-lock.json

# examples/js-agent's dependencies, exactly as its lockfile pins them.
$(JS_AGENT)/node_modules/.package-lock.json: $(JS_AGENT)/package-lock.json $(JS_AGENT)/package.json
	cd $(JS_AGENT) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

run: deps
	@$(MAKE) --no-print-directory all
	@RUN_REDIS_PORT=$(RUN_REDIS_PORT) tools/run-local.sh "$(REDIS_URL)" "$(LISTEN)"

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

# The module floors of tools/layers.conf: no upward include, no loop (docs/architecture.md).
layers:
	@tools/check-layers

# What CI runs (.ci/run): the quick loop, then the sanitizer suite, then every fuzz target
# for TEST_FUZZ_S seconds. docs/testing.md has the times.
test: check
	@$(MAKE) --no-print-directory asan
	@$(MAKE) --no-print-directory fuzz FUZZ_S=$(TEST_FUZZ_S)

check: test-deps
	@$(MAKE) --no-print-directory layers
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory unit
	@$(MAKE) --no-print-directory fuzz-replay
	@$(MAKE) --no-print-directory integration

# Installation: `make install PREFIX=/usr DESTDIR=/tmp/pkg`. The unit's ExecStart
# follows PREFIX; the env file in SYSCONFDIR is installed only when none exists there
# (it is the operator's). No admin token is made: the unit's comment says how.
PREFIX     ?= /usr/local
SYSCONFDIR ?= /etc
MANDIR     ?= $(PREFIX)/share/man
UNITDIR    ?= $(PREFIX)/lib/systemd/system
DOCDIR     ?= $(PREFIX)/share/doc/switchboard

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man8 \
	  $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSCONFDIR)/switchboard $(DESTDIR)$(DOCDIR)
	install -m 0755 $(BINDIR)/switchboard $(BINDIR)/sbctl $(DESTDIR)$(PREFIX)/bin/
	install -m 0644 man/switchboard.8 $(DESTDIR)$(MANDIR)/man8/switchboard.8
	install -m 0644 man/sbctl.1 $(DESTDIR)$(MANDIR)/man1/sbctl.1
	sed 's|/usr/local/bin/switchboard|$(PREFIX)/bin/switchboard|' deploy/systemd/switchboard.service \
	  > $(DESTDIR)$(UNITDIR)/switchboard.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/switchboard.service
	[ -e $(DESTDIR)$(SYSCONFDIR)/switchboard/switchboard.env ] || \
	  install -m 0644 deploy/systemd/switchboard.env $(DESTDIR)$(SYSCONFDIR)/switchboard/switchboard.env
	install -m 0644 LICENSE CHANGELOG.md README.md $(DESTDIR)$(DOCDIR)/

# Leaves $(SYSCONFDIR)/switchboard (settings and token) in place.
uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/switchboard $(DESTDIR)$(PREFIX)/bin/sbctl \
	  $(DESTDIR)$(MANDIR)/man8/switchboard.8 $(DESTDIR)$(MANDIR)/man1/sbctl.1 \
	  $(DESTDIR)$(UNITDIR)/switchboard.service
	rm -rf $(DESTDIR)$(DOCDIR)

# The sanitizer build reuses every rule above with other directories and flags.
asan: test-deps
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
fuzz-build: test-deps
	@$(MAKE) --no-print-directory BUILD=$(FUZZ_BUILD) BINDIR=$(FUZZ_BUILD)/bin CC=$(FUZZ_CC) \
	  WARN="$(WARN) -Wno-cast-qual" \
	  OPT="-O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer-no-link $(FUZZ_SAN)" \
	  LDFLAGS="$(FUZZ_SAN)" fuzz-bins

fuzz: fuzz-build
	@tools/fuzz-run.sh $(FUZZ_S) $(FUZZ_BUILD) $(FUZZ_TARGETS)

# Bounded: about 3 minutes with the defaults (bench/README.md has the knobs). HAProxy
# comes out of its .deb like for the tests (tools/deb-tool.sh), its libraries with apt.
bench:
	@$(MAKE) --no-print-directory deps EXTRA_PKGS="$(BENCH_PKGS) $(TOOL_LIB_PKGS)"
	@command -v haproxy >/dev/null || tools/deb-tool.sh $(TOOLS) haproxy usr/sbin/haproxy
	@$(MAKE) --no-print-directory all
	@bench/run.sh
	@bench/queue.sh

format:
	clang-format -i src/*.c src/*.h include/switchboard/*.h tests/unit/*.c tests/fuzz/*.[ch]

format-check:
	clang-format --dry-run --Werror src/*.c src/*.h include/switchboard/*.h tests/unit/*.c tests/fuzz/*.[ch]

clean:
	rm -rf build build-asan bin bin-asan $(FUZZ_BUILD)

-include $(LIB_OBJS:.o=.d) $(BUILD)/main.d $(SBCTL_OBJS:.o=.d)
