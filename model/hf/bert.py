"""BERT (BertForMaskedLM; BertModel and BertForPreTraining weights read too): post-norm LayerNorm
blocks with biases, learned positions, token types and a LayerNorm over the summed embeddings, an
exact-GELU MLP, and the MLM head's transform (dense, GELU, LayerNorm) with a decoder tied to the
word embeddings plus a bias: our MLMHead with norm=layernorm.

Weights come under "bert." (ForMaskedLM, ForPreTraining) or bare (BertModel); old checkpoints'
LayerNorm gamma/beta read as weight/bias. BertForPreTraining's pooler and next-sentence head become
our NextSentenceHead (model.next_sentence) and are exported back as BertForPreTraining; for any other
class they are left behind.
An encoder saved without its MLM head (BertModel) yields no mlm_head.* keys: the caller
initialises the head fresh."""
import torch

from model.config import LMConfig
from model.hf.base import Family, Weights, common_kwargs, need, number, positive, put

_BLOCK = {  # ours -> theirs, inside layer i, each with .weight and .bias
    "attention.wo": "attention.output.dense",
    "attention_norm": "attention.output.LayerNorm",
    "feed_forward.w_up": "intermediate.dense",
    "feed_forward.w_down": "output.dense",
    "ffn_norm": "output.LayerNorm",
}
_QKV = ("attention.self.query", "attention.self.key", "attention.self.value")
_EMBEDDINGS = {"tok_embeddings.weight": "embeddings.word_embeddings.weight",
               "positions.weight": "embeddings.position_embeddings.weight",
               "token_type_embeddings.weight": "embeddings.token_type_embeddings.weight",
               "embedding_norm.weight": "embeddings.LayerNorm.weight",
               "embedding_norm.bias": "embeddings.LayerNorm.bias"}
_HEAD = {"mlm_head.dense.weight": "cls.predictions.transform.dense.weight",
         "mlm_head.dense.bias": "cls.predictions.transform.dense.bias",
         "mlm_head.norm.weight": "cls.predictions.transform.LayerNorm.weight",
         "mlm_head.norm.bias": "cls.predictions.transform.LayerNorm.bias",
         "mlm_head.bias": "cls.predictions.bias"}
_NEXT_SENTENCE = {"next_sentence.pooler.weight": "pooler.dense.weight", "next_sentence.pooler.bias": "pooler.dense.bias",
                  "next_sentence.classifier.weight": "cls.seq_relationship.weight",
                  "next_sentence.classifier.bias": "cls.seq_relationship.bias"}


def _renamed(key: str) -> str:
    """TF-era names (LayerNorm.gamma / beta) as transformers reads them."""
    if key.endswith("LayerNorm.gamma"):
        return key[:-len("gamma")] + "weight"
    if key.endswith("LayerNorm.beta"):
        return key[:-len("beta")] + "bias"
    return key


