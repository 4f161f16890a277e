"""Readers on real files with real defects: every raw record comes out as a record or a quarantine entry."""

from __future__ import annotations

import gzip
import json
import sqlite3
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from shoestring.core.errors import ShoestringError
from shoestring.data.config import JoinConfig, SourceConfig
from shoestring.data.readers import parse_log_line, read_source
from shoestring.data.records import Quarantined

ROOT = Path(__file__).resolve().parents[2]


def split(items: list) -> tuple[list[dict], list[Quarantined]]:
    return [i for i in items if not isinstance(i, Quarantined)], [i for i in items if isinstance(i, Quarantined)]


def test_jsonl_gz_and_zst_with_mapping_and_defects(tmp_path: Path) -> None:
    lines = [
        json.dumps({"qid": 1, "q": "How?", "a": "Like this.", "extra": 5}).encode(),
        b'{"qid": 2, "q": "broken',
        "caf\xe9".encode("latin-1"),  # invalid UTF-8
        b"[1, 2]",  # valid JSON, not an object
        json.dumps({"qid": 3, "q": ["list"], "a": "x"}).encode(),  # wrong type
        b"",
        json.dumps({"qid": 4, "q": "x" * 300, "a": "y"}).encode(),  # oversized
    ]
    raw = b"\n".join(lines) + b"\n"
    gz = tmp_path / "d.jsonl.gz"
    gz.write_bytes(gzip.compress(raw))
    zst = tmp_path / "d.jsonl.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(raw))
    for path in (gz, zst):
        src = SourceConfig(
            path=path, name="s", fields={"id": "qid", "instruction": "q", "response": "a"}, max_record_bytes=200
        )
        recs, bad = split(list(read_source(src)))
        assert recs == [{"id": "s:1", "instruction": "How?", "response": "Like this.", "extra": 5, "_source": "s"}]
        assert [(q.location, q.reason) for q in bad] == [
            ("line 2", "bad_json"),
            ("line 3", "invalid_utf8"),
            ("line 4", "not_an_object"),
            ("line 5", "wrong_type:q"),
            ("line 7", "oversized"),
        ]


def test_fallback_encoding_decodes_instead_of_quarantining(tmp_path: Path) -> None:
    p = tmp_path / "w.jsonl"
    p.write_bytes(json.dumps({"text": "caf\u00e9 \u2013 ok"}, ensure_ascii=False).encode("cp1252") + b"\n")
    recs, bad = split(list(read_source(SourceConfig(path=p, fallback_encoding="cp1252"))))
    assert not bad and recs[0]["text"] == "caf\u00e9 \u2013 ok"


def test_csv_and_tsv_quarantine_bad_rows(tmp_path: Path) -> None:
    csv_path = tmp_path / "a.csv"
    csv_path.write_bytes(b'id,prompt,answer\n1,"Hi, there","Hello"\n2,only-two\n3,"caf\xe9",x\n4,"multi\nline",y\n')
    recs, bad = split(
        list(read_source(SourceConfig(path=csv_path, fields={"instruction": "prompt", "response": "answer"})))
    )
    assert [r["instruction"] for r in recs] == ["Hi, there", "multi\nline"]
    assert [q.reason for q in bad] == ["wrong_column_count", "invalid_utf8"]
    tsv = tmp_path / "b.tsv"
    tsv.write_text("k\tbody\nA\tfirst text\nB\tsecond\textra\n")
    recs, bad = split(list(read_source(SourceConfig(path=tsv, fields={"id": "k", "text": "body"}))))
    assert [r["id"] for r in recs] == ["b.tsv:A"] and bad[0].reason == "wrong_column_count"


def test_parquet(tmp_path: Path) -> None:
    p = tmp_path / "t.parquet"
    pq.write_table(pa.table({"sku": ["a", "b"], "desc": ["one thing", None], "price": [1.5, 2.0]}), p)
    recs, bad = split(list(read_source(SourceConfig(path=p, fields={"id": "sku", "text": "desc"}))))
    assert recs[0] == {"id": "t.parquet:a", "text": "one thing", "price": 1.5, "_source": "t.parquet"}
    assert bad[0].reason == "wrong_type:desc"  # a null text is malformed, not silently empty


