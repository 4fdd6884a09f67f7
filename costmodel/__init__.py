"""What a model call, a generation and a reproduction cost: FLOPs, peak memory and time, without running them."""
