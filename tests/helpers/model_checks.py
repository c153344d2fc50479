"""Checks shared by the model tests."""
import pytest


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
