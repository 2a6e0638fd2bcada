"""`clipserve query` and `clipserve collections`, in-process (`main(argv)`), against a real
server and against a server the command starts itself on an index directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from index_support import BackgroundServer, png

from clipserve.cli.index_commands import parse_filter
from clipserve.cli.main import main
from clipserve.serving.config import ServerConfig


def test_parse_filter_types_values() -> None:
    assert parse_filter(["split=test", "n=3", "ok=true", "tag=a|b", "year>=2000", "year<2010"]) == {
        "split": "test", "n": 3, "ok": True, "tag": ["a", "b"], "year": {"gte": 2000.0, "lt": 2010.0},
    }  # fmt: skip
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_filter(["nonsense"])


def test_query_and_collections_commands(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bg = BackgroundServer(ServerConfig(bundle=tiny_bundle, port=0, index_path=tmp_path / "i"))
    try:
        server = ["--server", bg.address]
        assert main(["collections", *server, "create", "pics", "--vector-source", "image"]) == 0
        assert main(["collections", *server, "alias", "current", "pics"]) == 0
        ids = bg.client.upsert([(png(i), {"n": i}) for i in range(6)], collection="current")
        capsys.readouterr()
        assert main(["query", "a photo", *server, "--collection", "current", "--top-k", "3",
                     "--filter", "n>=2", "--json"]) == 0  # fmt: skip
        hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert len(hits) == 3 and all(h["payload"]["n"] >= 2 and h["id"] in ids for h in hits)
        assert main(["query", "--like", ids[0], *server, "--collection", "current"]) == 0
        out = capsys.readouterr().out
        assert out.startswith("collection pics, model ") and ids[0] not in out
        assert main(["query", *server, "--like", "00000000-0000-8000-8000-000000000000"]) == 1
        assert "NOT_FOUND" in capsys.readouterr().err
        assert main(["collections", *server, "list"]) == 0
        listing = capsys.readouterr().out
        assert "pics" in listing and "6 points" in listing and "aliases: current" in listing
        assert "image" in listing.split("pics")[1].splitlines()[0]
        assert main(["collections", *server, "create", "pics"]) == 1
        assert "ALREADY_EXISTS" in capsys.readouterr().err
    finally:
        bg.stop()
    # Without a server: the command serves the index directory itself for its duration.
    local = ["--bundle", str(tiny_bundle), "--index-path", str(tmp_path / "i")]
    assert main(["collections", *local, "drop", "pics"]) == 0
    assert capsys.readouterr().out == "dropped pics\n"
    assert main(["collections", *local, "list"]) == 0
    assert "pics" not in capsys.readouterr().out
    assert main(["query", "x"]) == 2  # neither --server nor --bundle: a sentence, exit 2
    assert "give --server" in capsys.readouterr().err
