"""`shoal --help` and every `shoal <command> --help` import neither torch nor timm, grpc or
BoTorch (what made the CLI take seconds to start); `benchmarks/cli_startup.py` times it."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "timm", "grpc", "botorch", "gpytorch", "numpy", "matplotlib", "safetensors")
COMMANDS = ([], ["plan"], ["plan", "show"], ["profile"], ["predict"], ["measure"], ["serve"], ["serve", "worker"],
            ["serve", "central"], ["serve", "local"], ["bench"], ["demo"], ["info"])

PROBE = """
import json, sys
from typer.testing import CliRunner
from shoal.cli import app
runner = CliRunner()
out = {}
for args in json.loads(sys.argv[1]):
    result = runner.invoke(app, [*args, "--help"])
    out[" ".join(args) or "shoal"] = [result.exit_code, "Usage" in result.output]
print(json.dumps({"help": out, "heavy": sorted(m for m in json.loads(sys.argv[2]) if m in sys.modules)}))
"""


def test_help_of_every_command_imports_nothing_heavy():
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(COMMANDS), json.dumps(HEAVY)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert all(code == 0 and usage for code, usage in result["help"].values()), result["help"]
    assert result["heavy"] == []
