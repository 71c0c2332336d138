"""The GRU's forward pass for serving on the CPU, in as few tensor operations as the recurrence allows.

torch's CPU GRU projects every token's input with one large matrix product, then runs each
direction's steps one after the other, about fifteen small kernels a step. For headlines
(batches of at most a few dozen rows, about a dozen steps) the input projection and the
per-kernel overhead are most of the forward pass. Here

* the input projection of every vocabulary word is computed once, at load, into a table per
  direction (a known word's input vector never changes), so a token's gates are one lookup;
* both directions step together, four kernels a step, each writing into a buffer made before
  the loop (at one row a kernel takes about a microsecond, as long as slicing a tensor does).
  The backward direction reads each row reversed within its own length, and rows of a padded
  batch are sorted longest first so that each step computes only the rows still reading, so
  padding never enters either direction nor costs a step, as with packed sequences;
* the state is carried as ``g = (h + 1) / 2``. The candidate ``n = tanh(a)`` then enters only as
  ``(n + 1) / 2 = sigmoid(2a)``, and the update ``h' = n + z * (h - n)`` becomes
  ``g' = s + z * (g - s)``, one ``lerp``; the weights absorb the change of variable at load.
  torch's CPU ``tanh`` is also several times slower than its ``sigmoid``.

It computes what ``torch.nn.GRU`` computes, up to float rounding; the tests hold it to the
packed ``nn.GRU`` path on batches of mixed lengths and unknown words.
"""

from __future__ import annotations

import torch
from torch import nn

# Gate order in torch's GRU weights: reset, update, candidate ("new").
_GATES = 3


