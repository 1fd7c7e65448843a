"""Triton model `tokenizer`: prompt or chat messages -> input_ids. Logic: paddlellm.triton.text_models."""

import triton_python_backend_utils as pb_utils

from paddlellm.triton.params import triton_params
from paddlellm.triton.text_models import create_tokenizer_model


class TritonPythonModel:
    def initialize(self, args):
        self.model = create_tokenizer_model(pb_utils, triton_params(args))

    def execute(self, requests):
        return self.model.execute(requests)
