"""Checkpoints: the format and the only code that writes or reads one.

The modules import one way, each only those listed before it:
    format     the version, the metadata (CheckpointMeta), CheckpointError, the sharded layout's names
    single     the .pth file: atomic writes, torch.load(weights_only=True) reads
    run_files  what a run directory holds: step, interrupted and best checkpoints, pruning
    sharded    the .dcp directory through torch.distributed.checkpoint, with its vetted metadata;
               it imports DCP (seconds), so nothing imports it at module level: writers of the
               sharded form and converters import checkpoint.sharded themselves
    load       reading either form for inference, export, evaluation, --init_from and a resume
This file re-exports what the rest of the code uses from all but sharded."""
from checkpoint.format import FORMAT, MARKER, SHARD_META, SHARDED, CheckpointError, CheckpointMeta, is_sharded
from checkpoint.load import (inference_weights, load_checkpoint, load_for_inference, load_for_resume, load_weights,
                             restore_parts, tokenizer_of)
from checkpoint.run_files import (BEST, INTERRUPTED, checkpoint_step, interrupted_checkpoints, latest_checkpoint,
                                  prune_checkpoints, remove, remove_run_checkpoints, remove_superseded_interrupted,
                                  sharded_name, step_checkpoints)
from checkpoint.single import atomic_save, full_tensors, write
