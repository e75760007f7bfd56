"""Text benchmark (issue 16): a MiniLM plan served on the default emulated devices, beside the fine-tuned
teacher alone and truncated MiniLMs alone on the central node, on the rotten-tomatoes test split.

    make text-teacher                                   # the teacher (.shoal/teachers/...json)
    python -m shoal.data.train_text_teacher --layers 2  # the baselines: the first 2 (3) layers fine-tuned alone
    python -m shoal.data.train_text_teacher --layers 3
    shoal plan --data rotten-tomatoes --out runs/text ...
    python benchmarks/text.py --plan runs/text --baseline .shoal/teachers/rotten-tomatoes-all-minilm-l6-v2-2l.json \\
        .shoal/teachers/rotten-tomatoes-all-minilm-l6-v2-3l.json --out benchmarks/results/text.json

One run measures, on the same test texts sent one at a time (each cut to its own length):
  - the plan through `shoal bench` (one process per emulated device, CPU quotas as profiled):
    end-to-end p50, runtime overhead p50 / (slowest compute + aggregation), top-1 on the whole test
    split with its Wilson interval; and the teacher alone on the central node's share of the machine;
  - each baseline (a truncated MiniLM fine-tuned alone) timed the same way on the central node, with
    its top-1 on the same split.
Goals: ensemble within 1 point of the teacher at a measured speedup >= 2x, overhead <= 1.15x; and
more accurate than a truncated MiniLM at the same measured latency (or said plainly that it is not).
Writes the JSON and a PNG of top-1 against measured p50.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from shoal.commands._common import console
from shoal.commands.bench import print_tables
from shoal.plan.directory import load_plan
from shoal.runtime.bench import run_bench
from shoal.runtime.timing import time_teacher
from shoal.utils.stats import wilson_interval

SPEEDUP_GOAL, OVERHEAD_GOAL, ACCURACY_MARGIN = 2.0, 1.15, 0.01


def _baseline(source: str, plan_dir: Path, data: str, repeats: int) -> dict[str, Any]:
    """A truncated teacher timed alone on the plan's central node, with its top-1 on the test split."""
    plan = load_plan(plan_dir)
    central = plan.devices.central
    result = time_teacher(source, plan.config.input_shape, repeats=repeats, warmup=max(5, repeats // 10),
                          threads=central.threads, limit=central, data=data)
    meta = json.loads(Path(source).read_text())
    n = int(result["n"])
    return {"source": source, "layers": _layers(meta), "device": central.name,
            "latency": result["latency"], "top1": result["top1"], "n": n,
            "ci95": wilson_interval(round(result["top1"] * n), n) if n else None,
            "recipe": meta.get("recipe"), "recorded_test": meta.get("metrics", {}).get("test")}


def _layers(meta: dict[str, Any]) -> int | None:
    name = Path(str(meta.get("encoder", ""))).name
    return int(name.rsplit("-", 1)[1].removesuffix("l")) if name.endswith("l") and "-" in name else None


def _figure(path: Path, rows: list[tuple[str, float, float, tuple[float, float] | None]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, ms, top1, ci in rows:
        err = [[100 * (top1 - ci[0])], [100 * (ci[1] - top1)]] if ci else None
        ax.errorbar([ms], [100 * top1], yerr=err, fmt="o", capsize=3, label=label)
        ax.annotate(label, (ms, 100 * top1), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel("measured end-to-end p50 on the central node's share (ms)")
    ax.set_ylabel("test top-1 (%), 95% Wilson interval")
    ax.set_title("rotten-tomatoes: shoal's plan vs the teacher and truncated MiniLMs")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", type=Path, required=True, help="a text plan directory")
    parser.add_argument("--data", default="rotten-tomatoes")
    parser.add_argument("--baseline", nargs="*", default=[], help="truncated teachers' JSON files")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--teacher-repeats", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/text.json"))
    args = parser.parse_args()

    result = run_bench(args.plan, requests=args.requests, warmup=args.warmup, data=args.data,
                       teacher_repeats=args.teacher_repeats)
    print_tables(result)
    bench = result.to_dict()
    teacher = bench["teacher"] or {}
    baselines = [_baseline(b, args.plan, args.data, args.teacher_repeats) for b in args.baseline]
    plan_ms, plan_top1 = result.latency.median_ms, result.accuracy
    verdicts = {
        "speedup": result.speedup,
        "speedup_meets_goal": bool(result.speedup and result.speedup >= SPEEDUP_GOAL),
        "overhead_ratio": result.overhead_ratio,
        "overhead_meets_goal": result.overhead_ratio <= OVERHEAD_GOAL,
        "accuracy_gap_pt": (100 * (teacher["top1"] - plan_top1)
                            if plan_top1 is not None and teacher.get("top1") is not None else None),
    }
    gap = verdicts["accuracy_gap_pt"]
    verdicts["accuracy_meets_goal"] = gap is not None and gap <= 100 * ACCURACY_MARGIN
    for b in baselines:   # the plan against each truncated model: who is faster, who is more accurate
        b["vs_plan"] = {"latency_ratio": b["latency"]["median_ms"] / plan_ms,
                        "top1_difference_pt": 100 * (plan_top1 - b["top1"]) if plan_top1 is not None else None}
    summary = {"plan": str(args.plan), "data": args.data, "goals": {"speedup": SPEEDUP_GOAL,
               "overhead": OVERHEAD_GOAL, "accuracy_margin": ACCURACY_MARGIN},
               "verdicts": verdicts, "bench": bench, "baselines": baselines}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    rows = [(f"shoal plan ({len(load_plan(args.plan).devices)} devices)", plan_ms, plan_top1 or 0.0,
             result.accuracy_ci95)]
    if teacher:
        rows.append(("teacher alone (6 layers)", teacher["latency"]["median_ms"], teacher["top1"],
                     tuple(teacher["ci95"]) if teacher.get("ci95") else None))
    rows += [(f"{b['layers']} layers alone", b["latency"]["median_ms"], b["top1"], b["ci95"]) for b in baselines]
    _figure(args.out.with_suffix(".png"), rows)
    for label, ms, top1, ci in rows:
        interval = f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else ""
        console.print(f"{label:32s} p50 {ms:7.2f} ms   top-1 {100 * top1:5.1f}% {interval}", highlight=False)
    console.print(f"speedup {verdicts['speedup']:.2f}x (goal {SPEEDUP_GOAL}x), overhead "
                  f"{verdicts['overhead_ratio']:.3f} (goal {OVERHEAD_GOAL}), teacher - plan "
                  f"{gap if gap is not None else float('nan'):.1f} pt (goal <= {100 * ACCURACY_MARGIN:.0f})",
                  highlight=False)
    console.print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
