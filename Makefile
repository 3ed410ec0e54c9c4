# fleetsentry: two commands on a fresh machine.
#   make demo   bring the stack up and show it
#   make test   install everything and run the test suite
# Both install what they need: Debian packages (when root), a virtualenv, Kafka's jars.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
EXTRAS ?= edge,cloud,dev
APT_PACKAGES := mosquitto mosquitto-clients kcat prometheus openjdk-17-jre-headless maven chromium chromium-driver
PYTEST_ARGS ?=
TEST_WORKERS ?= 3

.PHONY: format setup system-deps venv constraints jars test test-unit demo demo-down bench lint typecheck \
	doctest docs clean baseline-models baseline-telemetry baseline-payments

setup: system-deps venv jars

# Debian packages: installed when missing and we are root; otherwise say what to run.
system-deps:
	@missing=""; \
	command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	command -v mosquitto_pub >/dev/null 2>&1 || missing="$$missing mosquitto-clients"; \
	command -v kcat >/dev/null 2>&1 || missing="$$missing kcat"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v java >/dev/null 2>&1 || missing="$$missing openjdk-17-jre-headless"; \
	command -v mvn >/dev/null 2>&1 || missing="$$missing maven"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null 2>&1 || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "Installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "Missing Debian packages:$$missing"; \
	    echo "Install them with: sudo apt-get install$$missing"; exit 1; \
	  fi; \
	fi

$(VENV)/.installed: pyproject.toml constraints.txt
	@# A half-made venv (an install cut short) has python but no pip: make it anew.
	@test -x $(PIP) || $(PYTHON) -m venv --clear $(VENV)
	@# setuptools: the Ansible role builds the gateway wheel with this venv's (no build isolation).
	$(PIP) install -q --upgrade pip 'setuptools>=77'
	@# The versions every install gets (`make constraints` refreshes them).
	$(PIP) install -q -c constraints.txt -e '.[$(EXTRAS)]'
	@touch $@

venv: $(VENV)/.installed

# Pin every dependency to the newest versions pyproject.toml allows, as installed now: a
# fresh venv without the old pins, then its versions written to constraints.txt. Run the
# tests on the result before committing it.
constraints:
	rm -rf $(VENV)-constraints
	$(PYTHON) -m venv $(VENV)-constraints
	$(VENV)-constraints/bin/pip install -q --upgrade pip 'setuptools>=77'
	$(VENV)-constraints/bin/pip install -q -e '.[edge,cloud,dev]'
	{ echo "# Every dependency's version, for every install (make setup installs with -c)."; \
	  echo "# Refresh with: make constraints"; \
	  $(VENV)-constraints/bin/pip freeze --exclude-editable | sort -f; } > constraints.txt
	rm -rf $(VENV)-constraints

jars: venv
	$(PY) -m shared.infra.jars

# Test modules run on TEST_WORKERS parallel workers, each module whole on one worker (its
# brokers are per module; at most two of the modules that keep the cores busy at once, see
# tests/scheduling.py). TEST_WORKERS=1 runs them one after another.
test: setup
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-unit: venv
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/fleetsentry demo

demo-down: venv
	$(VENV)/bin/fleetsentry infra down

bench: setup
	@for b in bench/[!_]*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# The models a gateway scores with from its first minute: trained on seeded simulator runs
# and signed with the dev key (~/.config/fleetsentry/model-signing.key, generated if missing).
# Operators re-sign with their own key: fleetsentry cloud train --key THEIR_KEY ...
# Telemetry: sixteen fleets of 50 vehicles, an hour each, four hours apart (every time of day,
# several times), with extra fault episodes to pick the threshold on; split by vehicle, so the
# threshold is chosen on vehicles the model never saw (a gateway's fleet is not the training
# fleet): 400 of them, half the data. The threshold rule allows 0.5 false episodes per 100
# vehicle-hours, so one on 400 hours; on fewer than 200 it allows none, and the threshold is
# then the single worst normal episode's, moving with which vehicles the split holds (120
# validation hours gave 0.36 on one split and 0.68 on another; 400 and 480 gave 0.36 and 0.38).
# Payments: 4 hours of 150 vehicles at the default payment and fraud rates, so card histories
# and velocities are the ones a gateway sees, with telemetry every 2 s: a payment is judged
# against the vehicle's last position, and with sparser telemetry every position is stale, so
# a gateway's fresh ones would all look odd.
# A run is SEED:START_TS.
BASELINE_TELEMETRY_SIM ?= --vehicles 50 --duration 3600 --payment-rate 10 \
	--fault-scale 3 --fraud-scale 2
