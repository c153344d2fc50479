"""Model FLOPs utilisation, computed in one place for the training loop and the benchmarks."""
import torch

# Dense bf16/fp16 peak FLOP/s, by substring of the CUDA device name.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12,
              "4090": 165e12, "3090": 71e12, "V100": 125e12, "T4": 65e12}


def peak_flops(device: torch.device, override: float = 0.0) -> float:
    """The device's peak FLOP/s: the override when given, else the table's entry (0 when unknown:
    no MFU is reported rather than a made-up one)."""
    if override:
        return override
    if device.type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), 0.0)


def mfu(model, tokens_per_s: float, peak: float, world_size: int = 1, fraction: float = 1.0) -> float:
    """Achieved training FLOP/s over the peak of every device together; NaN when the peak is unknown."""
    if not peak:
        return float("nan")
    return model.flops_per_token(fraction) * tokens_per_s / (peak * world_size)
