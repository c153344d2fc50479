"""Make sure the run's data exists: the sample corpus, the tokenizer and the token bins (and, for
whole-word masking, the training .bin's word-start file)."""
import os

from data.build.prepare import prepare_corpus
from data.sources.settings import ReadSettings
from data.sample import build_sample_corpus
from data.tokenizer import load_tokenizer
from data.samples.word_starts import ensure_word_starts
from training.parallelism.distributed import barrier

SAMPLE_CORPUS = "dataset/sample.jsonl"


def prepare_run_data(cfg, info) -> dict:
    """Rank 0 builds whatever is missing while the others wait; then every rank reads the same
    paths (a second prepare_corpus or ensure_word_starts call only checks and reuses)."""
    d = cfg.data
    if d.train_bin and not d.whole_word_mask:
        return {"train_bin": d.train_bin, "val_bin": d.val_bin, "tokenizer": d.tokenizer_path}

    def prepare():
        paths = build()
        if d.whole_word_mask:
            ensure_word_starts(paths["train_bin"], load_tokenizer(paths["tokenizer"]))
        return paths

    def build():
        if d.train_bin:
            return {"train_bin": d.train_bin, "val_bin": d.val_bin, "tokenizer": d.tokenizer_path}
        if os.path.normpath(SAMPLE_CORPUS) in map(os.path.normpath, d.inputs) and not os.path.exists(SAMPLE_CORPUS):
            build_sample_corpus(SAMPLE_CORPUS)
        return prepare_corpus(d.inputs, d.out_dir, ReadSettings.of(d), vocab_size=d.vocab_size,
                              val_ratio=d.val_ratio, tokenizer_path=d.tokenizer_path, seed=cfg.train.seed)

    paths = prepare() if info.is_main else None
    barrier(info)
    return paths if paths is not None else prepare()