BASELINE_TELEMETRY_RUNS ?= 20260105:1767574800 20260106:1767589200 20260107:1767603600 \
	20260108:1767618000 20260109:1767632400 20260110:1767646800 \
	20260111:1767661200 20260112:1767675600 20260113:1767690000 \
	20260114:1767704400 20260115:1767718800 20260116:1767733200 \
	20260117:1767747600 20260118:1767762000 20260119:1767776400 \
	20260120:1767790800
BASELINE_TELEMETRY_TRAIN ?= --split vehicle --splits 0.25,0.5,0.25
BASELINE_PAYMENTS_SIM ?= --vehicles 150 --duration 14400 --rate 0.5
BASELINE_PAYMENTS_RUNS ?= 20260105:1767600000
BASELINE_PAYMENTS_TRAIN ?= --split time
baseline-models: baseline-telemetry baseline-payments

baseline-telemetry baseline-payments: baseline-%: venv
	@tmp=$$(mktemp -d); \
	sim='$(BASELINE_TELEMETRY_SIM)'; runs='$(BASELINE_TELEMETRY_RUNS)'; \
	train='$(BASELINE_TELEMETRY_TRAIN)'; \
	if [ $* = payments ]; then sim='$(BASELINE_PAYMENTS_SIM)'; \
	  runs='$(BASELINE_PAYMENTS_RUNS)'; train='$(BASELINE_PAYMENTS_TRAIN)'; fi; \
	for run in $$runs; do \
	  $(VENV)/bin/fleetsentry sim run --dry-run $$sim --seed $${run%%:*} \
	    --start-ts $${run##*:} --out $$tmp/run.jsonl --labels-out $$tmp/run-labels.jsonl \
	    && cat $$tmp/run.jsonl >> $$tmp/events.jsonl \
	    && cat $$tmp/run-labels.jsonl >> $$tmp/labels.jsonl || { rm -rf $$tmp; exit 1; }; \
	done; \
	$(VENV)/bin/fleetsentry cloud train --events $$tmp/events.jsonl --labels $$tmp/labels.jsonl \
	  --stream $* $$train --out shared/models/baseline \
	  --public-key-out shared/models/baseline/fleet.pub; \
	rc=$$?; rm -rf $$tmp; exit $$rc

lint: venv
	$(VENV)/bin/ruff check shared edge cloud firmware-sim tests bench
	$(VENV)/bin/ruff format --check shared edge cloud firmware-sim tests bench
	@$(MAKE) --no-print-directory typecheck doctest

# Rewrite the code in the project's format (what `make lint` checks with --check).
format:
	$(VENV)/bin/ruff format shared edge cloud firmware-sim tests bench

# typecheck and doctest use the virtualenv as it is (no install step, so no network): the
# pre-commit hooks (.pre-commit-config.yaml) run them.
# mypy checks shared, edge, cloud, tests and bench (pyproject.toml's [tool.mypy] files), with
# firmware-sim's types through the link below (its mypy_path), then firmware-sim itself.
typecheck:
	@mkdir -p build/mypy && ln -sfn ../../firmware-sim build/mypy/firmware_sim
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy -p firmware_sim

# The >>> examples in the package's docstrings are tests too.
doctest:
	$(VENV)/bin/pytest -q -p no:cacheprovider --doctest-modules $$(grep -rl --include='*.py' '>>> ' shared edge cloud)

# docs/configuration.md is generated from the config structs (tests/unit/test_config_reference.py
# fails when it is stale).
docs: venv
	$(PY) -m shared.config_reference > docs/configuration.md

clean:
	rm -rf $(VENV) build *.egg-info
