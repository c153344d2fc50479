"""Reading a checkpoint, either form, for what reads one: inference, export, evaluation,
--init_from (the weights it evaluated, its model and tokenizer) and a resume (each part's state)."""
from checkpoint import single
from checkpoint.format import CheckpointError, is_sharded


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """The checkpoint dict, or one CheckpointError line saying what is wrong with the file.
    A sharded checkpoint (directory) comes back whole, as the single file would hold it."""
    if is_sharded(path):
        from checkpoint.sharded import read_full  # here, not above: it imports DCP (seconds)
        return read_full(path)
    return single.read(path, map_location)


def load_for_resume(path: str, live: dict, map_location="cpu") -> dict:
    """The checkpoint (a file or a sharded directory) laid out as the running parts' live state
    ({name: state_dict}): under FSDP each tensor arrives as this rank's shard, at any world size
    the checkpoint was written with. A collective under a process group."""
    from checkpoint.sharded import place_like, read_into  # as above
    if is_sharded(path):
        return read_into(path, live)
    return place_like(single.read(path, map_location), live)


def tokenizer_of(state: dict, source: str = "the checkpoint"):
    """The checkpoint's tokenizer; a corrupt entry, or roles missing or naming no token of it, is one line."""
    from tokenizers import Tokenizer as Backend

    from data.tokenizer import Tokenizer
    text, roles = state.get("tokenizer"), state.get("tokenizer_roles")
    if not isinstance(text, str) or not isinstance(roles, dict) or not isinstance(roles.get("roles"), dict):
        raise CheckpointError(f"{source}: its tokenizer entry is missing or damaged (no tokenizer JSON with its "
                              "roles); was it written by this project?")
    try:
        return Tokenizer(Backend.from_str(text), roles["roles"], roles.get("framing", "eos"))
    except Exception as e:  # the tokenizers library raises its own kinds for unreadable JSON
        why = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise CheckpointError(f"{source}: its tokenizer cannot be used ({why})") from None


def restore_parts(state: dict, parts: dict, source: str, say=print) -> None:
    """Load each part's saved state; a part the checkpoint lacks keeps its fresh state, with a note."""
    for name, part in parts.items():
        saved = state.get(name)
        if saved is None:
            say(f"note: {source} has no {name} state; {name} starts fresh")
            continue
        try:
            part.load_state_dict(saved)
        except (KeyError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{source}: its {name} state does not fit this run "
                                  f"({str(e).splitlines()[0][:160] if str(e) else type(e).__name__})")


def load_weights(model, weights: dict, source: str) -> None:
    """load_state_dict, with a mismatch (another version or shape) as one line instead of a traceback."""
    try:
        result = model.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # a tensor of the wrong shape
        raise CheckpointError(f"{source}: weights do not fit this model ({str(e).splitlines()[-1].strip()[:160]})")
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing or unexpected:
        what = ", ".join([f"missing {k}" for k in missing[:2]] + [f"unexpected {k}" for k in unexpected[:2]])
        raise CheckpointError(f"{source}: weights do not fit this model ({what}, ...); "
                              "was it written by another version of this code?")


def inference_weights(state: dict, ema, source: str) -> tuple:
    """(weights, which): ema=None takes the weights the run evaluated (EMA when it kept one),
    True insists on EMA, False takes the raw trained weights."""
    has_ema = bool(state.get("ema"))
    if ema is None:
        ema = has_ema and state.get("evaluated", "model") == "ema"
    if ema and not has_ema:
        raise CheckpointError(f"{source} holds no EMA weights (train with --use_ema)")
    if ema:
        return {**state["model"], **state["ema"]}, "ema"
    return state["model"], "model"


def load_for_inference(path: str, ema=None, device="cpu", say=None) -> tuple:
    """(model in eval mode on device, LMConfig, Tokenizer) from a checkpoint file.
    ema: None = the weights the run evaluated, True = EMA, False = raw. say(line) hears which."""
    from model import LMConfig, Transformer

    state = load_checkpoint(path)
    weights, which = inference_weights(state, ema, path)
    try:
        config = LMConfig.from_dict(state["model_config"])
    except ValueError as e:  # a model_config this version rejects
        raise CheckpointError(f"{path}: {e}")
    model = Transformer(config)
    load_weights(model, weights, path)
    tokenizer = tokenizer_of(state, path)
    if say is not None and state.get("ema"):  # there was a choice of weights: say which was taken
        say(f"{path}: using the {'EMA' if which == 'ema' else 'raw trained'} weights"
            f"{' (the ones the run evaluated)' if which == state.get('evaluated', 'model') else ''}")
    return model.to(device).eval(), config, tokenizer
