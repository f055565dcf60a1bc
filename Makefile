# Both targets create .venv themselves; a fresh machine needs only Python 3.11 and pip.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# The local run streams demo game rounds so the jackpot pools visibly grow and drop
# (DEMO_ROUNDS_PER_S a second; 0 turns them off).
run: $(STAMP)
	$(PY) -m app.run --demo

test: $(STAMP)
	$(PY) -m pytest -q

# Each script starts its own stack(s); bets, rounds, jackpot and flush measure the plain
# PostgreSQL wallet on that PostgreSQL too. rounds --compare-workers: one worker, then two.
bench: $(STAMP)
	$(PY) -m bench.deposits
	$(PY) -m bench.bets
	$(PY) -m bench.rounds --compare-workers
	$(PY) -m bench.jackpot
	$(PY) -m bench.flush
	$(PY) -m bench.state

clean:
	rm -rf .run
