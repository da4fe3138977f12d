"""The Keras example's pipeline, re-implemented faithfully in Keras 3: the yardstick for the benchmarks.

Never imported by charmt. Everything follows /work/shared/seed/example-notebook.txt: one-hot float32 arrays
padded with the space character to the longest sentence, an encoder LSTM whose final (h, c) start a decoder LSTM,
a softmax Dense layer, rmsprop + categorical cross-entropy with the notebook's masked_accuracy metric, batch 64,
and decoding one sentence at a time with one `predict` call per character (the notebook's decode_sequence).

The benchmarks run it in a process of its own (`ReferenceProcess`): TensorFlow and PyTorch in one process slowed
PyTorch's next steps several-fold after each TensorFlow block on this machine.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up banner would drown the numbers

START_SEQ, END_SEQ = "\t", "\n"


@dataclass
class Vectors:
    """The notebook's arrays and vocabularies (In [6] and In [9])."""

    encoder_input: np.ndarray  # (N, max_encoder_seq_length, num_encoder_tokens) float32
    decoder_input: np.ndarray  # (N, max_decoder_seq_length, num_decoder_tokens) float32
    decoder_target: np.ndarray  # the same, one step ahead
    input_token_index: dict[str, int]
    target_token_index: dict[str, int]

    @property
    def max_decoder_seq_length(self) -> int:
        return self.decoder_input.shape[1]


def vocabularies(input_texts: list[str], target_texts: list[str]) -> tuple[list[str], list[str]]:
    """Sorted character sets; target texts already carry START_SEQ and END_SEQ, as in the notebook."""
    return sorted(set("".join(input_texts))), sorted(set("".join(target_texts)))


def onehot_bytes(input_texts: list[str], target_texts: list[str]) -> dict:
    """Size of the notebook's three float32 arrays for these texts, by formula (nothing is allocated)."""
    input_chars, target_chars = vocabularies(input_texts, target_texts)
    n = len(input_texts)
    max_enc, max_dec = max(map(len, input_texts)), max(map(len, target_texts))
    encoder = n * max_enc * len(input_chars) * 4
    decoder = n * max_dec * len(target_chars) * 4
    return {"pairs": n, "max_encoder_seq_length": max_enc, "max_decoder_seq_length": max_dec,
            "num_encoder_tokens": len(input_chars), "num_decoder_tokens": len(target_chars),
            "encoder_input_bytes": encoder, "decoder_input_bytes": decoder, "decoder_target_bytes": decoder,
            "total_bytes": encoder + 2 * decoder}


def vectorize(input_texts: list[str], raw_target_texts: list[str]) -> Vectors:
    """The notebook's one-hot arrays; the space character pads every sentence to the longest one."""
    target_texts = [START_SEQ + t + END_SEQ for t in raw_target_texts]
    input_characters, target_characters = vocabularies(input_texts, target_texts)
    input_token_index = {char: i for i, char in enumerate(input_characters)}
    target_token_index = {char: i for i, char in enumerate(target_characters)}
    max_encoder_seq_length = max(len(t) for t in input_texts)
    max_decoder_seq_length = max(len(t) for t in target_texts)
    n = len(input_texts)
    encoder_input_data = np.zeros((n, max_encoder_seq_length, len(input_characters)), dtype="float32")
    decoder_input_data = np.zeros((n, max_decoder_seq_length, len(target_characters)), dtype="float32")
    decoder_target_data = np.zeros((n, max_decoder_seq_length, len(target_characters)), dtype="float32")
    for i, (input_text, target_text) in enumerate(zip(input_texts, target_texts)):
        for t, char in enumerate(input_text):
            encoder_input_data[i, t, input_token_index[char]] = 1.0
        encoder_input_data[i, t + 1 :, input_token_index[" "]] = 1.0
        for t, char in enumerate(target_text):
            decoder_input_data[i, t, target_token_index[char]] = 1.0
            if t > 0:
                decoder_target_data[i, t - 1, target_token_index[char]] = 1.0
        decoder_input_data[i, t + 1 :, target_token_index[" "]] = 1.0
        decoder_target_data[i, t:, target_token_index[" "]] = 1.0
    return Vectors(encoder_input_data, decoder_input_data, decoder_target_data, input_token_index,
                   target_token_index)


