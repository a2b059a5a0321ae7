# shadows — developer tasks. `make help` lists them.

GO   ?= go
SQLC := $(GO) tool -modfile=tools/go.mod sqlc

.PHONY: help test test/short generate verify bench demo vet

help: ## list the targets
	@grep -E '^[a-zA-Z/_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

test: ## run every test with the race detector (finds or starts a PostgreSQL, see README)
	$(GO) test -race -count=1 ./...

test/short: ## run the tests without the race detector
	$(GO) test -count=1 ./...

generate: ## regenerate db/ from queries/ and migrations/ with sqlc
	$(SQLC) generate

verify: ## fail when db/ is stale, code is unformatted, vet complains or go.mod is untidy
	$(SQLC) diff
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) mod tidy -diff
	cd tools && $(GO) mod tidy -diff

bench: ## measure shadows against ../shared/tools/pgfloor on the same database
	$(GO) run ./bench

demo: ## run a worker and a producer through a few of the seed's patterns
	$(GO) run ./examples/demo
