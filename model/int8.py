"""Optional int8 inference on CPU: the blocks' linear layers run through PyTorch's x86 int8 kernel
(fbgemm/oneDNN `quantized::linear_dynamic`).

Weights are stored as int8 with one scale per output row; each call quantizes the activations
per tensor on the fly and accumulates in int32. CPUs without VNNI (AVX2 only, or AVX-512 before
Cascade Lake) multiply uint8 by int8 in pairs summed into 16 bits, which saturates for 8-bit
activations (255 x 127 x 2 > 32767): there the activations are quantized to 7 bits (the kernel's
reduce_range, torch's own default for this kernel), which cannot saturate. Which one applies is
decided once by running the kernel on its worst case. Decoding one token at a time is bound by weight
traffic, so a quarter of the bytes makes the blocks' matrix-vector products several times faster.
Results are close to float32 but not identical (greedy text can diverge after a near tie), and
since the activation scale covers the whole batch, a prompt generated in a batch can differ from
the same prompt alone. The output head (tied to the embedding) stays float32: its logits pick the
tokens."""
import functools
import warnings

import torch
from torch import nn


def int8_available() -> bool:
    """Whether this torch build has the CPU int8 linear kernels (torch marks its quantized-tensor
    API as deprecated; if a release drops it, --int8 is refused with one line)."""
    try:
        return bool(torch.backends.quantized.supported_engines) and hasattr(torch, "quantize_per_channel") and \
            hasattr(torch.ops.quantized, "linear_dynamic") and hasattr(torch.ops.quantized, "linear_prepack")
    except (AttributeError, RuntimeError):
        return False


def _quantized_weight(weight: torch.Tensor):
    """int8 weights in [-127, 127] with one scale per output row."""
    scale = (weight.abs().amax(dim=1) / 127.0).clamp(min=1e-12).double()
    zero = torch.zeros(weight.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # quantized-tensor constructors warn about their future
        warnings.simplefilter("ignore")
        return torch.quantize_per_channel(weight, scale, zero, axis=0, dtype=torch.qint8)


@functools.lru_cache(maxsize=None)
def kernel_saturates() -> bool:
    """Whether this CPU's kernel loses full-range (8-bit) activations to 16-bit saturation: the
    worst case (every activation at its top code, every weight at 127) must come out exact."""
    weight = torch.ones(8, 64)
    x = torch.ones(4, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        packed = torch.ops.quantized.linear_prepack(_quantized_weight(weight), None)
        out = torch.ops.quantized.linear_dynamic(x, packed, False)
    return not torch.allclose(out, x @ weight.t(), rtol=1e-2)


class Int8Linear(nn.Module):
    """Inference-only stand-in for a bias-free or biased nn.Linear, weights packed for the kernel.
    reduce_range: 7-bit activations (None: where this CPU's kernel needs them)."""

    def __init__(self, linear: nn.Linear, reduce_range=None):
        super().__init__()
        self.reduce_range = kernel_saturates() if reduce_range is None else bool(reduce_range)
        weight = linear.weight.detach().float().cpu()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        bias = None if linear.bias is None else linear.bias.detach().float().cpu()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._packed = torch.ops.quantized.linear_prepack(_quantized_weight(weight), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).float()
        out = torch.ops.quantized.linear_dynamic(flat, self._packed, self.reduce_range)
        return out.view(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, int8"
                + (", 7-bit activations" if self.reduce_range else ""))


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace every nn.Linear of the model's blocks (model.layers) by an Int8Linear, in place.
    CPU float models only; the model is for inference from then on."""
    if not int8_available():
        raise RuntimeError(f"this torch build ({torch.__version__}) has no CPU int8 linear kernel")
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("int8 inference runs on the CPU; load the model with --device cpu")
    model.eval()
    for block in model.layers:
        for parent in list(block.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, Int8Linear(child))
    return model