def masked_accuracy(y_true, y_pred):
    """The notebook's metric (In [21]); it is part of every training step, so it is part of the yardstick."""
    import tensorflow as tf

    y_true = tf.cast(y_true, tf.float32)
    y_true_class = tf.cast(tf.math.argmax(y_true, axis=-1), tf.float32)
    y_pred_class = tf.cast(tf.math.argmax(y_pred, axis=-1), tf.float32)
    mask = tf.cast(tf.reduce_max(y_true, axis=-1), tf.float32)
    matches = tf.cast(tf.equal(y_true_class, y_pred_class), tf.float32) * mask
    return tf.reduce_sum(matches) / tf.reduce_sum(mask)


class KerasSeq2Seq:
    """The notebook's training model (In [17], In [22]) and its sampling models (In [23], In [24])."""

    def __init__(self, num_encoder_tokens: int, num_decoder_tokens: int, latent_dim: int = 512):
        import keras
        from keras.layers import LSTM, Dense, Input

        self.latent_dim, self.num_decoder_tokens = latent_dim, num_decoder_tokens
        encoder_inputs = Input(shape=(None, num_encoder_tokens))
        encoder = LSTM(latent_dim, return_state=True)
        _, state_h, state_c = encoder(encoder_inputs)
        encoder_states = [state_h, state_c]
        decoder_inputs = Input(shape=(None, num_decoder_tokens))
        decoder_lstm = LSTM(latent_dim, return_sequences=True, return_state=True)
        decoder_outputs, _, _ = decoder_lstm(decoder_inputs, initial_state=encoder_states)
        decoder_dense = Dense(num_decoder_tokens, activation="softmax")
        self.model = keras.Model([encoder_inputs, decoder_inputs], decoder_dense(decoder_outputs))
        self.model.compile(optimizer="rmsprop", loss="categorical_crossentropy", metrics=[masked_accuracy])
        self.dense = decoder_dense

        # Sampling models share the trained layers, as the notebook's (built there from the reloaded model).
        self.encoder_model = keras.Model(encoder_inputs, encoder_states)
        state_input_h, state_input_c = keras.Input(shape=(latent_dim,)), keras.Input(shape=(latent_dim,))
        step_outputs, h, c = decoder_lstm(decoder_inputs, initial_state=[state_input_h, state_input_c])
        self.decoder_model = keras.Model([decoder_inputs, state_input_h, state_input_c],
                                         [decoder_dense(step_outputs), h, c])

    def train_step(self, encoder_input: np.ndarray, decoder_input: np.ndarray, decoder_target: np.ndarray):
        """One optimizer step on one batch: the compiled step `model.fit` runs for each batch."""
        return self.model.train_on_batch([encoder_input, decoder_input], decoder_target)

    def decode_sequence(self, input_seq: np.ndarray, target_token_index: dict[str, int], max_decoder_seq_length: int,
                        *, direct_call: bool = False) -> str:
        """The notebook's decode_sequence: one sentence, one `predict` per character.

        `direct_call` calls the models instead of `predict` (not the notebook's code; a stronger baseline).
        """
        reverse_target_char_index = {i: char for char, i in target_token_index.items()}

        def run(model, inputs):
            if direct_call:
                return [np.asarray(x) for x in model(inputs, training=False)]
            return model.predict(inputs, verbose=0)

        states_value = run(self.encoder_model, input_seq)
        target_seq = np.zeros((1, 1, self.num_decoder_tokens))
        target_seq[0, 0, target_token_index[START_SEQ]] = 1.0
        decoded_sentence = ""
        while True:
            output_tokens, h, c = run(self.decoder_model, [target_seq] + list(states_value))
            sampled_token_index = int(np.argmax(output_tokens[0, -1, :]))
            sampled_char = reverse_target_char_index[sampled_token_index]
            decoded_sentence += sampled_char
            if sampled_char == END_SEQ or len(decoded_sentence) > max_decoder_seq_length:
                return decoded_sentence
            target_seq = np.zeros((1, 1, self.num_decoder_tokens))
            target_seq[0, 0, sampled_token_index] = 1.0
            states_value = [h, c]


