"""The engines behind `Translator`: PyTorch's inference step against the training graph, the ONNX export against
PyTorch, and a process in which importing PyTorch fails."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from test_decode import SENTENCES
from test_model import OPTION_IDS, OPTIONS, SRC_V, TGT_V, batch, make_model

from charmt import checkpoint as ckpt
from charmt.cli import main
from charmt.config import ModelConfig
from charmt.decode import Translator, attention_weights
from charmt.errors import ConfigError
from charmt.families.lstm import InferenceEncoder, Seq2Seq
from charmt.torch_engine import TorchEngine
from charmt.vocab import SPECIALS, START_ID, Vocab

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("embedding_size, bidirectional, attention, num_layers", OPTIONS, ids=OPTION_IDS)
def test_the_inference_step_computes_what_the_training_graph_computes(embedding_size, bidirectional, attention,
                                                                      num_layers):
    model = make_model(embedding_size, bidirectional, attention, num_layers)
    src, lengths, tgt_in, _ = batch([5, 3, 7], [4, 6, 2])
    engine = TorchEngine(model)
    K = 2  # two beams per sentence, sharing the sentence's encoder outputs
    rows = np.repeat(np.arange(3), K)
    state = engine.select(engine.encode(src.numpy(), lengths.numpy()), rows)
    reference = model.encode(src, lengths).select(torch.from_numpy(rows))
    for t in range(tgt_in.shape[1]):
        prev = tgt_in[:, t].repeat_interleave(K)
        with torch.no_grad():
            logits, reference, weights = model.decode_step(prev, reference)
        got, state, got_weights = engine.step(prev.numpy(), state, attention=True)
        np.testing.assert_allclose(got, logits.numpy(), atol=2e-5)
        h, c = state.rows
        np.testing.assert_allclose(h.numpy(), reference.h.numpy(), atol=2e-5)
        np.testing.assert_allclose(c.numpy(), reference.c.numpy(), atol=2e-5)
        if attention == "none":
            assert got_weights is None
        else:
            np.testing.assert_allclose(got_weights, weights.numpy(), atol=2e-5)


@pytest.mark.parametrize("bidirectional, num_layers", [(False, 1), (True, 1), (True, 2)])
def test_the_packed_encoder_for_export_equals_the_models(bidirectional, num_layers):
    model = make_model(6, bidirectional, "luong", num_layers)
    src, lengths, _, _ = batch([5, 3, 7, 7, 1], [1] * 5)
    with torch.no_grad():
        by_length = InferenceEncoder(model)(src, lengths)
        packed = InferenceEncoder(model, packed=True)(src, lengths)
    for a, b in zip(by_length, packed):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_the_engine_follows_weights_that_change_after_it_was_built():
    model = make_model(6, True, "luong", 1)
    engine = TorchEngine(model)
    src, lengths, _, _ = batch([4], [1])
    before, _, _ = engine.step(np.array([START_ID]), engine.encode(src.numpy(), lengths.numpy()))
    with torch.no_grad():
        model.decoder.output.bias += 1.0  # as an optimizer step changes weights in place
    after, _, _ = engine.step(np.array([START_ID]), engine.encode(src.numpy(), lengths.numpy()))
    np.testing.assert_allclose(after, before + 1.0, atol=1e-5)


# --- ONNX -------------------------------------------------------------------------------------------------


def _model_dir(tmp_path: Path, name: str, **options) -> Path:
    """A model directory holding an untrained network of test_model's sizes."""
    model = make_model(**options)
    chars = [chr(ord("a") + i) for i in range(max(SRC_V, TGT_V) - len(SPECIALS))]
    info = ckpt.ModelInfo(model.config, Vocab(list(SPECIALS) + chars[: SRC_V - 4]),
                          Vocab(list(SPECIALS) + chars[: TGT_V - 4]), source_lang="en", target_lang="fr",
                          max_source_length=20, max_target_length=20)
    ckpt.save_model(tmp_path / name, model, info)
    return tmp_path / name


