"""Regenerate the runtime's gRPC stubs from src/shoal/runtime/shoal.proto.

    python scripts/gen_proto.py          # needs grpcio-tools (the `dev` extra)
    python scripts/gen_proto.py --check  # exit 1 if the committed stubs are stale

grpc_tools writes `import shoal_pb2` at top level; the stubs live inside the
package, so the import is rewritten to a relative one.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

RUNTIME = Path(__file__).resolve().parent.parent / "src" / "shoal" / "runtime"
PROTO = "shoal.proto"
OUTPUTS = ("shoal_pb2.py", "shoal_pb2.pyi", "shoal_pb2_grpc.py")


def generate(out_dir: Path) -> None:
    """Run protoc (grpc_tools) on the proto into `out_dir`, then fix the stub import."""
    try:
        from grpc_tools import protoc
    except ImportError:
        sys.exit("grpcio-tools is missing: pip install -e '.[dev]'")
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    args = ["grpc_tools.protoc", f"-I{RUNTIME}", f"-I{include}", f"--python_out={out_dir}",
            f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}", str(RUNTIME / PROTO)]
    if protoc.main(args) != 0:
        sys.exit(f"protoc failed on {RUNTIME / PROTO}")
    grpc_file = out_dir / "shoal_pb2_grpc.py"
    text = re.sub(r"^import shoal_pb2 as ", "from . import shoal_pb2 as ", grpc_file.read_text(), flags=re.M)
    grpc_file.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the committed stubs are current")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        stale = [name for name in OUTPUTS
                 if not (RUNTIME / name).is_file() or (RUNTIME / name).read_text() != (Path(tmp) / name).read_text()]
        if args.check:
            if stale:
                sys.exit(f"stale stubs: {stale}; run python scripts/gen_proto.py")
            print("stubs are current")
            return
        for name in OUTPUTS:
            shutil.copyfile(Path(tmp) / name, RUNTIME / name)
        print(f"wrote {', '.join(OUTPUTS)} to {RUNTIME}")


if __name__ == "__main__":
    main()
