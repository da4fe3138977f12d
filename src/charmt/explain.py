"""What the network sees: the one-hot coordinates of encoder input, decoder input and decoder target.

This is the Keras example's exercise: the decoder target is the decoder input shifted one step to the left,
without the START character, so at step t the decoder reads character t and must predict character t+1.
"""

from __future__ import annotations

from .vocab import END_ID, START_ID, Vocab


def _cell(t: int, ids: list[int], vocab: Vocab) -> str:
    """'(t, index) char' as numpy.nonzero would list it, with the character quoted."""
    if t >= len(ids):
        return ""
    i = ids[t]
    shown = {START_ID: "\\t", END_ID: "\\n"}.get(i, vocab.tokens[i])
    return f"({t}, {i}) '{shown}'"


def encoding_table(source: str, target: str | None, source_vocab: Vocab, target_vocab: Vocab) -> str:
    """Side-by-side table of the three one-hot sequences of one pair."""
    enc = source_vocab.encode(source)
    unknown = source_vocab.unknown_chars(source) | (target_vocab.unknown_chars(target) if target else set())
    lines = [f"source vocabulary: {len(source_vocab)} tokens; target vocabulary: {len(target_vocab)} tokens "
             "(ids 0-3 are <pad>, <unk>, \\t start, \\n end; <pad> never enters the model)"]
    if target is None:
        lines.append(f"{'step':>4}  encoder input")
        lines += [f"{t:>4}  {_cell(t, enc, source_vocab)}" for t in range(len(enc))]
    else:
        full = target_vocab.encode(target, add_start=True, add_end=True)
        dec_in, dec_out = full[:-1], full[1:]  # the target is the input shifted one step to the left
        lines.append(f"{'step':>4}  {'encoder input':<18}  {'decoder input':<18}  decoder target")
        for t in range(max(len(enc), len(dec_in))):
            cells = (_cell(t, enc, source_vocab), _cell(t, dec_in, target_vocab), _cell(t, dec_out, target_vocab))
            lines.append(f"{t:>4}  {cells[0]:<18}  {cells[1]:<18}  {cells[2]}".rstrip())
    if unknown:
        lines.append(f"characters not in the vocabulary (shown as <unk>): {' '.join(sorted(map(repr, unknown)))}")
    return "\n".join(lines)
