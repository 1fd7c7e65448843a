"""Triton model `llm_engine` (decoupled): execute() validates and enqueues; the engine loop streams.

Logic: paddlellm.triton.engine_model.EngineModel; parameters are EngineConfig fields.
"""

import triton_python_backend_utils as pb_utils

from paddlellm.config import EngineConfig
from paddlellm.triton.engine_model import EngineModel, engine_loop_factory
from paddlellm.triton.logprobs_json import LogprobsJson, checkpoint_token_bytes
from paddlellm.triton.params import triton_params


class TritonPythonModel:
    def initialize(self, args):
        config = EngineConfig.from_params(triton_params(args))
        logprobs = LogprobsJson(checkpoint_token_bytes(config.model))  # the tokenizer loads on first use
        self.model = EngineModel(pb_utils, engine_loop_factory(config), logprobs=logprobs)

    def execute(self, requests):
        return self.model.execute(requests)

    def finalize(self):
        self.model.finalize()
