"""Every reader under hostile bytes: one item per raw record, quarantine keeps the location, no traceback.

Properties checked on each generated file:
- the reader yields records and quarantine entries, or stops with one :class:`ShoestringError`
  line; any other exception (a traceback for the user) fails the test;
- accounting is exact: every raw record (non-blank line, CSV row, Parquet/SQL row, file) comes
  out exactly once, as a record whose id names its location or as a quarantine entry at it;
- well-formed records among the junk come out unchanged;
- reading the same file twice gives the same items.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard
from fuzz_settings import FUZZ
from hypothesis import given
from hypothesis import strategies as st

from shoestring.core.errors import ShoestringError
from shoestring.data.config import SourceConfig
from shoestring.data.readers import parse_log_line, read_source
from shoestring.data.records import Quarantined

MAX_BYTES = 4096  # max_record_bytes of the fuzzed sources: generated lines cross it both ways


def read_all(src: SourceConfig) -> tuple[list[dict[str, Any]], list[Quarantined], str | None]:
    """(records, quarantine entries, the one-line error or None); any other exception propagates."""
    items: list[Any] = []
    error = None
    try:
        for item in read_source(src):
            items.append(item)
    except ShoestringError as err:
        error = str(err)
        assert error and "\n" not in error, f"error is not one line: {error!r}"
    recs = [i for i in items if not isinstance(i, Quarantined)]
    bad = [i for i in items if isinstance(i, Quarantined)]
    return recs, bad, error


def fingerprint(src: SourceConfig) -> str:
    recs, bad, err = read_all(src)
    return json.dumps([recs, [q.to_json() for q in bad], err], default=repr, sort_keys=True)


def locations(recs: list[dict[str, Any]], bad: list[Quarantined], name: str) -> list[str]:
    """Where each item came from: a record's id is ``name:location`` when the source has no id."""
    out = [q.location for q in bad]
    for r in recs:
        assert r["id"].startswith(name + ":"), r["id"]
        out.append(r["id"][len(name) + 1 :])
    return out


# -- strategies -------------------------------------------------------------------------------

SPECIAL = ["\ufeff", "\x00", "\u2028", "\r", "\u200b", "\x1b[31m", "Ã©", "<p>x</p>", "&amp;", "\t", '"', ",", "\\"]
texts = st.one_of(
    st.text(max_size=60),
    st.sampled_from(SPECIAL),
    st.lists(st.sampled_from([*SPECIAL, "a", " "]), max_size=8).map("".join),
)
keys = st.text(max_size=8).filter(lambda k: k not in ("id", "text"))
scalars = st.none() | st.booleans() | st.integers() | st.floats() | texts
json_values = st.recursive(
    scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(keys, c, max_size=3), max_leaves=8
)


@st.composite
def jsonl_line(draw: st.DrawFn) -> tuple[str, bytes]:
    """(kind, line bytes without the newline); kind 'good' lines must come out as records."""
    kind = draw(
        st.sampled_from(
            [
                "good",
                "good",
                "no_text",
                "wrong_type",
                "not_object",
                "bytes",
                "truncated",
                "nested",
                "bigint",
                "surrogate",
                "long",
                "latin1",
                "utf16",
                "nul",
                "blank",
            ]
        )
    )
    if kind == "good":
        obj = {"text": draw(texts), **draw(st.dictionaries(keys, json_values, max_size=3))}
        return kind, json.dumps(obj, ensure_ascii=draw(st.booleans())).encode()
    if kind == "no_text":
        return kind, json.dumps(draw(st.dictionaries(keys, json_values, max_size=3))).encode()
    if kind == "wrong_type":
        return kind, json.dumps({"text": draw(json_values.filter(lambda v: not isinstance(v, str)))}).encode()
    if kind == "not_object":
        return kind, json.dumps(draw(json_values.filter(lambda v: not isinstance(v, dict)))).encode()
    if kind == "bytes":
        return kind, draw(st.binary(max_size=120)).replace(b"\n", b"")
    if kind == "truncated":
        line = json.dumps({"text": draw(texts), "k": draw(json_values)}).encode()
        return kind, line[: draw(st.integers(0, max(0, len(line) - 1)))]
    if kind == "nested":
        depth = draw(st.sampled_from([50, 3000, 100_000]))
        return kind, ('{"text": "deep", "x": ' + "[" * depth + "]" * depth + "}").encode()
    if kind == "bigint":
        return kind, ('{"text": "big", "n": ' + "9" * draw(st.sampled_from([10, 4301, 9000])) + "}").encode()
    if kind == "surrogate":
        return kind, json.dumps(
            {"text": "a" + draw(st.sampled_from(["\\ud800", "\\udfff", "\\ud83d"])) + "b"}
        ).encode().replace(b"\\\\", b"\\")
    if kind == "long":
        n = draw(st.sampled_from([MAX_BYTES - 20, MAX_BYTES + 1, 3 * MAX_BYTES]))
        return kind, json.dumps({"text": "x" * n}).encode()
    if kind == "latin1":
        return kind, json.dumps({"text": "caf\u00e9 \u00fc"}, ensure_ascii=False).encode("latin-1")
    if kind == "utf16":
        return kind, json.dumps({"text": "wide"}).encode("utf-16")
    if kind == "nul":
        return kind, b'{"text": "a\x00b"}'
    return kind, draw(st.sampled_from([b"", b"   ", b"\t", b"\r"]))


