"""Capture: a PyTorch module -> ``torch.export`` graph -> edgetune graph IR.

The lowering of each ATen operator is a small function registered in
``edgetune.capture.lowerings``; operators without one are collected and reported together.
"""

from edgetune.capture.export import capture

__all__ = ["capture"]
