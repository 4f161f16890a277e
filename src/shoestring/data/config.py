"""The curate stage's typed config: one model is the YAML schema, the CLI flags and the API.

Defaults follow published practice where there is one (Gopher quality rules, MinHash at
Jaccard 0.8 over word 5-grams); every field says its unit.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shoestring.core.config import HashedPath, NotHashed, StageConfig

__all__ = [
    "AugmentConfig",
    "CurateConfig",
    "DedupConfig",
    "Generalise",
    "JoinConfig",
    "LabelConfig",
    "LabelFunction",
    "NormalizeConfig",
    "PIIConfig",
    "QualityConfig",
    "ShareConfig",
    "SourceConfig",
    "SplitConfig",
]


PIIType = Literal["email", "phone", "ipv4", "ipv6", "credit_card", "iban", "ssn", "secret"]
AugmentMethod = Literal["word_dropout", "word_swap", "char_typo"]


def _default_augment_methods() -> list[AugmentMethod]:
    return ["word_dropout", "word_swap"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, protected_namespaces=())


class JoinConfig(_Section):
    """Enrich records by a lookup join with another table (e.g. user attributes on events)."""

    path: Annotated[Path, HashedPath()]
    """Lookup table file (CSV, TSV, JSONL or Parquet), read fully into memory."""
    key: str
    """Key field present in both the record (after mapping) and the lookup table."""
    fields: list[str] = Field(default_factory=list)
    """Lookup columns to attach; empty = all columns except the key."""
    prefix: str = ""
    """Prefix added to attached column names (avoids clashes)."""


class SourceConfig(_Section):
    """One raw data source and how its fields map onto the common schema."""

    path: Annotated[Path | None, HashedPath()] = None
    """File or folder to read (JSONL[.gz|.zst], CSV, TSV, Parquet, a folder of .txt/.md/.html, a SQLite
    file, or an access log). Its contents enter the cache key."""
    url: str | None = None
    """SQLAlchemy URL of a database (e.g. postgresql://user@host/db); used with `table` or `query`.
    A `sqlite:///FILE` URL enters the cache key by the file's contents (like `path`). For a
    database server the cache key is the URL + `table`/`query` text only (its data is not read
    to hash it): pass --force to re-read after the data changed."""
    sqlite_file: Annotated[Path | None, HashedPath()] = None
    """Set from a `sqlite:///FILE` URL, never by hand: the database file whose contents enter the cache key."""
    name: str | None = None
    """Source name used in record ids and the data card; defaults to the file name."""
    format: Literal["auto", "jsonl", "csv", "tsv", "parquet", "text", "sql", "log"] = "auto"
    """Reader to use; `auto` picks by file extension."""
    table: str | None = None
    """SQL table to read (SQL sources)."""
    query: str | None = None
    """SQL query to run instead of a whole table (SQL sources)."""
    fields: dict[str, str] = Field(default_factory=dict)
    """Field mapping: common-schema name -> this source's column (e.g. {instruction: question,
    response: answer, id: ticket_id}). Unmapped columns are kept as they are."""
    drop_columns: list[str] = Field(default_factory=list)
    """Source columns to discard after mapping."""
    fallback_encoding: str | None = None
    """Decode lines that are not valid UTF-8 with this codec (e.g. cp1252) instead of quarantining them."""
    max_record_bytes: int = 1_000_000
    """Records (lines, rows, files) larger than this many bytes are quarantined as oversized."""
    log_format: Literal["auto", "common", "combined"] = "auto"
    """Access-log line format (log sources)."""
    join: JoinConfig | None = None
    """Optional lookup join that attaches columns to each record."""

    @model_validator(mode="after")
    def _needs_location(self) -> SourceConfig:
        if self.path is None and self.url is None:
            raise ValueError("a source needs `path` (a file or folder) or `url` (a SQLAlchemy URL)")
        derived = _sqlite_file(self.url)
        if self.sqlite_file is not None and self.sqlite_file != derived:
            raise ValueError("`sqlite_file` is derived from a sqlite:/// `url`; remove it and set `url`")
        self.sqlite_file = derived
        return self


def _sqlite_file(url: str | None) -> Path | None:
    """The database file of a file-backed SQLite URL (None for servers and in-memory databases)."""
    if url is None or not url.startswith("sqlite"):
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        db = make_url(url).database
    except ArgumentError:
        return None  # the reader reports the bad URL with its fix
    return Path(db) if db and db != ":memory:" and not db.startswith("file:") else None


class NormalizeConfig(_Section):
    """Text normalisation, applied to every text field."""

    enabled: bool = True
    """Run normalisation."""
    fix_mojibake: bool = True
    """Repair mis-decoded text (e.g. 'cafÃ©' -> 'café') with ftfy."""
    html_to_text: bool = True
    """Convert text that contains HTML markup to plain text (paragraphs become blank lines)."""
    unicode_form: Literal["NFC", "NFKC", "none"] = "NFC"
    """Unicode normal form."""
    strip_control: bool = True
    """Remove control characters other than newline and tab."""
    collapse_whitespace: bool = True
    """Collapse runs of spaces, trim lines, and keep at most one blank line between paragraphs."""


class QualityConfig(_Section):
    """Gopher/C4-style quality heuristics on the record's full text (defaults are Gopher's)."""

    enabled: bool = True
    """Run the quality filters."""
    min_words: int = 50
    """Fewer words than this -> dropped (`too_short`). Gopher: 50; use ~5 for chat data."""
    max_words: int = 100_000
    """More words than this -> dropped (`too_long`)."""
    min_mean_word_length: float = 3.0
    """Mean word length below this many characters -> dropped."""
    max_mean_word_length: float = 10.0
    """Mean word length above this many characters -> dropped."""
    max_symbol_ratio: float = 0.1
    """Max ratio of '#' and '...' symbols to words."""
    max_digit_ratio: float = 0.3
    """Max fraction of characters that are digits (C4-style noise filter)."""
    min_alpha_word_fraction: float = 0.8
    """Min fraction of words that contain a letter."""
    min_stop_words: int = 2
    """Min number of English stop words (the, and, to, of, ...); 0 disables the check."""
    max_duplicate_line_fraction: float = 0.3
    """Max fraction of lines that repeat an earlier line."""
    max_top_2gram_fraction: float = 0.2
    """Max fraction of characters covered by the most frequent word 2-gram."""
    max_dup_5gram_fraction: float = 0.15
    """Max fraction of characters in word 5-grams that occur more than once."""
    languages: list[str] = Field(default_factory=list)
    """Keep only these ISO 639-1 languages (offline langid.py); empty = no language filter."""
    min_language_score: float = 0.5
    """Min language-ID probability for a record to count as its detected language."""


class DedupConfig(_Section):
    """Exact and near-duplicate removal."""

    exact: bool = True
    """Drop records whose normalised text (case-folded, whitespace collapsed) was already seen."""
    near: bool = True
    """Drop near-duplicates by MinHash-LSH with candidate verification (estimates within 3 standard
    errors of `threshold` are settled by the exact Jaccard of the two shingle sets)."""
    threshold: float = 0.8
    """Jaccard similarity (over word n-gram shingles) at or above which two records are near-duplicates."""
    ngram: int = 5
    """Shingle size in words."""
    num_perm: int = 128
    """MinHash permutations (signature length); the estimate's std is ~sqrt(J(1-J)/num_perm)."""
    seed: int = 1
    """Seed of the MinHash permutations."""
    semantic: bool = False
    """Also drop records whose all-MiniLM-L6-v2 embedding has cosine >= semantic_threshold with a kept one."""
    semantic_threshold: float = 0.95
    """Cosine similarity for semantic duplicates."""
    max_memory: Annotated[int, NotHashed()] = 64
    """MiB the near-dup clustering may hold at once, shared by the workers: documents with LSH
    candidates are clustered in batches of whole candidate components (about 2 KB a document)
    that fit; the manifest reports the batches and the largest. A component larger than the
    budget is still one batch. Does not change the result, only how it is computed."""


