"""Optional int8 inference: close to float32, every block linear replaced, usable from the CLI."""
import copy

import pytest
import torch
from torch import nn

from model.generation import GenerationConfig, generate_tokens
import model.int8
from model.int8 import Int8Linear, int8_available, kernel_saturates, quantize_int8
from tests.helpers.tiny_models import tiny_model

pytestmark = pytest.mark.skipif(not int8_available(), reason="this torch build has no CPU int8 kernels")


# None: the range this CPU's kernel needs; True: 7-bit activations, the path of CPUs without VNNI
# (forced, so it is tested on every machine).
@pytest.mark.parametrize("reduce_range", [None, True])
@pytest.mark.parametrize("bias", [False, True])
def test_int8_linear_is_close_to_float(bias, reduce_range):
    torch.manual_seed(0)
    linear = nn.Linear(96, 200, bias=bias)
    x = torch.randn(3, 5, 96)
    with torch.inference_mode():
        exact, approx = linear(x), Int8Linear(linear, reduce_range=reduce_range)(x)
    assert approx.shape == exact.shape == (3, 5, 200)
    assert ((approx - exact).norm() / exact.norm()).item() < 0.02


@pytest.mark.parametrize("reduce_range", [None, True])
def test_the_worst_case_for_16_bit_sums_is_exact(reduce_range):
    """Every activation at the top of its range times weights at 127: the pairs a CPU without VNNI
    sums in 16 bits would saturate at 8-bit activations (the result came out about half)."""
    linear = nn.Linear(256, 16, bias=False)
    with torch.no_grad():
        linear.weight.fill_(0.5)
    x = torch.full((4, 256), 3.0)
    with torch.inference_mode():
        out = Int8Linear(linear, reduce_range=reduce_range)(x)
    assert torch.allclose(out, torch.full((4, 16), 384.0), rtol=1e-2)


def test_a_saturating_kernel_gets_7_bit_activations(monkeypatch):
    linear = nn.Linear(8, 4)
    assert Int8Linear(linear).reduce_range == kernel_saturates()
    monkeypatch.setattr(model.int8, "kernel_saturates", lambda: True)
    assert Int8Linear(linear).reduce_range is True
    assert "7-bit activations" in repr(Int8Linear(linear))


def test_quantized_model_replaces_block_linears_and_keeps_logits():
    model = tiny_model(seed=1)
    quantized = quantize_int8(copy.deepcopy(model))
    kinds = {type(m) for m in quantized.layers.modules()}
    assert Int8Linear in kinds and nn.Linear not in kinds
    assert torch.equal(quantized.tok_embeddings.weight, model.tok_embeddings.weight)  # the head stays float32
    ids = torch.randint(5, 320, (2, 30))
    with torch.inference_mode():
        exact, approx = model(ids).logits, quantized(ids).logits
    cosine = torch.nn.functional.cosine_similarity(exact.flatten(), approx.flatten(), dim=0)
    assert cosine.item() > 0.999
    cfg = GenerationConfig(do_sample=False, max_new_tokens=10, stop_on_eos=False)
    out = generate_tokens(quantized, [ids[0].tolist()], cfg, eos_id=2)[0]
    assert len(out) == 10 and all(0 <= t < 320 for t in out)


def test_quantize_refuses_a_model_off_the_cpu():
    model = tiny_model()
    if not torch.cuda.is_available():
        model = model.to("meta")  # stands in for any non-CPU device
    else:
        model = model.cuda()
    with pytest.raises(ValueError, match="runs on the CPU"):
        quantize_int8(model)
