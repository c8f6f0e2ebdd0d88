"""The decode batch's KV cache: one row per sequence, every row ending at the same column.

Continuous batching needs sequences of different lengths in one forward pass, joining
and leaving between steps. Rows are right-aligned ("left-padded"): a sequence's tokens
occupy columns ``[span - length, span)`` of its row, pads before them are masked out,
and each sequence's positions come from its own length, so a row's attention does not
depend on its neighbours. A decode step writes one new column for every row in place
(buffers are preallocated and grow by doubling), so a step copies nothing; copies happen
only when a sequence joins (its prefill KV is written into a free row, or, when it is
longer than the span, the batch is shifted right once) or leaves (the last row moves
into the freed one). When the batch empties the buffers are released.

transformers' own caches hold one batch of equal-length sequences that only grows;
vLLM's paged cache needs its own attention kernels. This is the smallest structure that
gives continuous batching on any transformers causal LM with full attention, with the
model's standard attention (SDPA) and an ordinary 2-D padding mask.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer

__all__ = ["BatchKV", "LayerKV"]

#: Per layer: (keys, values), each ``[rows, kv_heads, tokens, head_dim]``.
LayerKV = list[tuple[torch.Tensor, torch.Tensor]]


class _BufferLayer(DynamicLayer):  # type: ignore[no-untyped-call]
    """A cache layer that appends into preallocated buffers instead of concatenating."""

    def __init__(self, kbuf: torch.Tensor, vbuf: torch.Tensor, rows: int, span: int) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.kbuf, self.vbuf, self.rows, self.span = kbuf, vbuf, rows, span
        self.dtype, self.device = kbuf.dtype, kbuf.device
        self.is_initialized = True
        self.keys = kbuf[:rows, :, :span]
        self.values = vbuf[:rows, :, :span]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        new = key_states.shape[-2]
        end = self.span + new
        self.kbuf[: self.rows, :, self.span : end] = key_states
        self.vbuf[: self.rows, :, self.span : end] = value_states
        self.span = end
        self.keys = self.kbuf[: self.rows, :, :end]
        self.values = self.vbuf[: self.rows, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.span


class BatchKV:
    """Rows of KV for up to ``max_rows`` sequences, right-aligned at ``span``."""

    def __init__(self, max_rows: int, *, grow: int = 256) -> None:
        self.max_rows = max_rows
        self.grow = grow
        self.rows = 0
        #: Columns in use; every row's last token is at ``span - 1``.
        self.span = 0
        self.capacity = 0
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        #: Tokens held per row (= the position of the row's next token).
        self.lengths = torch.zeros(max_rows, dtype=torch.long)

    @property
    def allocated_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    @property
    def held_tokens(self) -> int:
        return self.rows * self.span

    def add(self, kv: LayerKV) -> int:
        """Put one sequence's KV (batch of 1) in a free row; returns the row."""
        if self.rows >= self.max_rows:
            raise RuntimeError("the KV batch is full")
        length = kv[0][0].shape[-2]
        if self.rows == 0:
            self._allocate(kv, length + self.grow)
            self.span = length
        elif length > self.span:
            self._resize(self.capacity + (length - self.span), shift=length - self.span)
        row = self.rows
        start = self.span - length
        for layer, (k, v) in enumerate(kv):
            self.keys[layer][row, :, :start].zero_()
            self.values[layer][row, :, :start].zero_()
            self.keys[layer][row, :, start : self.span] = k[0]
            self.values[layer][row, :, start : self.span] = v[0]
        self.lengths[row] = length
        self.rows += 1
        return row

    def remove(self, row: int) -> int | None:
        """Free ``row``; the last row moves into it. Returns the row that moved, if any."""
        last = self.rows - 1
        moved = None
        if row != last:
            for buf in (*self.keys, *self.values):
                buf[row, :, : self.span] = buf[last, :, : self.span]
            self.lengths[row] = self.lengths[last]
            moved = last
        self.rows -= 1
        if self.rows == 0:
            self.release()
        else:
            self._compact()
        return moved

    def release(self) -> None:
        self.keys, self.values = [], []
        self.rows = self.span = self.capacity = 0
        self.lengths.zero_()

    def step_inputs(self) -> tuple[Cache, torch.Tensor, torch.Tensor]:
        """For one decode step: the cache, the padding mask (one more column), positions."""
        if self.span + 1 > self.capacity:
            self._resize(max(self.capacity * 2, self.span + self.grow), shift=0)
        device = self.keys[0].device
        lengths = self.lengths[: self.rows]
        starts = self.span - lengths
        columns = torch.arange(self.span + 1)
        mask = (columns[None, :] >= starts[:, None]).long().to(device)
        positions = lengths[:, None].to(device)
        layers: list[Any] = [
            _BufferLayer(k, v, self.rows, self.span)
            for k, v in zip(self.keys, self.values, strict=True)
        ]
        return Cache(layers=layers), mask, positions

    def advance(self) -> None:
        """After a decode step: every row holds one more token."""
        self.span += 1
        self.lengths[: self.rows] += 1

    def _allocate(self, kv: LayerKV, capacity: int) -> None:
        self.capacity = capacity
        self.keys = [k.new_zeros((self.max_rows, k.shape[1], capacity, k.shape[3])) for k, _ in kv]
        self.values = [
            v.new_zeros((self.max_rows, v.shape[1], capacity, v.shape[3])) for _, v in kv
        ]

    def _resize(self, capacity: int, *, shift: int) -> None:
        """New buffers of ``capacity`` columns, rows shifted right by ``shift``."""
        rows, span = self.rows, self.span

        def moved(buf: torch.Tensor) -> torch.Tensor:
            out = buf.new_zeros((buf.shape[0], buf.shape[1], capacity, buf.shape[3]))
            out[:rows, :, shift : shift + span] = buf[:rows, :, :span]
            return out

        self.keys = [moved(b) for b in self.keys]
        self.values = [moved(b) for b in self.values]
        self.capacity = capacity
        self.span = span + shift

    def _compact(self) -> None:
        """Drop leading columns no row uses any more, once they are a quarter of the span."""
        longest = int(self.lengths[: self.rows].max())
        lead = self.span - longest
        if lead <= 0 or lead * 4 < self.span:
            return
        for buf in (*self.keys, *self.values):
            buf[: self.rows, :, :longest] = buf[: self.rows, :, lead : self.span].clone()
        self.span = longest