def _export(model_dir: Path, out: Path, **options) -> Path:
    from charmt.export import export_onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return export_onnx(model_dir, out, **options)


@pytest.mark.parametrize("options", [dict(embedding_size=0, bidirectional=False, attention="none", num_layers=1),
                                     dict(embedding_size=6, bidirectional=True, attention="luong", num_layers=2)],
                         ids=["seed-like", "bi-luong-L2"])
def test_the_onnx_graphs_are_valid_and_compute_what_pytorch_computes(tmp_path, options):
    exported = _export(_model_dir(tmp_path, "m", **options), tmp_path / "onnx")
    for name in ("encoder.onnx", "decoder_step.onnx"):
        onnx.checker.check_model(onnx.load(exported / name), full_check=True)
    config = json.loads((exported / "config.json").read_text())
    assert config["export"]["engine"] == "onnx" and config["export"]["int8"] is False
    pytorch = Translator.load(tmp_path / "m", device="cpu").engine
    ort = Translator.load(exported).engine
    assert ort.name == "onnx" and ort.model is None
    src, lengths, tgt_in, _ = batch([5, 3, 7], [4, 6, 2])
    src, lengths = src.numpy(), lengths.numpy()
    rows = np.repeat(np.arange(3), 2)
    a = pytorch.select(pytorch.encode(src, lengths), rows)
    b = ort.select(ort.encode(src, lengths), rows)
    for t in range(tgt_in.shape[1]):
        prev = tgt_in[:, t].repeat_interleave(2).numpy()
        logits_a, a, weights_a = pytorch.step(prev, a, attention=True)
        logits_b, b, weights_b = ort.step(prev, b, attention=True)
        np.testing.assert_allclose(logits_b, logits_a, atol=1e-5)
        if weights_a is not None:
            np.testing.assert_allclose(weights_b, weights_a, atol=1e-5)
    # Padding never changes a sentence's result: the shortest sentence alone equals its row in the padded batch.
    alone = ort.encode(src[1:2, : lengths[1]], lengths[1:2])
    together = ort.encode(src, lengths)
    np.testing.assert_array_equal(alone.rows["h"][:, 0], together.rows["h"][:, 1])
    for name, value in alone.per_sentence.items():
        if name == "keys":
            np.testing.assert_array_equal(value[0], together.per_sentence[name][1][:, : lengths[1]])
        else:
            np.testing.assert_array_equal(value[0], together.per_sentence[name][1][: lengths[1]])


@pytest.fixture(scope="module")
def onnx_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return _export(tiny_model_dir, tmp_path_factory.mktemp("export") / "onnx")


def test_an_exported_model_translates_exactly_as_pytorch(tiny_model_dir, onnx_dir):
    pytorch, ort = Translator.load(tiny_model_dir, device="cpu"), Translator.load(onnx_dir)
    assert ort.info.to_json() == pytorch.info.to_json()
    paragraph = " ".join(SENTENCES[:3])
    for beam in (1, 3):
        assert ort.translate([*SENTENCES, paragraph], beam=beam) == pytorch.translate([*SENTENCES, paragraph],
                                                                                       beam=beam)
    n_best_a = pytorch.translate_n_best(SENTENCES, beam=4, n_best=3)
    n_best_b = ort.translate_n_best(SENTENCES, beam=4, n_best=3)
    assert [[h.text for h in hyps] for hyps in n_best_b] == [[h.text for h in hyps] for hyps in n_best_a]
    for hyps_a, hyps_b in zip(n_best_a, n_best_b):
        np.testing.assert_allclose([h.score for h in hyps_b], [h.score for h in hyps_a], atol=1e-4)
    source_a, output_a, matrix_a = attention_weights(pytorch, SENTENCES[0])
    source_b, output_b, matrix_b = attention_weights(ort, SENTENCES[0])
    assert (source_a, output_a) == (source_b, output_b)
    np.testing.assert_allclose(matrix_b, matrix_a, atol=1e-5)


