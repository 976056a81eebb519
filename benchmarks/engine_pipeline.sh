#!/usr/bin/env bash
# Engines from exported graphs, then the user's sequence on them: build, class maps vs ONNX Runtime,
# infer (a video of the first 30 val frames), check against PyTorch, bench.
# Usage: benchmarks/engine_pipeline.sh EXPORT_DIR CHECKPOINT CAMVID_DIR OUT_DIR
# On a device: as is. Without TensorRT / GPU, through the real bindings and the stand-in:
#   DANET_EDGE="python tests/trt_standin/cli.py --trt 10.3.0" RUN_PY="python tests/trt_standin/cli.py --trt 10.3.0" \
#       benchmarks/engine_pipeline.sh runs/export_camvid runs/camvid_r18/best.pt ../shared/datasets/camvid runs/engines
set -euo pipefail
X=$1; CK=$2; D=$3; OUT=$4
E="${DANET_EDGE:-danet-edge}"; P="${RUN_PY:-python}"
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
mkdir -p "$OUT"
cp "$X"/*.onnx "$X"/*.onnx.json "$OUT"/
t() { local s=$SECONDS; "$@"; echo "[time] $((SECONDS - s)) s: ${*: -3}"; }
engines=()
for g in "$OUT"/*.onnx; do
  t $E build "$g" --timing-cache "$OUT/timing.cache"
  engines+=("${g%.onnx}.engine")
done
t $P benchmarks/engine_vs_onnx.py --dataset camvid --data "$D" "${engines[@]}"
python - "$D" "$OUT/val30.mp4" <<'PY'
import sys, glob, cv2
files = sorted(glob.glob(f"{sys.argv[1]}/val/*.png"))[:30]
h, w = cv2.imread(files[0]).shape[:2]
vw = cv2.VideoWriter(sys.argv[2], cv2.VideoWriter_fourcc(*"mp4v"), 10, (w, h))
for f in files:
    vw.write(cv2.imread(f))
vw.release()
PY
t $E infer "${engines[1]:-${engines[0]}}" "$OUT/val30.mp4" --out "$OUT/infer" --save-labels
t $E check "${engines[@]}" --reference "$CK" --dataset camvid --data "$D" --json "$OUT/check.json" \
    --report "$OUT/check" || echo "[check] exit $?"
t $E bench "${engines[@]}" --runs 5 --warmup 1 --json "$OUT/bench.json"
