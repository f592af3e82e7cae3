# Two entry points for a fresh clone: `make demo` and `make test`.
# Both set everything up themselves (Debian EGL/Mesa libraries, a venv, pip).
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-deps demo test test-fast bench bench-quick clean

system-deps:
	@if ! ldconfig -p | grep -q 'libEGL_mesa.so.0' || ! ldconfig -p | grep -q 'libEGL.so.1' || ! command -v chromium >/dev/null; then \
	  echo "installing $(APT_PACKAGES)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES); \
	fi

$(VENV)/.installed: pyproject.toml
	@df -h . | tail -1 | awk '{print "disk free for the venv: " $$4}'
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --no-cache-dir --upgrade pip
	$(PY) -m pip install -q --no-cache-dir -e '.[train,serve,ray,ann,dev]'
	touch $@

setup: system-deps $(VENV)/.installed

demo: setup
	$(VENV)/bin/ftspl demo --out demo-out

apt-lists:  # the reliability corpus is fetched with apt-get download, which needs package lists
	@ls /var/lib/apt/lists/*Packages* >/dev/null 2>&1 || $(SUDO) apt-get update -qq

# FTSPL_REQUIRE_GL=1: a missing or broken EGL/GL stack fails the GL tests instead of skipping them
test: setup apt-lists
	FTSPL_REQUIRE_GL=1 $(PY) -m pytest -q -m "slow or not slow"

test-fast: setup
	$(PY) -m pytest -q

bench-deps: setup
	$(PY) -m pip install -q --no-cache-dir -e '.[train,dev,bench]'
	$(PY) -m pip install -q --no-cache-dir --no-deps pyrender==0.1.45

bench-quick: bench-deps
	$(PY) benchmarks/run.py --quick

bench: bench-deps
	$(PY) benchmarks/run.py

clean:
	rm -rf demo-out .pytest_cache