def test_an_int8_export_translates(tiny_model_dir, tmp_path):
    exported = _export(tiny_model_dir, tmp_path / "int8", int8=True)
    translator = Translator.load(exported)
    assert translator.engine.description == "onnxruntime int8"
    outputs = translator.translate(SENTENCES)
    assert len(outputs) == len(SENTENCES) and all(outputs)


def test_the_int8_engines_quantize_the_same_weights(tiny_model_dir, tmp_path):
    """onnxruntime's int8 export and PyTorch's int8 engine are one model: int8 are the encoder LSTM's and the
    linear layers' weights; the embeddings and the decoder's input table stay float32 on both."""
    from torch.ao.nn.quantized import dynamic as quantized

    exported = _export(tiny_model_dir, tmp_path / "int8", int8=True)
    parts = TorchEngine(ckpt.load_model(tiny_model_dir)[0], int8=True)._modules()
    int8_types = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    for name, part, table in [("encoder.onnx", parts[0], "encoder.embedding.weight"),
                              ("decoder_step.onnx", parts[1], "table")]:
        graph = onnx.load(exported / name).graph
        initializers = {i.name: i for i in graph.initializer}
        int8 = {k for k, i in initializers.items() if i.data_type in int8_types and k.endswith("_quantized")}
        assert initializers[table].data_type == onnx.TensorProto.FLOAT
        assert [n.input[0] for n in graph.node if n.op_type == "Gather" and n.input[0] in initializers] == [table]
        ops = [n.op_type for n in graph.node]
        linears = [m for m in part.modules() if isinstance(m, quantized.Linear)]
        lstms = [m for m in part.modules() if isinstance(m, quantized.LSTM)]
        assert (ops.count("MatMulInteger"), ops.count("DynamicQuantizeLSTM")) == (len(linears), len(lstms))
        torch_int8 = [m.weight() for m in linears] + [w for m in lstms for w in m.get_weight().values()]
        assert {w.dtype for w in torch_int8} == {torch.qint8}
        assert sum(w.numel() for w in torch_int8) == sum(int(np.prod(initializers[k].dims)) for k in int8)
        tables = [*part.buffers(), *(m.weight for m in part.modules() if isinstance(m, torch.nn.Embedding))]
        assert tables and all(t.dtype == torch.float32 for t in tables)


def test_int8_memory_counts_the_quantized_weights():
    model = Seq2Seq(ModelConfig(src_vocab_size=60, tgt_vocab_size=60, hidden_size=256, embedding_size=64,
                                bidirectional=True, attention="luong"))
    fp32, int8 = TorchEngine(model).memory_bytes(), TorchEngine(model, int8=True).memory_bytes()
    assert fp32 == sum(p.numel() * 4 for p in model.parameters())
    assert int8 < 0.5 * fp32


