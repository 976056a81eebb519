"""Measure ``danet-edge infer``'s thread and queue defaults: end-to-end FPS and latency per setting.

Every setting runs the real entry point (``run_inference``: decode thread, model, overlay + encode thread,
the overlay video written) over the whole video; settings alternate round by round so a change in the
machine's load hits them all alike. The model-only rate (``predict`` on frames already at the model size, no
decode, resize, overlay or encode) is measured for each thread count, as the ceiling the pipeline should
approach. Beside each figure: the CPU other processes used meanwhile (``/proc/stat``), since a shared machine
changes the answer.

The figures that chose ``InferConfig``'s defaults (``danet_edge/runtime/pipeline.py``) came from:

    .venv/bin/python benchmarks/infer_defaults.py /tmp/i13/exp/model_int8_cpu.onnx /tmp/i13/seq.mp4 --low-latency

with the INT8 cpu graph of ``runs/camvid_r18/best.pt`` at 360x480 (``danet-edge export ... --int8 --target cpu``)
and 171 CamVid frames of one sequence, in name order, written to an mp4 with OpenCV (mp4v, 30 FPS); the
CamVid folder is read only to make that video, outside this script.

Run: ``python benchmarks/infer_defaults.py MODEL VIDEO [--threads 1 2 0] [--queues 1 2 8] [--rounds 2]
[--low-latency] [--no-spinning] [--json rows.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from danet_edge.data.frames import fit_frame  # noqa: E402
from danet_edge.runtime.backends import open_backend  # noqa: E402
from danet_edge.infer.config import InferConfig
from danet_edge.infer.pipeline import run_inference
from danet_edge.infer.sources import open_source  # noqa: E402


def load1() -> float:
    return round(os.getloadavg()[0], 2)


class OthersCpu:
    """CPU used by every other process while a block runs, in % of the machine (Linux ``/proc/stat`` minus this
    process's own CPU time); None where ``/proc/stat`` is missing. The load average counts this benchmark's own
    threads too, so it cannot say whether the machine was otherwise quiet; this can."""

    def __enter__(self) -> "OthersCpu":
        self.value = None
        self._start = self._sample()
        return self

    def __exit__(self, *exc) -> None:
        end = self._sample()
        if self._start is None or end is None:
            return
        (b0, m0, t0), (b1, m1, t1) = self._start, end
        busy_s = (b1 - b0) / os.sysconf("SC_CLK_TCK")
        self.value = round(100.0 * max(0.0, busy_s - (m1 - m0)) / ((t1 - t0) * (os.cpu_count() or 1)), 1)

    @staticmethod
    def _sample():
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        busy = sum(fields[:8]) - fields[3] - fields[4]  # all but idle and iowait
        t = os.times()
        return busy, t.user + t.system, time.perf_counter()


def model_only_fps(model: Path, video: Path, threads: int, frames: int = 40) -> float:
    """``predict`` alone on the first ``frames`` frames, already at the model size (after 3 warm-up calls)."""
    src = open_source(video)
    imgs = []
    with open_backend(model, threads=threads) as b:
        for f in src:
            imgs.append(fit_frame(f, b.manifest.image_size, False)[0])
            if len(imgs) == frames:
                break
        src.close()
        for img in imgs[:3]:
            b.predict(img[None])
        t0 = time.perf_counter()
        for img in imgs:
            b.predict(img[None])
        return len(imgs) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, help="an ONNX graph with its manifest (e.g. model_int8_cpu.onnx)")
    ap.add_argument("video", type=Path, help="a video file (e.g. a CamVid sequence written to mp4)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2, 0],
                    help="ONNX Runtime intra-op threads to try (0 = ONNX Runtime's own default)")
    ap.add_argument("--queues", type=int, nargs="+", default=[1, 2, 8], help="queue sizes to try")
    ap.add_argument("--rounds", type=int, default=2, help="runs of every setting, interleaved")
    ap.add_argument("--low-latency", action="store_true",
                    help="also run --low-latency with each thread count, on the file and as a live source "
                         "(--drop-frames: the file read at its frame rate)")
    ap.add_argument("--json", type=Path, help="write every run's row here")
    ap.add_argument("--no-spinning", action="store_true",
                    help="experiment: ONNX Runtime worker threads sleep between ops instead of spinning "
                         "(session.intra_op.allow_spinning=0), so decode / encode get the idle cycles")
    args = ap.parse_args()
    if args.no_spinning:
        from danet_edge.runtime import ort_backend

        real = ort_backend.session_options

        def no_spin(*a, **k):
            so = real(*a, **k)
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            return so

        ort_backend.session_options = no_spin

    # (threads, queue, mode): "" plain; "low" --low-latency; "live" --low-latency --drop-frames on the file, read at
    # its frame rate as a camera delivers frames (what a live source gets)
    settings = [(t, q, "") for t in args.threads for q in args.queues]
    if args.low_latency:
        settings += [(t, None, mode) for t in args.threads for mode in ("low", "live")]
    rows: list[dict] = []
    model_fps: dict[int, list[float]] = {t: [] for t in args.threads}
    with tempfile.TemporaryDirectory(prefix="infer-defaults-") as tmp:
        for r in range(args.rounds):
            for t in args.threads:
                with OthersCpu() as others:
                    model_fps[t].append(model_only_fps(args.model, args.video, t))
                print(f"round {r}: model only, {t} threads: {model_fps[t][-1]:.2f} FPS "
                      f"(other processes {others.value} % CPU)", flush=True)
            for t, q, mode in settings:
                before = load1()
                cfg = InferConfig(out_dir=Path(tmp) / f"t{t}_q{q}_{mode}_{r}", threads=t, queue_size=q,
                                  low_latency=bool(mode), drop_frames=True if mode == "live" else None)
                with OthersCpu() as others:
                    s = run_inference(args.model, args.video, cfg)
                row = {"round": r, "threads": t, "queue": s.queue_size, "mode": mode, "frames": s.frames,
                       "decoded": s.decoded, "dropped": s.dropped, "fps": s.fps, "p50_ms": s.latency_p50_ms,
                       "p99_ms": s.latency_p99_ms, "infer_p50_ms": s.stages["infer"]["p50_ms"],
                       "decode_p50_ms": s.stages["decode"]["p50_ms"], "encode_p50_ms": s.stages["encode"]["p50_ms"],
                       "load_before": before, "load_after": load1(), "others_cpu_pct": others.value}
                rows.append(row)
                print(f"round {r}: threads {t} queue {row['queue']} {mode or 'plain'}: {row['fps']:.2f} FPS, "
                      f"p50 {row['p50_ms']:.0f} ms, p99 {row['p99_ms']:.0f} ms, dropped {s.dropped}/{s.decoded} "
                      f"(load {before} -> {row['load_after']}, other processes {others.value} % CPU)", flush=True)
    print(f"\n{args.model.name} on {args.video.name}, {rows[0]['decoded']} frames, {os.cpu_count()} cores; "
          f"medians of {args.rounds} rounds; 'others' = CPU used by other processes during each run, % of the machine")
    print("| threads | queue | mode | FPS end to end | latency p50 ms | latency p99 ms | infer p50 ms | dropped "
          "| model-only FPS | others % |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for t, q, mode in settings:
        mine = [x for x in rows if x["threads"] == t and x["mode"] == mode and (mode or x["queue"] == q)]
        med = {k: statistics.median(x[k] for x in mine)
               for k in ("fps", "p50_ms", "p99_ms", "infer_p50_ms", "dropped")}
        others = "/".join(f"{x['others_cpu_pct']}" for x in mine)
        print(f"| {t} | {mine[0]['queue']} | {mode or 'plain'} | {med['fps']:.2f} | {med['p50_ms']:.0f} "
              f"| {med['p99_ms']:.0f} | {med['infer_p50_ms']:.0f} | {med['dropped']:.0f} "
              f"| {statistics.median(model_fps[t]):.2f} | {others} |")
    if args.json:
        args.json.write_text(json.dumps({"model_only_fps": model_fps, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
