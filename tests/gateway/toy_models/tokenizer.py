"""Toy `tokenizer`: one id per character (see README.md)."""

import dataclasses
import json

import numpy as np
import triton_python_backend_utils as pb_utils

from paddlellm import protocol
from paddlellm.errors import InvalidRequest
from paddlellm.sampling import SamplingParams


def _text(request, name):
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)[0].decode()


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"])["parameters"]
        self.max_model_len = int(params["max_model_len"]["string_value"])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                sampling = SamplingParams.from_json(_text(request, "sampling"))
                flag = pb_utils.get_input_tensor_by_name(request, "return_logprobs")
                if flag is not None and bool(flag.as_numpy().reshape(-1)[0]) and sampling.logprobs is None:
                    sampling = dataclasses.replace(sampling, logprobs=0)  # as the real tokenizer
                messages = _text(request, "messages")
                text = (
                    "\n".join(m["content"] for m in json.loads(messages))
                    if messages
                    else _text(request, "prompt")
                )
                if len(text) + sampling.max_tokens > self.max_model_len:
                    param = "messages" if messages else "prompt"
                    raise InvalidRequest(f"prompt of {len(text)} tokens exceeds max_model_len", param=param)
                ids = np.array([ord(c) for c in text], dtype=np.int32)
                canonical = np.array([sampling.to_json().encode()], dtype=np.object_)  # as the real tokenizer
                outputs = [pb_utils.Tensor("input_ids", ids), pb_utils.Tensor("sampling", canonical)]
                responses.append(pb_utils.InferenceResponse(outputs))
            except InvalidRequest as e:
                err = pb_utils.TritonError(protocol.format_error(e), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=err))
        return responses