@pytest.mark.parametrize(
    "engine, message",
    [("onnx", "is a PyTorch model directory, not an ONNX export: export it with `charmt export"),
     ("tensorflow", "engine must be one of auto, torch, onnx, ct2, got 'tensorflow'")],
)
def test_loading_a_model_directory_with_the_wrong_engine_says_what_to_do(tiny_model_dir, engine, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        Translator.load(tiny_model_dir, engine=engine)


def test_an_export_refuses_the_torch_engine_and_cuda(onnx_dir):
    with pytest.raises(ConfigError, match="holds an ONNX export, which has no PyTorch weights"):
        Translator.load(onnx_dir, engine="torch")
    with pytest.raises(ConfigError, match="ONNX exports run on the CPU here; use --device cpu"):
        Translator.load(onnx_dir, device="cuda")


def test_the_export_command_and_an_export_in_translate_evaluate_and_serve(tiny_model_dir, tmp_path, capsys,
                                                                         pair_file):
    out = tmp_path / "onnx"
    assert main(["export", str(tiny_model_dir), "--onnx", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "decoder_step.onnx",
                                                      "encoder.onnx", "split.json"]
    capsys.readouterr()
    assert main(["export", str(tiny_model_dir), "--onnx", str(out)]) == 1
    assert capsys.readouterr().err.strip() == (f"charmt: error: {out} is not empty; choose another directory or "
                                               "add --overwrite")
    assert main(["translate", str(out), SENTENCES[0]]) == 0
    assert capsys.readouterr().out == Translator.load(tiny_model_dir).translate([SENTENCES[0]])[0] + "\n"
    assert main(["evaluate", str(out), str(pair_file)]) == 0
    assert "masked character accuracy (teacher forcing): unavailable for an export" in capsys.readouterr().out
    from charmt.server import load_models

    (served,) = load_models([f"{out}=en:fr"])
    assert served.describe()["memory_mb"] > 0 and served.translator.device == "cpu"


# --- a process without PyTorch ----------------------------------------------------------------------------

# Run before the command: importing torch (or any torch.*) fails, as in an install without PyTorch; at exit, say
# whether torch got into sys.modules anyway.
NO_TORCH = """
import atexit, sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name="torch")
sys.meta_path.insert(0, NoTorch())
atexit.register(lambda: print("torch imported" if "torch" in sys.modules else "no torch", file=sys.stderr))
from charmt.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _without_torch(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TORCH, *args], capture_output=True, text=True, input=stdin,
                          timeout=120, env={**os.environ, "CHARMT_DEBUG": ""})


def test_an_export_translates_identically_where_pytorch_cannot_be_imported(tiny_model_dir, onnx_dir):
    inputs = [*SENTENCES, " ".join(SENTENCES[:2])]
    done = _without_torch("translate", str(onnx_dir), "--beam", "3", stdin="\n".join(inputs) + "\n")
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[-1] == "no torch"
    assert done.stdout.splitlines() == Translator.load(tiny_model_dir).translate(inputs, beam=3)


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["translate"], ["frobnicate"], ["download", "--help"],
                                  ["export", "--help"], ["translate", "--help"]], ids=" ".join)
def test_help_version_and_usage_errors_never_import_pytorch(args):
    done = _without_torch(*args)
    assert done.returncode in (0, 2), done.stderr
    assert done.stderr.splitlines()[-1] == "no torch"


def test_split_never_imports_pytorch(pair_file, tmp_path):
    done = _without_torch("split", str(pair_file), "--test-sentences", "5", "--out", str(tmp_path / "split"))
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[-1] == "no torch"
    assert (tmp_path / "split" / "pairs.test.txt").is_file()


def test_commands_that_need_pytorch_say_so_in_one_line(tiny_model_dir, pair_file, tmp_path):
    done = _without_torch("translate", str(tiny_model_dir), "Hi.")
    assert done.returncode == 1
    assert done.stderr.splitlines()[:-1] == [
        f"charmt: error: {tiny_model_dir} is a PyTorch model and PyTorch is not installed: pip install torch (the "
        "README names the CPU and CUDA builds), or translate an ONNX export of it (charmt export MODEL --onnx DIR, "
        "where PyTorch is installed)"]
    done = _without_torch("train", str(pair_file), "--out", str(tmp_path / "m"))
    assert done.returncode == 1
    assert done.stderr.splitlines()[:-1] == ["charmt: error: charmt train needs PyTorch, which is not installed: pip "
                                             "install torch (the README names the CPU and CUDA builds)"]



def test_loading_and_translating_import_nothing_heavy_beyond_torch(tiny_model_dir):
    # torch._dynamo (via the meta device's Python reference ops) and sympy once cost 2.5 s and 1 s of start-up.
    code = ("import sys; from charmt.decode import Translator; "
            f"Translator.load({str(tiny_model_dir)!r}, device='cpu').translate(['I see the cat.'], beam=2); "
            "print(sorted(m for m in ('torch._dynamo', 'sympy') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