class InferenceGRU(nn.Module):
    """A one-layer GRU (one or two directions) for inference, built from a trained ``nn.GRU``
    and every vocabulary word's input vector ``word_vectors`` (``[V, E]``)."""

    def __init__(self, rnn: nn.GRU, word_vectors: torch.Tensor) -> None:
        super().__init__()
        if rnn.num_layers != 1 or not rnn.batch_first or not rnn.bias:
            raise ValueError("InferenceGRU supports one batch-first layer with biases")
        suffixes = ["_l0", "_l0_reverse"] if rnn.bidirectional else ["_l0"]
        self.directions = len(suffixes)
        self.hidden = rnn.hidden_size
        h = self.hidden
        # Candidate rows doubled, so the candidate's pre-activation comes out as 2a and
        # sigmoid(2a) = (tanh(a) + 1) / 2 (the reset gate multiplies its recurrent part linearly).
        scale = torch.ones(_GATES * h, dtype=word_vectors.dtype, device=word_vectors.device)
        scale[2 * h :] = 2.0
        with torch.no_grad():
            w_ih = [getattr(rnn, "weight_ih" + s) * scale[:, None] for s in suffixes]  # [3H, E] each
            b_ih = [getattr(rnn, "bias_ih" + s) * scale for s in suffixes]
            # The recurrent part reads g = (h + 1) / 2: W h + b = (2 W) g + (b - W 1).
            w_hh = [getattr(rnn, "weight_hh" + s) for s in suffixes]
            b_hh = [getattr(rnn, "bias_hh" + s) - w.sum(dim=1) for s, w in zip(suffixes, w_hh, strict=True)]
            self.w_ih: torch.Tensor
            self.b_ih: torch.Tensor
            self.table: torch.Tensor
            self.w_hh: torch.Tensor
            self.b_hh: torch.Tensor
            self.register_buffer("w_ih", torch.cat(w_ih).t().contiguous(), persistent=False)  # [E, D*3H]
            self.register_buffer("b_ih", torch.cat(b_ih), persistent=False)
            # Every word's gates, directions side by side; viewed as [V * D, 3H], direction d
            # of word w is row w * D + d.
            self.register_buffer("table", self.word_gates(word_vectors), persistent=False)
            w_g = torch.stack([(2.0 * w * scale[:, None]).t() for w in w_hh])
            self.register_buffer("w_hh", w_g.contiguous(), persistent=False)  # [D, H, 3H]
            b_g = torch.stack([b * scale for b in b_hh]).unsqueeze(1)
            self.register_buffer("b_hh", b_g.contiguous(), persistent=False)  # [D, 1, 3H]
            self.minus_one: torch.Tensor
            self.register_buffer("minus_one", word_vectors.new_full((), -1.0), persistent=False)

    def forward(
        self,
        words: torch.Tensor,
        lengths: torch.Tensor,
        unseen: tuple[torch.Tensor, torch.Tensor] | None = None,
        pooling: str = "last_max",
    ) -> torch.Tensor:
        """Run the recurrence over word ids ``[B, T]`` with true ``lengths`` ``[B]``; the
        classifier's features ``[B, F]``.

        ``unseen``: flat positions (``b * T + t``) of tokens whose input vectors are not their
        word's table row (unknown words with n-grams), and those vectors ``[N, E]``.
        ``pooling`` (see :class:`contract.model.ModelConfig`): ``last`` is each row's final
        states (forward after its last token, backward after reading the whole row), ``max``
        the maximum of every output over the row's own tokens, ``last_max`` both; directions
        are concatenated forward first, as ``nn.GRU``'s outputs are.
        """
        rows, steps = words.shape
        lengths = lengths.to(device=words.device, dtype=torch.long)
        padded = bool((lengths != steps).any())
        active: list[int] | None = None
        if padded:
            # Longest rows first, so that the rows still reading at step t are the first
            # active[t]: each step computes those only, as packed sequences do, and the outputs
            # of the others stay -inf (out of the max) at positions past their end.
            lengths, order = lengths.sort(descending=True, stable=True)
            words = words[order]
            rank = torch.empty_like(order)
            rank[order] = torch.arange(rows, device=words.device)
            active = (lengths.unsqueeze(0) > torch.arange(steps, device=words.device).unsqueeze(1)).sum(1).tolist()
            if unseen is not None:
                flat, vectors = unseen
                unseen = (rank[flat // steps] * steps + flat % steps, vectors)
        if self.directions == 2:
            if padded:
                # Each row from its own last token back to its first; positions past a row's
                # end keep their place (they are never computed).
                t = torch.arange(steps, device=words.device).unsqueeze(0)
                reverse = torch.where(t < lengths.unsqueeze(1), lengths.unsqueeze(1) - 1 - t, t)
                backward = words.gather(1, reverse)
            else:
                backward = words.flip(1)
            ids = torch.stack((words * 2, backward * 2 + 1)).permute(2, 0, 1)  # [T, 2, B]
        else:
            ids = words.t().unsqueeze(1)  # [T, 1, B]
        by_step = nn.functional.embedding(ids, self.table)  # [T, D, B, 3H]
        if unseen is not None:
            self._place_unseen(by_step, lengths, *unseen)
        outputs = self._steps(by_step) if active is None else self._active_steps(by_step, active)
        parts = []  # g = (h + 1) / 2, [T, D, B, H]
        if pooling != "max":
            parts.append(outputs[lengths - 1, :, torch.arange(rows, device=words.device)].reshape(rows, -1))
        if pooling != "last":
            # h = 2g - 1 rises with g, so the maximum carries over.
            parts.append(outputs.amax(dim=0).permute(1, 0, 2).reshape(rows, -1))
        g = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        if active is not None:
            g = g[rank]  # back to the callers' row order
        return torch.add(self.minus_one, g, alpha=2.0)

    def word_gates(self, vectors: torch.Tensor) -> torch.Tensor:
        """Gate rows ``[N * D, 3H]`` of words with input vectors ``[N, E]`` (word n's direction d
        is row n * D + d): the table, and unknown words' gates at call time."""
        return torch.addmm(self.b_ih, vectors, self.w_ih).view(-1, _GATES * self.hidden)

    def _place_unseen(self, by_step: torch.Tensor, lengths: torch.Tensor, flat: torch.Tensor, x: torch.Tensor) -> None:
        """Overwrite the table rows of unseen tokens with their own projected gates, in place."""
        steps, d, rows, h3 = by_step.shape
        gates = self.word_gates(x).view(-1, d, h3)
        b, t = flat // steps, flat % steps
        cells = by_step.view(-1, h3)  # row (t * D + d) * B + b
        cells.index_copy_(0, t * d * rows + b, gates[:, 0])
        if d == 2:
            cells.index_copy_(0, ((lengths[b] - 1 - t) * 2 + 1) * rows + b, gates[:, 1])

    def _steps(self, by_step: torch.Tensor) -> torch.Tensor:
        """The recurrence on ``g = (h + 1) / 2``: ``g' = s + z * (g - s)`` with
        ``s = sigmoid(2 * (x_n + r * (W_hn h + b_hn)))``; returns every step's ``g``."""
        steps, d, rows, _ = by_step.shape
        h = self.hidden
        outputs = by_step.new_empty(steps, d, rows, h)
        state = by_step.new_full((d, rows, h), 0.5)  # h = 0
        recurrent = by_step.new_empty(d, rows, 3 * h)
        rz = by_step.new_empty(d, rows, 2 * h)
        s = by_step.new_empty(d, rows, h)
        recurrent_rz, recurrent_n = recurrent.narrow(2, 0, 2 * h), recurrent.narrow(2, 2 * h, h)
        r, z = rz.narrow(2, 0, h), rz.narrow(2, h, h)
        w_hh, b_hh = self.w_hh, self.b_hh
        xs_rz = by_step.narrow(3, 0, 2 * h).unbind(0)
        xs_n = by_step.narrow(3, 2 * h, h).unbind(0)
        for x_rz, x_n, out in zip(xs_rz, xs_n, outputs.unbind(0), strict=True):
            torch.baddbmm(b_hh, state, w_hh, out=recurrent)
            torch.add(x_rz, recurrent_rz, out=rz).sigmoid_()
            torch.addcmul(x_n, r, recurrent_n, out=s).sigmoid_()
            state = torch.lerp(s, state, z, out=out)
        return outputs

    def _active_steps(self, by_step: torch.Tensor, active: list[int]) -> torch.Tensor:
        """:meth:`_steps` for rows sorted longest first: step t computes the first ``active[t]``
        rows only; every other output is -inf."""
        steps, d, rows, _ = by_step.shape
        h = self.hidden
        outputs = by_step.new_full((steps, d, rows, h), float("-inf"))
        state = by_step.new_full((d, rows, h), 0.5)  # h = 0
        buffers = (by_step.new_empty(d, rows, 3 * h), by_step.new_empty(d, rows, 2 * h), by_step.new_empty(d, rows, h))
        w_hh, b_hh = self.w_hh, self.b_hh
        xs_rz = by_step.narrow(3, 0, 2 * h).unbind(0)
        xs_n = by_step.narrow(3, 2 * h, h).unbind(0)
        count = -1
        for x_rz, x_n, out, k in zip(xs_rz, xs_n, outputs.unbind(0), active, strict=True):
            if k != count:  # views of the first k rows, made again only when k changes
                count = k
                recurrent, rz, s = (b.narrow(1, 0, k) for b in buffers)
                recurrent_rz, recurrent_n = recurrent.narrow(2, 0, 2 * h), recurrent.narrow(2, 2 * h, h)
                r, z = rz.narrow(2, 0, h), rz.narrow(2, h, h)
            if state.shape[1] != k:
                state = state.narrow(1, 0, k)
            torch.baddbmm(b_hh, state, w_hh, out=recurrent)
            torch.add(x_rz.narrow(1, 0, k), recurrent_rz, out=rz).sigmoid_()
            torch.addcmul(x_n.narrow(1, 0, k), r, recurrent_n, out=s).sigmoid_()
            state = torch.lerp(s, state, z, out=out.narrow(1, 0, k))
        return outputs