class BertFamily(Family):
    model_type, title, hf_class, objective = "bert", "BERT", "BertForMaskedLM", "mlm"
    ignored = (r"embeddings\.position_ids", r"pooler\..*", r"cls\.seq_relationship\..*")
    PIECES = dict(norm="layernorm", positions="learned", feed_forward="gelu", bias=True, qkv_bias=True,
                  residual="post", embedding_norm=True)

    def pieces(self, cfg: LMConfig) -> dict:
        return {**self.PIECES, "token_types": max(1, cfg.token_types), "n_kv_heads": cfg.n_heads}

    def hf_class_name(self, cfg: LMConfig) -> str:
        return "BertForPreTraining" if cfg.next_sentence else self.hf_class

    def config_from_hf(self, hf: dict) -> dict:
        need(hf, "hidden_act", ("gelu",), "gelu", self.title)  # the MLM head's GELU is exact too
        need(hf, "position_embedding_type", ("absolute",), "absolute", self.title)
        need(hf, "is_decoder", (False,), False, self.title)
        need(hf, "add_cross_attention", (False,), False, self.title)
        vocab = positive(hf, "vocab_size", 30522)
        return dict(arch="bert", objective="mlm", vocab_size=vocab, dim=positive(hf, "hidden_size", 768),
                    n_layers=positive(hf, "num_hidden_layers", 12), n_heads=positive(hf, "num_attention_heads", 12),
                    hidden_dim=positive(hf, "intermediate_size", 3072),
                    max_seq_len=positive(hf, "max_position_embeddings", 512),
                    token_types=positive(hf, "type_vocab_size", 2), norm_eps=number(hf, "layer_norm_eps", 1e-12),
                    dropout=number(hf, "hidden_dropout_prob", 0.1), tie_embeddings=True,
                    next_sentence="BertForPreTraining" in (hf.get("architectures") or []),
                    **self.PIECES, **common_kwargs(hf, vocab))

    def config_to_hf(self, cfg: LMConfig) -> dict:
        self.check(cfg)
        return dict(architectures=[self.hf_class_name(cfg)], model_type="bert", vocab_size=cfg.vocab_size, hidden_size=cfg.dim,
                    num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, intermediate_size=cfg.ffn_dim,
                    hidden_act="gelu", max_position_embeddings=cfg.max_seq_len, type_vocab_size=cfg.token_types,
                    layer_norm_eps=cfg.norm_eps, position_embedding_type="absolute", tie_word_embeddings=True,
                    hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout,
                    pad_token_id=cfg.pad_token_id)

    def tied_names(self, cfg: LMConfig) -> tuple:
        # The decoder is the word embedding matrix, and its bias is cls.predictions.bias.
        return ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")

    def state_from_hf(self, hf_state: dict, cfg: LMConfig) -> dict:
        self.check(cfg)
        w = Weights({_renamed(k): v for k, v in hf_state.items()}, self, prefixes=("bert.",))
        out = {}
        for ours, theirs in _EMBEDDINGS.items():
            put(out, ours, w.get(theirs))
        for i in range(cfg.n_layers):
            layer = f"encoder.layer.{i}."
            for suffix in ("weight", "bias"):
                put(out, f"layers.{i}.attention.wqkv.{suffix}", w.cat([f"{layer}{n}.{suffix}" for n in _QKV]))
                for ours, theirs in _BLOCK.items():
                    put(out, f"layers.{i}.{ours}.{suffix}", w.get(f"{layer}{theirs}.{suffix}"))
        for ours, theirs in _HEAD.items():
            put(out, ours, w.get(theirs))
        if cfg.next_sentence:
            for ours, theirs in _NEXT_SENTENCE.items():
                put(out, ours, w.get(theirs))
        decoder_bias = w.get("cls.predictions.decoder.bias")  # the same tensor as cls.predictions.bias
        if "mlm_head.bias" not in out:
            put(out, "mlm_head.bias", decoder_bias)
        decoder = w.get("cls.predictions.decoder.weight")
        embeddings = out.get("tok_embeddings.weight")
        if decoder is not None and embeddings is not None and not torch.equal(decoder, embeddings):
            raise ValueError("cls.predictions.decoder.weight differs from the word embeddings: an untied BERT "
                             "decoder is not supported (our MLM head decodes with the embedding matrix)")
        w.finish()
        return out

    def state_to_hf(self, state: dict, cfg: LMConfig) -> dict:
        self.check(cfg)
        out = {"bert." + theirs: state[ours] for ours, theirs in _EMBEDDINGS.items()}
        sizes = (cfg.dim, cfg.dim, cfg.dim)
        for i in range(cfg.n_layers):
            layer = f"bert.encoder.layer.{i}."
            for suffix in ("weight", "bias"):
                for name, part in zip(_QKV, state[f"layers.{i}.attention.wqkv.{suffix}"].split(sizes)):
                    out[f"{layer}{name}.{suffix}"] = part
                for ours, theirs in _BLOCK.items():
                    out[f"{layer}{theirs}.{suffix}"] = state[f"layers.{i}.{ours}.{suffix}"]
        out.update({theirs: state[ours] for ours, theirs in _HEAD.items()})
        out["cls.predictions.decoder.weight"] = state["tok_embeddings.weight"]
        out["cls.predictions.decoder.bias"] = state["mlm_head.bias"]
        if cfg.next_sentence:
            out.update({("bert." + theirs if theirs.startswith("pooler.") else theirs): state[ours]
                        for ours, theirs in _NEXT_SENTENCE.items()})
        return out


BERT = BertFamily()
