"""The plan directory: everything a deployment needs, nothing pickled.

    plan/
      plan.json                    teacher, policy, devices, predictions, accuracy, search, file hashes
      device-<name>/spec.json      the device's SubModelSpec
      device-<name>/weights.safetensors
      aggregator.safetensors       W, b and the task head (central node)
      figures/*.png

Every file is written atomically; `plan.json` is written last and lists the
sha256 of every other file, so a half-written or tampered plan is refused by
`load_plan` with the name of the file that does not match.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

import shoal
from shoal.devices.spec import DeviceSet, DeviceSpec
from shoal.errors import DataError
from shoal.models.aggregator import Aggregator
from shoal.models.config import ViTConfig
from shoal.models.spec import Policy, SubModelSpec
from shoal.models.surgery import build_submodel
from shoal.utils.io import atomic_save_safetensors, atomic_write_json, sha256_file

FORMAT_VERSION = 1
PLAN_FILE = "plan.json"


@dataclass(frozen=True)
class Plan:
    """A loaded plan directory.

    Attributes:
        root: The directory.
        config: Teacher family.
        policy: One spec per device (central node first).
        devices: The device set the plan was made for.
        meta: The rest of plan.json (teacher id, predictions, accuracy, search summary, versions).
    """

    root: Path
    config: ViTConfig
    policy: Policy
    devices: DeviceSet
    meta: dict[str, Any] = field(default_factory=dict)

    def device_dir(self, name: str) -> Path:
        return self.root / f"device-{name}"

    def spec(self, name: str) -> SubModelSpec:
        return self.policy.spec_for(name)

    def build_submodel(self, name: str, device: str = "cpu") -> VisionTransformer:
        """The calibrated sub-model of device `name` (needs only this plan, not the teacher)."""
        from safetensors.torch import load_file

        spec = self.spec(name)
        weights = load_file(str(self.device_dir(name) / "weights.safetensors"))
        with torch.device("meta"):
            model = build_submodel(self.config, spec, device="meta")
        try:
            model.load_state_dict(weights, strict=True, assign=True)
        except RuntimeError as exc:
            raise DataError(f"{self.device_dir(name)}/weights.safetensors does not fit its spec: "
                            f"{str(exc).splitlines()[0]}") from None
        return model.to(device).eval()

    def build_aggregator(self) -> Aggregator:
        from safetensors.torch import load_file

        agg_meta = self.meta["aggregator"]
        agg = Aggregator(agg_meta["widths"], agg_meta["out_dim"], self.config.num_classes,
                         pool=self.config.global_pool, num_prefix_tokens=self.config.num_prefix_tokens)
        try:
            agg.load_state_dict(load_file(str(self.root / "aggregator.safetensors")), strict=True)
        except RuntimeError as exc:
            raise DataError(f"{self.root}/aggregator.safetensors does not fit plan.json: "
                            f"{str(exc).splitlines()[0]}") from None
        return agg.eval()

    @property
    def teacher_source(self) -> str:
        return str(self.meta.get("teacher", {}).get("source", "?"))


def write_plan(
    root: str | Path,
    config: ViTConfig,
    policy: Policy,
    devices: DeviceSet,
    submodels: Mapping[str, nn.Module],
    aggregator: Aggregator,
    meta: dict[str, Any],
    *,
    device_dropout: bool = False,
) -> Path:
    """Write a plan directory (atomic per file; plan.json with hashes last).

    Args:
        root: Directory to write (created).
        config: Teacher family.
        policy: The policy; device names must match `devices`.
        devices: The device set.
        submodels: Calibrated sub-model per device name.
        aggregator: Trained aggregation module.
        meta: Extra plan.json content: "teacher", "predicted", "accuracy", "search", ...
        device_dropout: The aggregator was trained to answer without some devices (--degrade).

    Returns:
        The path of plan.json.
    """
    root = Path(root)
    if tuple(policy.devices) != tuple(devices.names):
        raise DataError(f"policy devices {list(policy.devices)} do not match the device set {list(devices.names)}")
    files: dict[str, str] = {}
    for name, spec in zip(policy.devices, policy.specs):
        sub = root / f"device-{name}"
        atomic_write_json(sub / "spec.json", spec.to_dict())
        atomic_save_safetensors(sub / "weights.safetensors", submodels[name].state_dict(),
                                metadata={"device": name, "family": config.fingerprint()})
        for fname in ("spec.json", "weights.safetensors"):
            files[f"device-{name}/{fname}"] = sha256_file(sub / fname)
    atomic_save_safetensors(root / "aggregator.safetensors", aggregator.state_dict())
    files["aggregator.safetensors"] = sha256_file(root / "aggregator.safetensors")
    for png in sorted((root / "figures").glob("*.png")):
        files[f"figures/{png.name}"] = sha256_file(png)
    document = {
        "format_version": FORMAT_VERSION,
        "stage": "calibrated",
        "versions": _versions(),
        "teacher_config": config.to_dict(),
        "family": config.fingerprint(),
        "devices": devices.to_dict()["devices"],
        "policy": policy.to_dict(),
        "aggregator": {"widths": list(aggregator.widths), "out_dim": aggregator.fuse.out_features,
                       "device_dropout": device_dropout},
        **meta,
        "files": files,
    }
    atomic_write_json(root / PLAN_FILE, document)
    return root / PLAN_FILE


def _versions() -> dict[str, str]:
    import timm

    return {"shoal": shoal.__version__, "torch": torch.__version__.split("+")[0], "timm": timm.__version__}


def read_plan_json(root: str | Path) -> dict[str, Any]:
    path = Path(root) / PLAN_FILE
    if not path.is_file():
        raise DataError(f"{root} is not a plan directory: {PLAN_FILE} is missing (run `shoal plan` first)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is corrupt: {exc}") from None


def load_plan(root: str | Path, *, verify: bool = True) -> Plan:
    """Load and check a plan directory.

    Checks the format version, that every listed file exists with its recorded
    sha256, and that every spec fits the teacher family. Raises `DataError`
    naming the first thing that does not match.
    """
    root = Path(root)
    doc = read_plan_json(root)
    version = doc.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError(f"{root}/{PLAN_FILE} has format_version {version!r}; this shoal reads {FORMAT_VERSION}")
    if doc.get("stage") == "searched":
        raise DataError(f"plan {root} holds a searched policy only (no weights); calibrate it with "
                        f"`shoal plan --from-policy {root / PLAN_FILE}`")
    if verify:
        for rel, digest in doc.get("files", {}).items():
            path = root / rel
            if not path.is_file():
                raise DataError(f"plan {root} is missing {rel}")
            if sha256_file(path) != digest:
                raise DataError(f"plan {root}: {rel} does not match the sha256 in {PLAN_FILE} (altered or truncated)")
    try:
        config = ViTConfig.from_dict(doc["teacher_config"])
        devices = DeviceSet(tuple(DeviceSpec.from_dict(d) for d in doc["devices"]), source=str(root / PLAN_FILE))
        policy = Policy.from_dict(doc["policy"])
    except KeyError as exc:
        raise DataError(f"{root}/{PLAN_FILE} lacks the field {exc}") from None
    policy.check_against(config)
    major = str(doc.get("versions", {}).get("shoal", "0")).split(".")[0]
    if major != shoal.__version__.split(".")[0]:
        raise DataError(f"plan {root} was written by shoal {doc['versions'].get('shoal')}; "
                        f"this is shoal {shoal.__version__}")
    meta = {k: v for k, v in doc.items() if k not in ("teacher_config", "devices", "policy")}
    return Plan(root, config, policy, devices, meta)


def write_uncalibrated_plan(
    root: str | Path,
    teacher: nn.Module,
    config: ViTConfig,
    policy: Policy,
    devices: DeviceSet,
    meta: dict[str, Any] | None = None,
) -> Path:
    """A plan straight from decomposition: sliced sub-models, scatter-initialised aggregator.

    Useful to deploy a policy before calibration (and as the "decompose only"
    row of the ablation); `shoal plan` writes calibrated plans.
    """
    submodels = {name: build_submodel(config, spec, teacher) for name, spec in zip(policy.devices, policy.specs)}
    aggregator = Aggregator.from_teacher_channels(
        [spec.channels for spec in policy.specs], teacher.head, pool=config.global_pool,
        num_prefix_tokens=config.num_prefix_tokens)
    return write_plan(root, config, policy, devices, submodels, aggregator, {**(meta or {}), "stage": "decomposed"})


def searched_only_document(config: ViTConfig, policy: Policy, devices: DeviceSet, meta: dict[str, Any]
                           ) -> dict[str, Any]:
    """plan.json of `shoal plan --search-only`: the policy and its predictions, no weights."""
    return {"format_version": FORMAT_VERSION, "stage": "searched", "versions": _versions(),
            "teacher_config": config.to_dict(), "family": config.fingerprint(),
            "devices": devices.to_dict()["devices"], "policy": policy.to_dict(), **meta}
