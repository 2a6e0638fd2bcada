"""The serving path never imports torch: every serving, index and proto module is imported, the
`clipserve serve --help` command runs, and a real server answers Embed/Upsert/Query, all in a
fresh interpreter whose import system raises on `import torch` (or torchvision, open_clip)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import asyncio, importlib, pkgutil, sys, contextlib, io

    BLOCKED = ("torch", "torchvision", "open_clip")

    class NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"serving path imported {name}")
            return None

    sys.meta_path.insert(0, NoTorch())

    imported = []
    for pkg_name in ("clipserve.serving", "clipserve.index", "clipserve.proto"):
        pkg = importlib.import_module(pkg_name)
        for mod in pkgutil.walk_packages(pkg.__path__, pkg_name + "."):
            importlib.import_module(mod.name)
            imported.append(mod.name)
    importlib.import_module("clipserve.cli.main")

    from clipserve.cli.main import main as cli_main
    from clipserve.serving.server import main
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            main(["--help"])
        except SystemExit as exc:
            assert exc.code == 0, exc.code
    assert "--bundle" in out.getvalue()
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            cli_main(["serve", "--help"])
        except SystemExit as exc:
            assert exc.code == 0, exc.code

    from clipserve.serving.client import ClipServeClient
    from clipserve.serving.config import ServerConfig
    from clipserve.serving.server import create_server, shutdown

    async def serve_once(bundle, index):
        config = ServerConfig(bundle=bundle, port=0, index_path=index)
        server, port = await create_server(config)
        def calls():
            with ClipServeClient(f"127.0.0.1:{port}") as client:
                client.wait_ready(10)
                [pid] = client.upsert([("a cat", {"n": 1})])
                assert client.query(text="a cat", top_k=1)[0].id == pid
        await asyncio.to_thread(calls)
        await shutdown(server, 1.0)

    asyncio.run(serve_once(sys.argv[1], sys.argv[2]))
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not leaked, leaked
    print("ok", len(imported), "modules")
    """
)


def test_serving_path_never_imports_torch(tiny_bundle: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tiny_bundle), str(tmp_path / "index")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.startswith("ok"), proc.stdout
