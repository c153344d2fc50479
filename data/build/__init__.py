"""Building a corpus into token files: the resumable processor, its sharded form, and prepare, which
trains the tokenizer and runs them for train.py and the command line (data/processor.py)."""