def test_text_folder_reads_txt_md_html_and_quarantines_the_rest() -> None:
    src = SourceConfig(path=ROOT / "examples/curate/docs", name="docs", max_record_bytes=200_000)
    recs, bad = split(list(read_source(src)))
    types = {r["file_type"] for r in recs}
    assert types == {"txt", "md", "html"}
    assert {q.reason for q in bad} == {"invalid_utf8", "unsupported_file_type"}
    assert all(r["id"] == f"docs:{r['path']}" for r in recs)


def test_sqlite_table_and_query(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT, n INT)")
    con.executemany("INSERT INTO t VALUES (?, ?, ?)", [(1, "alpha", 1), (2, b"\x00blob", 2), (3, "gamma", 3)])
    con.commit()
    con.close()
    recs, bad = split(list(read_source(SourceConfig(path=db, table="t", fields={"id": "id", "text": "body"}))))
    assert [r["text"] for r in recs] == ["alpha", "gamma"] and bad[0].reason == "wrong_type:body"
    src = SourceConfig(url=f"sqlite:///{db}", name="q", query="SELECT id, body AS text FROM t WHERE n > 2")
    recs, _ = split(list(read_source(src)))
    assert recs == [{"id": "q:3", "text": "gamma", "_source": "q"}]
    with pytest.raises(ShoestringError, match="cannot read table"):
        list(read_source(SourceConfig(path=db, table="missing")))


def test_sqlite_url_enters_the_cache_key_by_file_content(tmp_path: Path) -> None:
    from shoestring.core.config import parse_config
    from shoestring.core.registry import get_stage
    from shoestring.core.workspace import stage_hash

    db = tmp_path / "x.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, text TEXT)")
    con.execute("INSERT INTO t VALUES (1, 'alpha')")
    con.commit()
    stage = get_stage("curate")

    def key(url: str) -> str:
        cfg = parse_config(stage.config, {"sources": [{"url": url, "table": "t", "name": "s"}]}, "test")
        return stage_hash(stage, cfg, {})[0]

    before = key(f"sqlite:///{db}")
    assert key(f"sqlite:///{db}") == before
    con.execute("INSERT INTO t VALUES (2, 'beta')")  # same URL, new rows -> new key (no stale cache)
    con.commit()
    con.close()
    assert key(f"sqlite:///{db}") != before
    # A server URL cannot be hashed by content: its key is the URL + table/query text.
    assert key("postgresql://u@h/db") == key("postgresql://u@h/db") != key("postgresql://u@h/db2")
    with pytest.raises(ShoestringError, match="not found"):
        key(f"sqlite:///{tmp_path / 'missing.db'}")
    with pytest.raises(ShoestringError, match="sqlite_file"):
        parse_config(stage.config, {"sources": [{"url": "postgresql://h/d", "sqlite_file": str(db)}]}, "test")


def test_access_log_common_and_combined_with_join() -> None:
    common = parse_log_line('10.0.0.1 - bob [10/Oct/2026:13:55:36 +0000] "GET /a.html HTTP/1.1" 200 2326')
    assert common is not None and common["status"] == 200 and common["bytes"] == 2326 and common["user"] == "bob"
    assert common["time"] == "2026-10-10T13:55:36+00:00" and "user_agent" not in common
    combined = parse_log_line(
        '10.0.0.2 - - [10/Oct/2026:13:55:36 -0700] "POST /api HTTP/2" 304 - "https://r/" "curl/8"'
    )
    assert combined is not None and combined["bytes"] is None and combined["user_agent"] == "curl/8"
    assert parse_log_line("garbage") is None
    assert parse_log_line(common["text"], "combined") is None
    src = SourceConfig(
        path=ROOT / "examples/curate/access.log",
        name="log",
        join=JoinConfig(path=ROOT / "examples/curate/users.csv", key="user", fields=["country"]),
    )
    recs, bad = split(list(read_source(src)))
    assert len(recs) == 300 and {q.reason for q in bad} == {"unparseable_log_line"} and len(bad) == 2
    joined = [r for r in recs if r["_joined"]]
    assert joined and all(r["country"] in {"DE", "FR", "US", "JP", "BR"} and "plan" not in r for r in joined)
    assert all("country" not in r for r in recs if not r["_joined"])


def test_missing_file_and_unknown_format_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ShoestringError, match="source not found"):
        list(read_source(SourceConfig(path=tmp_path / "nope.jsonl")))
    odd = tmp_path / "data.bin"
    odd.write_bytes(b"x")
    with pytest.raises(ShoestringError, match="set `format:`"):
        list(read_source(SourceConfig(path=odd)))