def _write(path: Path, data: bytes, compression: str) -> Path:
    if compression == "gz":
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data, mtime=0))
    elif compression == "zst":
        path = path.with_name(path.name + ".zst")
        path.write_bytes(zstandard.ZstdCompressor().compress(data))
    else:
        path.write_bytes(data)
    return path


# -- JSONL ------------------------------------------------------------------------------------


@FUZZ
@given(
    lines=st.lists(jsonl_line(), max_size=25),
    eol=st.sampled_from([b"\n", b"\r\n"]),
    bom=st.booleans(),
    trailing=st.booleans(),
    compression=st.sampled_from(["", "gz", "zst"]),
)
def test_jsonl_accounts_for_every_line(
    tmp_path_factory: Any, lines: list[tuple[str, bytes]], eol: bytes, bom: bool, trailing: bool, compression: str
) -> None:
    data = eol.join(b for _, b in lines) + (eol if trailing else b"")
    if bom:
        data = b"\xef\xbb\xbf" + data
    path = _write(tmp_path_factory.mktemp("j") / "f.jsonl", data, compression)
    src = SourceConfig(path=path, name="s", max_record_bytes=MAX_BYTES)
    recs, bad, err = read_all(src)
    assert err is None
    # A byte-order mark is encoding, not content: line 1 is what follows it.
    physical = data.removeprefix(b"\xef\xbb\xbf").split(b"\n")
    expected = [f"line {i}" for i, b in enumerate(physical, 1) if b.strip()]
    assert sorted(locations(recs, bad, "s")) == sorted(expected)  # every raw line exactly once
    assert len(set(expected)) == len(expected)
    by_id = {r["id"]: r for r in recs}
    for i, (kind, raw) in enumerate(lines, 1):
        if kind == "good" and len(raw) + len(eol) <= MAX_BYTES:
            assert by_id[f"s:line {i}"]["text"] == json.loads(raw)["text"]
    assert fingerprint(src) == fingerprint(src)


@FUZZ
@given(
    lines=st.lists(jsonl_line(), min_size=1, max_size=15),
    compression=st.sampled_from(["gz", "zst"]),
    cut=st.floats(0.05, 0.95),
    flip=st.integers(0, 2**31),
)
def test_truncated_or_corrupt_compressed_jsonl_is_one_line_or_quarantine(
    tmp_path_factory: Any, lines: list[tuple[str, bytes]], compression: str, cut: float, flip: int
) -> None:
    path = _write(tmp_path_factory.mktemp("c") / "f.jsonl", b"\n".join(b for _, b in lines) + b"\n", compression)
    blob = bytearray(path.read_bytes())
    if flip % 2:
        blob = blob[: max(1, int(len(blob) * cut))]
    else:
        pos = flip % len(blob)
        blob[pos] ^= 0xFF
    path.write_bytes(bytes(blob))
    src = SourceConfig(path=path, name="s", max_record_bytes=MAX_BYTES)
    recs, bad, _err = read_all(src)
    locs = locations(recs, bad, "s")
    assert len(set(locs)) == len(locs)
    assert fingerprint(src) == fingerprint(src)


