"""The Transformer family: the teacher-forced network and the inference step agree, padding changes nothing,
the ONNX graphs match PyTorch, the position encoding is CTranslate2's, and a tiny model learns to reverse."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from charmt import decode
from charmt.config import ModelConfig
from charmt.errors import ConfigError
from charmt.families.transformer import (
    Attention,
    DecoderStep,
    InferenceEncoder,
    Transformer,
    _residual_dropout,
    export_examples,
    position_encoding,
    state_names,
)
from charmt.vocab import END_ID, PAD_ID, START_ID

V = 20


def make_config(**changes) -> ModelConfig:
    options = dict(arch="transformer", src_vocab_size=V, tgt_vocab_size=V, hidden_size=32, num_layers=2, heads=4,
                   dropout=0.1)  # dropout: eval mode must switch it off for the comparisons to hold
    return ModelConfig(**{**options, **changes})


def make_model(seed: int = 0, **changes) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(make_config(**changes)).eval()


def padded_batch(src_lengths=(7, 4, 2), tgt_length: int = 6, seed: int = 1):
    """Random sources padded to the longest, and START-led targets (no padding) of one length."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(src_lengths)
    src = torch.randint(4, V, (len(src_lengths), max(src_lengths)), generator=generator)
    src[torch.arange(src.shape[1])[None, :] >= lengths[:, None]] = PAD_ID
    tgt_in = torch.randint(4, V, (len(src_lengths), tgt_length), generator=generator)
    tgt_in[:, 0] = START_ID
    return src, lengths, tgt_in


class ModulesEngine:
    """decode.Engine over InferenceEncoder and DecoderStep, so that decode.py's searches drive them; the state is
    (row states, per-sentence tensors), named as state_names says."""

    name, device, model = "test", "cpu", None

    def __init__(self, model: Transformer):
        self.encoder, self.decoder_step = InferenceEncoder(model), DecoderStep(model)
        self.rows, _ = state_names(model.config)

    def encode(self, src, lengths):
        with torch.inference_mode():
            outputs = self.encoder(torch.from_numpy(src), torch.from_numpy(lengths))
        return outputs[: len(self.rows)], outputs[len(self.rows) :]

    def step(self, prev, state, attention=False):
        rows, per_sentence = state
        with torch.inference_mode():
            logits, *rows, weights = self.decoder_step(torch.from_numpy(prev), *rows, *per_sentence)
        return logits.numpy(), (tuple(rows), per_sentence), weights.numpy() if attention else None

    def select(self, state, rows, sentences=None):
        row_states, per_sentence = state
        row_states = tuple(t.index_select(1, torch.from_numpy(rows)) for t in row_states)
        if sentences is not None:
            per_sentence = tuple(t.index_select(0, torch.from_numpy(sentences)) for t in per_sentence)
        return row_states, per_sentence

    def memory_bytes(self) -> int:
        return 0


def stepped_logits(model: Transformer, src, lengths, tgt_in, beams: int = 1) -> torch.Tensor:
    """The step module's logits over the teacher's prefix, one token at a time, with `beams` rows per sentence
    all fed that sentence's prefix -> (B, beams, T, V)."""
    encoder, step = InferenceEncoder(model), DecoderStep(model)
    B, T = tgt_in.shape
    with torch.no_grad():
        self_k, self_v, *per_sentence = encoder(src, lengths)
        rows = torch.arange(B).repeat_interleave(beams)  # beam-major: sentence i's rows are i*K .. i*K+K-1
        self_k, self_v = self_k.index_select(1, rows), self_v.index_select(1, rows)
        steps = []
        for t in range(T):
            logits, self_k, self_v, _ = step(tgt_in[rows, t], self_k, self_v, *per_sentence)
            steps.append(logits.reshape(B, beams, -1))
            assert self_k.shape[3] == t + 1
    return torch.stack(steps, dim=2)


@pytest.mark.parametrize("beams", [1, 3])
def test_step_reproduces_teacher_forced_logits(beams):
    model = make_model()
    src, lengths, tgt_in = padded_batch()
    with torch.no_grad():
        expected, _ = model(src, lengths, tgt_in)  # (B, T, V)
    stepped = stepped_logits(model, src, lengths, tgt_in, beams)
    torch.testing.assert_close(stepped, expected[:, None].expand_as(stepped), atol=1e-5, rtol=0)


