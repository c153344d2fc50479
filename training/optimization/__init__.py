"""What the optimizer does to the weights: optimizers (AdamW, Muon), learning-rate schedules, EMA, frozen parameters."""
