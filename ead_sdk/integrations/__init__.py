"""Taking a chosen policy into production decoders (transformers today; a guide for the rest).

Submodules import torch/transformers on use, never at ``import ead_sdk``.
"""
