#!/usr/bin/env bash
# The `make run` demo until the server lands: a real collection in the data directory,
# loaded from a JSON-lines file, searched exactly, with and without a payload filter.
set -euo pipefail
QUIVER=${1:-build/quiver}
DATA=${2:-./quiver-data}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

python3 - "$tmp/points.jsonl" <<'PY'
import json, math, random, sys
random.seed(1)
cities = ["Paris", "Berlin", "Rome", "Madrid"]
with open(sys.argv[1], "w") as f:
    for i in range(2000):
        v = [random.gauss(0, 1) for _ in range(64)]
        f.write(json.dumps({"id": i, "vector": v, "payload": {"city": cities[i % 4], "rank": i}}) + "\n")
PY

q() { echo "+ quiver $*" >&2; "$QUIVER" "$@" --data-dir "$DATA"; }
if "$QUIVER" collection info demo --data-dir "$DATA" >/dev/null 2>&1; then q collection delete demo; fi
q collection create demo --size 64 --distance Cosine
q load demo "$tmp/points.jsonl"
q collection info demo
vec=$(python3 -c 'import json; print(",".join(str(x) for x in json.loads(open("'"$tmp/points.jsonl"'").readline())["vector"]))')
q search demo --vector "$vec" --limit 3
q search demo --vector "$vec" --limit 3 --filter '{"must":[{"key":"city","match":{"value":"Rome"}}]}'
echo "data directory: $DATA (quiver --help for more)" >&2
