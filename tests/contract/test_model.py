"""The classifier's recurrent features: the backward GRU state has read the whole title, padding changes nothing."""

from __future__ import annotations

import torch

from contract.model import ModelConfig, TextClassifier, pad_batch


def features(model: TextClassifier, sequences: list[list[int]]) -> torch.Tensor:
    """What the dense layers see (the input of fc1), one row per sequence."""
    seen: list[torch.Tensor] = []
    handle = model.fc1.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    try:
        with torch.inference_mode():
            ids, lengths = pad_batch(sequences)
            model(ids, lengths)
    finally:
        handle.remove()
    return seen[0]


def test_backward_state_has_read_the_whole_title() -> None:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=20, num_classes=3, rnn_type="bigru", pooling="last", hidden_dim=8)
    model = TextClassifier(config).eval()
    # Two titles that differ only in their first token, and a longer one that pads the batch.
    rows = features(model, [[5, 6, 7, 8], [9, 6, 7, 8], [5, 6, 7, 8, 10, 11, 12]])
    backward = rows[:, config.hidden_dim :]
    # The backward GRU reads right to left: its final state has seen the first token. Read after
    # one step (the lesson's bug) it would only have seen "8", the same in both titles.
    assert not torch.allclose(backward[0], backward[1])
    alone = features(model, [[5, 6, 7, 8]])
    torch.testing.assert_close(rows[0], alone[0], atol=1e-6, rtol=0)  # padding never enters the recurrence
