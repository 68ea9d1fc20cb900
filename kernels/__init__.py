"""Triton kernels of orthoasr, one file per op, each with its PyTorch reference beside it.

Installed as `orthoasr.kernels` (setup.py maps this folder there).
"""
