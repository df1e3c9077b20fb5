# Two commands on a fresh Debian / Raspberry Pi OS machine:
#   make demo   - venv, install, broker, simulators, gateway, live view (DEMO_SECONDS=N to stop by itself)
#   make test   - venv, test dependencies, Mosquitto (apt, when root and missing), pytest
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test venv system-deps bench clean

$(STAMP): setup.cfg pyproject.toml
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); \
	  else echo "python3 -m venv failed: install python3-venv (sudo apt-get install python3-venv)"; exit 1; fi; }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

venv: $(STAMP)

# Mosquitto for the tests; socat for stable-path pty tests. Installed through apt when root and missing;
# Debian's package enables a system broker on port 1883, which a field gateway must not keep running.
system-deps:
	@missing=""; \
	command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	command -v socat >/dev/null || missing="$$missing socat"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	    case "$$missing" in *mosquitto*) \
	      systemctl disable --now mosquitto.service >/dev/null 2>&1 || true; \
	      echo "mosquitto installed for the tests (each starts its own); its system service is disabled";; esac; \
	  else echo "missing:$$missing (sudo apt-get install$$missing)"; exit 1; fi; fi

demo: venv
	$(PY) -m edge_gateway.demo configs/demo.yaml --scenario simulators/scenarios/city_block.yaml

test: venv system-deps
	$(PY) -m pytest -q -n 3

bench: venv system-deps
	$(PY) bench/e2e.py

clean:
	rm -rf $(VENV) run build *.egg-info .pytest_cache .hypothesis
