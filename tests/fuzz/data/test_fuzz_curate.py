"""The whole curate stage on fuzzed sources: read = kept + dropped + quarantined, exactly, every time.

Each example runs the real stage (readers, op chain, dedup, split, write-out) in a fresh
workspace twice and checks the accounting in the manifest against the raw input, the
quarantine file's locations, and that the two runs wrote the same bytes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from fuzz_settings import FUZZ_SLOW
from hypothesis import given
from hypothesis import strategies as st
from test_fuzz_readers import MAX_BYTES, cells, jsonl_line

from shoestring.core.config import parse_config
from shoestring.core.registry import get_stage
from shoestring.core.workspace import Workspace

PAYLOAD = ("train.jsonl", "validation.jsonl", "test.jsonl", "quarantine.jsonl", "duplicates.jsonl", "datacard.json")


def run_stage(ws: Path, data: dict[str, Any]) -> Path:
    stage = get_stage("curate")
    return Workspace(ws).run(stage, parse_config(stage.config, data, "test")).artifact.path


def lines_of(path: Path) -> list[dict[str, Any]]:
    # split("\n"), not splitlines(): JSON text may hold U+2028 and friends unescaped.
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


@FUZZ_SLOW
@given(
    jsonl=st.lists(jsonl_line(), max_size=30),
    rows=st.lists(st.lists(cells, min_size=1, max_size=3), max_size=15),
    chunk=st.integers(1, 8),
    pii=st.sampled_from(["redact", "pseudonym"]),
)
def test_curate_accounts_for_every_raw_record(
    tmp_path_factory: Any, monkeypatch: Any, jsonl: list[tuple[str, bytes]], rows: list[list[str]], chunk: int, pii: str
) -> None:
    monkeypatch.setenv("SHOESTRING_PII_KEY", "fuzz-key")
    d = tmp_path_factory.mktemp("curate")
    (d / "a.jsonl").write_bytes(b"\n".join(b for _, b in jsonl) + b"\n")
    import csv

    with open(d / "b.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "x"])
        writer.writerows(rows)
    with open(d / "b.csv", newline="", encoding="utf-8") as fh:
        csv_rows = sum(1 for row in list(csv.reader(fh))[1:] if row)
    cfg = {
        "sources": [
            {"path": str(d / "a.jsonl"), "name": "a", "max_record_bytes": MAX_BYTES},
            {"path": str(d / "b.csv"), "name": "b", "max_record_bytes": MAX_BYTES},
        ],
        "quality": {"min_words": 1, "min_stop_words": 0, "min_mean_word_length": 0, "max_mean_word_length": 1e9},
        "pii": {"mode": pii},
        "workers": 1,
        "chunk_size": chunk,
    }
    art = run_stage(d / "ws1", cfg)
    stats = json.loads((art / "manifest.json").read_text())["stats"]
    raw_lines = sum(1 for _, b in jsonl if b.strip())
    assert stats["read"] == raw_lines + csv_rows
    assert stats["read"] == stats["kept"] + stats["dropped"] + stats["quarantined"]
    kept = sum(len(lines_of(art / f"{s}.jsonl")) for s in ("train", "validation", "test"))
    assert kept == stats["kept"]
    quarantine = lines_of(art / "quarantine.jsonl")
    assert len(quarantine) == stats["quarantined"]
    for q in quarantine:  # each keeps its source and location
        assert q["source"] in ("a", "b") and q["location"].split()[0] == ("line" if q["source"] == "a" else "row")
        assert 1 <= int(q["location"].split()[1]) <= len(jsonl) + len(rows) + 1
    locs = [(q["source"], q["location"]) for q in quarantine]
    assert len(set(locs)) == len(locs)
    card = json.loads((art / "datacard.json").read_text())
    assert card["accounting"]["read"] == stats["read"]
    again = run_stage(d / "ws2", cfg)
    assert again.name == art.name
    assert {n: (art / n).read_bytes() for n in PAYLOAD} == {n: (again / n).read_bytes() for n in PAYLOAD}


NASTY = {
    "nested.jsonl": b'{"text": "ok fine words here"}\n'
    + b'{"text": "x", "a": '
    + b"[" * 100_000
    + b"]" * 100_000
    + b"}\n",
    "bigint.jsonl": b'{"text": "ok fine words here", "n": ' + b"9" * 5000 + b"}\n",
    "surrogate.jsonl": b'{"text": "ok fine words here"}\n{"text": "lone \\ud800 half"}\n',
    "bom.csv": b"\xef\xbb\xbftext,id\nsome fine words here,1\n",
    "cut.jsonl.gz": __import__("gzip").compress(b'{"text": "ok fine words here"}\n' * 200, mtime=0)[:300],
    "latin1-header.csv": "caf\u00e9,text\n1,some words\n".encode("latin-1"),
    "not-a-db.db": b"SQLite format 2\x00 but not really" * 10,
    "bad.parquet": b"PAR1" + b"\x00" * 100 + b"PAR1",
    "size.log": b'1.2.3.4 - - [01/Jan/2024:00:00:00 +0000] "GET / HTTP/1.1" 200 ' + b"9" * 5000 + b"\n",
}


def test_hostile_files_are_curated_or_refused_in_one_line(tmp_path: Path, monkeypatch: Any) -> None:
    """The real stage per hostile file: it completes, or stops with one ShoestringError line."""
    from shoestring.core.errors import ShoestringError

    outcomes: dict[str, str] = {}
    for name, data in NASTY.items():
        (tmp_path / name).write_bytes(data)
        extra = {"table": "t"} if name.endswith(".db") else {}
        cfg = {"sources": [{"path": str(tmp_path / name), "name": "s", **extra}], "workers": 1,
               "quality": {"min_words": 1, "min_stop_words": 0}}  # fmt: skip
        try:
            run_stage(tmp_path / "ws", cfg)
            outcomes[name] = "ok"
        except ShoestringError as err:
            assert "\n" not in str(err) and (name in str(err) or "source s" in str(err)), str(err)
            outcomes[name] = "refused"
    assert outcomes == {
        "nested.jsonl": "ok", "bigint.jsonl": "ok", "surrogate.jsonl": "ok", "bom.csv": "ok", "cut.jsonl.gz": "ok",
        "latin1-header.csv": "refused", "not-a-db.db": "refused", "bad.parquet": "refused", "size.log": "ok",
    }  # fmt: skip
    assert not list((tmp_path / "ws" / "tmp").iterdir())  # a refused run leaves no half artifact


def test_cli_refusal_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "latin1-header.csv"
    bad.write_bytes(NASTY["latin1-header.csv"])
    out = subprocess.run([sys.executable, "-m", "shoestring.cli", "curate", "--input", str(bad), "-w",
                          str(tmp_path / "ws")], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode != 0 and "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "fallback_encoding" in errors[0], out.stderr
