"""--init_from: a new run that starts from existing weights (a checkpoint of ours, or a local
Hugging Face directory), with its own fresh optimizer, schedule, step and best loss. The model's
shape and the tokenizer come from the source; only settings that do not change the weights'
meaning may differ."""
import os

from training.objectives import OBJECTIVES
from utils import ConfigError, check_writable_dir

# May differ from the source: no weight depends on them.
RUNTIME_KEYS = ("dropout", "gradient_checkpointing", "document_mask")


def _decoder(objective) -> bool:
    return objective in OBJECTIVES and OBJECTIVES[objective].causal


class InitSource:
    """The weights, model config and tokenizer a run starts from."""

    def __init__(self, path: str, say=print):
        import checkpoint
        self.expansion = None  # {"new_rows_from", "expanded_from"} when the source's vocabulary was expanded
        if os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json")):
            from data.tokenizer import load_tokenizer
            from model.hf.load import import_hf
            model, cfg, self.tokenizer = import_hf(path, load_tokenizer, say)
            self.weights, self.model_config = model.state_dict(), cfg.to_dict()
        else:
            state = checkpoint.load_checkpoint(path)
            self.weights, which = checkpoint.inference_weights(state, None, path)
            self.model_config, self.tokenizer = dict(state["model_config"]), checkpoint.tokenizer_of(state)
            self.expansion = state.get("vocab_expansion")
            if which == "ema":
                say(f"--init_from {path}: starting from its EMA weights (the ones its run evaluated)")
        self.path = path

    def model_settings(self, requested: dict, from_cli: set, say=print) -> dict:
        """The source's model config, with the run's runtime settings. A model.* key given on the
        command line with another value is one line naming it; the config file's model section
        (written for training from scratch) gives way to the source, with a note."""
        free = set(RUNTIME_KEYS)
        if _decoder(requested.get("objective")) and _decoder(self.model_config.get("objective")):
            free.add("objective")  # one set of weights: a causal source continues as a prefix LM, and back
        differs = {k: v for k, v in requested.items()
                   if k not in free and k != "pad_token_id" and self.model_config.get(k) != v}
        conflicts = [f"model.{k}={v!r} (the source has {self.model_config.get(k)!r})" for k, v in differs.items()
                     if k in from_cli]
        if conflicts:
            raise ConfigError(f"--init_from {self.path} fixes the model's shape; drop {', '.join(conflicts)}")
        if differs:
            say(f"note: --init_from {self.path} fixes the model; the config file's "
                f"{', '.join(f'model.{k}' for k in differs)} give way to the source's")
        return {**self.model_config, **{k: v for k, v in requested.items() if k in free}}

    def write_tokenizer(self, directory: str) -> str:
        """The source's tokenizer as files (with its roles) for the data pipeline; returns the directory."""
        from data.hf_tokenizer import save_roles
        check_writable_dir(directory, "--init_from tokenizer directory")
        self.tokenizer.save(os.path.join(directory, "tokenizer.json"))
        if not self.tokenizer.is_default:
            save_roles(self.tokenizer, directory)
        return directory