# -- CSV / TSV --------------------------------------------------------------------------------

cells = st.one_of(texts, st.text(st.sampled_from(["a", '"', ",", "\n", "\r", "\t", " ", "\u00e9"]), max_size=12))


@FUZZ
@given(
    extra=st.lists(st.text(min_size=1, max_size=6), max_size=3, unique=True).map(
        lambda cols: [c for c in cols if c not in ("text", "id")]
    ),
    rows=st.lists(st.lists(cells, max_size=5), max_size=20),
    delimiter=st.sampled_from([",", "\t"]),
    bom=st.booleans(),
    encoding=st.sampled_from(["utf-8", "utf-8", "cp1252"]),
)
def test_csv_accounts_for_every_row(
    tmp_path_factory: Any, extra: list[str], rows: list[list[str]], delimiter: str, bom: bool, encoding: str
) -> None:
    header = ["text", *extra]
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, delimiter=delimiter)
    writer.writerow(header)
    for row in rows:
        writer.writerow(row)
    data = buf.getvalue().encode(encoding, errors="replace")
    if bom:
        data = b"\xef\xbb\xbf" + data
    path = tmp_path_factory.mktemp("c") / ("f.csv" if delimiter == "," else "f.tsv")
    path.write_bytes(data)
    src = SourceConfig(path=path, name="s", max_record_bytes=MAX_BYTES)
    recs, bad, err = read_all(src)
    if err is not None:  # a cp1252 header is not UTF-8: the whole file is refused in one line
        assert encoding == "cp1252" and "header" in err
        return
    back = list(
        csv.reader(
            io.StringIO(data.decode("utf-8", "surrogateescape").removeprefix("\ufeff"), newline=""), delimiter=delimiter
        )
    )
    if encoding == "utf-8":
        assert back[0] == header  # the file is what we meant to write
    expected = [f"row {n}" for n, row in enumerate(back[1:], 2) if row]
    assert sorted(locations(recs, bad, "s")) == sorted(expected)
    by_id = {r["id"]: r for r in recs}
    for n, row in enumerate(back[1:], 2):
        if len(row) == len(header) and encoding == "utf-8":
            assert by_id[f"s:row {n}"]["text"] == row[0]  # a well-formed row is a record, unchanged
    assert fingerprint(src) == fingerprint(src)


@FUZZ
@given(data=st.binary(max_size=600), suffix=st.sampled_from([".csv", ".tsv", ".csv.gz"]))
def test_random_bytes_as_csv_never_traceback(tmp_path_factory: Any, data: bytes, suffix: str) -> None:
    path = tmp_path_factory.mktemp("r") / ("f" + suffix)
    path.write_bytes(gzip.compress(data, mtime=0) if suffix.endswith(".gz") else data)
    src = SourceConfig(path=path, name="s", max_record_bytes=64)
    recs, bad, _err = read_all(src)
    locs = locations(recs, bad, "s")
    assert len(set(locs)) == len(locs) and all(re.fullmatch(r"row \d+", loc) for loc in locs)
    assert fingerprint(src) == fingerprint(src)


# -- Parquet ----------------------------------------------------------------------------------

COLUMN_TYPES: dict[str, tuple[Any, Any]] = {
    "string": (pa.string(), st.one_of(st.none(), texts)),
    "large_string": (pa.large_string(), texts),
    "int": (pa.int64(), st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1))),
    "float": (pa.float64(), st.floats()),
    "binary": (pa.binary(), st.binary(max_size=20)),
    "list": (pa.list_(pa.int32()), st.lists(st.integers(-100, 100), max_size=3)),
    "struct": (pa.struct([("a", pa.string())]), st.fixed_dictionaries({"a": texts})),
    "timestamp": (pa.timestamp("s"), st.datetimes().map(lambda d: d.replace(microsecond=0))),
    "bool": (pa.bool_(), st.booleans()),
}


