"""Toy decoupled `llm_engine`: streams "echo: <prompt>" one character per response (see README.md)."""

import json
import os
import signal
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils

from paddlellm.sampling import SamplingParams
from paddlellm.step_types import TokenLogprobs
from paddlellm.triton.logprobs_json import LogprobsJson

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
LOGPROBS = LogprobsJson(
    lambda: lambda i: chr(i).encode("utf-8", "replace")
)  # the real writer, toy vocabulary


def _entry(token_id, top):
    """The toy's logprobs: the chosen character -1.0, then `top` alternatives (itself, then the next ones)."""
    return TokenLogprobs(token_id, -1.0, 1, tuple((token_id + k, -1.0 - k) for k in range(top)))


def _logprobs(sampling, ids, prompt_ids):
    """ "" unless asked; `prompt_ids` only on the first response (None otherwise)."""
    content = None if sampling.logprobs is None else [_entry(i, sampling.logprobs) for i in ids]
    prompt = None
    if prompt_ids is not None and sampling.prompt_logprobs is not None:
        prompt = [None] + [_entry(i, sampling.prompt_logprobs) for i in prompt_ids[1:]]
    return LOGPROBS.build(content, prompt)


def _outputs(ids, reason, prompt_tokens, completion_tokens, logprobs=""):
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
        i("cached_tokens", [0]),
        s("logprobs", logprobs),
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
            logprobs = _logprobs(sampling, [], ids)
            sender.send(
                pb_utils.InferenceResponse(_outputs([], reason, len(ids), start, logprobs)), flags=FINAL
            )
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
            logprobs = _logprobs(sampling, [reply[k]], ids if k == start else None)
            response = pb_utils.InferenceResponse(_outputs([reply[k]], reason, len(ids), k + 1, logprobs))
            sender.send(response, flags=FINAL if last else 0)
