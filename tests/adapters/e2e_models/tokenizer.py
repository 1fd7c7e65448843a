"""tokenizer for the e2e test: the real TokenizerModel with one id per character."""

import triton_python_backend_utils as pb_utils

from paddlellm.triton.params import model_params
from paddlellm.triton.text_models import TokenizerModel


def encode(prompt, messages):
    text = prompt if messages is None else "".join(str(m.get("content", "")) for m in messages)
    return [3 + ord(c) % 900 for c in text]


class TritonPythonModel:
    def initialize(self, args):
        params = model_params(args["model_config"])
        self.model = TokenizerModel(pb_utils, encode, int(params["max_model_len"]))

    def execute(self, requests):
        return self.model.execute(requests)
