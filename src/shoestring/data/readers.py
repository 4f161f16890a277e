"""Readers: each raw source streams ``Record | Quarantined`` items, one per raw record.

Formats: JSONL (also .gz/.zst), CSV/TSV, Parquet, folders of .txt/.md/.html, SQL databases by
SQLAlchemy URL (a SQLite file by path), and Common/Combined Log Format access logs. A per-source
field mapping brings every source onto one schema; malformed input is quarantined with its
reason and location instead of crashing the run.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from shoestring.core.errors import ShoestringError
from shoestring.data.config import JoinConfig, SourceConfig
from shoestring.data.records import CONTENT_FIELDS, Quarantined, Record

__all__ = ["detect_format", "read_source", "source_name"]

TEXT_SUFFIXES = (".txt", ".md", ".html", ".htm", ".rst")
SQLITE_SUFFIXES = (".sqlite", ".sqlite3", ".db")
LOG_SUFFIXES = (".log",)

# Common Log Format, optionally followed by the Combined fields (referrer, user agent).
_LOG_RE = re.compile(
    r'^(?P<ip>\S+) (?P<ident>\S+) (?P<user>\S+) \[(?P<time>[^\]]+)\] "(?P<request>[^"]*)" '
    r"(?P<status>\d{3}) (?P<size>\d{1,20}|-)"
    r'(?: "(?P<referrer>[^"]*)" "(?P<user_agent>[^"]*)")?\s*$'
)


def source_name(src: SourceConfig) -> str:
    if src.name:
        return src.name
    if src.path is not None:
        return src.path.name
    return str(src.table or "query")


def detect_format(src: SourceConfig) -> str:
    """The reader for a source: its explicit `format`, else by extension."""
    if src.format != "auto":
        return src.format
    if src.url is not None:
        return "sql"
    assert src.path is not None
    p = src.path
    if p.is_dir():
        return "text"
    name = p.name.lower()
    for suffix in (".gz", ".zst"):
        name = name.removesuffix(suffix)
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(".tsv"):
        return "tsv"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(SQLITE_SUFFIXES):
        return "sql"
    if name.endswith(LOG_SUFFIXES):
        return "log"
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    raise ShoestringError(f"cannot tell the format of {p}; set `format:` on this source (jsonl, csv, tsv, ...)")


def read_source(
    src: SourceConfig, text_field: str = "text", limit: int | None = None
) -> Iterator[Record | Quarantined]:
    """Stream a source's records, mapped onto the common schema, plus quarantine entries.

    ``limit``: stop after this many raw records (quarantined ones included).
    """
    fmt = detect_format(src)
    if src.path is not None and not src.path.exists():
        raise ShoestringError(f"source not found: {src.path}; fix the path (relative to {Path.cwd()})")
    name = source_name(src)
    raw = _RAW_READERS[fmt](src, name)
    lookup = _load_join(src.join) if src.join else None
    n = 0
    for loc, item in raw:
        if limit is not None and n >= limit:
            break
        n += 1
        if isinstance(item, Quarantined):
            yield item
            continue
        yield _map_record(item, src, name, loc, text_field, lookup)


def _map_record(
    row: dict[str, Any],
    src: SourceConfig,
    name: str,
    loc: str,
    text_field: str,
    lookup: dict[str, dict[str, Any]] | None,
) -> Record | Quarantined:
    """Apply the field mapping, check types, attach join columns."""
    mapping = dict(src.fields)
    if not any(k in mapping for k in CONTENT_FIELDS) and text_field in row:
        mapping.setdefault("text", text_field)
    rec: Record = {}
    used = set(mapping.values())
    for target, column in mapping.items():
        if column not in row:
            return Quarantined(name, loc, f"missing_field:{column}", _excerpt(row))
        rec[target] = row[column]
    for column, value in row.items():
        if column not in used and column not in src.drop_columns and column not in rec:
            rec[column] = value
    for f in CONTENT_FIELDS:
        if f in rec and not isinstance(rec[f], str):
            return Quarantined(name, loc, f"wrong_type:{mapping.get(f, f)}", _excerpt(row))
    if not any(f in rec for f in CONTENT_FIELDS):
        return Quarantined(name, loc, "no_text_field", _excerpt(row))
    rid = rec.get("id")
    rec["id"] = f"{name}:{rid}" if rid is not None and not isinstance(rid, bytes | dict | list) else f"{name}:{loc}"
    rec["_source"] = name
    if lookup is not None and src.join is not None:
        key = rec.get(src.join.key)
        extra = lookup.get(str(key)) if key is not None else None
        rec["_joined"] = extra is not None
        for col, value in (extra or {}).items():
            if col != src.join.key and (not src.join.fields or col in src.join.fields):
                rec[src.join.prefix + col] = value
    for k, v in list(rec.items()):
        if isinstance(v, bytes):
            return Quarantined(name, loc, f"wrong_type:{k}", _excerpt(row))
        if isinstance(v, datetime):
            rec[k] = v.isoformat()
    return rec


def _first_line(err: BaseException) -> str:
    """An exception as one short line (library messages often carry a second 'background' line)."""
    lines = str(err).strip().splitlines()
    return lines[0][:200] if lines else type(err).__name__


def _excerpt(obj: Any) -> str:
    if isinstance(obj, bytes):
        return obj[:500].decode("utf-8", errors="replace")
    if isinstance(obj, str):
        return obj[:500]
    return json.dumps(obj, default=repr, ensure_ascii=False)[:500]


# -- raw readers: yield (location, row dict | Quarantined) -----------------------------------


def _open_binary(path: Path) -> IO[bytes]:
    """A binary stream of the file's bytes, decompressing .gz and .zst transparently."""
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if path.name.endswith(".zst"):
        import zstandard

        raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)  # noqa: SIM115 - closed with the reader
        return io.BufferedReader(raw)  # type: ignore[arg-type]
    return open(path, "rb")


