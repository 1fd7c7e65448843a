"""The stack's process supervisor: the `python -m gateway.api_server` CLI, rendering the model repository
for its flags, locating tritonserver and starting/supervising tritonserver and the gateway's workers.

It sits above both halves: it builds an `EngineConfig` (paddlellm) and a `GatewaySettings` (gateway), and
imports neither paddle nor the Triton python backend.
"""
