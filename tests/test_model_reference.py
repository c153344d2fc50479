"""Our causal model computes what transformers' LlamaForCausalLM computes, given the same weights
(through model/hf/llama.py, the mapping import and export use)."""
import pytest
import torch

from model import LMConfig, Transformer
from model.hf.llama import LLAMA

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("tie, n_kv", [(True, 2), (False, 4)])
def test_equal_logits_to_llama(tie, n_kv):
    cfg = LMConfig(vocab_size=320, dim=64, n_layers=3, n_heads=4, n_kv_heads=n_kv, max_seq_len=64,
                   norm_eps=1e-6, rope_theta=50000.0, tie_embeddings=tie)
    torch.manual_seed(0)
    theirs = transformers.LlamaForCausalLM(transformers.LlamaConfig.from_dict(LLAMA.config_to_hf(cfg))).eval()
    ours = Transformer(cfg).eval()
    ours.load_state_dict(LLAMA.state_from_hf(theirs.state_dict(), cfg))
    x = torch.randint(0, 320, (3, 50))
    with torch.no_grad():
        diff = (ours(x).logits - theirs(x).logits).abs().max().item()
    assert diff < 1e-4
    back = LLAMA.state_to_hf(ours.state_dict(), cfg)
    assert all(torch.equal(back[k], v) for k, v in theirs.state_dict().items() if k in back)
