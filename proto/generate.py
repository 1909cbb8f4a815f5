"""Regenerate the checked-in protobuf code of qverify.v1 from the .proto files beside it.

    python proto/generate.py          # rewrite *_pb2.py / *_pb2.pyi
    python proto/generate.py --check  # exit 1 if the checked-in code is stale

Protoc sees the files as qverify/v1/*.proto so generated imports read
``from qverify.v1 import ...`` while the folder itself stays flat.
"""
from __future__ import annotations

import argparse
import difflib
import shutil
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
PROTOS = sorted(p.name for p in PROTO_DIR.glob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    from grpc_tools import protoc
    import grpc_tools

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src" / "qverify" / "v1"
        src.mkdir(parents=True)
        for name in PROTOS:
            shutil.copy(PROTO_DIR / name, src / name)
        gen = Path(tmp) / "gen"
        gen.mkdir()
        include = Path(grpc_tools.__file__).parent / "_proto"
        args = [
            "protoc",
            f"-I{Path(tmp) / 'src'}",
            f"-I{include}",
            f"--python_out={gen}",
            f"--pyi_out={gen}",
            f"--grpc_python_out={gen}",
            *[f"qverify/v1/{name}" for name in PROTOS],
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        written = []
        for path in sorted((gen / "qverify" / "v1").iterdir()):
            text = path.read_text()
            if path.name.endswith("_pb2_grpc.py") and "class " not in text:
                continue  # no services in this file
            target = out_dir / path.name
            target.write_text(text)
            written.append(target)
        return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare with the checked-in code")
    args = parser.parse_args()
    if not args.check:
        for path in generate(PROTO_DIR):
            print(f"wrote {path.name}")
        return 0
    stale = 0
    with tempfile.TemporaryDirectory() as tmp:
        for fresh in generate(Path(tmp)):
            current = PROTO_DIR / fresh.name
            old = current.read_text() if current.exists() else ""
            if old != fresh.read_text():
                stale += 1
                sys.stdout.writelines(difflib.unified_diff(
                    old.splitlines(True), fresh.read_text().splitlines(True),
                    f"checked-in/{fresh.name}", f"generated/{fresh.name}", n=1))
    if stale:
        print(f"{stale} generated file(s) are stale: run python proto/generate.py")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
