"""GPU check: plan on CUDA and compare with the CPU, one JSON summary (issue 11).

    PYTHONPATH=src python3 scripts/gpu_check.py --out DIR [--skip-cpu] [--epochs 8]

1. Calibration (booster, aggregator, evaluation; `shoal.planner.pipeline.calibrate`) of one
   fixed three-device policy of the shipped digits teacher, on the CPU and on CUDA, with the
   same settings and seeds: seconds of each phase, the speedup, and the test accuracy of each
   (they should agree within noise: every random number is drawn on the host).
2. `shoal plan --device cuda` end to end on the default problem (profiles carried in
   `.shoal/profiles`), its phases and its plan.json.
3. Serving that plan: `shoal bench` through a local cluster (no CPU emulation) with every
   device on the CPU, then with every device's `accelerator: cuda`; top-1 on the test split
   must be the same, and the served latency of each is reported.

4. The real-scale teacher (deit_small_patch16_224, random weights: latency only): `shoal plan
   --split balanced --device cuda` on a subset (profiles of the default devices for its family
   carried in `.shoal/profiles/<family>`), then that plan served with every device on the CPU
   and on CUDA, uint8 inputs (no CPU emulation: the GPU box's own cores).

Writes DIR/gpu_check.json (and the plans under DIR/plan-cuda, DIR/plan-deit). `scripts/gpu_check.sh` runs it
on the device machine; run it with `--skip-cuda` here for the 2-core CPU baseline.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from shoal.data.datasets import load_task_data
from shoal.models.teacher import load_teacher
from shoal.plan.document import PlanDocument
from shoal.planner.pipeline import PlanHooks, calibrate
from shoal.planner.settings import CalibrationSettings, PlanRequest

POLICY = Path(__file__).resolve().parents[1] / "tests" / "plan" / "data" / "be59031-calibrated.json"


class _Clock:
    """PlanHooks.phase: seconds per phase."""

    def __init__(self) -> None:
        self.phases: list[list[Any]] = []
        self.started = time.perf_counter()

    def __call__(self, name: str) -> None:
        self._close()
        self.phases.append([name, time.perf_counter()])

    def _close(self) -> None:
        if self.phases and isinstance(self.phases[-1][1], float) and len(self.phases[-1]) == 2:
            name, start = self.phases[-1]
            self.phases[-1] = [name, start, time.perf_counter() - start]

    def summary(self) -> dict[str, float]:
        self._close()
        return {p[0]: round(p[2], 3) for p in self.phases}


def calibrate_on(device: str, epochs: int) -> dict[str, Any]:
    teacher = load_teacher(None)
    teacher.model.to(device)
    data = load_task_data(teacher, None)
    policy = PlanDocument.from_dict(json.loads(POLICY.read_text())).policy
    clock = _Clock()
    with tempfile.TemporaryDirectory() as tmp:
        request = PlanRequest(out=tmp, device=device, calibration=CalibrationSettings(epochs=epochs))
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        cal = calibrate(SimpleNamespace(teacher=teacher, data=data), policy, request,  # type: ignore[arg-type]
                        PlanHooks(phase=clock))
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    acc = cal.accuracy
    return {"device": device, "seconds": round(seconds, 3), "phases": clock.summary(),
            "calibration_seconds": round(cal.summary.seconds, 3), "test_n": acc.n,
            "ensemble_top1": acc.ensemble.top1, "ensemble_ci95": list(acc.ensemble.ci95),
            "teacher_top1": acc.teacher.top1,
            "submodels_top1": {k: v.top1 for k, v in acc.submodels.items()}}


def plan_cli(out: Path, device: str) -> dict[str, Any]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "shoal.cli", "-q", "plan", "--device", device, "--out", str(out),
                           "--init", "4", "--iterations", "4", "--epochs", "4", "--json"],
                          capture_output=True, text=True, timeout=900)
    wall = round(time.perf_counter() - start, 1)
    result: dict[str, Any] = {"device": device, "exit": done.returncode, "wall_s": wall}
    if done.returncode != 0:
        result["stderr"] = done.stderr[-3000:]
        return result
    doc = json.loads(done.stdout)
    result.update(phases=doc.get("phases"), predicted_ms=doc["predicted"]["total_ms"],
                  ensemble_top1=doc["accuracy"]["ensemble"]["top1"], test_n=doc["accuracy"]["n"],
                  devices_used=list(doc["policy"]["devices"]))
    return result


DEIT_PLAN = ["--model", "deit_small_patch16_224", "--no-pretrained", "--data", "digits", "--split", "balanced",
             "--proxy", "logistic", "--input", "uint8", "--max-per-split", "512", "--cal-images", "256",
             "--val-images", "128", "--epochs", "2", "--aggregator-epochs", "10", "--joint-epochs", "0",
             "--profile-samples", "40", "--profile-budget-ms", "1000"]   # bounded, should the family differ there


def plan_deit(out: Path, device: str, precision: str = "fp32") -> dict[str, Any]:
    """`shoal plan` of the real-scale teacher (balanced split, calibration on a subset) on `device`."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "shoal.cli", "-q", "plan", *DEIT_PLAN, "--device", device,
                           "--precision", precision, "--out", str(out), "--json"],
                          capture_output=True, text=True, timeout=900)
    result: dict[str, Any] = {"device": device, "precision": precision, "exit": done.returncode,
                              "wall_s": round(time.perf_counter() - start, 1)}
    if done.returncode != 0:
        result["stderr"] = done.stderr[-3000:]
        return result
    doc = json.loads(done.stdout)
    result.update(phases=doc.get("phases"), predicted_ms=doc["predicted"]["total_ms"],
                  random_weights=doc["teacher"].get("random_weights", False),
                  calibration_s=doc["calibration"]["seconds"], test_n=doc["accuracy"]["n"],
                  ensemble_top1=doc["accuracy"]["ensemble"]["top1"])
    return result