def _decode(data: bytes, src: SourceConfig) -> str | None:
    """UTF-8, or the source's fallback codec; None when the bytes cannot be decoded."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        if src.fallback_encoding:
            try:
                return data.decode(src.fallback_encoding)
            except UnicodeDecodeError:
                return None
        return None


class _BrokenStream(Exception):
    """The file's bytes stop making sense at ``line`` (a truncated or corrupt .gz/.zst)."""

    def __init__(self, line: int, why: str) -> None:
        self.line, self.why = line, why


def _iter_lines(src: SourceConfig) -> Iterator[tuple[int, bytes]]:
    """Numbered raw lines; a leading UTF-8 byte-order mark is encoding, not content, and is dropped."""
    assert src.path is not None
    try:
        fh = _open_binary(src.path)
    except OSError as err:
        raise ShoestringError(f"cannot open {src.path} ({err.strerror}); check the path and its permissions") from None
    i = 0
    with fh:
        try:
            for i, line in enumerate(fh, 1):
                yield i, line.removeprefix(b"\xef\xbb\xbf") if i == 1 else line
        except Exception as err:  # gzip (OSError, EOFError) and zstd (ZstdError) for cut or damaged streams
            raise _BrokenStream(i + 1, _first_line(err)) from None


def _record_lines(src: SourceConfig, name: str) -> Iterator[tuple[str, bytes | Quarantined]]:
    """The non-blank lines of :func:`_iter_lines` with their location (blank lines are layout, not
    records), ending with one ``corrupt_stream`` quarantine entry where the bytes break."""
    try:
        for i, line in _iter_lines(src):
            if line.strip():
                yield f"line {i}", line
    except _BrokenStream as err:
        yield f"line {err.line}", Quarantined(name, f"line {err.line}", "corrupt_stream", err.why)


def _record_text(data: bytes, src: SourceConfig, name: str, loc: str) -> str | Quarantined:
    """One record's bytes as text, or its quarantine entry: over ``max_record_bytes`` or not in the source's encoding."""
    if len(data) > src.max_record_bytes:
        return Quarantined(name, loc, "oversized", _excerpt(data))
    text = _decode(data, src)
    return Quarantined(name, loc, "invalid_utf8", _excerpt(data)) if text is None else text


def _read_jsonl(src: SourceConfig, name: str) -> Iterator[tuple[str, dict[str, Any] | Quarantined]]:
    for loc, line in _record_lines(src, name):
        if isinstance(line, Quarantined):
            yield loc, line
            continue
        text = _record_text(line, src, name, loc)
        if isinstance(text, Quarantined):
            yield loc, text
            continue
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError):  # bad JSON, a >4300-digit integer, nesting too deep
            yield loc, Quarantined(name, loc, "bad_json", text[:500])
            continue
        if not isinstance(obj, dict):
            yield loc, Quarantined(name, loc, "not_an_object", text[:500])
            continue
        if "\\u" in text and _LONE_SURROGATE.search(text) and not _encodable(obj):
            # A \ud800 escape with no partner decodes to a string no UTF-8 file can hold.
            yield loc, Quarantined(name, loc, "invalid_unicode", text[:500])
            continue
        yield loc, obj


