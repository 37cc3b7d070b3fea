#!/usr/bin/env bash
# One-shot device check, ready for the day a GPU is lent: from a fresh clone, no Hub.
#
#   bash benchmarks/device_check.sh            # writes device_check.md (or $DEVICE_CHECK_OUT)
#
# On a CUDA machine (target: under 8 minutes):
#   1. the layout tests on CUDA (tests/gpu: packed/sdpa, flat and varlen under flex_attention
#      with their backward, varlen under flash_attention_2 when flash-attn is installed; fp32 and
#      bf16 with the tolerances stated there) and the TRL-parity tests on CUDA (fp32, 1e-4);
#   2. bench_train.py against TRL on a random-init SmolLM2-shaped model for each layout cpo can
#      run (sdpa dense mask, flex_attention BlockMask, flash-attention varlen where installed),
#      TRL on plain rows with flash attention where installed, sdpa otherwise; peak CUDA memory;
#   3. the largest batch of ~4k-token pairs on a Qwen2-0.5B-shaped model, cpo against TRL.
# On a machine without CUDA every CUDA part is skipped with the reason, and a small CPU check of
# the same benchmark path runs instead, so CI keeps this script working.
# Models are random-init from configs shaped like the released ones, with the tokenizer the
# tests build: nothing is downloaded. Each step has a time limit; a failed step is reported in
# the table and makes the script exit non-zero.
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TRL_EXPERIMENTAL_SILENCE=1 TOKENIZERS_PARALLELISM=false
OUT="${DEVICE_CHECK_OUT:-device_check.md}"
VENV="${VENV:-.venv}"
[ -x "$VENV/bin/python" ] || make setup >/dev/null
PY="$VENV/bin/python"
LOG="$(mktemp -d)"
started=$(date +%s)
rows=()
failed=0

# step NAME LIMIT_S COMMAND...: run, time, keep the output's table rows for the report
step() {
  local name="$1" limit="$2"
  shift 2
  local t0 status details
  t0=$(date +%s)
  echo "== $name" >&2
  if timeout "$limit" "$@" >"$LOG/out" 2>"$LOG/err"; then
    status="ok"
  else
    status="FAILED ($?)"
    failed=1
    tail -20 "$LOG/err" >&2
  fi
  details=$(grep -E "passed|failed|skipped|^\| [a-z0-9]|cpo/trl|fits" "$LOG/out" | tr '\n' ' ' | sed 's/|/\\|/g' | cut -c1-900)
  rows+=("| $name | $status | $(($(date +%s) - t0)) | ${details:-–} |")
}
skip() { rows+=("| $1 | skipped | 0 | $2 |"); echo "== $1: skipped ($2)" >&2; }

device=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')")
flash=$("$PY" -c "import importlib.util as u; print('yes' if u.find_spec('flash_attn') else 'no')")
common=(--tokenizer tiny --steps 2 4 --batch-size 8 --threads "$(nproc)")

if [ "$device" != "none" ]; then
  step "layout + TRL-parity tests on CUDA" 150 env CPO_TEST_DEVICE=cuda "$PY" -m pytest -q -p no:cacheprovider \
    tests/gpu tests/integration/test_trl_parity.py
  trl_attn=sdpa
  [ "$flash" = yes ] && trl_attn=flash_attention_2
  for attn in sdpa flex_attention; do
    step "bench_train SmolLM2-shape prompt-heavy, cpo $attn vs TRL $trl_attn (bf16)" 120 \
      "$PY" benchmarks/bench_train.py --device cuda --bf16 --models smollm2-shape \
      --shapes prompt-heavy --attn "$attn" --trl-attn "$trl_attn" "${common[@]}"
  done
  if [ "$flash" = yes ]; then
    step "bench_train SmolLM2-shape prompt-heavy, cpo varlen (flash_attention_2) vs TRL" 120 \
      "$PY" benchmarks/bench_train.py --device cuda --bf16 --models smollm2-shape \
      --shapes prompt-heavy --attn flash_attention_2 --trl-attn flash_attention_2 "${common[@]}"
  else
    skip "bench_train cpo varlen (flash_attention_2)" "flash-attn is not installed"
  fi
  gib=$("$PY" -c "import torch; print(int(torch.cuda.get_device_properties(0).total_memory / 2**30))")
  step "largest batch of ~4k-token pairs, Qwen2-0.5B-shape, defaults (bf16)" 150 \
    "$PY" benchmarks/bench_train.py --device cuda --bf16 --models qwen05b-shape --tokenizer tiny \
    --max-batch --max-batch-shape 4k --max-batch-sizes 1 2 3 --max-batch-sizes-trl 1 2 \
    --memory-gib "$gib" --mmap-threshold-kib 0
else
  reason="no CUDA device (torch.cuda.is_available() is False)"
  skip "layout + TRL-parity tests on CUDA" "$reason"
  skip "bench_train vs TRL per layout on CUDA" "$reason"
  skip "largest batch at 4k tokens, peak CUDA memory" "$reason"
  # the same benchmark path on the CPU, small enough for CI
  step "CPU smoke: bench_train tiny, cpo only" 900 "$PY" benchmarks/bench_train.py --models tiny \
    --shapes balanced --engines cpo --tokenizer tiny --steps 1 2 --batch-size 2 --threads 1
fi

{
  echo "# device check"
  echo
  echo "device: $device; flash-attn: $flash; $(date -u +%Y-%m-%dT%H:%MZ); $(($(date +%s) - started)) s"
  echo
  echo "| check | status | seconds | result |"
  echo "|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
} >"$OUT"
cat "$OUT"
rm -rf "$LOG"
exit "$failed"
