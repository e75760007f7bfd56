"""The variants a plan's servers load (a `--pareto` plan; a plain plan is its one variant, "primary").

Every server loads the same list, so the central node and its workers agree on it
without talking: the primary first, then each variant of `plan.json` in order, kept
when every one of its devices can still hold its sub-model beside those of the
variants kept before it (`memory_mb` of the device set: weights + activations,
summed). The devices served are those of the variants kept (`served_devices`): a
variant may use a worker the primary leaves out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from shoal.devices.spec import DeviceSet, DeviceSpec
from shoal.errors import ConfigError
from shoal.models.accounting import spec_cost
from shoal.plan.directory import Plan, load_plan

logger = logging.getLogger(__name__)

PRIMARY = "primary"


@dataclass(frozen=True)
class ServedVariant:
    """One variant as served.

    Attributes:
        name: "primary", "fastest", ...
        plan: Its plan directory, loaded.
        top1: Its calibrated test top-1 (None: unknown).
    """

    name: str
    plan: Plan
    top1: float | None

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(self.plan.devices.names)


def load_variants(plan: Plan) -> list[ServedVariant]:
    """The variants to serve, primary first (module doc); skipped ones are logged with the reason."""
    doc = plan.document
    primary_top1 = doc.accuracy.ensemble.top1 if doc.accuracy is not None else None
    served = [ServedVariant(PRIMARY, plan, primary_top1)]
    budget = {d.name: d.memory_bytes for d in plan.devices.devices}
    used = {name: spec_cost(plan.config, plan.spec(name)).memory_bytes for name in plan.devices.names}
    for info in doc.variants:
        if info.name == PRIMARY:
            continue
        variant = load_plan(plan.root / info.dir)
        names = variant.devices.names
        if variant.devices.central.name != plan.devices.central.name:
            logger.warning("variant %s has another central node (%s); not served", info.name,
                           variant.devices.central.name)
            continue
        for d in variant.devices.devices:
            budget.setdefault(d.name, d.memory_bytes)
            used.setdefault(d.name, 0)
        cost = {n: spec_cost(variant.config, variant.spec(n)).memory_bytes for n in names}
        over = [n for n in names if used[n] + cost[n] > budget[n]]
        if over:
            logger.warning("variant %s does not fit beside the variants before it on %s (memory budget); "
                           "not served", info.name, ", ".join(over))
            continue
        for n in names:
            used[n] += cost[n]
        served.append(ServedVariant(info.name, variant, info.top1))
    return served


def served_devices(variants: list[ServedVariant]) -> DeviceSet:
    """Every device some served variant uses: the primary's first, in its order, then the others."""
    seen: dict[str, DeviceSpec] = {}
    for v in variants:
        for d in v.plan.devices.devices:
            seen.setdefault(d.name, d)
    return DeviceSet(tuple(seen.values()), source=variants[0].plan.devices.source)


def device_spec(variants: list[ServedVariant], name: str) -> DeviceSpec:
    """The spec of device `name` in the variants served.

    Raises:
        ConfigError: no served variant uses it.
    """
    devices = served_devices(variants)
    if name not in devices.names:
        raise ConfigError(f"the plan has no device {name!r} (no variant uses it); "
                          f"its devices are {list(devices.names)}")
    return devices[name]
