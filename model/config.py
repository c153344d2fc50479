"""LMConfig: the shape of the one Transformer, validated on construction."""
from dataclasses import asdict, dataclass, fields
from typing import Optional

from model.blocks import RESIDUALS
from model.layers import FEED_FORWARDS, NORMS, POSITIONS
from utils import ConfigError

OBJECTIVES = ("clm", "mlm", "plm")


# What `model.arch` selects: the values of every family-chosen key the config leaves unset. The
# Llama entry is the default, fast block; the others express their transformers families exactly
# (model/hf/ maps their weights). qwen2: Llama with q/k/v biases; qwen3: Llama with QK-norm; gpt2: pre-norm LayerNorm, learned
# positions, tanh-GELU MLP, biases everywhere; bert: post-norm, learned positions, token types, a
# LayerNorm over the embeddings, exact-GELU MLP, biases everywhere, masked-LM objective.
_LLAMA = dict(objective="clm", norm="rmsnorm", positions="rope", feed_forward="swiglu", bias=False,
              residual="pre", token_types=0, embedding_norm=False, norm_eps=1e-5, rope_theta=10000.0, qk_norm=False)
FAMILY_DEFAULTS = {
    "llama": _LLAMA,
    "qwen2": {**_LLAMA, "qkv_bias": True, "norm_eps": 1e-6, "rope_theta": 1000000.0},
    "qwen3": {**_LLAMA, "qk_norm": True, "norm_eps": 1e-6, "rope_theta": 1000000.0},
    "gpt2": {**_LLAMA, "norm": "layernorm", "positions": "learned", "feed_forward": "gelu_tanh", "bias": True},
    "bert": {**_LLAMA, "objective": "mlm", "norm": "layernorm", "positions": "learned", "feed_forward": "gelu",
             "bias": True, "residual": "post", "token_types": 2, "embedding_norm": True, "norm_eps": 1e-12},
}


DEFAULT_DEPTH = 4  # the shape a config without depth, dim, n_layers or n_heads gets (256 wide, 4 blocks)


def depth_shape(depth: int) -> dict:
    """The shape one dial gives: 64-wide heads, as many as there are blocks, so width and depth grow
    together (depth 4 is the embedded default; 6 trains a 384-wide, 6-block model)."""
    return dict(n_layers=depth, dim=64 * depth, n_heads=depth)


