"""Reading the input files of a corpus into documents: which files (inputs), how (settings), and one
reader per format (records dispatches to jsonl, columnar, and plain text and JSON arrays itself)."""