def test_padding_never_changes_a_sentence():
    model = make_model()
    src, lengths, tgt_in = padded_batch(src_lengths=(3, 8), tgt_length=7)
    tgt_in[0, 4:] = PAD_ID  # the short sentence's target is 4 tokens, padded
    with torch.no_grad():
        batched, _ = model(src, lengths, tgt_in)
        alone, _ = model(src[:1, :3], lengths[:1], tgt_in[:1, :4])
    torch.testing.assert_close(batched[:1, :4], alone, atol=1e-5, rtol=0)
    stepped_batched = stepped_logits(model, src, lengths, tgt_in[:, :4])
    stepped_alone = stepped_logits(model, src[:1, :3], lengths[:1], tgt_in[:1, :4])
    torch.testing.assert_close(stepped_batched[:1], stepped_alone, atol=1e-5, rtol=0)


def test_loss_ignores_pad_and_label_smoothing_is_the_mixture():
    model = make_model()
    src, lengths, tgt_in = padded_batch()
    tgt_out = torch.cat([tgt_in[:, 1:], torch.full((3, 1), END_ID)], dim=1)
    tgt_out[1, 3:] = PAD_ID
    with torch.no_grad():
        logits, loss = model(src, lengths, tgt_in, tgt_out)
        _, smoothed = model(src, lengths, tgt_in, tgt_out, label_smoothing=0.2)
    real = tgt_out != PAD_ID
    logp = F.log_softmax(logits[real], dim=-1)  # (real targets, V)
    nll = -logp.gather(1, tgt_out[real][:, None]).mean()
    assert real.sum() == 15
    assert loss.item() == pytest.approx(nll.item(), abs=1e-6)
    # Smoothing mixes the one-hot target with the uniform distribution over the vocabulary.
    assert smoothed.item() == pytest.approx(0.8 * nll.item() + 0.2 * -logp.mean().item(), abs=1e-6)
    assert smoothed.item() != pytest.approx(loss.item(), abs=1e-5)


def test_share_embeddings_ties_source_target_and_output():
    shared, separate = make_model(share_embeddings=True), make_model()
    assert shared.encoder.embedding.weight is shared.decoder.embedding.weight is shared.decoder.output.weight
    assert separate.decoder.output.weight is separate.decoder.embedding.weight  # the output is always tied
    assert separate.encoder.embedding.weight is not separate.decoder.embedding.weight
    assert separate.num_parameters() - shared.num_parameters() == V * 32


def test_dropout_only_in_training_even_after_building_inference_modules():
    model = make_model(dropout=0.3)
    src, lengths, tgt_in = padded_batch()
    model.train()
    InferenceEncoder(model).eval(), DecoderStep(model).eval()  # they share the model's layers
    first, second = model(src, lengths, tgt_in)[0], model(src, lengths, tgt_in)[0]
    assert not torch.allclose(first, second)
    model.eval()
    torch.testing.assert_close(model(src, lengths, tgt_in)[0], model(src, lengths, tgt_in)[0], atol=0, rtol=0)


def test_cpu_dropout_masks_at_rate_p_scaled_and_decided_by_the_torch_seed():
    x = torch.randn(200, 301, dtype=torch.bfloat16, requires_grad=True)  # an odd size: not a multiple of 4 draws
    torch.manual_seed(5)
    y = _residual_dropout(x, 0.1)
    dropped = y == 0
    assert y.dtype == torch.bfloat16 and abs(dropped.float().mean().item() - 0.1) < 0.005
    scale = 65536 / (65536 - 6554)  # 0.1 to 1/65,536
    torch.testing.assert_close(y[~dropped], (x[~dropped].float() * scale).bfloat16(), atol=0, rtol=0)
    y.float().sum().backward()
    assert torch.equal(x.grad == 0, dropped)
    torch.manual_seed(5)
    assert torch.equal(_residual_dropout(x, 0.1), y)
    assert not torch.equal(_residual_dropout(x, 0.1), y)  # the generator moved on
    assert _residual_dropout(x, 0.0) is x
    assert (_residual_dropout(x, 0.999999) == 0).float().mean() > 0.99  # accepted by ModelConfig (< 1)


