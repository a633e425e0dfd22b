"""Run .tflite files with tflite-runtime, as on a Raspberry Pi image (numpy 1.x, no edgetune).

Usage: python tflite214_run.py INPUTS.npz OUT.npz MODEL.tflite [MODEL.tflite ...]
Reads NHWC float inputs from x in INPUTS.npz (a model's several inputs stacked on axis 1); writes each model's float outputs under its
file name. int8-input models get their inputs quantized with the model's own parameters.
"""

import sys

import numpy as np
from tflite_runtime.interpreter import Interpreter


def run(path: str, x: np.ndarray) -> np.ndarray:
    with open(path, "rb") as stream:
        interpreter = Interpreter(model_content=stream.read())
    interpreter.allocate_tensors()
    inputs, out = interpreter.get_input_details(), interpreter.get_output_details()[0]
    inp = inputs[0]
    results = []
    for sample in x:
        if len(inputs) > 1:  # several inputs (token ids, attention mask, token types), stacked on axis 0
            for given, part in zip(inputs, sample):
                interpreter.set_tensor(given["index"], part[None].astype(given["dtype"]))
            interpreter.invoke()
            results.append(interpreter.get_tensor(out["index"]).astype(np.float32))
            continue
        value = sample[None]
        if inp["dtype"] == np.int8:
            scale, zero_point = inp["quantization"]
            value = np.clip(np.round(value / scale) + zero_point, -128, 127).astype(np.int8)
        interpreter.set_tensor(inp["index"], value.astype(inp["dtype"]))
        interpreter.invoke()
        result = interpreter.get_tensor(out["index"])
        if out["dtype"] == np.int8:
            scale, zero_point = out["quantization"]
            result = (result.astype(np.float32) - zero_point) * scale
        results.append(result.astype(np.float32))
    return np.concatenate(results)


def main() -> None:
    x = np.load(sys.argv[1])["x"]
    outputs = {path.rsplit("/", 1)[-1]: run(path, x) for path in sys.argv[3:]}
    np.savez(sys.argv[2], **outputs)


if __name__ == "__main__":
    main()
