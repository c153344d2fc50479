"""Documents from columnar inputs, read in streamed record batches through pyarrow, never whole:
a Parquet file (.parquet; pyarrow decodes one row group's column at a time, so a row group is what
memory holds), or a directory a Hugging Face `datasets.Dataset.save_to_disk` wrote (state.json
naming its Arrow stream files, memory-mapped, read batch by batch). A record's position is its row
number, so a reader resumes at any row; the text column is --text_field."""
import json
import os

from data.errors import DataError

BATCH_ROWS = 1024  # rows per record batch: memory follows the batch, not the file


def is_saved_dataset(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "state.json"))


def is_columnar(path: str) -> bool:
    return path.lower().endswith(".parquet") or is_saved_dataset(path)


def _arrow():
    try:
        import pyarrow
        import pyarrow.ipc  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise DataError("reading Parquet or saved Hugging Face datasets needs pyarrow: pip install pyarrow") from None
    return pyarrow


def dataset_files(path: str) -> list:
    """The Arrow files of a save_to_disk directory, in its own order."""
    try:
        with open(os.path.join(path, "state.json"), encoding="utf-8") as f:
            names = [d["filename"] for d in json.load(f)["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(f"{path}/state.json does not list the dataset's Arrow files (_data_files): is this a "
                        "directory written by datasets' save_to_disk?") from None
    files = [os.path.join(path, n) for n in names]
    for f in files:
        if not os.path.isfile(f):
            raise DataError(f"{path}: state.json names {os.path.basename(f)}, which is missing")
    return files


def columnar_size(path: str) -> int:
    return sum(os.path.getsize(f) for f in dataset_files(path)) if is_saved_dataset(path) else os.path.getsize(path)


def _parquet_batches(pa, path, column, start):
    """(record batch, its first row) from row `start` on; (None, the row after) where the column
    is absent."""
    pf = pa.parquet.ParquetFile(path)
    if column not in pf.schema_arrow.names:
        yield None, pf.metadata.num_rows
        return
    first, groups = 0, []
    for g in range(pf.num_row_groups):
        rows = pf.metadata.row_group(g).num_rows
        if first + rows > start or groups:
            groups.append(g)
        else:
            first += rows
    for g in groups:  # one row group per call: over all of them at once pyarrow's memory grew with the file
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[g], columns=[column], use_threads=False):
            yield batch, first
            first += batch.num_rows


def _arrow_batches(pa, path, column, start):
    """The same over the Arrow files of a saved dataset, memory-mapped (nothing read until used)."""
    first = 0
    for name in dataset_files(path):
        with pa.memory_map(name) as source:
            try:
                reader = pa.ipc.open_stream(source)
            except pa.ArrowInvalid:
                reader = pa.ipc.open_file(source)  # the random-access flavour, batch by batch
                batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
            else:
                batches = reader
            for batch in batches:
                if first + batch.num_rows > start:
                    if column not in batch.schema.names:
                        yield None, first + batch.num_rows
                    else:
                        yield batch.select([column]), first
                first += batch.num_rows


def _values(pa, batch):
    """Python values of the batch's one column (strings decoded), or a reason for all of them."""
    col = batch.column(0)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return col.to_pylist(), None
    if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
        return col.to_pylist(), None
    return None, "non_string"


def iter_columnar(path: str, start: int, column: str):
    """(text or None, reason or None, row after, text bytes) for every row from row `start`."""
    pa = _arrow()
    batches = _arrow_batches if is_saved_dataset(path) else _parquet_batches
    try:
        for batch, first in batches(pa, path, column, start):
            if batch is None:  # no such column: every row misses the field, as a JSON record would
                for row in range(start, first):
                    yield None, "missing_field", row + 1, 0
                start = first
                continue
            values, reason = _values(pa, batch)
            for i in range(max(0, start - first), batch.num_rows):
                text = values[i] if values is not None else None
                if reason or text is None:
                    yield None, reason or "non_string", first + i + 1, 0
                    continue
                if isinstance(text, bytes):
                    try:
                        text = text.decode("utf-8")
                    except UnicodeDecodeError:
                        yield None, "invalid_utf8", first + i + 1, 0
                        continue
                if not text.strip():
                    yield None, "empty_text", first + i + 1, 0
                    continue
                yield text, None, first + i + 1, len(text.encode("utf-8"))
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"cannot read {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
