"""How a run spreads over processes: the strategies (single, ddp, fsdp), process-group helpers and the memory estimate per rank."""
