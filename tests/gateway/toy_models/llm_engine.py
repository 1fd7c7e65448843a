"""Toy decoupled `llm_engine`: streams "echo: <prompt>" one character per response (see README.md)."""

import json
import os
import signal
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils

from paddlellm.sampling import SamplingParams

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def _outputs(ids, reason, prompt_tokens, completion_tokens):
    def s(name, v):
        return pb_utils.Tensor(name, np.array([v.encode()], dtype=np.object_))

    def i(name, v):
        return pb_utils.Tensor(name, np.array(v, dtype=np.int32))

    return [
        i("token_ids", ids),
        i("window_ids", ids),
        i("prefix_len", [0]),
        s("finish_reason", reason),
        i("prompt_tokens", [prompt_tokens]),
        i("completion_tokens", [completion_tokens]),
        s("engine_stats", json.dumps({"toy": True}) if reason else ""),
    ]


class TritonPythonModel:
    def initialize(self, args):
        # A file "die-at-start" beside $TOY_ENGINE_LOG makes every start crash (a crash loop, for tests).
        log = os.environ.get("TOY_ENGINE_LOG")
        if log and os.path.exists(os.path.join(os.path.dirname(log), "die-at-start")):
            os.kill(os.getpid(), signal.SIGKILL)
        self.aborted = set()
        self.lock = threading.Lock()

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            params = json.loads(request.parameters() or "{}")
            if params.get("paddlellm_abort") is True:
                with self.lock:
                    self.aborted.add(request.request_id())
                log = os.environ.get("TOY_ENGINE_LOG")
                if log:
                    with open(log, "a") as f:
                        f.write(f"abort {request.request_id()}\n")
                sender.send(flags=FINAL)
                continue
            ids = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy().reshape(-1).tolist()
            raw = pb_utils.get_input_tensor_by_name(request, "sampling").as_numpy().reshape(-1)[0]
            sampling = SamplingParams.from_json(raw.decode())
            resume = pb_utils.get_input_tensor_by_name(request, "resume_ids")
            start = 0 if resume is None else resume.as_numpy().size  # the reply is fixed: skip what was sent
            log = os.environ.get("TOY_ENGINE_LOG")
            if start and log:
                with open(log, "a") as f:
                    f.write(f"resume {request.request_id()} {start}\n")
            threading.Thread(
                target=self._generate, args=(request, sender, ids, sampling, start), daemon=True
            ).start()
        return None

    def _generate(self, request, sender, ids, sampling, start):
        reply = [ord(c) for c in "echo: "] + ids
        n = min(len(reply), sampling.max_tokens)
        if start >= n:
            reason = "length" if n == sampling.max_tokens else "stop"
            sender.send(pb_utils.InferenceResponse(_outputs([], reason, len(ids), start)), flags=FINAL)
            return
        for k in range(start, n):
            time.sleep(0.02)
            with self.lock:
                gone = request.request_id() in self.aborted
            if gone or request.is_cancelled():
                sender.send(flags=FINAL)
                return
            last = k == n - 1
            reason = ("length" if n == sampling.max_tokens else "stop") if last else ""
            response = pb_utils.InferenceResponse(_outputs([reply[k]], reason, len(ids), k + 1))
            sender.send(response, flags=FINAL if last else 0)
