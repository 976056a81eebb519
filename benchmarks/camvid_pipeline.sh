#!/usr/bin/env bash
# The real-data pipeline on CamVid: eval, calibration, export (360x480 and 512x1024), check, bench.
# Usage: benchmarks/camvid_pipeline.sh CHECKPOINT CAMVID_DIR OUT_DIR [CHECK_LIMIT]
set -euo pipefail
CK=$1; D=$2; OUT=$3; LIMIT=${4:-101}
E="${DANET_EDGE:-danet-edge}"
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
mkdir -p "$OUT"
t() { local s=$SECONDS; "$@"; echo "[time] $((SECONDS - s)) s: ${*:1:3}"; }
t $E eval "$CK" --dataset camvid --data "$D" --json "$OUT/eval.json"
t $E calib fill --dataset camvid --data "$D" --count 64 --out "$OUT/calib"
for size in "360 480" "512 1024"; do
  tag=${size/ /x}
  t $E export "$CK" --imgsz $size --fp16 --int8 --calib "$OUT/calib" --calib-size 64 --out "$OUT/export_$tag"
  t $E export "$CK" --imgsz $size --int8 --target cpu --calib "$OUT/calib" --calib-size 64 --out "$OUT/export_$tag"
  lim=$LIMIT; [ "$tag" = 512x1024 ] && lim=$(( LIMIT < 30 ? LIMIT : 30 ))
  t $E check "$OUT/export_$tag"/*.onnx "$CK" --reference "$CK" --dataset camvid --data "$D" --limit $lim \
      --json "$OUT/check_$tag.json" --report "$OUT/check_$tag" || echo "[check $tag] exit $?"
done
t $E bench "$OUT/export_360x480"/*.onnx --reference "$CK" --runs 20 --json "$OUT/bench_360x480.json" \
    --check-json "$OUT/check_360x480.json" --plot "$OUT/bench_360x480.png"
ls -la "$OUT"/export_*/
