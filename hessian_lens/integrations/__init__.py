"""Hessian Lens inside the tools people train with.

``loggers`` (TensorBoard, W&B, Aim), ``lightning`` (a Lightning ``Callback``) and
``huggingface`` (a ``transformers.TrainerCallback``). Each framework is imported only by
its own module, so ``import hessian_lens`` never pays for it.
"""
