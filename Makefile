# `make demo` runs the service end to end; `make test` runs the tests. Both set up what they
# need first: a virtualenv in .venv with the pinned requirements, and for the tests the Node
# packages of the interop tests, Debian's nginx and h2load. `make fuzz`, `make fleet`,
# `make rollout` and `make bench` are described where they are defined, below.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8130
INTEROP := tests/interop

.PHONY: demo test clean fuzz fleet rollout nginx bench install-h2load

demo: $(VENV)/.runtime
	@log=$$(mktemp); shown=0; waited=0; \
	$(PY) server.py --port $(PORT) 2>$$log & server=$$!; \
	trap 'kill $$server 2>/dev/null; wait $$server; tail -n +$$((shown + 1)) $$log; rm -f $$log' EXIT; \
	until grep -q "listening on" $$log; do \
		kill -0 $$server 2>/dev/null && [ $$waited -lt 300 ] || exit 1; \
		sleep 0.1; waited=$$((waited + 1)); \
	done; \
	cat $$log; shown=$$(wc -l <$$log); \
	for message in echo split; do \
		echo "\$$ $(PY) client.py --port $(PORT) --$$message --query \"Hello World\""; \
		$(PY) client.py --port $(PORT) --$$message --query "Hello World" || exit 1; \
	done

# pytest runs in two processes (pytest-xdist), for the two cores of the machine it is sized
# for; `.venv/bin/python -m pytest tests/...` runs a part in one.
test: $(VENV)/.dev $(INTEROP)/node_modules/.installed nginx install-h2load
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy avrohttp
	$(PY) -m pytest -n 2

$(VENV)/.runtime: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt requirements-grpc.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

# The interop tests run the Node Avro implementation avsc. Without Node they skip, saying so.
$(INTEROP)/node_modules/.installed: $(INTEROP)/package.json $(INTEROP)/package-lock.json
	@if ! command -v npm >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null; \
	fi
	@if command -v npm >/dev/null; then \
		cd $(INTEROP) && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed; \
	else \
		echo "npm is not installed: the avsc interop tests will be skipped"; \
	fi

clean:
	rm -rf $(VENV) $(INTEROP)/node_modules .pytest_cache .hypothesis

# The fuzz tests of `make test` with many more inputs: FUZZ_EXAMPLES per test (8 tests), with
# counts printed as they go and Hypothesis's statistics at the end; then GENERATED_EXAMPLES
# generated protocols per test of tests/test_generated_protocols.py (5 tests, avsc included).
FUZZ_EXAMPLES ?= 3000
GENERATED_EXAMPLES ?= 1000

fuzz: $(VENV)/.dev $(INTEROP)/node_modules/.installed
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest tests/avrohttp/test_fuzz.py -s --hypothesis-show-statistics
	GENERATED_EXAMPLES=$(GENERATED_EXAMPLES) $(PY) -m pytest tests/test_generated_protocols.py --hypothesis-show-statistics

# `make fleet`: three servers behind nginx (deploy/nginx.conf), a short load through nginx
# with the real client, how many calls each server answered; then everything is stopped.
# deploy/fleet.py runs nginx from a temporary directory of its own, on free ports: never the
# system's nginx service, nor port 80.
fleet: $(VENV)/.runtime nginx
	@$(PY) -m deploy.fleet

# `make rollout`: a rolling update under load, as Kubernetes does one. Three servers behind
# nginx are replaced in turn (SIGTERM, out of nginx's list a second later, a new one started
# and in the list once GET /health/ready says 200); it prints the calls made and failed, and
# each server's share of them. deploy/rollout.py says how; ROLLOUT_ARGS passes its options
# (`make rollout ROLLOUT_ARGS="--shutdown-delay 0"`; see python -m deploy.rollout --help).
# `--balancer tcp` puts nginx's stream module in front (Debian's libnginx-mod-stream, which
# the nginx target installs), balancing connections as kube-proxy does; with `--scale-up`,
# a third replica joins two under load, and the share it gets shows what
# `--max-connection-age` does (`ROLLOUT_ARGS="--balancer tcp --scale-up"`).
ROLLOUT_ARGS ?=

rollout: $(VENV)/.runtime nginx
	@$(PY) -m deploy.rollout $(ROLLOUT_ARGS)

# tests/test_fleet.py and tests/test_rollout.py run nginx too (Debian's package, and its
# stream module for the rollout's TCP balancer). Without them, those tests skip and say why.
# On a machine with a service manager, installing the package also starts the system's own
# nginx service; nothing here uses it.
NGINX_STREAM := /usr/lib/nginx/modules/ngx_stream_module.so

nginx:
	@if { ! PATH="$$PATH:/usr/sbin" command -v nginx >/dev/null || [ ! -e $(NGINX_STREAM) ]; } \
			&& [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx \
			libnginx-mod-stream >/dev/null; \
	fi
	@PATH="$$PATH:/usr/sbin" command -v nginx >/dev/null \
		|| echo "nginx is not installed: the fleet tests will be skipped"

# `make bench` measures the servers and the client (bench/run.py says how) and writes
# bench/results.json and bench/results.png. `make bench BENCH_SECONDS=2` for a quicker run;
# BENCH_ARGS passes options (see bench/run.py --help): by default each point is run three
# times and the median run reported, since one 5 s run on a shared machine varies by 5%.
BENCH_SECONDS ?= 5
BENCH_ARGS ?= --repeat 3

bench: $(VENV)/.bench $(INTEROP)/node_modules/.installed install-h2load
	$(PY) bench/run.py --seconds $(BENCH_SECONDS) $(BENCH_ARGS)

# The peers (uvicorn, gRPC) and the plot's dependencies, kept out of the test requirements.
$(VENV)/.bench: $(VENV)/.runtime requirements-bench.txt requirements-grpc.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-bench.txt
	touch $@

# h2load, the load generator for HTTP/1.1 and HTTP/2 alike, from Debian's nghttp2-client.
# Without it, make bench stops, saying so, and the tests that run it skip, saying so.
install-h2load:
	@if ! command -v h2load >/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && apt-get install -y -qq nghttp2-client >/dev/null; \
		else \
			echo "h2load is not installed (Debian: apt-get install nghttp2-client)" >&2; \
		fi; \
	fi
