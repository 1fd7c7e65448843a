"""paddlellm: a Triton-free LLM engine on PaddlePaddle (continuous batching, paged KV cache, TP)."""
