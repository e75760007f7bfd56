"""Accuracy ablation of a plan's policy over calibration seeds, with paired tests on the same images.

    .venv/bin/python benchmarks/accuracy.py [--plan .shoal/plan] [--seeds 3] [--epochs 8]
        [--data fashion-mnist] [--model NAME] [--max-per-split N] [--groups weighting,importance,...]

Takes the policy of an existing plan (a plan directory, its plan.json, or any JSON with a
"policy", e.g. an earlier benchmarks/results/accuracy.json) and calibrates it from scratch
under each variant and each seed, all scored on the same test images:

    boost                    the default, and the reference: boosting sample weights, the plan's policy
    uniform, printed         the other sample weightings (group "weighting")
    importance=RULE          the same sub-model shapes, units ranked by another rule ("importance")
    deal=RULE                the same shapes, units dealt by the other rule ("deal")
    dropout=P                aggregator trained with device dropout P; also scored without each device ("dropout")
    joint=K                  K epochs of joint fine-tuning after the aggregator ("joint")
    decompose-only, decompose+aggregate
                             the uncalibrated rows of the reference runs (Table III of CoFormer; free)

Reported: the teacher's top-1; each variant's mean top-1 over seeds with a 95% interval; and
paired tests against the reference on the same images: per seed the exact McNemar test, over
seeds the exact sign-flip test over images of the mean difference, how many seeds agree with
its sign, and whether the variant separates from the reference (significant and no seed
disagrees; see shoal.utils.stats for why this, and not pooled McNemar, is valid).

Every (variant, seed) run is cached in the work folder (<out stem>-work/); --resume reuses
finished runs and continues interrupted calibrations. The per-image correctness vectors go to
<out>.correct.safetensors beside the JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from safetensors.torch import load_file

from shoal.errors import ConfigError, DataError
from shoal.models import Policy, SubModelShape, compute_importance, decompose
from shoal.planner.pipeline import PlanHooks, Problem, build_problem, calibrate
from shoal.planner.settings import CalibrationSettings, PlanRequest
from shoal.utils.io import atomic_save_safetensors, atomic_write_json
from shoal.utils.stats import Accuracy, compare_seeds, mean_accuracy

REFERENCE = "boost"
GROUPS = ("weighting", "importance", "deal", "dropout", "joint")
IMPORTANCE_RULES = ("mixed", "taylor", "fisher", "magnitude", "random")


@dataclass(frozen=True)
class Variant:
    """One row of the ablation: how its runs are calibrated (per seed)."""

    name: str
    group: str
    weighting: str = "boost"
    importance: str | None = None     # None: the plan's policy as is
    deal: str | None = None
    dropout: float = 0.0
    joint_epochs: int = 0


def variants(groups: Sequence[str], plan_importance: str, plan_deal: str, dropout: float, joint_epochs: int
             ) -> list[Variant]:
    out = [Variant(REFERENCE, "reference")]
    if "weighting" in groups:
        out += [Variant("uniform", "weighting", weighting="uniform"),
                Variant("printed", "weighting", weighting="printed")]
    if "importance" in groups:
        out += [Variant(f"importance={r}", "importance", importance=r, deal=plan_deal)
                for r in IMPORTANCE_RULES if r != plan_importance]
    if "deal" in groups:
        other = "ranked" if plan_deal == "fair" else "fair"
        out.append(Variant(f"deal={other}", "deal", importance=plan_importance, deal=other))
    if "dropout" in groups:
        out.append(Variant(f"dropout={dropout:g}", "dropout", dropout=dropout))
    if "joint" in groups:
        out.append(Variant(f"joint={joint_epochs}", "joint", joint_epochs=joint_epochs))
    return out


def load_policy(path: Path) -> tuple[Policy, dict[str, Any]]:
    """The policy (and the whole document) of a plan directory, a plan.json or any JSON with a "policy"."""
    file = path / "plan.json" if path.is_dir() else path
    if not file.is_file():
        raise DataError(f"--plan {path}: no plan.json there; run `shoal plan` first or pass a JSON with a policy")
    doc = json.loads(file.read_text())
    if "policy" not in doc:
        raise DataError(f"{file} has no policy")
    return Policy.from_dict(doc["policy"]), doc


class Runs:
    """Calibrates (variant, seed) runs of one problem, caching each finished run in `work`."""

    def __init__(self, problem: Problem, base: PlanRequest, policy: Policy, work: Path, args: argparse.Namespace,
                 console: Console) -> None:
        self.problem, self.base, self.policy, self.work, self.args = problem, base, policy, work, args
        self.console = console
        self.shapes = [SubModelShape.of(spec) for spec in policy.specs]
        self._scores: dict[tuple[str, int], Any] = {}

    def policy_for(self, v: Variant, seed: int) -> Policy:
        if v.importance is None:
            return self.policy
        rule = v.importance
        key = (rule, seed if rule == "random" else 0)
        if key not in self._scores:
            t, train = self.problem.teacher, self.problem.data.train
            n = min(self.base.cal_images, 256)
            self._scores[key] = compute_importance(t.model, t.config, train.images[:n], train.labels[:n], rule,
                                                   seed=key[1])
        return decompose(self.problem.teacher.config, list(self.policy.devices), self.shapes, self._scores[key],
                         v.deal or "fair")

    def settings_for(self, v: Variant, seed: int) -> CalibrationSettings:
        a = self.args
        kw: dict[str, Any] = {"epochs": a.epochs, "seed": seed, "weighting": v.weighting,
                              "device_dropout": v.dropout, "joint_epochs": v.joint_epochs}
        if a.aggregator_epochs is not None:
            kw["aggregator_epochs"] = a.aggregator_epochs
        return CalibrationSettings(**kw)

    def run(self, v: Variant, seed: int) -> dict[str, Any]:
        """{"accuracy": plan.json-style accuracy, "correct": {row: bool vector}, "policy_differs": bool}."""
        policy, settings = self.policy_for(v, seed), self.settings_for(v, seed)
        ident = {"settings": settings.to_dict(), "policy": policy.to_dict(),
                 "data": self.problem.data.summary().to_dict(), "teacher": self.problem.teacher.source,
                 "cal_images": self.base.cal_images}
        key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
        folder = self.work / f"{v.name}-s{seed}".replace("=", "-").replace("+", "-")
        done, vectors = folder / "run.json", folder / "correct.safetensors"
        if self.args.resume and done.is_file() and vectors.is_file():
            cached = json.loads(done.read_text())
            if cached.get("key") == key:
                self.console.log(f"{v.name} seed {seed}: reusing {folder}")
                return {"accuracy": cached["accuracy"], "policy_differs": cached["policy_differs"],
                        "correct": {k: t.bool() for k, t in load_file(str(vectors)).items()}}
        resume = self.args.resume and (folder / "key.txt").is_file() and (folder / "key.txt").read_text() == key
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "key.txt").write_text(key)
        started = time.perf_counter()
        request = replace(self.base, out=str(folder), calibration=settings, resume=resume)
        cal = calibrate(self.problem, policy, request, PlanHooks())
        self.console.log(f"{v.name} seed {seed}: ensemble top-1 {cal.accuracy.ensemble.top1:.2%} "
                         f"({time.perf_counter() - started:.0f} s)")
        result = {"accuracy": cal.accuracy.to_dict(), "policy_differs": policy != self.policy,
                  "correct": {k: t.bool() for k, t in cal.correct.items()}}
        atomic_save_safetensors(vectors, {k: t.to(torch.uint8).contiguous() for k, t in result["correct"].items()})
        atomic_write_json(done, {"key": key, "variant": v.name, "seed": seed, "accuracy": result["accuracy"],
                                 "policy_differs": result["policy_differs"]})
        return result


def analyse(rows: dict[str, list[dict[str, Any]]], alpha: float) -> tuple[dict[str, Any], Accuracy, torch.Tensor]:
    """Mean accuracies, tests vs the reference and vs the teacher, per row. Rows map to per-seed runs."""
    teacher = rows[REFERENCE][0]["correct"]["teacher"]
    for name, runs in rows.items():
        for r in runs:
            if not torch.equal(r["correct"]["teacher"], teacher):
                raise DataError(f"{name}: the teacher scored differently: the runs did not see the same test images")
    ref = [r["correct"]["ensemble"] for r in rows[REFERENCE]]
    out: dict[str, Any] = {}
    for name, runs in rows.items():
        ens = [r["correct"]["ensemble"] for r in runs]
        subs = [s["top1"] for r in runs for s in r["accuracy"]["submodels"].values()]
        missing: dict[str, Any] = {}
        for key in runs[0]["correct"]:
            if key.startswith("missing/"):
                missing[key.split("/", 1)[1]] = mean_accuracy([r["correct"][key] for r in runs]).to_dict()
        out[name] = {
            "ensemble": mean_accuracy(ens).to_dict(),
            "submodels_mean_top1": sum(subs) / len(subs) if subs else None,
            "vs_reference": None if name == REFERENCE else compare_seeds(ref, ens).to_dict(alpha),
            "vs_teacher": compare_seeds([teacher], ens).to_dict(alpha),
            "missing": missing,
            "policy_differs": any(r.get("policy_differs", False) for r in runs),
            "runs": [r["accuracy"] for r in runs],
        }
    return out, Accuracy.of(teacher), teacher


def _pct(x: float) -> str:
    return f"{x:.2%}"


def _ci(ci: Sequence[float], scale: float = 100.0, unit: str = "") -> str:
    return f"[{ci[0] * scale:.2f}, {ci[1] * scale:.2f}]{unit}"


def report(console: Console, results: dict[str, Any], teacher: Accuracy, n: int, seeds: int, alpha: float,
           where: str) -> list[str]:
    """Print the tables; returns the verdict lines."""
    t = Table(title=f"ensemble test top-1, mean over {seeds} seed(s), n={n} images ({where}); "
                    f"teacher {_pct(teacher.top1)} {_ci(teacher.ci95, unit='%')}", title_justify="left")
    for col in ("variant", "top-1", "95% CI %", "per seed", "sub-models", "vs teacher pt", "p", "separates"):
        t.add_column(col, justify="left" if col in ("variant", "per seed") else "right")
    for name, r in results.items():
        e, vt = r["ensemble"], r["vs_teacher"]
        t.add_row(name + (" (ref)" if name == REFERENCE else ""), _pct(e["top1"]), _ci(e["ci95"]),
                  " ".join(f"{a['top1']:.2%}" for a in e["per_seed"]),
                  _pct(r["submodels_mean_top1"]) if r["submodels_mean_top1"] is not None else "-",
                  f"{vt['difference'] * 100:+.2f}", f"{vt['p_value']:.3g}", "yes" if vt["separates"] else "no")
    console.print(t)
    c = Table(title=f"paired vs {REFERENCE} on the same images (α={alpha:g}); per seed: Δ pt (exact McNemar p); "
                    "p: exact sign-flip over images of the mean Δ; sign p: sign test over seeds",
              title_justify="left")
    for col in ("variant", "Δ pt", "95% CI pt", "per seed", "p", "seeds agree", "sign p", "separates"):
        c.add_column(col, justify="left" if col in ("variant", "per seed") else "right")
    verdict = []
    for name, r in results.items():
        v = r["vs_reference"]
        if v is None:
            continue
        per_seed = "  ".join(f"{m['difference'] * 100:+.2f} ({m['p_value']:.2g})" for m in v["per_seed"])
        c.add_row(name, f"{v['difference'] * 100:+.2f}", _ci(v["ci95"]), per_seed, f"{v['p_value']:.3g}",
                  f"{v['seeds_agreeing']}/{v['seeds']}", f"{v['seed_sign_p']:.3g}",
                  "[bold]yes[/]" if v["separates"] else "no")
        side = "better" if v["difference"] > 0 else "worse"
        verdict.append(f"{name}: {v['difference'] * 100:+.2f} pt vs {REFERENCE} "
                       + (f"-> separates ({side}; p={v['p_value']:.2g}, {v['seeds_agreeing']}/{v['seeds']} seeds)"
                          if v["separates"] else
                          f"-> does not separate (p={v['p_value']:.2g}, {v['seeds_agreeing']}/{v['seeds']} seeds "
                          f"agree)"))
    console.print(c)
    for name, r in results.items():
        for device, m in r["missing"].items():
            console.print(f"{name}, answering without {device}: {_pct(m['top1'])} {_ci(m['ci95'], unit='%')}")
    for line in verdict:
        console.print(line, highlight=False)
    return verdict


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", type=Path, default=Path(".shoal/plan"),
                        help="plan directory, plan.json, or a JSON with a 'policy'")
    parser.add_argument("--model", default=None, help="teacher (passed to PlanRequest; default: the task's)")
    parser.add_argument("--checkpoint", default=None, help="local weights for --model")
    parser.add_argument("--data", default=None,
                        help="digits | fashion-mnist | an ImageFolder tree (default: digits)")
    parser.add_argument("--devices", default=None, help="device-set YAML the plan was made for (default set)")
    parser.add_argument("--max-per-split", type=int, default=None, help="cap on images per split")
    parser.add_argument("--epochs", type=int, default=8, help="distillation epochs per sub-model")
    parser.add_argument("--aggregator-epochs", type=int, default=None, help="aggregator epochs (default: 60)")
    parser.add_argument("--seeds", type=int, default=3, help="calibration seeds 0..N-1 per variant")
    parser.add_argument("--groups", default=",".join(GROUPS), help=f"variant groups among {','.join(GROUPS)}")
    parser.add_argument("--variants", default=None,
                        help="only these variants of the groups (comma-separated names, e.g. uniform); "
                             "the reference always runs")
    parser.add_argument("--dropout", type=float, default=0.3, help="device dropout rate of the dropout variant")
    parser.add_argument("--joint-epochs", type=int, default=2, help="joint fine-tune epochs of the joint variant")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level")
    parser.add_argument("--resume", action="store_true", help="reuse finished runs in the work folder")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/accuracy.json"))
    args = parser.parse_args(argv)
    groups = [g for g in args.groups.split(",") if g]
    if args.seeds < 1 or any(g not in GROUPS for g in groups):
        raise ConfigError(f"need --seeds >= 1 and --groups among {GROUPS}, got {args.seeds} and {groups}")
    console = Console()
    if not console.is_terminal:   # a log file: wide enough for the tables
        console = Console(width=200)
    torch.manual_seed(0)
    policy, plan_doc = load_policy(args.plan)
    work = args.out.parent / f"{args.out.stem}-work"
    importance, deal = plan_doc.get("importance", "mixed"), plan_doc.get("deal_rule", "fair")
    base = PlanRequest(model=args.model, checkpoint=args.checkpoint, data=args.data, devices=args.devices,
                       out=str(work), delta=(plan_doc.get("objective") or {}).get("delta_per_ms"),
                       max_per_split=args.max_per_split, importance=importance, deal_rule=deal)
    problem = build_problem(base, PlanHooks(phase=lambda s: console.log(s)))
    policy.check_against(problem.teacher.config)
    runs = Runs(problem, base, policy, work, args, console)
    redealt = runs.policy_for(Variant("check", "check", importance=importance, deal=deal), 0) == policy
    console.log(f"the plan's shapes re-dealt with its own rules ({importance}, {deal}) give "
                f"{'the plan policy' if redealt else 'a different policy than the plan (scores differ)'}")
    table = variants(groups, importance, deal, args.dropout, args.joint_epochs)
    if args.variants:
        keep = {REFERENCE, *(name.strip() for name in args.variants.split(",") if name.strip())}
        unknown = keep - {v.name for v in table}
        if unknown:
            raise SystemExit(f"--variants: {', '.join(sorted(unknown))} not among {', '.join(v.name for v in table)}")
        table = [v for v in table if v.name in keep]
    console.log(f"{len(table)} variants x {args.seeds} seeds on {problem.data.name} "
                f"(test n={len(problem.data.test)}), policy of {args.plan}")
    rows: dict[str, list[dict[str, Any]]] = {v.name: [] for v in table}
    for seed in range(args.seeds):   # seed by seed: an interrupted run still leaves complete pairs
        for v in table:
            rows[v.name].append(runs.run(v, seed))
    # the uncalibrated ablation rows come with every reference run
    for name, key in (("decompose-only", "ablation/decompose_only/ensemble"),
                      ("decompose+aggregate", "ablation/decompose_aggregate/ensemble")):
        rows[name] = [{"accuracy": {"submodels": r["accuracy"]["ablation"][key.split("/")[1]]["submodels"]},
                       "correct": {"ensemble": r["correct"][key], "teacher": r["correct"]["teacher"]}}
                      for r in rows[REFERENCE]]
    results, teacher, teacher_vec = analyse(rows, args.alpha)
    n = teacher.n
    verdict = report(console, results, teacher, n, args.seeds, args.alpha,
                     f"{problem.data.name}, policy of {args.plan}")
    ratio = (plan_doc.get("predicted") or {}).get("slowest_device_ratio") or plan_doc.get("slowest_device_ratio")
    if ratio:
        console.print(f"predicted latency on the slowest device ({ratio['device']}): sub-model "
                      f"{ratio['submodel_ms']:.2f} ms vs teacher {ratio['teacher_ms']:.2f} ms = {ratio['ratio']:.0%}")
    vectors = {"teacher": teacher_vec}
    for name, rs in rows.items():
        for seed, r in enumerate(rs):
            vectors[f"{name}/s{seed}"] = r["correct"]["ensemble"]
    correct_path = args.out.with_suffix(".correct.safetensors")
    atomic_save_safetensors(correct_path, {k: t.to(torch.uint8).contiguous() for k, t in vectors.items()})
    atomic_write_json(args.out, {
        "plan": str(args.plan), "policy": policy.to_dict(), "data": problem.data.summary().to_dict(),
        "teacher": {"source": problem.teacher.source, **teacher.to_dict()},
        "n": n, "seeds": args.seeds, "epochs": args.epochs, "aggregator_epochs": args.aggregator_epochs,
        "max_per_split": args.max_per_split, "reference": REFERENCE, "alpha": args.alpha,
        "stats": {"ci95": "one seed: Wilson; several: percentile bootstrap over images of the mean over seeds",
                  "vs_reference": "per seed exact McNemar; over seeds exact sign-flip test over images of the "
                                  "mean-over-seeds difference (shoal.utils.stats.compare_seeds)",
                  "separates": "p < alpha and every seed's difference has the sign of the mean"},
        "redealt_policy_matches_plan": redealt, "variants": [v.__dict__ for v in table],
        "results": results, "verdict": verdict,
        "slowest_device_ratio": ratio, "correct_vectors": str(correct_path)})
    console.print(f"wrote {args.out} and {correct_path}")


if __name__ == "__main__":
    main()
