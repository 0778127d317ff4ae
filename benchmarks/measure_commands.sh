#!/usr/bin/env bash
# Times the README's two commands as a new user meets them: a clean clone of HEAD, then `make run` (install
# included), then `make test`; prints how the time splits. Usage: bash benchmarks/measure_commands.sh [DIR]
set -euo pipefail
repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
dir=${1:-$(mktemp -d /tmp/cvpipe-measure.XXXXXX)}
git clone -q "$repo" "$dir/cvpipe"
cd "$dir/cvpipe"
export BENTOML_DO_NOT_TRACK=true
t() { local s=$SECONDS; "$@" > "$dir/$1-$2.log" 2>&1 || { echo "FAILED: $*; log: $dir/$1-$2.log"; exit 1; }; echo $((SECONDS - s)); }
install=$(t make install)
run=$(t make run)
tests=$(t make test)
printf '%-34s %6s s\n' "make install (part of make run)" "$install" "make run, pipeline only" "$run" \
    "make run from a clean clone" "$((install + run))" "make test (after make run)" "$tests"
printf 'logs in %s\n' "$dir"
