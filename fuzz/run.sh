#!/usr/bin/env bash
# Coverage-guided fuzzing of every decoder, SECONDS each (default 60):
#   fuzz/run.sh 300
# Installs atheris (fuzz/requirements.txt) into .venv if it is missing. The corpus grows in
# fuzz/corpus/NAME (seeded from protocol/vectors), crashes land in fuzz/artifacts/NAME, logs in
# fuzz/logs. Prints one line per harness: time, inputs executed, corpus size, crashes; exits 1 on a crash.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH="${1:-60}"
PY=.venv/bin/python
if ! "$PY" -c "import atheris" 2>/dev/null; then
  .venv/bin/pip install --quiet --disable-pip-version-check --only-binary=:all: -r fuzz/requirements.txt
fi
mkdir -p fuzz/corpus fuzz/artifacts fuzz/logs
"$PY" - <<'PYEOF'
import hashlib, pathlib, sys
sys.path.insert(0, "fuzz")
import _common
for name, seeds in (("engineio", _common.engineio_seeds()), ("socketio", _common.socketio_seeds()),
                    ("signalling", _common.signalling_seeds()), ("websocket", _common.websocket_seeds())):
    d = pathlib.Path("fuzz/corpus") / name
    d.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        (d / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
PYEOF
status=0
printf '%-11s %8s %12s %10s %8s %s\n' harness seconds inputs "inputs/s" corpus crashes
for name in engineio socketio signalling websocket; do
  mkdir -p "fuzz/artifacts/$name"
  log="fuzz/logs/$name.log"
  start=$(date +%s)
  if "$PY" "fuzz/fuzz_$name.py" "fuzz/corpus/$name" -max_total_time="$SECONDS_EACH" -print_final_stats=1 \
      -rss_limit_mb=2048 -timeout=10 -artifact_prefix="fuzz/artifacts/$name/" >"$log" 2>&1; then
    crashes=0
  else
    crashes=$(ls "fuzz/artifacts/$name" | wc -l)
    [ "$crashes" -eq 0 ] && crashes="error(see $log)"
    status=1
  fi
  took=$(( $(date +%s) - start ))
  runs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | awk '{print $2}' | tail -1)
  runs=${runs:-0}
  corpus=$(ls "fuzz/corpus/$name" | wc -l)
  printf '%-11s %8s %12s %10s %8s %s\n' "$name" "$took" "$runs" "$(( runs / (took > 0 ? took : 1) ))" "$corpus" "$crashes"
done
exit $status
