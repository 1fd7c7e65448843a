"""Triton python-backend adapters: the only package that deals with triton_python_backend_utils.

The `pb` module is passed in by each `model_repository/*/1/model.py` (dependency injection), so this
package imports nothing from Triton and is tested with tests/fakes/pb_utils.py.
"""
