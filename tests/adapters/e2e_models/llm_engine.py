"""llm_engine for the e2e test: the real EngineModel and EngineLoop over the fake executor (no paddle)."""

import time

import triton_python_backend_utils as pb_utils

from paddlellm.config import EngineConfig
from paddlellm.engine.loop import EngineLoop
from paddlellm.triton.engine_model import EngineModel
from paddlellm.triton.logprobs_json import LogprobsJson
from paddlellm.triton.params import model_params
from tests.unit.engine_fakes import make_engine

STEP_S = 0.02  # slow enough for a test to act mid-generation


class TritonPythonModel:
    def initialize(self, args):
        cfg = EngineConfig.from_params(model_params(args["model_config"]))

        def make(before_step):
            engine, _ = make_engine(block_size=cfg.block_size, max_model_len=cfg.max_model_len)

            def slow_step():
                time.sleep(STEP_S)
                before_step()

            return EngineLoop(engine, before_step=slow_step).start()

        # The vocabulary of the test detokenizer: "<id>" per token.
        self.model = EngineModel(pb_utils, make, logprobs=LogprobsJson(lambda: lambda i: f"<{i}>".encode()))

    def execute(self, requests):
        return self.model.execute(requests)

    def finalize(self):
        self.model.finalize()
