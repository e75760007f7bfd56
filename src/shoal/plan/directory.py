"""The plan directory: everything a deployment needs, nothing pickled.

    plan/
      plan.json                    the `PlanDocument` (`shoal.plan.document`), with file hashes
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn

import shoal
from shoal.devices.spec import DeviceSet
from shoal.errors import DataError
from shoal.models.aggregator import Aggregator
from shoal.models.config import TeacherConfig, TextConfig
from shoal.models.spec import Policy, SubModelSpec
from shoal.models.surgery import build_submodel, head_of
from shoal.plan.document import PLAN_FILE, AggregatorInfo, InputSpec, PlanDocument, TeacherInfo, Versions
from shoal.plan.janus import JANUS_FILE
from shoal.utils.io import atomic_save_safetensors, atomic_write_json, sha256_file


@dataclass(frozen=True)
class Plan:
    """A loaded plan directory.

    Attributes:
        root: The directory.
        document: Its plan.json.
    """

    root: Path
    document: PlanDocument

    @property
    def config(self) -> TeacherConfig:
        return self.document.config

    @property
    def policy(self) -> Policy:
        return self.document.policy

    @property
    def devices(self) -> DeviceSet:
        return self.document.devices

    @property
    def teacher_source(self) -> str:
        return self.document.teacher_source

    def device_dir(self, name: str) -> Path:
        return self.root / f"device-{name}"

    def spec(self, name: str) -> SubModelSpec:
        return self.policy.spec_for(name)

    def build_submodel(self, name: str, device: str = "cpu") -> nn.Module:
        """The calibrated sub-model of device `name` (needs only this plan, not the teacher)."""
        from safetensors.torch import load_file

        spec = self.spec(name)
        weights = load_file(str(self.device_dir(name) / "weights.safetensors"))
        if isinstance(self.config, TextConfig):   # cut from a random encoder: its position buffers are real
            model = build_submodel(self.config, spec)
        else:
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

        info = self.document.aggregator
        if info is None:
            raise DataError(f"plan {self.root} has no aggregator (stage {self.document.stage})")
        agg = Aggregator(list(info.widths), info.out_dim, self.config.num_classes,
                         pool=self.config.global_pool, num_prefix_tokens=self.config.num_prefix_tokens,
                         activation="relu" if info.activation == "relu" else "none")
        try:
            agg.load_state_dict(load_file(str(self.root / "aggregator.safetensors")), strict=True)
        except RuntimeError as exc:
            raise DataError(f"{self.root}/aggregator.safetensors does not fit plan.json: "
                            f"{str(exc).splitlines()[0]}") from None
        return agg.eval()


def versions() -> Versions:
    """The versions of this shoal, torch and timm, as a plan records them."""
    import timm

    return Versions(shoal.__version__, torch.__version__.split("+")[0], timm.__version__)


def write_plan(root: str | Path, document: PlanDocument, submodels: Mapping[str, nn.Module],
               aggregator: Aggregator, *, device_dropout: bool = False,
               extra_files: Sequence[str] = ()) -> PlanDocument:
    """Write a plan directory (atomic per file; plan.json with the hashes last).

    Args:
        root: Directory to write (created).
        document: plan.json without its files and aggregator shape (filled in here).
        submodels: Calibrated sub-model per device name.
        aggregator: Trained aggregation module.
        device_dropout: The aggregator was trained to answer without some devices (--degrade).
        extra_files: Other files under `root` to hash (a variant's plan.json, which hashes its own).

    Returns:
        The document written.
    """
    root = Path(root)
    config = document.config
    files: dict[str, str] = {}
    for name, spec in zip(document.policy.devices, document.policy.specs):
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
    for rel in extra_files:
        files[rel] = sha256_file(root / rel)
    info = AggregatorInfo.of(aggregator, device_dropout)
    document = replace(document, aggregator=info, files=files)
    atomic_write_json(root / PLAN_FILE, document.to_dict())
    return document


def write_document(root: str | Path, document: PlanDocument) -> Path:
    """Write plan.json alone (a searched-only plan: the policy and its predictions, no weights)."""
    path = Path(root) / PLAN_FILE
    atomic_write_json(path, document.to_dict())
    return path


def plan_document_file(root: str | Path) -> Path:
    """The file that defines a plan directory: plan.json, or janus.json for a Janus plan (what its
    fingerprint hashes and `shoal certs` signs)."""
    root = Path(root)
    return root / JANUS_FILE if not (root / PLAN_FILE).exists() and (root / JANUS_FILE).is_file() else root / PLAN_FILE


def is_janus_plan(root: str | Path) -> bool:
    """Whether `root` holds a Janus plan (`shoal plan --method janus`) rather than a decomposition."""
    return plan_document_file(root).name == JANUS_FILE


def read_plan_json(root: str | Path) -> PlanDocument:
    """The plan.json of a plan directory, read and checked field by field (not the files)."""
    path = Path(root) / PLAN_FILE
    if not path.is_file():
        raise DataError(f"{root} is not a plan directory: {PLAN_FILE} is missing (run `shoal plan` first)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is corrupt: {exc}") from None
    return PlanDocument.from_dict(data, str(path))


def load_plan(root: str | Path, *, verify: bool = True) -> Plan:
    """Load and check a plan directory.

    Checks plan.json field by field, that every listed file exists with its recorded sha256,
    that every spec fits the teacher family and that a compatible shoal wrote it. Raises
    `DataError` naming the first thing that does not match.
    """
    root = Path(root)
    doc = read_plan_json(root)
    if doc.stage == "searched":
        raise DataError(f"plan {root} holds a searched policy only (no weights); calibrate it with "
                        f"`shoal plan --from-policy {root / PLAN_FILE}`")
    check_plan(root, doc, files=verify)
    return Plan(root, doc)


def check_plan(root: str | Path, doc: PlanDocument, *, files: bool = True) -> None:
    """Check that `doc` (the plan.json of `root`) can be served: every listed file there with its
    recorded sha256 (`files`), every spec fits the teacher family, a compatible shoal wrote it."""
    root = Path(root)
    if files:
        for rel, digest in doc.files.items():
            path = root / rel
            if not path.is_file():
                raise DataError(f"plan {root} is missing {rel}")
            if sha256_file(path) != digest:
                raise DataError(f"plan {root}: {rel} does not match the sha256 in {PLAN_FILE} (altered or truncated)")
    doc.policy.check_against(doc.config)
    if doc.versions.shoal.split(".")[0] != shoal.__version__.split(".")[0]:
        raise DataError(f"plan {root} was written by shoal {doc.versions.shoal}; this is shoal {shoal.__version__}")


def write_uncalibrated_plan(root: str | Path, teacher: nn.Module, config: TeacherConfig, policy: Policy,
                            devices: DeviceSet, teacher_source: str = "?", decomposition: str | None = None,
                            input_spec: InputSpec | None = None) -> PlanDocument:
    """A plan straight from decomposition: sliced sub-models, scatter-initialised aggregator.

    Useful to deploy a policy before calibration (and as the "decompose only" row of the
    ablation); `shoal plan` writes calibrated plans.
    """
    submodels = {name: build_submodel(config, spec, teacher) for name, spec in zip(policy.devices, policy.specs)}
    aggregator = Aggregator.from_teacher_channels(
        [spec.channels for spec in policy.specs], head_of(teacher), pool=config.global_pool,
        num_prefix_tokens=config.num_prefix_tokens)
    document = PlanDocument(stage="decomposed", versions=versions(), config=config, devices=devices, policy=policy,
                            aggregator=AggregatorInfo.of(aggregator),
                            teacher=TeacherInfo(teacher_source), decomposition=decomposition, input=input_spec)
    return write_plan(root, document, submodels, aggregator)
