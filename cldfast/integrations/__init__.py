"""Integrations of CLDTracker with training frameworks.

``cldfast.integrations.lightning.CLDCallback`` tracks CLD during a PyTorch Lightning
``Trainer.fit``. Each integration imports its framework only when it is itself imported.
"""
