"""llm_engine for the image e2e test: the real EngineModel and EngineLoop over the fake executor (no paddle),
with a vocabulary as large as the tiny Qwen2.5-VL checkpoint's tokenizer (its prompts come from the real
tokenizer model)."""

import triton_python_backend_utils as pb_utils

from paddlellm.config import EngineConfig
from paddlellm.engine.loop import EngineLoop
from paddlellm.triton.engine_model import EngineModel
from paddlellm.triton.params import model_params
from tests.unit.engine_fakes import make_engine

VOCAB = 50_000  # SmolLM2's 49152 ids plus the four vision tokens


class TritonPythonModel:
    def initialize(self, args):
        cfg = EngineConfig.from_params(model_params(args["model_config"]))

        def make(before_step):
            engine, _ = make_engine(
                vocab_size=VOCAB, block_size=cfg.block_size, max_model_len=cfg.max_model_len
            )
            return EngineLoop(engine, before_step=before_step).start()

        self.model = EngineModel(pb_utils, make)

    def execute(self, requests):
        return self.model.execute(requests)

    def finalize(self):
        self.model.finalize()
