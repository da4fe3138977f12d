"""The network: shapes for every option, the seed preset is the Keras example's network, padding, stepwise decoding."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

import charmt.families.lstm
from charmt.config import ModelConfig, preset_configs
from charmt.errors import ConfigError
from charmt.families.lstm import OneHot, Seq2Seq
from charmt.model import resolve_device
from charmt.vocab import END_ID, PAD_ID, START_ID

SRC_V, TGT_V, H = 11, 13, 8
OPTIONS = list(itertools.product([0, 6], [False, True], ["none", "luong"], [1, 2]))
OPTION_IDS = [f"emb{e}-{'bi' if b else 'uni'}-{a}-L{n}" for e, b, a, n in OPTIONS]


def make_model(embedding_size=0, bidirectional=False, attention="none", num_layers=1, seed=0,
               encoder_hidden_size=0) -> Seq2Seq:
    torch.manual_seed(seed)
    config = ModelConfig(src_vocab_size=SRC_V, tgt_vocab_size=TGT_V, hidden_size=H, embedding_size=embedding_size,
                         num_layers=num_layers, bidirectional=bidirectional, attention=attention,
                         encoder_hidden_size=encoder_hidden_size)
    return Seq2Seq(config).eval()


def batch(lengths: list[int], tgt_lengths: list[int], seed: int = 1):
    """Random sources and START + text + END targets, padded with PAD; returns src, lengths, tgt_in, tgt_out."""
    g = torch.Generator().manual_seed(seed)
    src = torch.full((len(lengths), max(lengths)), PAD_ID)
    tgt = torch.full((len(lengths), max(tgt_lengths) + 2), PAD_ID)
    for row, (n, m) in enumerate(zip(lengths, tgt_lengths)):
        src[row, :n] = torch.randint(4, SRC_V, (n,), generator=g)
        tgt[row, : m + 2] = torch.cat([torch.tensor([START_ID]), torch.randint(4, TGT_V, (m,), generator=g),
                                       torch.tensor([END_ID])])
    return src, torch.tensor(lengths), tgt[:, :-1], tgt[:, 1:]


@pytest.mark.parametrize("embedding_size, bidirectional, attention, num_layers", OPTIONS, ids=OPTION_IDS)
def test_shapes_for_every_option(embedding_size, bidirectional, attention, num_layers):
    model = make_model(embedding_size, bidirectional, attention, num_layers)
    src, lengths, tgt_in, tgt_out = batch([5, 3, 7], [4, 6, 2])
    B, S, T = src.shape[0], src.shape[1], tgt_in.shape[1]
    logits, loss = model(src, lengths, tgt_in, tgt_out)
    assert logits.shape == (B, T, TGT_V) and loss.shape == () and torch.isfinite(loss)
    assert model(src, lengths, tgt_in)[1] is None
    state = model.encode(src, lengths)
    assert state.h.shape == state.c.shape == (num_layers, B, H)
    assert state.memory.shape == (B, S, H * (2 if bidirectional else 1))
    assert state.mask.tolist() == [[t < n for t in range(S)] for n in lengths.tolist()]
    step_logits, next_state, weights = model.decode_step(torch.full((B,), START_ID), state)
    assert step_logits.shape == (B, TGT_V) and next_state.h.shape == (num_layers, B, H)
    if attention == "none":
        assert weights is None
    else:  # a distribution over each sentence's real characters only
        assert weights.shape == (B, S)
        assert torch.allclose(weights.sum(dim=1), torch.ones(B))
        assert float(weights.detach()[~state.mask].abs().sum()) == 0.0


SIZES_MESSAGE = "hidden_size and num_layers must be >= 1, embedding_size and encoder_hidden_size >= 0"


@pytest.mark.parametrize(
    "options, message",
    [
        ({"attention": "bahdanau"}, "attention must be one of ('none', 'luong'), got 'bahdanau'"),
        ({"hidden_size": 0}, SIZES_MESSAGE),
        ({"num_layers": 0}, SIZES_MESSAGE),
        ({"embedding_size": -1}, SIZES_MESSAGE),
        ({"encoder_hidden_size": -1}, SIZES_MESSAGE),
        ({"dropout": 1.0}, "dropout must be in [0, 1), got 1.0"),
    ],
)
def test_model_config_rejects_bad_options(options, message):
    with pytest.raises(ConfigError) as err:
        ModelConfig(**options)
    assert str(err.value) == message


def test_vocabulary_sizes_must_be_set():
    with pytest.raises(ConfigError, match="vocabulary sizes must be set"):
        Seq2Seq(ModelConfig())


# The Keras example's model as printed in the notebook: 72 input and 94 output characters, latent_dim 512.
KERAS_SRC, KERAS_TGT, LATENT = 72, 94, 512


def keras_lstm_params(inputs: int, units: int) -> int:
    return 4 * (inputs * units + units * units + units)  # kernel, recurrent kernel, one bias per gate


def test_seed_preset_is_the_keras_network_with_the_same_parameter_count():
    config, _, _ = preset_configs("seed")
    model = Seq2Seq(replace(config, src_vocab_size=KERAS_SRC, tgt_vocab_size=KERAS_TGT))
    assert (config.hidden_size, config.embedding_size, config.num_layers) == (LATENT, 0, 1)
    assert (config.bidirectional, config.attention, config.dropout) == (False, "none", 0.0)
    assert isinstance(model.encoder.embedding, OneHot) and isinstance(model.decoder.embedding, OneHot)
    assert model.decoder.attention is None and not hasattr(model.encoder, "bridge_h")
    assert (model.decoder.output.in_features, model.decoder.output.out_features) == (LATENT, KERAS_TGT)

    keras = (keras_lstm_params(KERAS_SRC, LATENT) + keras_lstm_params(KERAS_TGT, LATENT)  # encoder, decoder
             + LATENT * KERAS_TGT + KERAS_TGT)  # Dense(num_decoder_tokens)
    assert keras == 2_489_438
    # PyTorch's LSTM has two bias vectors (bias_ih and bias_hh) where Keras has one: 4 * 512 more per LSTM.
    assert model.num_parameters() == keras + 2 * 4 * LATENT
    # Keras's initialisation: forget-gate bias 1 (gate order i, f, g, o), the other bias vector zero.
    bias = model.encoder.lstm.bias_ih_l0
    assert bias[LATENT : 2 * LATENT].eq(1).all() and bias[:LATENT].eq(0).all() and bias[2 * LATENT :].eq(0).all()
    assert model.encoder.lstm.bias_hh_l0.eq(0).all()


def test_seed_network_computes_what_the_keras_graph_computes():
    """Encoder LSTM over one-hot inputs; its final (h, c) initialise the decoder LSTM; Dense; softmax."""
    config, _, _ = preset_configs("seed")
    torch.manual_seed(0)
    model = Seq2Seq(replace(config, hidden_size=H, src_vocab_size=SRC_V, tgt_vocab_size=TGT_V)).eval()
    src, lengths, tgt_in, _ = batch([6], [5])
    with torch.no_grad():
        _, (state_h, state_c) = model.encoder.lstm(F.one_hot(src, SRC_V).float())
        decoder_outputs, _ = model.decoder.lstm(F.one_hot(tgt_in, TGT_V).float(), (state_h, state_c))
        expected = model.decoder.output(decoder_outputs)
        logits, _ = model(src, lengths, tgt_in)
        state = model.encode(src, lengths)
    assert torch.equal(state.h, state_h) and torch.equal(state.c, state_c)
    assert torch.allclose(logits, expected, atol=1e-6)


@pytest.mark.parametrize("groups", [0, 4], ids=["packed", "by-length"])
@pytest.mark.parametrize("embedding_size, bidirectional, attention, num_layers", OPTIONS, ids=OPTION_IDS)
def test_padding_does_not_change_a_sentence(embedding_size, bidirectional, attention, num_layers, groups,
                                            monkeypatch):
    monkeypatch.setattr(charmt.families.lstm, "_MAX_LENGTH_GROUPS", groups)  # both ways the encoder can run
    model = make_model(embedding_size, bidirectional, attention, num_layers)
    src, lengths, tgt_in, tgt_out = batch([3, 9, 5], [2, 7, 4])
    with torch.no_grad():
        together = model.encode(src, lengths)
        logits, _ = model(src, lengths, tgt_in, tgt_out)
        for row, (n, m) in enumerate(zip(lengths.tolist(), [2, 7, 4])):
            alone = model.encode(src[row : row + 1, :n], lengths[row : row + 1])
            assert torch.allclose(together.h[:, row], alone.h[:, 0], atol=1e-6)
            assert torch.allclose(together.c[:, row], alone.c[:, 0], atol=1e-6)
            assert torch.allclose(together.memory[row, :n], alone.memory[0], atol=1e-6)
            assert float(together.memory[row, n:].abs().sum()) == 0.0
            alone_logits, _ = model(src[row : row + 1, :n], lengths[row : row + 1], tgt_in[row : row + 1, : m + 1])
            assert torch.allclose(logits[row, : m + 1], alone_logits[0], atol=1e-5)


@pytest.mark.parametrize("lengths", [[5, 5, 5], [3, 9, 5, 9], [1, 2, 3, 4]])
def test_encoder_by_length_and_packed_give_the_same_outputs_and_gradients(lengths, monkeypatch):
    model = make_model(6, True, "luong", 2)
    src, src_lengths, tgt_in, tgt_out = batch(lengths, [4] * len(lengths))
    results = []
    for groups in (0, 4):  # packed always; by length when there are at most 4 lengths
        monkeypatch.setattr(charmt.families.lstm, "_MAX_LENGTH_GROUPS", groups)
        model.zero_grad()
        _, loss = model(src, src_lengths, tgt_in, tgt_out)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (loss_packed, grads_packed), (loss_grouped, grads_grouped) = results
    assert torch.allclose(loss_packed, loss_grouped, atol=1e-6)
    for a, b in zip(grads_packed, grads_grouped, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("embedding_size, bidirectional, attention, num_layers", OPTIONS, ids=OPTION_IDS)
def test_stepwise_decoding_reproduces_teacher_forcing(embedding_size, bidirectional, attention, num_layers):
    model = make_model(embedding_size, bidirectional, attention, num_layers)
    src, lengths, tgt_in, tgt_out = batch([4, 8], [6, 3])
    with torch.no_grad():
        logits, _ = model(src, lengths, tgt_in, tgt_out)
        state = model.encode(src, lengths)
        steps = []
        for t in range(tgt_in.shape[1]):
            step_logits, state, _ = model.decode_step(tgt_in[:, t], state)
            steps.append(step_logits)
    assert torch.allclose(torch.stack(steps, dim=1), logits, atol=1e-5)


@pytest.mark.parametrize("bidirectional, num_layers", [(False, 1), (True, 1), (True, 2)])
def test_an_encoder_of_another_size_is_bridged_to_the_decoder(bidirectional, num_layers):
    model = make_model(6, bidirectional, "luong", num_layers, encoder_hidden_size=5)
    src, lengths, tgt_in, tgt_out = batch([5, 3, 7], [4, 6, 2])
    assert model.encoder.lstm.hidden_size == 5 and model.decoder.lstm.hidden_size == H
    state = model.encode(src, lengths)
    assert state.h.shape == state.c.shape == (num_layers, 3, H)
    assert state.memory.shape == (3, src.shape[1], 5 * (2 if bidirectional else 1))
    with torch.no_grad():
        logits, loss = model(src, lengths, tgt_in, tgt_out)
        steps = []
        for t in range(tgt_in.shape[1]):
            step_logits, state, _ = model.decode_step(tgt_in[:, t], state)
            steps.append(step_logits)
    assert torch.isfinite(loss)
    assert torch.allclose(torch.stack(steps, dim=1), logits, atol=1e-5)


def test_encoder_hidden_size_equal_to_hidden_size_is_the_default_network():
    for bidirectional in (False, True):
        default, explicit = make_model(0, bidirectional), make_model(0, bidirectional, encoder_hidden_size=H)
        assert [(n, p.shape) for n, p in default.named_parameters()] == \
               [(n, p.shape) for n, p in explicit.named_parameters()]
        assert not hasattr(default.encoder, "bridge_h") or bidirectional  # the seed network has no bridge


def test_loss_ignores_pad():
    model = make_model(6, True, "luong", 1)
    src, lengths, tgt_in, tgt_out = batch([4, 8], [6, 1])
    logits, loss = model(src, lengths, tgt_in, tgt_out)
    mask = tgt_out != PAD_ID
    assert int((~mask).sum()) == 5  # the short target is padded
    expected = F.cross_entropy(logits[mask], tgt_out[mask])
    assert torch.allclose(loss, expected, atol=1e-6)
    # Whatever the model predicts at padded positions, the loss is the same.
    longer_in = torch.cat([tgt_in, torch.full((2, 3), PAD_ID)], dim=1)
    longer_out = torch.cat([tgt_out, torch.full((2, 3), PAD_ID)], dim=1)
    assert torch.allclose(model(src, lengths, longer_in, longer_out)[1], loss, atol=1e-6)


def test_label_smoothing_mixes_in_the_mean_log_probability_over_real_targets():
    model = make_model(6, True, "luong", 1)
    src, lengths, tgt_in, tgt_out = batch([4, 8], [6, 1])
    logits, plain = model(src, lengths, tgt_in, tgt_out)
    _, smoothed = model(src, lengths, tgt_in, tgt_out, label_smoothing=0.2)
    mask = tgt_out != PAD_ID
    log_probs = torch.log_softmax(logits[mask], dim=-1)
    expected = 0.8 * plain - 0.2 * log_probs.mean(dim=-1).mean()  # padded positions count in neither term
    assert torch.allclose(smoothed, expected, atol=1e-6)
    assert not torch.allclose(smoothed, plain)


def test_dropout_is_off_in_eval_mode():
    torch.manual_seed(0)
    config = ModelConfig(src_vocab_size=SRC_V, tgt_vocab_size=TGT_V, hidden_size=H, embedding_size=6, num_layers=2,
                         dropout=0.5)
    model = Seq2Seq(config).eval()
    src, lengths, tgt_in, _ = batch([4, 8], [6, 3])
    with torch.no_grad():
        assert torch.equal(model(src, lengths, tgt_in)[0], model(src, lengths, tgt_in)[0])


@pytest.mark.parametrize("device, expected", [("cpu", "cpu"), ("auto", "cuda" if torch.cuda.is_available() else "cpu")])
def test_resolve_device(device, expected):
    assert resolve_device(device).type == expected


@pytest.mark.parametrize(
    "device, message",
    [
        ("tpu", "--device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
        ("cuda:x", "--device must be auto, cpu, cuda or cuda:N, got 'cuda:x'"),
        pytest.param("cuda", "--device cuda was asked for, but PyTorch sees no CUDA device; use --device cpu",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")),
    ],
)
def test_resolve_device_rejects(device, message):
    with pytest.raises(ConfigError) as err:
        resolve_device(device)
    assert str(err.value) == message
