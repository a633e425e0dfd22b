"""Export: writers that turn the quantized graph into deployable artifacts.

``edgetune.export.onnx`` writes the fp32 model and the int8 QDQ model. Each writer has one
function per op family, registered by IR op name.
"""
