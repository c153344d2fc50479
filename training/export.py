"""Export a checkpoint's weights as safetensors, beside its config and tokenizer.

    python -m training.export out/<run>/best.pth out/<run>/export              # this project's layout
    python -m training.export out/<run>/best.pth out/<run>/hf --format llama   # transformers' Llama layout
    add --ema to export the EMA weights

The llama format (causal models) is a directory LlamaForCausalLM.from_pretrained() and
PreTrainedTokenizerFast(tokenizer_file=...) can read: weights renamed through model/llama_mapping.py."""
import argparse
import json
import os
import shutil
import sys

from safetensors.torch import save_file

from model import LMConfig, Transformer
from model.llama_mapping import llama_config_kwargs, to_llama_state_dict
from training.checkpoint import CheckpointError, load_checkpoint, load_weights


def export(checkpoint_path: str, out_dir: str, fmt: str = "native", use_ema: bool = False) -> str:
    state = load_checkpoint(checkpoint_path)
    cfg = LMConfig.from_dict(state["model_config"])
    load_weights(Transformer(cfg), state["model"], checkpoint_path)  # refuse weights of another layout
    weights = dict(state["model"])
    if use_ema:
        if not state.get("ema"):
            raise CheckpointError(f"{checkpoint_path} holds no EMA weights")
        weights.update(state["ema"])
    if fmt == "llama":
        if not cfg.causal:
            raise CheckpointError("only causal (clm) models export to the Llama layout")
        weights = to_llama_state_dict(weights, cfg)
        if cfg.tie_embeddings:
            weights.pop("lm_head.weight")  # tied: the loader shares the embedding
        config = {**llama_config_kwargs(cfg), "architectures": ["LlamaForCausalLM"], "model_type": "llama",
                  "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    else:
        config = cfg.to_dict()
    os.makedirs(out_dir, exist_ok=True)
    # safetensors refuses tensors that share memory; each exported tensor gets its own storage.
    save_file({k: v.detach().contiguous().clone() for k, v in weights.items()}, os.path.join(out_dir, "model.safetensors"),
              metadata={"format": "pt", "source": os.path.basename(checkpoint_path), "layout": fmt})
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    tokenizer = os.path.join(os.path.dirname(os.path.abspath(checkpoint_path)), "tokenizer.json")
    if os.path.exists(tokenizer):
        shutil.copyfile(tokenizer, os.path.join(out_dir, "tokenizer.json"))
    return out_dir


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("out_dir")
    p.add_argument("--format", choices=["native", "llama"], default="native")
    p.add_argument("--ema", action="store_true", help="export the EMA weights")
    a = p.parse_args(argv)
    try:
        print(f"exported to {export(a.checkpoint, a.out_dir, a.format, a.ema)}")
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
