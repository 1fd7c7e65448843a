"""Paddle building blocks of the decoder: parallel linears, embeddings, norms, rotary, paged attention."""
