"""numpy -> paddle tensors without leaking: `host_tensor` (a new tensor) and `StepTensors` (a step's inputs).

Paddle 3.3 leaks a Python list every time a tensor is constructed from Python: `paddle.to_tensor` leaks the
keyword names it hands the eager Tensor constructor (['value', 'place', ..., 'stop_gradient']), the
positional constructor and `paddle.utils.dlpack.from_dlpack` an empty list (measured: 1,000 lists per 1,000
calls each; tensors made by ops, slices and reshapes leak nothing). The engine builds ~10 tensors per step
(ids, rotary rows, attention metadata), so a loaded server grew ~0.5 MiB a minute. `host_tensor` (the
positional constructor) is for tensors made once, such as packed weights; `StepTensors` serves per-step
inputs from reusable buffers, so a step constructs no tensor at all.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import paddle


def host_tensor(values: Any) -> paddle.Tensor:
    """`values` (an ndarray, or a sequence numpy turns into one) as a new tensor of the same dtype, on
    paddle's current device. Leaks one small list (see above): not for per-step use."""
    return paddle.Tensor(np.ascontiguousarray(values))


class _Raw:
    """A writable numpy view on raw memory (a CPU tensor's buffer), without copying."""

    __slots__ = ("__array_interface__",)

    def __init__(self, ptr: int, n: int, dtype: np.dtype) -> None:
        self.__array_interface__ = {"data": (ptr, False), "shape": (n,), "typestr": dtype.str, "version": 3}


class StepTensors:
    """A step's host inputs as tensors: each array is copied into a per-dtype CPU buffer and handed out as a
    slice of it (a slice is made by an op, so nothing leaks). Tensors stay valid until `reset()`, which the
    model runner calls as each step begins, when the previous step's tensors are no longer used. A buffer
    that is full is replaced by one twice the size (slices of the old one keep it alive while they live).
    Off the CPU (GPU) this falls back to `host_tensor`."""

    MIN_ELEMENTS = 1 << 14

    def __init__(self, on_cpu: bool = True) -> None:
        self.on_cpu = on_cpu
        self._buffers: dict[str, paddle.Tensor] = {}
        self._used: dict[str, int] = {}

    def reset(self) -> None:
        self._used.clear()

    def __call__(self, values: Any) -> paddle.Tensor:
        arr = np.ascontiguousarray(values)
        if not self.on_cpu:
            return host_tensor(arr)
        key, n = arr.dtype.str, arr.size
        buf, used = self._buffers.get(key), self._used.get(key, 0)
        if buf is None or used + n > buf.shape[0]:
            buf = paddle.zeros([max(self.MIN_ELEMENTS, 2 * (used + n))], dtype=arr.dtype.name)
            self._buffers[key], used = buf, 0
        if n:
            view = np.asarray(_Raw(buf.data_ptr() + used * arr.itemsize, n, arr.dtype))
            view[:] = arr.reshape(-1)
        self._used[key] = used + n
        return buf[used : used + n].reshape(list(arr.shape))
