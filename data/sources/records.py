"""Documents from the files a corpus is made of, by kind: JSONL (one JSON object per line, the text
under a field), plain text and Markdown (.txt, .md: one document per line, or per paragraph of
lines between blank lines), or Parquet and saved Hugging Face datasets (data/sources/columnar.py: the text
column, positions are row numbers). Every record comes with the byte offset after it, so a reader can
resume from exactly there, and a rejected record comes with its reason instead of its text."""
import json
import os

from data.sources.columnar import columnar_size, dataset_files, is_columnar, iter_columnar
from data.errors import DataError
from data.sources.inputs import expand_inputs
from data.sources.jsonl import iter_lines, parse_line, parse_object
from data.sources.settings import DEFAULT_READ, ReadSettings

TEXT_EXTENSIONS = (".txt", ".text", ".md", ".markdown")


def is_plain_text(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in TEXT_EXTENSIONS


def is_json_array(path: str) -> bool:
    """A .json file whose first non-space character is '[': an array of documents (objects)."""
    if not path.lower().endswith(".json") or not os.path.isfile(path):
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16).removeprefix(b"\xef\xbb\xbf").lstrip()
    except OSError:
        return False
    return head[:1] == b"["


def _json_array(path: str) -> list:
    """The whole array (loaded at once: json has no cheap streaming reader; such files are small)."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except OSError as e:
        raise DataError(f"cannot read input file {path}: {e.strerror or e}") from None
    except ValueError as e:  # (UnicodeDecodeError included)
        raise DataError(f"{path} starts a JSON array but is not valid JSON ({str(e).splitlines()[0][:120]})") from None


def _array_records(path: str, start: int, read: ReadSettings):
    """(text, reason, position after, bytes) per element from element `start`: positions are indices."""
    items = _json_array(path)
    for i in range(start, len(items)):
        text, reason = parse_object(items[i], read)
        yield text, reason, i + 1, len(text.encode("utf-8")) if text is not None else 0


def is_row_source(path: str) -> bool:
    """Parquet, a saved dataset or a JSON array: positions are row numbers, not byte offsets."""
    return is_columnar(path) or is_json_array(path)


def input_size(path: str) -> int:
    if is_columnar(path):
        return columnar_size(path)
    return len(_json_array(path)) if is_json_array(path) else os.path.getsize(path)


def input_stamp(path: str) -> list:
    """[size, modification time] of an input: what says it changed (a saved dataset's newest file)."""
    if not os.path.isdir(path):
        st = os.stat(path)
        return [st.st_size, st.st_mtime_ns]
    stamps = [os.stat(os.path.join(path, "state.json")).st_mtime_ns]
    return [input_size(path), max(stamps + [os.stat(f).st_mtime_ns for f in dataset_files(path)])]


def _file_record(path: str, start: int):
    """The whole file as one document (--text_unit file); nothing left once past its start."""
    if start > 0:
        return
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"cannot read input file {path}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError:
        yield None, "invalid_utf8", len(raw), len(raw)
        return
    yield (text, None, len(raw), len(raw)) if text.strip() else (None, "empty_text", len(raw), len(raw))


def _text_records(path: str, start: int, unit: str):
    """(text or None, reason or None, offset after, bytes read) for a plain-text file."""
    if unit == "file":
        yield from _file_record(path, start)
        return
    lines, size, first = [], 0, start == 0
    for raw, offset in iter_lines(path, start):
        size += len(raw)
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
            if first:  # a byte-order mark is not text
                line, first = line.lstrip("\ufeff"), False
        except UnicodeDecodeError:
            yield None, "invalid_utf8", offset, size
            lines, size = [], 0
            continue
        if unit == "line":
            yield (line, None, offset, size) if line.strip() else (None, "empty_line", offset, size)
            size = 0
        elif line.strip():
            lines.append(line)
        elif lines:  # a blank line ends the paragraph
            yield "\n".join(lines), None, offset, size
            lines, size = [], 0
    if lines:
        yield "\n".join(lines), None, offset, size


def iter_records(path: str, start: int = 0, read: ReadSettings = DEFAULT_READ):
    """(text, reason, offset after, bytes read) for every record of `path` from byte `start`:
    text is None when the record is rejected, and reason says why. With read.prefix_field (JSONL),
    each text is a data.sources.jsonl.PrefixedText, the prompt under that field followed by the text."""
    if is_columnar(path):
        records = iter_columnar(path, start, read.text_field)
    elif is_plain_text(path):
        if read.prefix_field is not None:
            raise DataError(f"{path}: --prefix_field reads a prompt field of JSONL records; a plain-text file has none")
        records = _text_records(path, start, read.text_unit)
    elif is_json_array(path):
        records = _array_records(path, start, read)
    else:
        records = ((*parse_line(raw, read), offset, len(raw)) for raw, offset in iter_lines(path, start))
    for text, reason, offset, size in records:
        if text is not None:
            if "\x00" in text:
                text, reason = None, "contains_nul"
            elif len(text) > read.max_chars:
                text, reason = None, "too_long"
            elif len(text.strip()) < read.min_chars:
                text, reason = None, "too_short" if text.strip() else "empty_text"
        yield text, reason, offset, size


def iter_texts(patterns, read: ReadSettings = DEFAULT_READ):
    """Valid document texts of all inputs, JSONL or plain text (for tokenizer training and mining)."""
    for path in expand_inputs(patterns):
        for text, _reason, _offset, _size in iter_records(path, 0, read):
            if text is not None:
                yield text


def nothing_usable(files, read: int, rejected: dict, text_field: str) -> DataError:
    """The one-line error for inputs of which no record is a usable document, with the reasons."""
    rejected = {k: v for k, v in rejected.items() if v}
    return DataError(f"no usable document in {', '.join(files)}: all {read} lines were rejected "
                     f"{json.dumps(rejected, sort_keys=True)} (is --text_field {text_field!r} the field that "
                     "holds the text?)")
