"""Export a checkpoint's weights as safetensors, beside its config and tokenizer.

    python -m training.export out/<run>/best.pth out/<run>/export              # this project's layout
    python -m training.export out/<run>/best.pth out/<run>/hf --format llama   # transformers' Llama layout

The weights exported are the ones the run evaluated (EMA when it trained with --use_ema); --ema
or --no-ema chooses. The llama format (causal models) is a directory LlamaForCausalLM.from_pretrained()
and PreTrainedTokenizerFast(tokenizer_file=...) can read: weights renamed through model/llama_mapping.py."""
import argparse
import json
import os
import sys



from checkpoint import CheckpointError, load_for_inference
from model.llama_mapping import llama_config_kwargs, to_llama_state_dict
from utils import atomic_write, check_writable_dir, run_cli


def export(checkpoint_path: str, out_dir: str, fmt: str = "native", use_ema=None, say=None) -> str:
    model, cfg, tokenizer = load_for_inference(checkpoint_path, ema=use_ema, say=say)
    weights = model.state_dict()
    if fmt == "llama":
        if not cfg.causal:
            raise CheckpointError("only causal (clm) models export to the Llama layout")
        try:
            weights = to_llama_state_dict(weights, cfg)
        except ValueError as e:
            raise CheckpointError(f"{checkpoint_path}: {e}")
        if cfg.tie_embeddings:
            weights.pop("lm_head.weight")  # tied: the loader shares the embedding
        config = {**llama_config_kwargs(cfg), "architectures": ["LlamaForCausalLM"], "model_type": "llama",
                  "torch_dtype": "float32", "bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id,
                  "pad_token_id": tokenizer.pad_id}
    else:
        config = cfg.to_dict()
    check_writable_dir(out_dir, "export directory")
    # safetensors refuses tensors that share memory; each exported tensor gets its own storage.
    tensors = {k: v.detach().contiguous().clone() for k, v in weights.items()}
    metadata = {"format": "pt", "source": os.path.basename(checkpoint_path), "layout": fmt}
    atomic_write(os.path.join(out_dir, "model.safetensors"),
                 lambda f: f.write(_safetensors_bytes(tensors, metadata)))
    atomic_write(os.path.join(out_dir, "config.json"), lambda f: json.dump(config, f, indent=2), binary=False)
    atomic_write(os.path.join(out_dir, "tokenizer.json"), lambda f: f.write(tokenizer.backend.to_str()), binary=False)
    return out_dir


def _safetensors_bytes(tensors: dict, metadata: dict) -> bytes:
    from safetensors.torch import save
    return save(tensors, metadata=metadata)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("out_dir")
    p.add_argument("--format", choices=["native", "llama"], default="native")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                   help="--ema: the EMA weights; --no-ema: the raw ones; default: the weights the run evaluated")
    a = p.parse_args(argv)
    print(f"exported to {export(a.checkpoint, a.out_dir, a.format, a.ema, say=lambda s: print(s, file=sys.stderr))}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