_LONE_SURROGATE = re.compile(r"\\u[dD][89abcdefABCDEF]")


def _encodable(obj: Any) -> bool:
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _read_csv(src: SourceConfig, name: str, delimiter: str = ",") -> Iterator[tuple[str, dict[str, Any] | Quarantined]]:
    assert src.path is not None
    raw = _open_binary(src.path)
    # surrogateescape keeps undecodable bytes so that each bad row (not the file) is quarantined.
    # utf-8-sig: a byte-order mark (Excel writes one) is not part of the first column's name.
    with io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
        csv.field_size_limit(max(src.max_record_bytes, 1024))
        reader = csv.reader(fh, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return
        except Exception as err:  # csv.Error, or a cut or damaged .gz/.zst
            raise ShoestringError(f"{src.path}: unreadable CSV header ({_first_line(err)}); check the file") from None
        decoded = [_redecode(c, src) for c in header]
        if any(c is None for c in decoded):
            raise ShoestringError(
                f"{src.path}: the CSV header is not UTF-8; set `fallback_encoding:` on this source (e.g. cp1252)"
            )
        header = [c for c in decoded if c is not None]
        rows = iter(reader)
        n = 1
        while True:
            try:
                cells = next(rows)
            except StopIteration:
                return
            except csv.Error as err:
                n += 1
                loc = f"row {n}"
                yield loc, Quarantined(name, loc, "bad_csv", str(err)[:500])
                continue
            except Exception as err:  # a cut or damaged .gz/.zst (OSError, EOFError, ZstdError)
                n += 1
                loc = f"row {n}"
                yield loc, Quarantined(name, loc, "corrupt_stream", _first_line(err))
                return
            n += 1
            loc = f"row {n}"
            if not cells:
                continue
            if len(cells) != len(header):
                yield loc, Quarantined(name, loc, "wrong_column_count", _excerpt(delimiter.join(cells)))
                continue
            if any(_has_surrogates(c) for c in cells):
                fixed = [_redecode(c, src) for c in cells]
                if any(c is None for c in fixed):
                    yield (
                        loc,
                        Quarantined(
                            name,
                            loc,
                            "invalid_utf8",
                            _excerpt(delimiter.join(cells)).encode("utf-8", "replace").decode(),
                        ),
                    )
                    continue
                cells = [c for c in fixed if c is not None]
            yield loc, dict(zip(header, cells, strict=True))


def _has_surrogates(s: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in s)


def _redecode(cell: str, src: SourceConfig) -> str | None:
    if not _has_surrogates(cell):
        return cell
    return _decode(cell.encode("utf-8", "surrogateescape"), src)


def _read_tsv(src: SourceConfig, name: str) -> Iterator[tuple[str, dict[str, Any] | Quarantined]]:
    return _read_csv(src, name, "\t")


def _read_parquet(src: SourceConfig, name: str) -> Iterator[tuple[str, dict[str, Any] | Quarantined]]:
    import pyarrow.parquet as pq

    assert src.path is not None
    try:
        pf = pq.ParquetFile(src.path)
    except Exception as err:  # pyarrow raises several types for corrupt files
        raise ShoestringError(f"{src.path}: not a readable Parquet file ({_first_line(err)}); check the file") from None
    n = 0
    batches = pf.iter_batches(batch_size=1024)
    while True:
        try:
            batch = next(batches)
            rows = batch.to_pylist()
        except StopIteration:
            return
        except Exception as err:  # a damaged row group: pyarrow raises OSError, ArrowInvalid, ...
            raise ShoestringError(
                f"{src.path}: Parquet data is damaged after row {n} ({_first_line(err)}); re-export the file"
            ) from None
        for row in rows:
            n += 1
            yield f"row {n}", row


def _read_text_folder(src: SourceConfig, name: str) -> Iterator[tuple[str, dict[str, Any] | Quarantined]]:
    assert src.path is not None
    root = src.path
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for f in files:
        rel = f.relative_to(root).as_posix() if root.is_dir() else f.name
        loc = f"file {rel}"
        if not f.name.lower().endswith(TEXT_SUFFIXES):
            yield loc, Quarantined(name, loc, "unsupported_file_type", f.name)
            continue
        text = _record_text(f.read_bytes(), src, name, loc)
        if isinstance(text, Quarantined):
            yield loc, text
            continue
        yield loc, {"id": rel, "text": text, "path": rel, "file_type": f.suffix.lower().lstrip(".")}


def _read_sql(src: SourceConfig, name: str) -> Iterator[tuple[str, dict[str, Any] | Quarantined]]:
    import sqlalchemy as sa

    url = src.url or f"sqlite:///{src.path}"
    if not (src.table or src.query):
        raise ShoestringError(f"SQL source {name}: set `table:` or `query:`")
    try:
        engine = sa.create_engine(url)
    except Exception as err:
        raise ShoestringError(f"SQL source {name}: bad URL {url!r} ({_first_line(err)}); use a SQLAlchemy URL") from None
    if src.query:
        stmt: Any = sa.text(src.query)
    else:
        try:
            table = sa.Table(str(src.table), sa.MetaData(), autoload_with=engine)
        except Exception as err:
            raise ShoestringError(f"SQL source {name}: cannot read table {src.table!r} ({_first_line(err)})") from None
        pk = list(table.primary_key.columns)
        stmt = sa.select(table).order_by(*pk) if pk else sa.select(table)
    try:
        with engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=1000).execute(stmt)
            for n, row in enumerate(result.mappings(), 1):
                yield f"row {n}", dict(row)
    except sa.exc.SQLAlchemyError as err:
        raise ShoestringError(f"SQL source {name}: query failed ({_first_line(err)})") from None
    finally:
        engine.dispose()


