"""Structured output: constrain decoding so the answer matches a JSON schema, any JSON object, a regex, one
of a few choices, or a Lark / GBNF grammar (docs/structured-output.md).

spec.py (pure) -> compiler.py (llguidance, a thread pool, an LRU) -> matcher.py (per request) ->
bitmask.py (the packed mask the sampler applies). Knows neither Triton nor the gateway.
"""