@dataclass
class LMConfig:
    vocab_size: int = 4096                # embedding rows; a run leaves it to the tokenizer (its size rounded up to 64)
    depth: Optional[int] = None           # one dial: d blocks, width 64*d, d heads of 64 (depth_shape); dim,
                                          # n_layers and n_heads given beside it win; None: depth 4's shape
    dim: Optional[int] = None             # width of the residual stream; None: 64 * depth
    n_layers: Optional[int] = None        # Transformer blocks; None: depth
    n_heads: Optional[int] = None         # attention (query) heads, dividing dim; None: depth
    n_kv_heads: Optional[int] = None      # None -> n_heads (plain multi-head attention)
    hidden_dim: Optional[int] = None      # None -> the feed-forward's own default (swiglu ~8/3*dim, gelu 4*dim)
    multiple_of: int = 32                 # the default hidden_dim is rounded up to a multiple of this
    max_seq_len: int = 256                # context length (positions, KV cache, default training windows)
    dropout: float = 0.0                  # dropout probability in training, in [0, 1)
    norm_eps: Optional[float] = None      # None -> the family's (1e-5 for llama)
    rope_theta: Optional[float] = None    # None -> the family's (10000 for llama)
    tie_embeddings: bool = True           # the output layer shares the token embedding matrix
    objective: Optional[str] = None       # clm: causal next-token LM; mlm: bidirectional masked LM; plm: prefix LM
                                          # (a bidirectional prefix, causal after it); None: the family's
    init_std: float = 0.02                # std of the normal initialisation (residual projections / sqrt(2 n_layers))
    gradient_checkpointing: bool = False  # recompute each block in backward: less memory, same result
    pad_token_id: int = 0                 # set from the tokenizer by a run; cannot be given
    document_mask: bool = False           # packed windows: attention stays inside each document, positions restart
    next_sentence: bool = False           # mlm: a pooler over the first token and BERT's is-next classifier (NSP)
    # The family and its block pieces. arch names a family in FAMILY_DEFAULTS; every key below (and
    # objective, norm_eps, rope_theta) left unset (None) takes that family's value, one set wins.
    # Piece names are looked up in their registries (model/layers.py, model/blocks.py).
    arch: str = "llama"                   # llama | qwen2 | qwen3 | gpt2 | bert
    norm: Optional[str] = None            # rmsnorm | layernorm (weight and bias)
    positions: Optional[str] = None       # rope | none | learned (a table added at the input)
    feed_forward: Optional[str] = None    # swiglu | gelu (Linear -> GELU -> Linear) | gelu_tanh (GPT-2's GELU)
                                          # | relu2 (Linear -> relu(x)^2 -> Linear)
    bias: Optional[bool] = None           # biases in the attention output projection and the feed-forward
    qkv_bias: Optional[bool] = None       # biases in the q/k/v projections; None -> the same as bias
    residual: Optional[str] = None        # pre (norm inside each residual branch, final norm) | post (BERT)
    token_types: Optional[int] = None     # rows of a token-type (segment) embedding added at the input; 0: none
    embedding_norm: Optional[bool] = None  # a norm over the summed input embeddings (BERT)
    qk_norm: Optional[bool] = None        # RMS norm (learnable weight) of each head's q and k before rotary (Qwen3)
    # Training-recipe pieces (all off by default): initialisation and the logits.
    zero_init: bool = False               # attention out-projections and feed-forward down-projections start at 0
    head_init_std: Optional[float] = None  # an untied head's init std; None: init_std, 0: a zero head
    logit_softcap: float = 0.0            # > 0: logits = cap * tanh(logits / cap), in training and inference; 0: off

    def __post_init__(self):
        if self.depth is not None and (not isinstance(self.depth, int) or isinstance(self.depth, bool)
                                       or self.depth <= 0):
            raise ConfigError(f"model.depth must be a positive integer (or null: depth 4's shape), got {self.depth!r}")
        for key, value in depth_shape(DEFAULT_DEPTH if self.depth is None else self.depth).items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if not isinstance(self.arch, str) or self.arch not in FAMILY_DEFAULTS:
            raise ConfigError(f"model.arch must be one of {', '.join(FAMILY_DEFAULTS)}, got {self.arch!r}")
        for key, value in FAMILY_DEFAULTS[self.arch].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.qkv_bias is None:
            self.qkv_bias = self.bias
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        for key, registry in (("norm", NORMS), ("positions", POSITIONS), ("feed_forward", FEED_FORWARDS),
                              ("residual", RESIDUALS)):
            value = getattr(self, key)
            if not isinstance(value, str) or value not in registry:
                raise ConfigError(f"model.{key} must be one of {', '.join(registry)}, got {value!r}")
        for key in ("bias", "qkv_bias", "embedding_norm", "document_mask", "next_sentence", "qk_norm", "zero_init"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"model.{key} must be true or false, got {getattr(self, key)!r}")
        if not isinstance(self.token_types, int) or isinstance(self.token_types, bool) or self.token_types < 0:
            raise ConfigError(f"model.token_types must be an integer >= 0 (0: no token-type embedding), "
                              f"got {self.token_types!r}")
        for key in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "multiple_of", "max_seq_len"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"model.{key} must be a positive integer, got {value!r}")
        if self.hidden_dim is not None and (not isinstance(self.hidden_dim, int) or self.hidden_dim <= 0):
            raise ConfigError(f"model.hidden_dim must be a positive integer or null, got {self.hidden_dim!r}")
        if self.dim % self.n_heads:
            raise ConfigError(f"model.dim ({self.dim}) must be divisible by model.n_heads ({self.n_heads})")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"model.n_heads ({self.n_heads}) must be divisible by model.n_kv_heads ({self.n_kv_heads})")
        if POSITIONS[self.positions].rotary and (self.dim // self.n_heads) % 2:
            raise ConfigError(f"model.dim / model.n_heads = {self.dim // self.n_heads} must be even for rotary embeddings")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"model.objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.next_sentence and self.objective != "mlm":
            raise ConfigError(f"model.next_sentence is a masked model's second head (model.objective mlm), "
                              f"not {self.objective}'s")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout!r}")
        if self.norm_eps <= 0 or self.rope_theta <= 0 or self.init_std <= 0:
            raise ConfigError("model.norm_eps, model.rope_theta and model.init_std must be positive")
        if isinstance(self.logit_softcap, bool) or not isinstance(self.logit_softcap, (int, float)) \
                or not self.logit_softcap >= 0:
            raise ConfigError(f"model.logit_softcap must be a number >= 0 (0: off), got {self.logit_softcap!r}")
        self.logit_softcap = float(self.logit_softcap)
        if self.head_init_std is not None:
            if isinstance(self.head_init_std, bool) or not isinstance(self.head_init_std, (int, float)) \
                    or not self.head_init_std >= 0:
                raise ConfigError(f"model.head_init_std must be a number >= 0 (0: a zero head) or null, "
                                  f"got {self.head_init_std!r}")
            if not self.causal or self.tie_embeddings:
                raise ConfigError("model.head_init_std initialises an untied output head: it needs "
                                  "model.tie_embeddings false and a causal objective (clm, plm)")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError(f"model.pad_token_id ({self.pad_token_id}) must be a valid id below vocab_size ({self.vocab_size})")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def ffn_dim(self) -> int:
        if self.hidden_dim is not None:
            return self.hidden_dim
        return FEED_FORWARDS[self.feed_forward].default_hidden_dim(self.dim, self.multiple_of)

    @property
    def causal(self) -> bool:
        """A decoder (clm, plm): next-token head, KV cache, generation. A prefix LM is causal
        except inside the prefix its inputs name (Transformer.forward's in_prefix)."""
        return self.objective in ("clm", "plm")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LMConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown model key(s): {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}")
        return cls(**d)

    @classmethod
    def preset(cls, name: str, **overrides) -> "LMConfig":
        if name not in PRESETS:
            raise ConfigError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


# Named sizes. 'tiny' trains on a 2-core CPU in minutes; 'small' is ~25M parameters with a 16k
# vocabulary; 'gpt2' matches GPT-2 small (~124M with a 50k vocabulary).
PRESETS = {
    "tiny": dict(vocab_size=4096, dim=192, n_layers=4, n_heads=6, max_seq_len=256),
    "small": dict(vocab_size=16384, dim=512, n_layers=5, n_heads=8, max_seq_len=512),
    "gpt2": dict(vocab_size=50304, dim=768, n_layers=12, n_heads=12, max_seq_len=1024),
}
