#!/usr/bin/env bash
# One GPU session of the train-step benchmark: jaxmm as configured, then the attention lever,
# then the compiled PyTorch peers, most important first, each part's JSON written into OUTDIR
# as soon as it is measured (a session cut short keeps what it has).
#
#     bash benchmarks/gpu_session.sh OUTDIR          # on a GPU host
#     bash benchmarks/gpu_session.sh OUTDIR --cpu    # the same sequence at CI size, to try it
#
# Each part is bounded by PART_TIMEOUT seconds (default 200) so that one slow compile cannot
# eat the session. Afterwards `python benchmarks/merge_results.py OUTDIR/*.json` prints one
# side-by-side table.
set -uo pipefail
out="${1:?usage: gpu_session.sh OUTDIR [--cpu]}"
mode="${2:-}"
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
limit="${PART_TIMEOUT:-200}"

if [[ "$mode" == "--cpu" ]]; then
  main="vit_test:8:32,clip_test:8:32,resnet18:4:32"
  attention="vit_test:8:32,clip_test:8:32"
  rest="mobilenet_v2_test:8:32,swin_test:8:32"
  peer_models="$main"
  common=(--cpu --steps=3 --warmup=1)
  peers=eager
else
  main="${MAIN:-vit_b16:256,clip_vit_b16:256,resnet50:256,clip_vit_b32:512}"
  attention="${ATTENTION:-vit_b16:256,clip_vit_b16:256}"
  rest="${REST:-clip_vit_b32:512,mobilenet_v2:256,swin_t:256}"
  peer_models="${PEER_MODELS:-vit_b16:256,clip_vit_b16:256,resnet50:256}"
  common=(--steps=15 --warmup=3)
  peers=compile
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
fi
python3 -c "import jax; print(jax.__version__, jax.devices())"

part() {  # part NAME ARGS...: one benchmark invocation, bounded in time
  local name="$1"
  shift
  echo "=== $name ($(date -u +%T))"
  timeout "$limit" python3 benchmarks/train_step.py "${common[@]}" --out="$out/$name.json" "$@" \
    2>&1 | grep -v "^timing "
}

part jaxmm_xla --models="$main" --peers=none --attention=xla
part jaxmm_cudnn --models="$attention" --peers=none --attention=cudnn
part peers --models="$peer_models" --peers="$peers" --only_peers
part jaxmm_cudnn_pad64 --models="$attention" --peers=none --attention=cudnn --attention_pad=64
part rest --models="$rest" --peers="$peers"
echo "=== done ($(date -u +%T))"