class PIIConfig(_Section):
    """Detection and removal of personal data and secrets."""

    enabled: bool = True
    """Run PII detection."""
    mode: Literal["redact", "mask", "hash", "pseudonym"] = "redact"
    """redact: '[EMAIL]'; mask: keep the last 4 characters; hash: '<EMAIL:sha256-prefix>';
    pseudonym: consistent keyed token ('<EMAIL_3f9a1c>'), same value -> same token."""
    types: list[PIIType] = Field(default_factory=lambda: list(get_args(PIIType)))
    """PII types to detect."""
    key_env: str = "SHOESTRING_PII_KEY"
    """Environment variable holding the secret key of the `pseudonym` mode. Always required (there is
    no default key); 16+ characters when `share` is enabled."""
    key_file: Annotated[Path | None, NotHashed()] = None
    """File holding the pseudonym key (read when the environment variable is unset); its contents
    never enter the stage hash, manifest or logs."""
    k_anonymity: list[str] = Field(default_factory=list)
    """Quasi-identifier columns whose value combinations are counted for a k-anonymity check."""
    k: int = 5
    """Required k: every quasi-identifier combination must occur at least k times (reported, and
    enforced when `enforce_k` is set)."""
    enforce_k: bool = False
    """Drop records whose quasi-identifier combination occurs fewer than k times."""


