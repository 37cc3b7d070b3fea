#!/usr/bin/env bash
# The distributed checks only GPUs can run: NCCL, FSDP2/FSDP1/ZeRO-2/ZeRO-3 through the shipped
# accelerate configs with bf16, FSDP CPU offload, and their memory. From a fresh clone, no Hub.
#
#   bash benchmarks/device_check_distributed.sh      # writes device_check_distributed.md
#                                                    # (or $DEVICE_CHECK_DISTRIBUTED_OUT)
# Needs 2+ CUDA GPUs (uses $NPROC of them, default 2) and `pip install deepspeed` for ZeRO.
# For each mode: SmolLM2-135M-Instruct (the offline builtin) trains 4 steps in bf16 with a
# checkpoint at step 2 through `accelerate launch --config_file configs/accelerate/<mode>.yaml`;
# the start-up line must name the mode (no fallback warning); the step-2 checkpoint is resumed
# in a new folder and must end at the same weights (max |diff| <= 1e-6 for the sharded state, as
# on CPU); the final folder must load with from_pretrained; the loss curve must match one GPU
# with the same pairs per step (bf16: relative 2e-2) and the peak GPU memory (nvidia-smi) is
# reported. What CPU processes prove already is in tests/integration/test_distributed.py.
# Without 2 GPUs every step is skipped with the reason (exit 0), so CI can keep it working.
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
OUT="${DEVICE_CHECK_DISTRIBUTED_OUT:-device_check_distributed.md}"
VENV="${VENV:-.venv}"
[ -x "$VENV/bin/python" ] || make setup >/dev/null
PY="$VENV/bin/python"
NPROC="${NPROC:-2}"
WORK="$(mktemp -d)"
rows=()
failed=0

gpus=$("$PY" -c "import torch; print(torch.cuda.device_count())")
report() {
  {
    echo "# Distributed device check"
    echo
    echo "GPUs: $gpus ($("$PY" -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')")), processes: $NPROC"
    echo
    echo "| check | result | seconds | details |"
    echo "|---|---|---|---|"
    printf '%s\n' "${rows[@]}"
  } >"$OUT"
  cat "$OUT"
}

if [ "$gpus" -lt 2 ]; then
  rows+=("| all | skipped | 0 | needs 2+ CUDA GPUs, found $gpus (the CPU parts run in tests/integration/test_distributed.py) |")
  report
  exit 0
fi

# pairs per optimizer step stay 16: 1 GPU x 8 x 2 accumulation == NPROC GPUs x (16 / NPROC / 2) x 2
# (NPROC 2, 4 or 8)
per_device=$((16 / NPROC / 2))
common=(training.max_steps=4 training.save_strategy=steps training.save_steps=2
  training.logging_steps=1 training.bf16=true training.learning_rate=1e-5
  training.eval_strategy=no training.eval_on_start=false training.save_total_limit=null
  training.gradient_accumulation_steps=2 training.report_to=none)

# run NAME DIR LAUNCH...: train, keep the log, sample the peak GPU memory
run() {
  local name="$1" dir="$2"
  shift 2
  local t0 status sampler peak
  t0=$(date +%s)
  echo "== $name" >&2
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 >"$dir.mem" 2>/dev/null &
  sampler=$!
  if timeout 1800 "$@" >"$dir.out" 2>"$dir.err"; then status=ok; else status="FAILED ($?)"; tail -20 "$dir.err" >&2; fi
  kill "$sampler" 2>/dev/null
  peak=$(sort -n "$dir.mem" 2>/dev/null | tail -1)
  echo "$status|$(($(date +%s) - t0))|${peak:-?} MiB"
}

check() {  # check NAME PYTHON-ASSERTIONS: one row, pass/fail from a Python snippet
  local name="$1" code="$2" details
  if details=$("$PY" -c "$code" 2>&1); then rows+=("| $name | ok | – | ${details//|/\\|} |")
  else rows+=("| $name | FAILED | – | $(echo "$details" | tail -3 | tr '\n' ' ' | sed 's/|/\\|/g') |"); failed=1; fi
}

recipe=recipes/quickstart.yaml
ref="$WORK/one"
IFS='|' read -r st secs mem < <(run "1 GPU reference" "$ref" "$PY" -m cpo_cli train "$recipe" \
  training.output_dir="$ref" training.per_device_train_batch_size=8 "${common[@]}")
rows+=("| 1 GPU reference | $st | $secs | peak $mem |")
[ "$st" = ok ] || failed=1

for mode in ddp fsdp2 fsdp2-offload fsdp1 zero2 zero3; do
  config=$mode; flags=(); extra=()
  case "$mode" in
    ddp) expect="DDP (nccl)" ;;
    fsdp2) expect="FSDP2 (full shard;" ;;
    fsdp2-offload) config=fsdp2; flags=(--fsdp_offload_params true); expect="FSDP2 (full shard, CPU offload" ;;
    fsdp1) config=ddp; extra=(training.fsdp="full_shard auto_wrap" training.fsdp_config.version=1); expect="FSDP1" ;;
    zero2) expect="DeepSpeed ZeRO-2" ;;
    zero3) expect="DeepSpeed ZeRO-3" ;;
  esac
  if [[ "$mode" == zero* ]] && ! "$PY" -c "import deepspeed" 2>/dev/null; then
    rows+=("| $mode | skipped | 0 | deepspeed is not installed |")
    continue
  fi
  out="$WORK/$mode"
  launch=(accelerate launch --config_file "configs/accelerate/$config.yaml" --num_processes "$NPROC"
    "${flags[@]}" -m cpo_cli train "$recipe" training.output_dir="$out" training.per_device_train_batch_size="$per_device"
    "${common[@]}" "${extra[@]}")
  IFS='|' read -r st secs mem < <(run "$mode" "$out" "$VENV/bin/${launch[0]}" "${launch[@]:1}")
  line=$(grep -m1 '^run: ' "$out.out" || true)
  rows+=("| $mode: train | $st | $secs | peak $mem; ${line//|/\\|} |")
  [ "$st" = ok ] || failed=1
  mkdir -p "$out-resumed" && cp -r "$out/checkpoint-2" "$out-resumed/" 2>/dev/null
  IFS='|' read -r st secs mem < <(run "$mode resume" "$out-resumed" "$VENV/bin/${launch[0]}" \
    "${launch[@]:1}" training.output_dir="$out-resumed" training.resume_from_checkpoint=last)
  rows+=("| $mode: resume | $st | $secs | peak $mem |")
  [ "$st" = ok ] || failed=1
  check "$mode: mode, no fallback, resume, from_pretrained, 1-GPU match" "
import json, sys
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
line = open('$out.out').read()
assert '$expect' in line, 'start-up line does not say $expect'
assert 'was asked for' not in open('$out.err').read(), 'FSDP/DeepSpeed fell back'
a, b = load_file('$out/model.safetensors'), load_file('$out-resumed/model.safetensors')
resume = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
assert resume <= 1e-6, f'resume differs by {resume}'
AutoModelForCausalLM.from_pretrained('$out')
loss = lambda d: [json.loads(l)['loss'] for l in open(d + '/metrics.jsonl') if '\"loss\"' in l]
mine, ref = loss('$out'), loss('$ref')
worst = max(abs(x - y) / abs(y) for x, y in zip(mine, ref))
assert worst <= 2e-2, f'loss vs 1 GPU: relative {worst:.3g}'
print(f'resume max|diff| {resume:.2g}; loss vs 1 GPU rel {worst:.2g}')
"
done

report
exit "$failed"
