"""Text normalisation: mojibake repair, HTML to text, Unicode form, control characters, whitespace."""

from __future__ import annotations

import re
import unicodedata

from shoestring.data.config import NormalizeConfig
from shoestring.data.records import Drop, OpStats, Record, content_fields

__all__ = ["html_to_text", "looks_like_html", "normalize_record", "normalize_text"]

_HTML_TAG = re.compile(
    r"</?(?:p|br|div|span|b|i|em|strong|code|pre|a|ul|ol|li|h[1-6]|table|tr|td|th|html|body)\b[^>]*>", re.I
)
_HTML_ENTITY = re.compile(r"&(?:amp|lt|gt|quot|nbsp|#\d{1,6}|#x[0-9a-f]{1,5});", re.I)
_BLOCK_END = re.compile(r"</(?:p|div|li|h[1-6]|tr|table|ul|ol|pre)>", re.I)
_BR = re.compile(r"<br\s*/?>", re.I)
# Control characters except tab and newline, plus zero-width and BOM characters.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u200c\u200d\u2060\ufeff]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_BLANKS = re.compile(r"\n{3,}")
# Byte sequences typical of UTF-8 read as cp1252/latin-1 ('Ã©', 'â€™'); ftfy is only called when
# one is present, because most text is clean and ftfy is comparatively slow.
_MOJIBAKE_HINT = re.compile(
    "[ÃÂâ][\u0080-\u00ff\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc\u2013-\u2122]"
)


def looks_like_html(text: str) -> bool:
    return bool(_HTML_TAG.search(text) or _HTML_ENTITY.search(text))


def html_to_text(html: str) -> str:
    """Plain text of an HTML fragment or page; paragraphs become blank lines, scripts vanish."""
    from selectolax.lexbor import LexborHTMLParser

    marked = _BLOCK_END.sub(lambda m: m.group(0) + "\n\n", _BR.sub("\n", html))
    tree = LexborHTMLParser(marked)
    tree.strip_tags(["script", "style", "noscript", "template"])
    node = tree.body or tree.root
    return node.text(separator="") if node is not None else ""


def normalize_text(text: str, cfg: NormalizeConfig, stats: OpStats | None = None) -> str:
    """Apply the configured normalisations to one string; count what changed."""

    def count(what: str) -> None:
        if stats is not None:
            stats.counters[what] += 1

    if cfg.fix_mojibake and _MOJIBAKE_HINT.search(text):
        import ftfy

        fixed = ftfy.fix_encoding(text)
        if fixed != text:
            count("mojibake_fixed")
            text = fixed
    if cfg.html_to_text and looks_like_html(text):
        text = html_to_text(text)
        count("html_converted")
    if cfg.unicode_form != "none":
        normal = unicodedata.normalize(cfg.unicode_form, text)
        if normal != text:
            count("unicode_normalized")
            text = normal
    if cfg.strip_control:
        stripped = _CONTROL.sub("", text)
        if stripped != text:
            count("control_chars_removed")
            text = stripped
    if cfg.collapse_whitespace:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
        text = _BLANKS.sub("\n\n", "\n".join(lines)).strip()
    return text


def normalize_record(rec: Record, stats: OpStats, cfg: NormalizeConfig) -> Record | Drop:
    """Normalise every content field of a record in place."""
    for f in content_fields(rec):
        rec[f] = normalize_text(rec[f], cfg, stats)
    return rec
