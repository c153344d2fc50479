"""Streaming JSONL reading with per-line validation.

Lines are read as bytes so that undecodable UTF-8 is a counted rejection rather than a crash, and so
that the byte offset after every line is known (the processor resumes from it)."""
import json

from data.errors import DataError
from data.sources.settings import ReadSettings

BOM = b"\xef\xbb\xbf"
REJECT_REASONS = ("empty_line", "invalid_utf8", "invalid_json", "not_object", "missing_field", "non_string",
                  "empty_text", "contains_nul", "too_long", "too_short")


class PrefixedText(str):
    """A document made of a prompt and its completion (--prefix_field): the whole text as a str,
    everything downstream reads it as one, and `.prefix`, the prompt it starts with."""

    def __new__(cls, prefix: str, rest: str):
        text = super().__new__(cls, prefix + rest)
        text.prefix = prefix
        return text


def parse_line(raw: bytes, read: ReadSettings):
    """(text, None) for a usable document, or (None, reason). With read.prefix_field, the field
    holding the document's prompt, placed before the text, the result is a PrefixedText."""
    line = raw.rstrip(b"\n").rstrip(b"\r")
    if line.startswith(BOM):
        line = line[len(BOM):]
    if not line.strip():
        return None, "empty_line"
    try:
        decoded = line.decode("utf-8")
    except UnicodeDecodeError:
        return None, "invalid_utf8"
    try:
        obj = json.loads(decoded)
    except ValueError:
        return None, "invalid_json"
    return parse_object(obj, read)


def parse_object(obj, read: ReadSettings):
    """parse_line's checks on one decoded JSON value (a line of JSONL, an element of a JSON array)."""
    if not isinstance(obj, dict):
        return None, "not_object"
    if read.text_field not in obj:
        return None, "missing_field"
    text = obj[read.text_field]
    if not isinstance(text, str):
        return None, "non_string"
    if not text.strip():
        return None, "empty_text"
    prefix_field = read.prefix_field
    if prefix_field is not None:
        if prefix_field not in obj:
            return None, "missing_field"
        if not isinstance(obj[prefix_field], str):
            return None, "non_string"
        text = PrefixedText(obj[prefix_field], text)
    if "\x00" in text:
        return None, "contains_nul"
    if len(text) > read.max_chars:
        return None, "too_long"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from \ud800-style escapes
        return None, "invalid_utf8"
    return text, None


def iter_lines(path: str, start: int = 0):
    """(raw line bytes, byte offset after it) from `start`; a last line without newline included."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DataError(f"cannot read input file {path}: {e.strerror or e}") from None
    with f:
        f.seek(start)
        offset = start
        for raw in f:
            offset += len(raw)
            yield raw, offset
