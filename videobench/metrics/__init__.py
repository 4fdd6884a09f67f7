"""The five metrics: CLIP-T, CLIP-I, T.Cons (one CLIP pass), DINO-I, and RAFT dynamic degree."""
