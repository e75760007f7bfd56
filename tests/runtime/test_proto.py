from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_committed_stubs_match_the_proto():
    pytest.importorskip("grpc_tools", reason="grpcio-tools (the dev extra) regenerates the stubs")
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--check"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr or out.stdout


def test_stubs_import_with_the_installed_runtime():
    from shoal.runtime import shoal_pb2, shoal_pb2_grpc

    assert shoal_pb2.DESCRIPTOR.package == "shoal.v1"
    assert {"Worker", "Central"} <= set(shoal_pb2.DESCRIPTOR.services_by_name)
    assert hasattr(shoal_pb2_grpc, "WorkerStub") and hasattr(shoal_pb2_grpc, "CentralStub")


def test_nothing_in_the_runtime_unpickles():
    for path in (ROOT / "src" / "shoal" / "runtime").glob("*.py"):
        text = path.read_text()
        assert "import pickle" not in text and "pickle.load" not in text, path.name
