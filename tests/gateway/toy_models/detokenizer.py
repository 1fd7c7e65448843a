"""Toy `detokenizer`: ids -> characters; everything else passes through (see README.md)."""

import numpy as np
import triton_python_backend_utils as pb_utils

PASS = ("token_ids", "finish_reason", "prompt_tokens", "completion_tokens", "engine_stats")


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            ids = pb_utils.get_input_tensor_by_name(request, "token_ids").as_numpy().reshape(-1)
            text = "".join(chr(int(i)) for i in ids)
            out = [pb_utils.Tensor("text_output", np.array([text.encode()], dtype=np.object_))]
            for name in PASS:
                out.append(
                    pb_utils.Tensor(
                        name + "_out", pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                    )
                )
            responses.append(pb_utils.InferenceResponse(out))
        return responses
