"""Builds easel-client, generating its gRPC stubs from the daemon's own protocol definition.

The stubs are never committed: they are made at build time from `proto/proto/easel/v1/easel.proto`
(two folders up, in the easel checkout), so the client can never drift from the daemon it ships
with. They land in the package as `easel.v1` (`easel_pb2.py`, `easel_pb2.pyi`,
`easel_pb2_grpc.py`): the proto package is `easel.v1`, so protoc's own import line
(`from easel.v1 import easel_pb2`) resolves inside this package with no rewriting.

Everything else (metadata, dependencies) is in pyproject.toml.
"""

from __future__ import annotations

import pathlib

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.errors import SetupError

HERE = pathlib.Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent / "proto" / "proto"
PROTO_FILE = "easel/v1/easel.proto"

GENERATED_INIT = '''"""The easel.v1 protocol messages and gRPC stubs, generated from easel.proto at build time.

Most code wants the typed `easel.Client` instead; these are here for the calls it does not wrap.
"""
'''


def generate_stubs(out_root: pathlib.Path) -> None:
    """Runs protoc (from grpcio-tools) on easel.proto, writing `easel/v1/*` under `out_root`."""
    if not (PROTO_ROOT / PROTO_FILE).is_file():
        raise SetupError(
            f"easel-client: the protocol definition {PROTO_ROOT / PROTO_FILE} was not found. "
            "The gRPC stubs are generated from it at build time, so build this package from an "
            "easel checkout (`pip install ./clients/python` at the repository root), not from an "
            "sdist or a copy of clients/python alone."
        )
    # Imported here: grpcio-tools exists only in the build environment (pyproject's requires).
    import importlib.resources

    from grpc_tools import protoc

    well_known_types = importlib.resources.files("grpc_tools") / "_proto"
    out_root.mkdir(parents=True, exist_ok=True)
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"--proto_path={PROTO_ROOT}",
            f"--proto_path={well_known_types}",
            f"--python_out={out_root}",
            f"--pyi_out={out_root}",
            f"--grpc_python_out={out_root}",
            PROTO_FILE,
        ]
    )
    if status != 0:
        raise SetupError(f"easel-client: protoc failed on {PROTO_ROOT / PROTO_FILE} (exit status {status})")
    (out_root / "easel" / "v1" / "__init__.py").write_text(GENERATED_INIT)


class BuildPyWithStubs(build_py):
    """The standard build_py, plus the generated stubs."""

    def run(self) -> None:
        # An editable install imports straight from src/, so the stubs must be there too
        # (src/easel/v1/ is git-ignored); a normal build writes them into the build folder.
        # First, so a missing proto stops the build before anything else scrolls past.
        out_root = HERE / "src" if self.editable_mode else pathlib.Path(self.build_lib)
        generate_stubs(out_root)
        super().run()


setup(cmdclass={"build_py": BuildPyWithStubs})
