#!/usr/bin/env bash
# `make load`: sustained mixed load against a real receiver (hack/load).
#   LOAD_DURATION  how long to send (default 60s)
#   LOAD_RATE      requests per second (default 100)
#   LOAD_LIMIT     the receiver's --requests-per-second and --burst (default 1.5 × LOAD_RATE)
#   LOAD_MIX       batch sizes and weights (default 1:70,10:25,100:5)
#   LOAD_EVERY     report interval (default 5s)
# Exits non-zero when any answer was not 2xx or a 200's row is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
CGO_ENABLED=0 go build -trimpath -o "$dir/ehr-receiver" ./cmd/ehr-receiver
go -C hack build -o "$dir/load" ./load # the hack module (hack/go.mod)
"$dir/load" -binary "$dir/ehr-receiver"
