"""How documents are read out of the input files: one frozen object handed from the entry points
(python -m data.processor's flags, train.py's data.* keys, evaluate.py's flags, which all take their
defaults from here) down to every reader, instead of the same five loose arguments in each layer."""
from dataclasses import dataclass, fields
from typing import Optional

from data.errors import DataError

TEXT_UNITS = ("paragraph", "line", "file")


@dataclass(frozen=True)
class ReadSettings:
    text_field: str = "text"            # JSONL, JSON arrays, Parquet, saved datasets: the field (column) holding the text
    prefix_field: Optional[str] = None  # JSONL: the field holding a record's prompt, stored before its text as one document
    text_unit: str = "paragraph"        # .txt / .md: one document per blank-line-separated paragraph, per line or per file
    min_chars: int = 1                  # shortest document kept, in characters (shorter ones: too_short)
    max_chars: int = 10_000_000         # longest document kept, in characters (longer ones: too_long)

    @classmethod
    def of(cls, source) -> "ReadSettings":
        """The settings named alike on another object (parsed flags, data.* of the run config)."""
        return cls(**{f.name: getattr(source, f.name) for f in fields(cls)})

    def check(self) -> None:
        """Refuse impossible settings before any work."""
        if self.max_chars < 1:
            raise DataError(f"max_chars must be at least 1 character, got {self.max_chars}")
        if not 1 <= self.min_chars <= self.max_chars:
            raise DataError(f"min_chars must be between 1 and max_chars ({self.max_chars}), got {self.min_chars}")
        if self.text_unit not in TEXT_UNITS:
            raise DataError(f"text_unit must be one of {', '.join(TEXT_UNITS)}, got {self.text_unit!r}")

    def recorded(self) -> dict:
        """The settings as a tokenizer's recipe and the processor's signature record them (an output
        made with other settings is made again). "max_length" is the character cap's old name, kept
        so that existing outputs stay reused; prefix_field only when set, as before it existed."""
        return {"text_field": self.text_field, "max_length": self.max_chars, "min_chars": self.min_chars,
                "text_unit": self.text_unit, **({"prefix_field": self.prefix_field} if self.prefix_field else {})}


DEFAULT_READ = ReadSettings()
