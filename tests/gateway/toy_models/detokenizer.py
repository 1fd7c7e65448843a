"""Toy `detokenizer`: the window's new ids -> characters (see README.md)."""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            window = pb_utils.get_input_tensor_by_name(request, "window_ids").as_numpy().reshape(-1)
            prefix = pb_utils.get_input_tensor_by_name(request, "prefix_len").as_numpy().reshape(-1)
            prefix_len = int(prefix[0])
            text = "".join(chr(int(i)) for i in window[prefix_len:])
            out = pb_utils.Tensor("text_output", np.array([text.encode()], dtype=np.object_))
            responses.append(pb_utils.InferenceResponse([out]))
        return responses
