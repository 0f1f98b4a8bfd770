#!/usr/bin/env bash
# Runs `accrue bench` three times (arguments passed through) and prints the
# median of every numeric key, plus nproc and the date, as one JSON line.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -q
runs=${RUNS:-3}
out=$(mktemp)
for i in $(seq "$runs"); do
  ./target/release/accrue bench "$@" 2>/dev/null | tail -n 1 | tee -a "$out"
done
python3 - "$out" <<'PY'
import json, statistics, sys, datetime, os
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
med = {}
for k in rows[0]:
    vals = [r[k] for r in rows]
    med[k] = statistics.median(vals) if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals) else vals[0]
med["runs"] = len(rows)
med["nproc"] = os.cpu_count()
med["date"] = datetime.date.today().isoformat()
print(json.dumps(med, sort_keys=True))
PY