def test_initialisation():
    model = make_model(hidden_size=64)
    embedding = model.decoder.embedding.weight
    assert embedding.std().item() == pytest.approx(64**-0.5, rel=0.1)
    assert all(not p.any() for name, p in model.named_parameters() if name.endswith(".bias") and "norm" not in name)


def test_attention_rows_sum_to_one_and_skip_padding():
    model = make_model()
    src, lengths, _ = padded_batch()
    encoder, step = InferenceEncoder(model), DecoderStep(model)
    with torch.no_grad():
        self_k, self_v, memory_k, memory_v, bias = encoder(src, lengths)
        assert self_k.shape == (2, 3, 4, 0, 8) and memory_k.shape == (3, 2, 4, 7, 8)
        assert torch.equal(torch.isinf(bias), src == PAD_ID)
        rows = torch.arange(3).repeat_interleave(3)
        _, _, _, attention = step(torch.full((9,), START_ID), self_k[:, rows], self_v[:, rows], memory_k, memory_v,
                                  bias)
    assert attention.shape == (9, 7)
    torch.testing.assert_close(attention.sum(1), torch.ones(9))
    assert (attention[(src == PAD_ID)[rows]] == 0).all()
    assert (attention[(src != PAD_ID)[rows]] > 0).all()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter's notice, as export.py uses it