@st.composite
def parquet_table(draw: st.DrawFn) -> tuple[str, pa.Table]:
    n = draw(st.integers(0, 12))
    text_type = draw(st.sampled_from(sorted(COLUMN_TYPES)))
    cols = {
        "text": text_type,
        **{f"c{i}": draw(st.sampled_from(sorted(COLUMN_TYPES))) for i in range(draw(st.integers(0, 2)))},
    }
    arrays = {}
    for name, kind in cols.items():
        typ, values = COLUMN_TYPES[kind]
        arrays[name] = pa.array(draw(st.lists(values, min_size=n, max_size=n)), type=typ)
    return text_type, pa.table(arrays)


@FUZZ
@given(table=parquet_table(), damage=st.sampled_from(["none", "none", "truncate", "flip"]), at=st.floats(0, 1))
def test_parquet_with_any_column_types(
    tmp_path_factory: Any, table: tuple[str, pa.Table], damage: str, at: float
) -> None:
    text_type, tab = table
    path = tmp_path_factory.mktemp("p") / "f.parquet"
    pq.write_table(tab, path)
    if damage != "none":
        blob = bytearray(path.read_bytes())
        pos = min(len(blob) - 1, int(len(blob) * at))
        if damage == "truncate":
            blob = blob[:pos]
        else:
            blob[pos] ^= 0xFF
        path.write_bytes(bytes(blob))
    src = SourceConfig(path=path, name="s")
    recs, bad, err = read_all(src)
    locs = locations(recs, bad, "s")
    assert len(set(locs)) == len(locs)
    if damage == "none":
        assert err is None
        assert sorted(locs) == sorted(f"row {i}" for i in range(1, tab.num_rows + 1))
        texts_in = tab.column("text").to_pylist()
        for r in recs:
            assert r["text"] == texts_in[int(r["id"].split()[-1]) - 1]
        if text_type not in ("string", "large_string"):
            assert not recs and all(q.reason == "wrong_type:text" for q in bad)
    assert fingerprint(src) == fingerprint(src)


# -- SQLite -----------------------------------------------------------------------------------

sql_values = st.one_of(
    st.none(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False), texts, st.binary(max_size=10)
)


@FUZZ
@given(
    rows=st.lists(st.tuples(sql_values, sql_values), max_size=12),
    damage=st.sampled_from(["none", "none", "truncate", "garbage"]),
    at=st.floats(0, 1),
    garbage=st.binary(max_size=300),
)
def test_sqlite_files_real_truncated_or_not_a_database(
    tmp_path_factory: Any, rows: list[tuple[Any, Any]], damage: str, at: float, garbage: bytes
) -> None:
    path = tmp_path_factory.mktemp("q") / "f.db"
    if damage == "garbage":
        path.write_bytes(garbage)
    else:
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE t (rowid_ INTEGER PRIMARY KEY, text, other)")  # untyped: any value goes in
        con.executemany("INSERT INTO t (text, other) VALUES (?, ?)", rows)
        con.commit()
        con.close()
        if damage == "truncate":
            blob = path.read_bytes()
            path.write_bytes(blob[: int(len(blob) * at)])
    src = SourceConfig(path=path, name="s", table="t")
    recs, bad, err = read_all(src)
    if damage == "none":
        assert err is None
        assert len(recs) + len(bad) == len(rows)
        for q in bad:
            assert q.reason in ("wrong_type:text", "wrong_type:other") and re.fullmatch(r"row \d+", q.location)
        assert [r["text"] for r in recs] == [t for t, o in rows if isinstance(t, str) and not isinstance(o, bytes)]
    elif damage == "garbage":
        assert err is not None or not (recs or bad)
    assert fingerprint(src) == fingerprint(src)


# -- text folders -----------------------------------------------------------------------------


@FUZZ
@given(
    files=st.dictionaries(
        st.tuples(
            st.text("abcxyz-_ é", min_size=1, max_size=8),
            st.sampled_from([".txt", ".md", ".html", ".rst", ".bin", ".TXT", ""]),
        ),
        st.one_of(st.binary(max_size=200), texts.map(lambda t: t.encode()), st.just(b"y" * (MAX_BYTES + 1))),
        max_size=8,
    )
)
def test_text_folder_one_item_per_file(tmp_path_factory: Any, files: dict[tuple[str, str], bytes]) -> None:
    root = tmp_path_factory.mktemp("t") / "docs"
    (root / "sub").mkdir(parents=True)
    written = set()
    for (stem, suffix), body in files.items():
        rel = f"sub/{stem}{suffix}" if len(written) % 2 else f"{stem}{suffix}"
        (root / rel).write_bytes(body)
        written.add(rel)
    src = SourceConfig(path=root, name="s", max_record_bytes=MAX_BYTES)
    recs, bad, err = read_all(src)
    assert err is None
    assert sorted([q.location for q in bad] + [f"file {r['path']}" for r in recs]) == sorted(
        f"file {w}" for w in written
    )
    for q in bad:
        if not q.location.lower().endswith((".txt", ".md", ".html", ".rst")):
            assert q.reason == "unsupported_file_type"
    assert fingerprint(src) == fingerprint(src)