class LabelFunction(_Section):
    """A labelling function declared in the recipe: a rule that votes a label or abstains."""

    name: str
    """Name shown in coverage/conflict stats."""
    label: str
    """Label this function votes for when it fires."""
    contains: list[str] = Field(default_factory=list)
    """Fires when the text contains any of these substrings (case-insensitive)."""
    regex: str | None = None
    """Fires when this regular expression matches the text."""
    field: str | None = None
    """Match against this record field instead of `text`."""
    equals: str | None = None
    """Fires when `field` equals this value."""

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as err:
                raise ValueError(f"regex {value!r} does not compile ({err}); fix the pattern") from None
        return value


class LabelConfig(_Section):
    """Programmatic (weak) labelling."""

    functions: list[LabelFunction] = Field(default_factory=list)
    """Labelling functions; empty = no labelling."""
    combine: Literal["majority", "model"] = "majority"
    """majority: most votes wins (ties abstain); model: votes weighted by each function's estimated
    accuracy (agreement with the majority on overlapping records, a one-step label model)."""
    zero_shot: list[str] = Field(default_factory=list)
    """Candidate labels for zero-shot labelling with all-MiniLM-L6-v2 embeddings (records no function covers)."""
    zero_shot_min_score: float = 0.2
    """Min cosine similarity for a zero-shot label; below it the record stays unlabelled."""
    field: str = "label"
    """Output field for the label."""
    keep_unlabelled: bool = True
    """Keep records no function labels (label = null); otherwise drop them (`unlabelled`)."""


class AugmentConfig(_Section):
    """Augmentation for small datasets (training split only, reproducible with the seed)."""

    enabled: bool = False
    """Add augmented copies of training records."""
    copies: int = 1
    """Augmented copies per training record."""
    methods: list[AugmentMethod] = Field(default_factory=_default_augment_methods)
    """word_dropout: drop each word with probability p; word_swap: swap a fraction p of adjacent
    word pairs; char_typo: swap two inner letters in a fraction p of words (EDA-style noise)."""
    p: float = 0.1
    """Word dropout probability / fraction of words swapped or replaced."""
    seed: int = 0
    """Seed for reproducible augmentation."""


