#!/usr/bin/env bash
# Two quiver binaries side by side on the same data and the same query body, alternating:
# each serves DATA_DIR (--no-model) in turn while `wrk -c 8` POSTs one 384-float query whose
# floats are written as qdrant-client writes them (17-digit reprs). Prints requests/s per
# run; compare within one run of this script only.
#
#   bash bench/server_ab.sh OLD_QUIVER NEW_QUIVER DATA_DIR [ROUNDS]
# DATA_DIR holds a 384-d collection named "bench", e.g. from
#   quiver load bench x.npy --data-dir DATA_DIR      (x.npy: float32, (n, 384))
set -euo pipefail
old=$1 new=$2 data=$3 rounds=${4:-3} port=6399
lua=$(mktemp --suffix=.lua)
trap 'rm -f "$lua"' EXIT
python3 - "$lua" <<'PY'
import json, random, sys
random.seed(1)
body = json.dumps({"query": [random.gauss(0, 1) for _ in range(384)], "limit": 10})
open(sys.argv[1], "w").write('wrk.method="POST"\nwrk.headers["Content-Type"]="application/json"\n'
                             'wrk.body=[[' + body + ']]\n')
PY
url=http://127.0.0.1:$port/collections/bench/points/query
for r in $(seq 1 "$rounds"); do
  for b in "$old" "$new"; do
    "$b" serve --data-dir "$data" --port $port --host 127.0.0.1 --no-model >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 1 400); do curl -sf localhost:$port/readyz >/dev/null && break; sleep 0.25; done
    wrk -t1 -c8 -d2s -s "$lua" "$url" >/dev/null # warm-up
    echo "round $r $b $(wrk -t1 -c8 -d6s -s "$lua" "$url" | grep Requests/sec)"
    kill $pid
    wait $pid 2>/dev/null || true
  done
done
