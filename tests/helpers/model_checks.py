"""Checks shared by the model tests, and the seeded noise their reference models get."""
import pytest
import torch


def assert_loss_and_grads_agree(build, x, y):
    """The loss and every gradient agree whether blocks are recomputed (gradient checkpointing)
    and whether logits are returned (the chunked loss is taken without them)."""
    results = []
    for checkpointing, logits in ((False, True), (True, True), (False, False)):
        m = build(checkpointing).train()
        out = m(x, labels=y, return_logits=logits)
        out.loss.backward()
        results.append((out.loss.item(), [p.grad.clone() for p in m.parameters()]))
    for loss, grads in results[1:]:
        assert loss == pytest.approx(results[0][0], abs=1e-5)
        assert all((a - b).abs().max() < 1e-5 for a, b in zip(grads, results[0][1]))


def perturbed(model, seed: int):
    """The model in fp32 eval mode with seeded noise added to every parameter, so biases and norms
    that start at 0 and 1 are tested too."""
    model = model.float().eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model