def bench_cli(plan_dir: Path, out: Path, accelerator: str, *extra: str, requests: int = 100) -> dict[str, Any]:
    """`shoal bench` of a copy of `plan_dir` whose devices all say `accelerator`."""
    import shutil

    copy = out / f"{plan_dir.name}-{accelerator}-served"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(plan_dir, copy)
    doc = json.loads((copy / "plan.json").read_text())
    for device in doc["devices"]:
        if accelerator == "cpu":
            device.pop("accelerator", None)
        else:
            device["accelerator"] = accelerator
    (copy / "plan.json").write_text(json.dumps(doc))
    done = subprocess.run([sys.executable, "-m", "shoal.cli", "-q", "bench", "--plan", str(copy), "--requests",
                           str(requests), "--no-teacher", "--no-emulate", "--json", *extra],
                          capture_output=True, text=True, timeout=600)
    result: dict[str, Any] = {"accelerator": accelerator, "exit": done.returncode}
    if done.returncode != 0:
        result["stderr"] = done.stderr[-3000:]
        return result
    bench = json.loads(done.stdout)
    result.update(median_ms=bench["latency"]["median_ms"], p95_ms=bench["latency"]["p95_ms"],
                  top1=bench["accuracy"], n=bench["accuracy_n"],
                  devices={d["device"]: d["compute_ms"] for d in bench.get("devices", [])})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument("--skip-cuda", action="store_true")
    parser.add_argument("--skip-cli", action="store_true")
    parser.add_argument("--skip-deit", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "cpu_threads": torch.get_num_threads(),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "calibration": {}}

    def save() -> None:
        (args.out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")

    for device in (["cpu"] if not args.skip_cpu else []) + (["cuda"] if not args.skip_cuda else []):
        try:
            summary["calibration"][device] = calibrate_on(device, args.epochs)
        except Exception as exc:   # a failure is a result too: keep the rest
            summary["calibration"][device] = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(summary["calibration"][device]), flush=True)
        save()
    cal = summary["calibration"]
    if "seconds" in cal.get("cpu", {}) and "seconds" in cal.get("cuda", {}):
        summary["calibration_speedup"] = round(cal["cpu"]["seconds"] / cal["cuda"]["seconds"], 2)
    if not args.skip_cli and not args.skip_cuda:
        summary["plan_cli"] = plan_cli(args.out / "plan-cuda", "cuda")
        print(json.dumps(summary["plan_cli"]), flush=True)
        save()
        if summary["plan_cli"].get("exit") == 0:
            summary["serve"] = {a: bench_cli(args.out / "plan-cuda", args.out, a) for a in ("cpu", "cuda")}
            print(json.dumps(summary["serve"]), flush=True)
            save()
    if not args.skip_deit and not args.skip_cuda:
        summary["deit_plan"] = plan_deit(args.out / "plan-deit", "cuda")
        print(json.dumps(summary["deit_plan"]), flush=True)
        save()
        if summary["deit_plan"].get("exit") == 0:
            summary["deit_serve"] = {a: bench_cli(args.out / "plan-deit", args.out, a, "--input", "raw", requests=40)
                                     for a in ("cpu", "cuda")}
            print(json.dumps(summary["deit_serve"]), flush=True)
    save()


if __name__ == "__main__":
    main()
