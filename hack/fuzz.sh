#!/usr/bin/env bash
# Runs every Go fuzz target in the module for FUZZTIME each (default 30s).
# `make test` runs them briefly; `make fuzz` for longer.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${FUZZTIME:-30s}

# finding: whether a failed run ($1, its output) found something. On a
# loaded machine the fuzz coordinator can miss its own deadline while
# stopping its workers ("context deadline exceeded", no input written): a
# harness hiccup, not a finding. Anything that wrote a failing input is one.
finding() {
	grep -q "Failing input written" <<<"$1" || ! grep -q "context deadline exceeded" <<<"$1"
}

grep -rl --include='*_test.go' '^func Fuzz' internal test 2>/dev/null | sort | while read -r file; do
	pkg=./$(dirname "$file")
	for target in $(grep -o '^func Fuzz[A-Za-z0-9_]*' "$file" | cut -d' ' -f2); do
		echo ">> fuzz $pkg $target ($fuzztime)"
		ok=0
		for try in 1 2; do
			if out=$(go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "$pkg" 2>&1); then
				ok=1
				break
			fi
			if finding "$out"; then
				break
			fi
			echo ">> $target: the fuzzer missed its own deadline (no failing input); try $try of 2"
		done
		if [ $ok = 0 ]; then
			if finding "$out"; then
				echo "$out"
				exit 1
			fi
			echo ">> $target: the fuzzer missed its deadline twice without a failing input; not a finding"
			continue
		fi
		echo "$out" | tail -1
	done
done
