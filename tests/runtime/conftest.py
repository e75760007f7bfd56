"""Tiny plans and in-process clusters for the runtime tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import torch

from shoal.models import pooled_features
from shoal.plan.directory import Plan, load_plan
from shoal.runtime.central import CentralServicer, start_central
from shoal.runtime.demo_plan import device_set, save_teacher_checkpoint, write_even_plan
from shoal.runtime.server import RunningServer
from shoal.runtime.status import RemoteError
from shoal.runtime.worker import Fault, WorkerServicer, start_worker
from tests.conftest import make_vit

DEVICES = [("hub", 1.0, (0,)), ("edge-a", 0.5, (1,)), ("edge-b", 0.5, (1,))]
WORKERS = ("edge-a", "edge-b")
NORMALISATION = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))   # the plan's: compact inputs are normalised so


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Servers in the test process compute on several gRPC threads at once: one torch thread each, as a
    device process would run, instead of oversubscribed OpenMP teams."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


TINY_TIMM = ("vit_tiny_patch16_224", dict(img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=48,
                                           depth=3, num_heads=4, mlp_ratio=2.0))


@pytest.fixture(scope="session")
def plan_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-device even plan of a tiny ViT (16x16x3 input, 5 classes); devices carry CPU quotas.

    The teacher is saved as a described checkpoint, so `shoal bench` can reload and time it.
    """
    root = tmp_path_factory.mktemp("plan")
    teacher = make_vit()
    checkpoint = save_teacher_checkpoint(root / "teacher.safetensors", teacher, *TINY_TIMM)
    return write_even_plan(root / "plan", teacher, device_set(DEVICES), str(checkpoint), NORMALISATION)


@pytest.fixture(scope="session")
def other_plan_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same devices, another model (other weights): another plan fingerprint; no recorded
    normalisation (a plan made before compact inputs: float32 only)."""
    return write_even_plan(tmp_path_factory.mktemp("other") / "plan", make_vit(seed=1), device_set(DEVICES), "tiny1")


@pytest.fixture(scope="session")
def plan(plan_dir: Path) -> Plan:
    return load_plan(plan_dir)


def reference_logits(plan: Plan, x: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
    """What the runtime must answer: the aggregator on every device's pooled features, in one process."""
    with torch.inference_mode():
        feats = [pooled_features(plan.build_submodel(n), x) for n in plan.policy.devices]
        if present is not None:
            feats = [f * p for f, p in zip(feats, present)]
        return plan.build_aggregator()(feats, present=present)


@dataclass
class InProcess:
    """Workers and a central node served from the test process."""

    workers: dict[str, tuple[RunningServer, WorkerServicer]]
    central: RunningServer | None = None
    servicer: CentralServicer | None = None
    extra: list[RunningServer] = field(default_factory=list)

    @property
    def targets(self) -> dict[str, str]:
        return {n: w[0].target for n, w in self.workers.items()}

    def stop(self) -> None:
        for server in ([self.central] if self.central else []) + [w[0] for w in self.workers.values()] + self.extra:
            server.stop(0)
        if self.servicer is not None:
            self.servicer.close()


@pytest.fixture
def in_process(plan: Plan) -> Iterator[Callable[..., InProcess]]:
    """Factory: `in_process(deadline_ms=..., degrade=..., faults={"edge-b": Fault(...)})`."""
    started: list[InProcess] = []

    def start(*, deadline_ms: float = 2000.0, degrade: bool = False, faults: Mapping[str, Fault] | None = None,
              central: bool = True, target_plan: Plan | None = None) -> InProcess:
        faults = faults or {}
        cluster = InProcess({n: start_worker(target_plan or plan, n, fault=faults.get(n), warmup=2) for n in WORKERS})
        started.append(cluster)
        if central:
            cluster.central, cluster.servicer = start_central(plan, cluster.targets, deadline_ms=deadline_ms,
                                                              degrade=degrade, connect_timeout=10.0, warmup=2)
        return cluster

    yield start
    for cluster in started:
        cluster.stop()


def status_of(excinfo: pytest.ExceptionInfo[RemoteError] | pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    err = excinfo.value
    return err.code if isinstance(err, RemoteError) else err.code()  # type: ignore[union-attr]
