"""The CUDA path: training in fp32 and bf16, decoding that agrees with the CPU, models that move between a GPU
machine and a CPU-only one, and resume with the GPU's RNG. Skipped without CUDA; `tools/gpu_check.sh` runs them.

Tolerances: cuDNN's LSTM and cuBLAS sum in other orders than the CPU kernels (and may use TF32 on Ampere and
newer), so logits agree within 1e-2 and greedy outputs on at least 90% of the sentences; exact equality is
promised only on one device.
"""

from __future__ import annotations

import json

import pytest
import torch

from charmt import checkpoint as ckpt
from charmt.config import ModelConfig, updated
from charmt.decode import Translator
from charmt.families.transformer import Transformer
from charmt.training import _native_bf16, train

from conftest import DEMO, TINY_MODEL, TINY_SELECTION, TINY_TRAIN, write_pairs

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

SENTENCES = ["Hello.", "I am cold.", "Where is the station?", "We have time.", "Go away!", "He is tall.",
             "Thank you very much.", "It is raining.", "I don't know.", "Open the door."]


@pytest.fixture(scope="module")
def cuda_model_dir(tmp_path_factory, request):
    root = tmp_path_factory.mktemp("cuda")
    pair_file = request.getfixturevalue("tiny_pair_file")
    train(pair_file, root / "m", model_config=TINY_MODEL, train_config=updated(TINY_TRAIN, device="cuda"),
          selection=TINY_SELECTION)
    return root / "m"


@pytest.fixture(scope="module")
def tiny_pair_file(tmp_path_factory):
    lines = DEMO.read_text(encoding="utf-8").splitlines()[:150]
    return write_pairs(tmp_path_factory.mktemp("data") / "pairs.txt", lines)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_few_training_steps_on_cuda(tiny_pair_file, tmp_path, precision):
    if precision == "bf16" and not _native_bf16(torch.device("cuda")):
        pytest.skip(f"{torch.cuda.get_device_name()} has no native bf16")
    events = []
    train(tiny_pair_file, tmp_path / "m", model_config=TINY_MODEL,
          train_config=updated(TINY_TRAIN, device="cuda", epochs=2, precision=precision),
          selection=TINY_SELECTION, callback=lambda event, info: events.append((event, info)))
    start = next(info for event, info in events if event == "start")
    assert start["device"].startswith("cuda") and start["precision"] == precision
    log = [json.loads(line) for line in (tmp_path / "m" / ckpt.LOG_FILE).read_text().splitlines()]
    assert log[1]["train_loss"] < log[0]["train_loss"]
    tensors = ckpt.load_tensors(tmp_path / "m" / ckpt.WEIGHTS_FILE)
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors.values())


def test_decoding_on_cuda_agrees_with_the_cpu(cuda_model_dir):
    on_gpu, on_cpu = Translator.load(cuda_model_dir, device="cuda"), Translator.load(cuda_model_dir, device="cpu")
    for beam in (1, 5):
        gpu, cpu = on_gpu.translate(SENTENCES, beam=beam), on_cpu.translate(SENTENCES, beam=beam)
        same = sum(a == b for a, b in zip(gpu, cpu))
        assert same >= 0.9 * len(SENTENCES), list(zip(gpu, cpu))
    # The teacher-forced logits of one batch, on both devices.
    model_gpu, model_cpu = on_gpu.model, on_cpu.model
    src = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 0]])
    lengths = torch.tensor([4, 3])
    tgt = torch.tensor([[2, 5, 6, 7], [2, 8, 9, 10]])
    with torch.inference_mode():
        logits_gpu, _ = model_gpu(src.cuda(), lengths, tgt.cuda())
        logits_cpu, _ = model_cpu(src, lengths, tgt)
    assert torch.allclose(logits_gpu.cpu(), logits_cpu, atol=1e-2)


def test_a_model_trained_on_cuda_translates_on_a_cpu_only_machine(cuda_model_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without a GPU
    translator = Translator.load(cuda_model_dir)  # device "auto"
    assert str(translator.device) == "cpu"
    assert len(translator.translate(SENTENCES)) == len(SENTENCES)


def test_a_model_trained_on_the_cpu_translates_on_cuda(tiny_model_dir):
    translator = Translator.load(tiny_model_dir, device="cuda")
    assert next(translator.model.parameters()).is_cuda
    on_cpu = Translator.load(tiny_model_dir, device="cpu").translate(SENTENCES)
    assert sum(a == b for a, b in zip(translator.translate(SENTENCES), on_cpu)) >= 0.9 * len(SENTENCES)


class _Stop(Exception):
    pass


def test_resume_on_cuda_continues_with_the_saved_rng(tiny_pair_file, tmp_path):
    config = updated(TINY_TRAIN, device="cuda", epochs=2, checkpoint_minutes=0)
    model = updated(TINY_MODEL, dropout=0.2)  # dropout draws from the GPU's generator

    def stop_at_epoch_2_step_3(event, info):
        if event == "step" and (info["epoch"], info["step"]) == (2, 3):
            raise _Stop

    with pytest.raises(_Stop):
        train(tiny_pair_file, tmp_path / "resumed", model_config=model, train_config=config,
              selection=TINY_SELECTION, callback=stop_at_epoch_2_step_3)
    saved = ckpt.load_tensors(tmp_path / "resumed" / ckpt.CHECKPOINT_FILE)
    assert "rng.cuda" in saved
    train(tiny_pair_file, tmp_path / "resumed", resume=True)
    train(tiny_pair_file, tmp_path / "straight", model_config=model, train_config=config, selection=TINY_SELECTION)
    a = ckpt.load_tensors(tmp_path / "resumed" / ckpt.WEIGHTS_FILE)
    b = ckpt.load_tensors(tmp_path / "straight" / ckpt.WEIGHTS_FILE)
    # cuDNN's LSTM backward and embedding gradients use atomics: close, not bitwise equal.
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)