# -- access logs ------------------------------------------------------------------------------

fields = st.text(
    st.characters(blacklist_characters='"[]', blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc")),
    min_size=1,
    max_size=10,
)


@st.composite
def log_line(draw: st.DrawFn) -> tuple[bool, str]:
    """(well formed?, line)."""
    if draw(st.integers(0, 3)) == 0:
        return False, draw(
            st.text(st.characters(blacklist_characters="\n\r", blacklist_categories=("Cs",)), max_size=80)
        )
    day = draw(st.integers(1, 28))
    month = draw(st.sampled_from(["Jan", "Feb", "Mar", "Oct", "Dec"]))
    when = f"{day:02d}/{month}/{draw(st.integers(1970, 2100))}:{draw(st.integers(0, 23)):02d}:00:{draw(st.integers(0, 59)):02d} {draw(st.sampled_from(['+0000', '-0700', '+0530']))}"
    request = draw(st.sampled_from(["GET / HTTP/1.1", "POST /a?b=c HTTP/2", "", "-", "\\x16\\x03", "GET /x y z w"]))
    size = draw(st.sampled_from(["-", "0", "512", "9" * 20, "9" * 30, "9" * 5000]))
    line = f'{draw(fields)} - {draw(fields)} [{when}] "{request}" {draw(st.integers(100, 599))} {size}'
    if draw(st.booleans()):
        line += f' "{draw(fields)}" "{draw(fields)}"'
    return len(size) <= 20, line  # a byte count beyond 20 digits is a malformed line


@FUZZ
@given(lines=st.lists(log_line(), max_size=20), eol=st.sampled_from(["\n", "\r\n"]))
def test_access_logs_of_every_shape(tmp_path_factory: Any, lines: list[tuple[bool, str]], eol: str) -> None:
    data = eol.join(line for _, line in lines).encode() + eol.encode()
    path = tmp_path_factory.mktemp("l") / "access.log"
    path.write_bytes(data)
    src = SourceConfig(path=path, name="s", max_record_bytes=MAX_BYTES * 4)
    recs, bad, err = read_all(src)
    assert err is None
    expected = [f"line {i}" for i, (_, line) in enumerate(lines, 1) if line.encode().strip()]
    assert sorted(locations(recs, bad, "s")) == sorted(expected)
    for ok, line in lines:
        if ok and len(line) < MAX_BYTES:
            event = parse_log_line(line)
            assert event is not None and isinstance(event["status"], int), line
    assert fingerprint(src) == fingerprint(src)


# -- 10 MB lines (once per line-based reader; the default 1 MB limit quarantines them) -----------


def test_ten_megabyte_records_are_quarantined_as_oversized(tmp_path: Path) -> None:
    big = "w " * 5_000_000  # 10 MB
    cases = {
        "a.jsonl": json.dumps({"text": big}).encode() + b'\n{"text": "small"}\n',
        "a.csv": b"text\n" + big.encode() + b"\nsmall\n",
        "a.log": b'1.2.3.4 - - [01/Jan/2024:00:00:00 +0000] "GET /' + big.encode() + b'" 200 1\n',
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        recs, bad, err = read_all(SourceConfig(path=tmp_path / name, name="s"))
        assert err is None and len(bad) == 1 and bad[0].location in ("line 1", "row 2"), name
        assert bad[0].reason in ("oversized", "bad_csv") and len(bad[0].raw) <= 500
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "big.txt").write_text(big)
    recs, bad, err = read_all(SourceConfig(path=tmp_path / "docs", name="s"))
    assert [q.reason for q in bad] == ["oversized"] and not recs
