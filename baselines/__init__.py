"""Comparison methods of the paper's Table 1 (and beyond), each a self-registering module.

This package imports nothing: :mod:`videobench.plugins` imports one baseline's module when that method is asked
for, and every module here when all methods are listed. Models load only when a run builds a generator.
"""