def test_onnx_graphs_match_pytorch_over_greedy_steps():
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    model = make_model()
    encoder, step = InferenceEncoder(model).eval(), DecoderStep(model).eval()
    encoder_args, step_args, axes = export_examples(model)
    rows, per_sentence = state_names(model.config)
    encoder_io = (["src", "lengths"], [*rows, *per_sentence])
    step_io = (["prev", *rows, *per_sentence], ["logits", "self_k_out", "self_v_out", "attention"])
    sessions = []
    for module, args, (inputs, outputs) in ((encoder, encoder_args, encoder_io), (step, step_args, step_io)):
        buffer = io.BytesIO()
        with torch.no_grad():
            torch.onnx.export(module, args, buffer, input_names=inputs, output_names=outputs, opset_version=17,
                              dynamic_axes={k: v for k, v in axes.items() if k in inputs + outputs}, dynamo=False)
        onnx.checker.check_model(onnx.load_from_string(buffer.getvalue()), full_check=True)
        sessions.append(onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"]))
    # Other batch and source sizes than the traced ones.
    src, lengths, _ = padded_batch(src_lengths=(8, 5, 1))
    ort_state = sessions[0].run(None, {"src": src.numpy(), "lengths": lengths.numpy()})
    with torch.no_grad():
        torch_state = encoder(src, lengths)
        for ours, theirs in zip(torch_state, ort_state):
            np.testing.assert_allclose(theirs, ours.numpy(), atol=1e-4)
        self_k, self_v = ort_state[:2]
        prev = torch.full((3,), START_ID)
        for t in range(6):
            logits, *torch_rows, attention = step(prev, *torch_state[:2], *torch_state[2:])
            got = sessions[1].run(None, {"prev": prev.numpy(), "self_k": self_k, "self_v": self_v,
                                         **{name: value for name, value in zip(per_sentence, ort_state[2:])}})
            for ours, theirs in zip((logits, *torch_rows, attention), got):
                np.testing.assert_allclose(theirs, ours.numpy(), atol=1e-4)
            assert got[1].shape == (2, 3, 4, t + 1, 8)
            torch_state = (*torch_rows, *torch_state[2:])
            self_k, self_v = got[1], got[2]
            prev = logits.argmax(1)


@pytest.mark.parametrize("position, column, expected", [
    # depth 8: timescales 10000 ** (-i / 3), row p = sin((p + 1) t_i) for i < 4, then cos((p + 1) t_i)
    (0, 0, 0.8414710),  # sin(1)
    (0, 4, 0.5403023),  # cos(1)
    (2, 0, 0.1411200),  # sin(3)
    (4, 1, 0.2300017),  # sin(5 x 0.0464159)
    (2, 5, 0.9903207),  # cos(3 x 0.0464159)
    (9, 3, 0.0010000),  # sin(10 x 0.0001)
    (9, 6, 0.9997679),  # cos(10 x 0.0021544)
])
def test_position_encoding_is_ctranslate2s(position, column, expected):
    table = position_encoding(10, 8)
    assert table.shape == (10, 8)
    assert table[position, column].item() == pytest.approx(expected, abs=1e-6)
    assert torch.equal(position_encoding(1, 8, start=position)[0], table[position])


@pytest.mark.parametrize("changes, message", [
    (dict(heads=5), "hidden_size (32) must be divisible by heads (5); change one of them"),
    (dict(hidden_size=5, heads=1), "hidden_size must be even and at least 4 for the position encoding (half sines, "
                                   "half cosines), got 5"),
    (dict(share_embeddings=True, tgt_vocab_size=21),
     "share_embeddings needs one joint vocabulary, but the source has 20 tokens and the target 21; build a joint "
     "vocabulary or turn share_embeddings off"),
    (dict(arch="lstm"), "the Transformer family needs arch 'transformer', got 'lstm'"),
])
def test_config_errors(changes, message):
    with pytest.raises(ConfigError) as err:
        Transformer(make_config(**changes))
    assert str(err.value) == message


def test_unknown_arch_is_a_config_error():
    with pytest.raises(ConfigError, match=r"arch must be one of \('lstm', 'transformer'\), got 'gru'"):
        ModelConfig(arch="gru")


def test_training_attention_on_a_cpu_computes_what_sdpa_computes(monkeypatch):
    # Training on a CPU multiplies the matrices itself (SDPA's flash kernel is slow backwards). With padded sources,
    # padded targets and the causal mask, it gives SDPA's loss and gradients.
    model = make_model(dropout=0.0)
    src, lengths, tgt_in, tgt_out = reversal_batch(torch.Generator().manual_seed(5), 8)
    assert lengths.min() < lengths.max()  # some padding

    def gradients():
        model.zero_grad()
        _, loss = model(src, lengths, tgt_in, tgt_out)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    loss, grads = gradients()
    monkeypatch.setattr(Attention, "multiplies_itself", staticmethod(lambda q: False))
    sdpa_loss, sdpa_grads = gradients()
    torch.testing.assert_close(loss, sdpa_loss)
    for grad, sdpa_grad in zip(grads, sdpa_grads):
        torch.testing.assert_close(grad, sdpa_grad, atol=1e-6, rtol=1e-4)


def reversal_batch(generator: torch.Generator, size: int):
    """Sequences of 3-6 symbols from a 10-token vocabulary (4 specials + 6 symbols) and their reversals."""
    lengths = torch.randint(3, 7, (size,), generator=generator)
    src = torch.randint(4, 10, (size, 6), generator=generator)
    src[torch.arange(6)[None, :] >= lengths[:, None]] = PAD_ID
    tgt = torch.full((size, 8), PAD_ID)
    tgt[:, 0] = START_ID
    for i, n in enumerate(lengths.tolist()):
        tgt[i, 1 : n + 1] = src[i, :n].flip(0)
        tgt[i, n + 1] = END_ID
    return src, lengths, tgt[:, :-1], tgt[:, 1:]


def test_a_tiny_transformer_learns_to_reverse():
    torch.manual_seed(0)
    model = Transformer(make_config(src_vocab_size=10, tgt_vocab_size=10, dropout=0.0))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    # Decayed to 0: at a constant rate the last steps still jump about (19 of 20 right at step 250, 14 at 400).
    steps = 300
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(steps):  # reversal needs more steps than copying
        _, loss = model(*reversal_batch(generator, 32))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    assert np.mean(losses[:10]) > 1.5 and np.mean(losses[-10:]) < 0.15
    model.eval()
    src, lengths, _, tgt_out = reversal_batch(torch.Generator().manual_seed(99), 20)
    expected = [row[row != PAD_ID].tolist()[:-1] for row in tgt_out]  # without END
    engine = ModulesEngine(model)
    greedy = decode.greedy_decode(engine, src.numpy(), lengths.numpy(), np.full(20, 10))
    assert sum(got == want for got, want in zip(greedy, expected)) >= 18
    beams = decode.beam_search(engine, src.numpy(), lengths.numpy(), np.full(20, 10), beam=3)
    assert sum(hyps[0][0] == want for hyps, want in zip(beams, expected)) >= 18
