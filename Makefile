# nxcloud developer targets. `make help` lists them.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
# Prerequisites run in order (test = services, then unit, then fuzz), even under make -j.
.NOTPARALLEL:

GO ?= go
SERVICES := deploy/local/services.sh
NXCLOUD_DATA_DIR ?= $(CURDIR)/.data
export NXCLOUD_DATA_DIR
ENV_FILE := $(NXCLOUD_DATA_DIR)/env
# How long each fuzz target runs in `make test` / `make fuzz`.
FUZZTIME ?= 5s
# Extra arguments: make bench BENCH_ARGS='-devices 500', make run RUN_ARGS='...'.
BENCH_ARGS ?=
RUN_ARGS ?=

.PHONY: help build run stop test unit fuzz bench vet clean services env status chaos chaos-metering

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'

build: ## build bin/nxcloud
	$(GO) build -o bin/nxcloud ./cmd/nxcloud

run: ## start PostgreSQL + Redis and run the demo (Ctrl-C stops what it started)
	deploy/local/run.sh $(RUN_ARGS)

stop: ## stop nxcloud, PostgreSQL and Redis running from .data
	$(SERVICES) down

services: ## start (or reuse) PostgreSQL and Redis, write .data/env
	$(SERVICES) up

status: ## show what runs
	$(SERVICES) status

env: ## print .data/env (export lines)
	@$(SERVICES) env

test: services unit fuzz ## services up, go test -race ./..., then every fuzz target briefly

# unit runs the tests against the local services; the race detector needs cgo and a C compiler.
unit:
	@if [ "$$($(GO) env CGO_ENABLED)" != 1 ]; then \
		echo "make test: go test -race needs cgo and a C compiler; install one (apt-get install -y gcc libc6-dev) or set CC" >&2; \
		exit 1; \
	fi
	source "$(ENV_FILE)" && \
	export NXCLOUD_TEST_DATABASE_URL NXCLOUD_TEST_REDIS_URL && \
	$(GO) test -race -count=1 ./...

# fuzz runs each `func FuzzXxx` of the module's packages for $(FUZZTIME); go test -fuzz takes one target at a time.
fuzz:
	@if [ -f "$(ENV_FILE)" ]; then source "$(ENV_FILE)"; fi; \
	$(GO) list -e -f '{{.ImportPath}} {{.Dir}}' ./... | while read -r pkg dir; do \
		[ -n "$$dir" ] || continue; \
		for name in $$(grep -hoE '^func Fuzz[A-Za-z0-9_]*\(' "$$dir"/*_test.go 2>/dev/null | sed -E 's/^func (Fuzz[A-Za-z0-9_]*)\(/\1/' | sort -u); do \
			echo "fuzz $$pkg $$name ($(FUZZTIME))"; \
			$(GO) test -run='^$$' -fuzz="^$$name\$$" -fuzztime=$(FUZZTIME) "$$pkg" </dev/null; \
		done; \
	done

bench: services ## services up, then go run ./cmd/nxcloud bench with BENCH_ARGS
	source "$(ENV_FILE)" && $(GO) run ./cmd/nxcloud bench $(BENCH_ARGS)

chaos: ## ingest fault test on a private PostgreSQL and Redis: SIGKILL nxcloud twice, stop PostgreSQL 60 s, restart Redis (CHAOS_ARGS)
	$(GO) build -o bin/nxcloud ./cmd/nxcloud
	bin/nxcloud chaos $(CHAOS_ARGS)

chaos-metering: services ## kill nxcloud twice and restart Redis under traffic; prove metering exact (CHAOS_ARGS)
	$(GO) build -o bin/nxcloud ./cmd/nxcloud
	source "$(ENV_FILE)" && bin/nxcloud chaos-metering $(CHAOS_ARGS)

vet: ## go vet and gofmt
	$(GO) vet ./...
	@files=$$(git ls-files --cached --others --exclude-standard -- '*.go' | while read -r f; do [ -f "$$f" ] && printf '%s\n' "$$f"; done); \
	if [ -n "$$files" ]; then \
		unformatted=$$(gofmt -l $$files); \
		if [ -n "$$unformatted" ]; then echo "gofmt -l: these files need gofmt -w:" >&2; echo "$$unformatted" >&2; exit 1; fi; \
	fi

clean: ## remove bin/
	rm -rf bin/