def _read_log(src: SourceConfig, name: str) -> Iterator[tuple[str, dict[str, Any] | Quarantined]]:
    for loc, line in _record_lines(src, name):
        if isinstance(line, Quarantined):
            yield loc, line
            continue
        text = _decode(line, src)
        if text is None or len(line) > src.max_record_bytes:
            reason = "invalid_utf8" if text is None else "oversized"
            yield loc, Quarantined(name, loc, reason, _excerpt(line))
            continue
        event = parse_log_line(text.rstrip("\r\n"), src.log_format)
        if event is None:
            yield loc, Quarantined(name, loc, "unparseable_log_line", text[:500])
            continue
        yield loc, event


def parse_log_line(line: str, fmt: str = "auto") -> dict[str, Any] | None:
    """Parse one Common/Combined Log Format line into a structured event, or None."""
    m = _LOG_RE.match(line)
    if m is None:
        return None
    if fmt == "combined" and m.group("user_agent") is None:
        return None
    try:
        ts = datetime.strptime(m.group("time"), "%d/%b/%Y:%H:%M:%S %z")
    except ValueError:
        return None
    parts = m.group("request").split()
    method, path, protocol = [*parts, "", "", ""][:3] if len(parts) <= 3 else ("", m.group("request"), "")
    size = m.group("size")
    event: dict[str, Any] = {
        "ip": m.group("ip"),
        "user": None if m.group("user") == "-" else m.group("user"),
        "time": ts.isoformat(),
        "method": method,
        "path": path,
        "protocol": protocol,
        "status": int(m.group("status")),
        "bytes": None if size == "-" else int(size),
        "text": m.group("request"),
    }
    if m.group("user_agent") is not None:
        event["referrer"] = None if m.group("referrer") == "-" else m.group("referrer")
        event["user_agent"] = m.group("user_agent")
    return event


def _load_join(join: JoinConfig) -> dict[str, dict[str, Any]]:
    """Read a lookup table fully (lookup tables are small by nature) keyed by ``join.key``."""
    src = SourceConfig(path=join.path)
    out: dict[str, dict[str, Any]] = {}
    for loc, row in _RAW_READERS[detect_format(src)](src, join.path.name):
        if isinstance(row, Quarantined):
            raise ShoestringError(f"join table {join.path}: {row.reason} at {loc}; fix the lookup table")
        if join.key not in row:
            raise ShoestringError(f"join table {join.path} has no column {join.key!r}; fix `join.key`")
        out[str(row[join.key])] = row
    return out


_RAW_READERS = {
    "jsonl": _read_jsonl,
    "csv": _read_csv,
    "tsv": _read_tsv,
    "parquet": _read_parquet,
    "text": _read_text_folder,
    "sql": _read_sql,
    "log": _read_log,
}
