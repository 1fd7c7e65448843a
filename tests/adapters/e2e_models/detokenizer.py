"""detokenizer for the e2e test: the real DetokenizerModel with "<id>" per token."""

import triton_python_backend_utils as pb_utils

from paddlellm.triton.text_models import DetokenizerModel


def step(window_ids, prefix_len, final):
    return "".join(f"<{t}>" for t in window_ids[prefix_len:])


class TritonPythonModel:
    def initialize(self, args):
        self.model = DetokenizerModel(pb_utils, step)

    def execute(self, requests):
        return self.model.execute(requests)