class ReferenceSession:
    """The reference on a list of (source, target) pairs, driven by the benchmarks through ReferenceProcess."""

    def __init__(self, pairs: list[tuple[str, str]], latent_dim: int = 512, seed: int = 0):
        sources, targets = [s for s, _ in pairs], [t for _, t in pairs]
        self.vectors = vectorize(sources, targets)
        self.n_train = int(len(pairs) * 0.8)  # validation_split=0.2 holds out the end of the arrays
        self.src_chars = np.array([len(s) for s in sources])
        self.tgt_steps = np.array([len(t) + 1 for t in targets])  # characters + END, as charmt counts them
        v = self.vectors
        self.net = KerasSeq2Seq(v.encoder_input.shape[2], v.decoder_input.shape[2], latent_dim)
        self.rng = np.random.default_rng(seed)

    def info(self) -> dict:
        import keras
        import tensorflow as tf

        v = self.vectors
        return {"encoder_shape": v.encoder_input.shape, "decoder_shape": v.decoder_input.shape,
                "array_bytes": v.encoder_input.nbytes + v.decoder_input.nbytes + v.decoder_target.nbytes,
                "num_encoder_tokens": v.encoder_input.shape[2], "num_decoder_tokens": v.decoder_input.shape[2],
                "parameters": self.net.model.count_params(), "keras": keras.__version__, "tensorflow": tf.__version__,
                "backend": keras.backend.backend()}

    def train(self, steps: int, batch_size: int) -> dict:
        """`steps` optimizer steps on random batches of the training rows, as `fit` draws them."""
        v = self.vectors
        src_chars = tgt_steps = 0
        step_times = []
        start = time.perf_counter()
        for _ in range(steps):
            index = np.sort(self.rng.choice(self.n_train, batch_size, replace=False))
            t0 = time.perf_counter()
            self.net.train_step(v.encoder_input[index], v.decoder_input[index], v.decoder_target[index])
            step_times.append(time.perf_counter() - t0)
            src_chars += int(self.src_chars[index].sum())
            tgt_steps += int(self.tgt_steps[index].sum())
        return {"seconds": time.perf_counter() - start, "pairs": steps * batch_size, "src_chars": src_chars,
                "tgt_steps": tgt_steps, "step_times": step_times}

    def suppress_end(self) -> None:
        """Make END never the argmax (for speed runs with random weights: every sentence then decodes exactly its
        character budget, the same work charmt is given)."""
        kernel, bias = self.net.dense.get_weights()
        bias[self.vectors.target_token_index[END_SEQ]] = -1e9
        self.net.dense.set_weights([kernel, bias])

    def decode(self, rows: list[int], steps: list[int], direct_call: bool = False) -> dict:
        """decode_sequence on the given rows, one sentence at a time, each stopping after its `steps` characters
        (the notebook stops at END or after max_decoder_seq_length + 1 characters)."""
        v = self.vectors
        times, chars = [], 0
        for row, n in zip(rows, steps):
            t0 = time.perf_counter()
            text = self.net.decode_sequence(v.encoder_input[row : row + 1], v.target_token_index, n - 1,
                                            direct_call=direct_call)
            times.append(time.perf_counter() - t0)
            chars += len(text)
        return {"seconds": sum(times), "sentences": len(rows), "chars": chars, "sentence_times": times}


def serve() -> None:
    """Child side of ReferenceProcess: pickled (method, kwargs) on stdin, pickled (ok, value) on stdout."""
    channel_in, channel_out = sys.stdin.buffer, os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not corrupt the channel
    session = None
    while True:
        try:
            method, kwargs = pickle.load(channel_in)
        except EOFError:
            return
        try:
            if method == "start":
                session, value = ReferenceSession(**kwargs), None
            else:
                value = getattr(session, method)(**kwargs)
            reply = (True, value)
        except Exception as err:  # reported to the parent, which raises it
            reply = (False, f"{type(err).__name__}: {err}")
        pickle.dump(reply, channel_out)
        channel_out.flush()


class ReferenceProcess:
    """A ReferenceSession in a child process: `ReferenceProcess(pairs).call("train", steps=10, batch_size=64)`."""

    def __init__(self, pairs: list[tuple[str, str]], latent_dim: int = 512, python: str | None = None):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        self.proc = subprocess.Popen([python or sys.executable, os.path.abspath(__file__), "serve"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.call("start", pairs=pairs, latent_dim=latent_dim)

    def call(self, method: str, **kwargs):
        pickle.dump((method, kwargs), self.proc.stdin)
        self.proc.stdin.flush()
        ok, value = pickle.load(self.proc.stdout)
        if not ok:
            raise RuntimeError(f"reference process: {value}")
        return value

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


if __name__ == "__main__" and sys.argv[1:] == ["serve"]:
    serve()