class SplitConfig(_Section):
    """Train/validation/test split with a leak check."""

    validation: float = 0.1
    """Fraction of records in validation."""
    test: float = 0.1
    """Fraction of records in test."""
    seed: int = 0
    """Seed of the split assignment."""
    stratify_by: str | None = None
    """Field whose values keep the same proportions in every split (e.g. `label`)."""


class Generalise(_Section):
    """How one quasi-identifier is coarsened: numbers into bins, or text to a prefix."""

    bin: float | None = Field(default=None, gt=0)
    """Numbers become the bin they fall in, of this width (age with bin 10: 34 -> '30-39')."""
    prefix: int | None = Field(default=None, ge=0)
    """Text keeps this many leading characters, the rest masked (zip with prefix 3: '02139' -> '021**')."""


class ShareConfig(_Section):
    """A privacy-checked release of the curated records for a partner (``share/`` in the artifact)."""

    enabled: bool = False
    """Write the shareable release."""
    drop_columns: list[str] = Field(default_factory=list)
    """Direct identifiers removed from every released record (name, email, phone columns ...)."""
    pseudonymise_columns: list[str] = Field(default_factory=list)
    """Columns replaced by keyed HMAC tokens (same value -> same token), e.g. user or patient ids;
    the record id and cluster id are always pseudonymised."""
    quasi_identifiers: list[str] = Field(default_factory=list)
    """Columns that together could single a person out (age, zip, gender ...): k-anonymity is enforced on them."""
    k: int = Field(default=5, ge=2)
    """Every released combination of quasi-identifier values occurs at least k times; rarer records are suppressed."""
    generalise: dict[str, Generalise] = Field(default_factory=dict)
    """Coarsening of quasi-identifiers before the k check, e.g. {age: {bin: 10}, zip: {prefix: 3}}."""
    count_columns: list[str] = Field(default_factory=list)
    """Columns whose value counts are released with Laplace noise (counts.json)."""
    epsilon: float = Field(default=1.0, gt=0)
    """Total epsilon of the released counts, split equally over count_columns (delta = 0)."""
    seed: int = 0
    """Seed of the Laplace noise."""


class CurateConfig(StageConfig):
    """Raw multi-source data -> a clean, deduplicated, privacy-safe, labelled, split dataset."""

    sources: list[SourceConfig] = Field(default_factory=list)
    """Raw data sources (set in the recipe or a --config YAML)."""
    input: Annotated[Path | None, HashedPath()] = None
    """Quick form: one file or folder read with default settings (use `sources` for several)."""
    text_field: str = "text"
    """Source column holding the text when no mapping names one."""
    normalize: NormalizeConfig = Field(default_factory=NormalizeConfig)
    """Normalisation settings."""
    quality: QualityConfig = Field(default_factory=QualityConfig)
    """Quality heuristics settings."""
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    """Deduplication settings."""
    pii: PIIConfig = Field(default_factory=PIIConfig)
    """PII settings."""
    labels: LabelConfig = Field(default_factory=LabelConfig)
    """Programmatic labelling settings."""
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    """Augmentation settings."""
    split: SplitConfig = Field(default_factory=SplitConfig)
    """Split settings."""
    share: ShareConfig = Field(default_factory=ShareConfig)
    """A privacy-checked release for a partner, written to share/ (shoestring.data.share)."""
    executor: Annotated[Literal["local", "ray"], NotHashed()] = "local"
    """Where the per-record ops run: local processes or a Ray cluster (a local one if none is running)."""
    workers: Annotated[int, NotHashed()] = 2
    """Worker processes (local) or Ray tasks in flight; 1 runs in this process."""
    chunk_size: int = 1000
    """Records per work unit; also the checkpoint granularity for resume."""
    limit: int | None = None
    """Read at most this many records per source (quick trials)."""

    @model_validator(mode="after")
    def _needs_data(self) -> CurateConfig:
        if not self.sources and self.input is None:
            raise ValueError(
                "no data to curate: pass --input FILE, or list `sources:` in the recipe or a --config YAML"
            )
        return self
