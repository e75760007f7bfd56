"""`shoal plan --method janus`: one device and the server, the α grid measured, both sides profiled.

The server is the device set's central node; the device is its first worker (the one the images
come from). For every α of the 0.01 grid (`shoal.models.tokens`), the teacher with its tokens
merged by that schedule is scored on the validation split (what the scheduler orders α by) and on
the test split (what the plan reports); one block is timed at several token counts on each side
under that side's CPU limit (`shoal.profiling.layers`); the fixed cost per request is the call's
measured overhead on the device's link plus the link latency both ways. Nothing is trained:
Janus's token merging works on the teacher as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from shoal.devices.spec import DeviceSet
from shoal.errors import ConfigError
from shoal.models.tokens import TokenRunner, alpha_grid, counts, token_bytes
from shoal.plan.janus import JanusConfig, JanusModel, JanusPlan, split_candidates
from shoal.planner.objective import LatencyPredictor
from shoal.planner.pipeline import PhaseClock, PlanHooks, Problem, build_problem
from shoal.planner.settings import PlanRequest
from shoal.profiling.layers import profile_layers
from shoal.utils.accel import device_of

log = logging.getLogger(__name__)

SPLIT_K = 5          # eq. 3's k, as the paper sets it
TEST_IMAGES = 2000   # test images per α (101 α of a 10,000-image split would take minutes on 2 cores)


def run_janus_plan(request: PlanRequest, hooks: PlanHooks | None = None,
                   predictors: Sequence[LatencyPredictor] | None = None, devices: DeviceSet | None = None,
                   ) -> JanusPlan:
    """`shoal plan --method janus`: writes `janus.json` into `request.out` and returns it."""
    clock = PhaseClock((hooks or PlanHooks()).phase)
    hooks = replace(hooks or PlanHooks(), phase=clock)
    Path(request.out).mkdir(parents=True, exist_ok=True)
    problem = build_problem(request, hooks, predictors, devices)
    plan = janus_plan(problem, request, hooks)
    plan.write(request.out)
    clock.finish()
    return plan


def janus_plan(problem: Problem, request: PlanRequest, hooks: PlanHooks) -> JanusPlan:
    """The Janus plan of the problem's teacher and its first worker + central node.

    Raises:
        ConfigError: the device set has no worker, or the teacher has register tokens.
    """
    teacher, data, devices = problem.teacher, problem.data, problem.devices
    workers = [d for d in devices.devices if not d.central]
    if not workers:
        raise ConfigError("--method janus: the device set needs a device besides the central node (the server)")
    device, server = workers[0], devices.central
    teacher.vit("--method janus")
    vit: Any = teacher.model   # a timm ViT: checked above
    runner = TokenRunner(vit)
    grid = alpha_grid(runner.depth, runner.tokens)
    val = data.val.subset(request.val_images)
    test = data.test.subset(TEST_IMAGES)
    hooks.phase(f"janus: accuracy of {len(grid)} α on {len(val)} validation and {len(test)} test images")
    val_acc, test_acc = [], []
    for k, alpha in enumerate(grid):
        val_acc.append(_top1(runner, val.images, val.labels, alpha))
        test_acc.append(_top1(runner, test.images, test.labels, alpha))
        hooks.progress("scoring α", k + 1, len(grid))
    hooks.phase(f"janus: timing one block per token count, plain and reducing, on {device.name} and {server.name}")
    points = sorted({max(2, round(runner.tokens * f)) for f in (0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 0.85, 1.0)})
    fits = {side.name: profile_layers(teacher.source, side, points) for side in (device, server)}
    configs = tuple(JanusConfig(a, counts(a, runner.depth, runner.tokens), acc) for a, acc in zip(grid, val_acc))
    index = devices.names.index(device.name)
    fixed_ms = problem.evaluator.rpc_ms[index] + 2 * device.link_latency_ms
    (dev_plain, dev_reducing), (srv_plain, srv_reducing) = fits[device.name], fits[server.name]
    model = JanusModel(configs, dev_plain.model, srv_plain.model, token_bytes(teacher.config.embed_dim),
                       int(problem.evaluator.input_bytes), split_candidates(runner.depth, SPLIT_K), fixed_ms,
                       dev_reducing.model, srv_reducing.model)
    for name, (fit, _) in fits.items():
        log.info("janus: %s keeps the %s fit (leave-one-out %.3f vs %.3f ms)", name, fit.chosen,
                 fit.loo_ms["linear"], fit.loo_ms["quadratic"])
    return JanusPlan(
        teacher.source, teacher.config.fingerprint(), device, server, runner.reduction, model, tuple(test_acc),
        len(test), problem.input,
        {name: {"chosen": fit.chosen, "loo_linear_ms": fit.loo_ms["linear"],
                "loo_quadratic_ms": fit.loo_ms["quadratic"], "reducing_chosen": reducing.chosen,
                "reducing_loo_linear_ms": reducing.loo_ms["linear"],
                "reducing_loo_quadratic_ms": reducing.loo_ms["quadratic"]} for name, (fit, reducing) in fits.items()})


def _top1(runner: TokenRunner, images: torch.Tensor, labels: torch.Tensor, alpha: float) -> float:
    dev = device_of(runner.model)
    with torch.inference_mode():
        predicted = torch.cat([runner(images[i:i + 256].to(dev), alpha).argmax(1).cpu()
                               for i in range(0, len(images), 256)])
    return float((predicted == labels).float().mean()) if len(labels) else 0.0
