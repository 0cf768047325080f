#!/usr/bin/env bash
# `make bench`: the hot path's Go benchmarks, then the receiver-versus-limit
# table (hack/bench) on a throwaway PostgreSQL, then the plot.
#   BENCH_OUT       JSON file of the table's cells (default bench-results.json)
#   BENCH_CELL      measured time per side of each cell (default 3s)
#   BENCH_BATCHES   batch sizes (default 1,10,100)
#   BENCH_SENDERS   concurrent senders (default 1,8,32)
#   BENCH_MODES     PostgreSQL modes, in order (default durable,fast: fsync on, then off)
#   BENCH_PLOT      PNG of the durable cells (default docs/performance-throughput.png; "" for none);
#                   the fast cells go to the same name with -fast before .png
#   BENCHTIME       -benchtime of the Go benchmarks (default 1s)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${BENCH_OUT:-bench-results.json}"
plot="${BENCH_PLOT-docs/performance-throughput.png}"
benchtime="${BENCHTIME:-1s}"

echo "=== Go benchmarks (go test -run '^\$' -bench . -benchmem -benchtime $benchtime)"
go test -run '^$' -bench . -benchmem -benchtime "$benchtime" \
	./receiver/auth/ ./receiver/payload/ ./receiver/store/

dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
bin="$dir/ehr-receiver"
echo "=== Building the receiver ($bin)"
CGO_ENABLED=0 go build -trimpath -o "$bin" ./cmd/ehr-receiver
# The tools are in the hack module (hack/go.mod); they run from here, so
# relative paths mean the same as for this script.
go -C hack build -o "$dir/" ./bench ./plot

echo "=== Receiver versus limit"
"$dir/bench" -binary "$bin" -out "$out"

if [ -n "$plot" ]; then
	modes="${BENCH_MODES:-durable,fast}"
	for mode in ${modes//,/ }; do
		if [ "$mode" = durable ]; then
			"$dir/plot" -in "$out" -out "$plot" -mode durable
		else
			"$dir/plot" -in "$out" -out "${plot%.png}-fast.png" -mode fast
		fi
	done
fi
