"""What a run reports: metrics sinks, the training plot, FLOPs and MFU."""
