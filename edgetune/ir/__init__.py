"""edgetune's graph IR: the one captured, folded and quantized graph that every writer reads.

Tensors keep PyTorch's NCHW layout and a batch of one in their shapes; axis 0 of graph
inputs and outputs is the batch axis. Constants (weights) are float32 numpy arrays, and
quantization parameters hang on the tensors they describe.
"""

from edgetune.ir.graph import Graph, Node, QParams, Tensor

__all__ = ["Graph", "Node", "QParams", "Tensor"]