def test_the_server_translates_on_cuda(cuda_model_dir):
    pytest.importorskip("fastapi", reason="the server needs FastAPI (pip install 'charmt[serve]')")
    from fastapi.testclient import TestClient

    from charmt.server import ServedModel, create_app

    translator = Translator.load(cuda_model_dir, device="cuda")
    with TestClient(create_app([ServedModel(translator, "m", "en", "fr")])) as client:
        health = client.get("/health").json()
        answer = client.post("/translate", json={"q": SENTENCES, "source": "en", "target": "fr"})
    assert health["models"][0]["device"].startswith("cuda")
    assert answer.status_code == 200
    assert answer.json()["translatedText"] == translator.translate(SENTENCES)


# --- the Transformer family -------------------------------------------------------------------------------

TRANSFORMER = ModelConfig(arch="transformer", hidden_size=32, num_layers=2, heads=4, ff_size=64)


def _units(units: str):
    return updated(TINY_SELECTION, units=units, vocab_size=200)


@pytest.fixture(scope="module")
def cuda_transformer_dir(tmp_path_factory, tiny_pair_file):
    """A tiny subword Transformer trained on CUDA in fp32 (12 epochs: enough for outputs worth comparing)."""
    root = tmp_path_factory.mktemp("cuda-transformer")
    train(tiny_pair_file, root / "m", model_config=TRANSFORMER,
          train_config=updated(TINY_TRAIN, device="cuda", epochs=12), selection=_units("subword"),
          preset="transformer")
    return root / "m"


@pytest.mark.parametrize("units", ["char", "subword"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_transformer_trains_on_cuda(tiny_pair_file, tmp_path, precision, units):
    if precision == "bf16" and not _native_bf16(torch.device("cuda")):
        pytest.skip(f"{torch.cuda.get_device_name()} has no native bf16")
    events = []
    train(tiny_pair_file, tmp_path / "m", model_config=TRANSFORMER,
          train_config=updated(TINY_TRAIN, device="cuda", epochs=2, precision=precision), selection=_units(units),
          preset="transformer", callback=lambda event, info: events.append((event, info)))
    start = next(info for event, info in events if event == "start")
    assert start["device"].startswith("cuda") and start["precision"] == precision
    log = [json.loads(line) for line in (tmp_path / "m" / ckpt.LOG_FILE).read_text().splitlines()]
    assert log[1]["train_loss"] < log[0]["train_loss"]
    tensors = ckpt.load_tensors(tmp_path / "m" / ckpt.WEIGHTS_FILE)
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors.values())
    model, _ = ckpt.load_model(tmp_path / "m", "cpu")
    assert isinstance(model, Transformer) and model.decoder.output.weight is model.decoder.embedding.weight


def test_transformer_decoding_on_cuda_agrees_with_the_cpu(cuda_transformer_dir):
    on_gpu = Translator.load(cuda_transformer_dir, device="cuda")
    on_cpu = Translator.load(cuda_transformer_dir, device="cpu")
    assert next(on_gpu.model.parameters()).is_cuda
    for beam in (1, 5):
        gpu, cpu = on_gpu.translate(SENTENCES, beam=beam), on_cpu.translate(SENTENCES, beam=beam)
        same = sum(a == b for a, b in zip(gpu, cpu))
        assert same >= 0.9 * len(SENTENCES), list(zip(gpu, cpu))
    src = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 0]])
    lengths = torch.tensor([4, 3])
    tgt = torch.tensor([[2, 5, 6, 7], [2, 8, 9, 10]])
    with torch.inference_mode():
        logits_gpu, _ = on_gpu.model(src.cuda(), lengths.cuda(), tgt.cuda())
        logits_cpu, _ = on_cpu.model(src, lengths, tgt)
    assert torch.allclose(logits_gpu.cpu(), logits_cpu, atol=1e-2)


def test_a_transformer_trained_on_cuda_translates_on_a_cpu_only_machine(cuda_transformer_dir, monkeypatch):
    expected = Translator.load(cuda_transformer_dir, device="cpu").translate(SENTENCES)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without a GPU
    translator = Translator.load(cuda_transformer_dir)  # device "auto"
    assert str(translator.device) == "cpu"
    assert translator.translate(SENTENCES) == expected
