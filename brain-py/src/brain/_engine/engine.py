"""``Engine``: one causal LM shared by every agent, with continuous batching.

Every planning request in the process goes through one engine, on one thread of its own
(the event loop never runs the model). Each iteration of that thread::

    reap       cancelled and expired sequences leave the batch (slot and KV freed)
    admit      waiting requests take free slots: each is prefilled on its own (the shared
               prompt prefix from the prefix cache), samples its first token, and its KV
               joins the batch (``kv.BatchKV``)
    decode     one forward pass for every running sequence: one token each, masked by
               each sequence's grammar (llguidance), greedy; finished sequences leave

so new sequences join between decode steps and finished ones leave at once (continuous
batching, as vLLM's scheduler does, without paging), and a lone request never waits for
company. Prefill is per sequence and bounded per iteration (``prefill_budget`` tokens),
so a burst of new prompts does not stall the sequences already decoding.

Bounds: at most ``max_batch`` sequences decode together, at most ``max_queue`` wait
(more is :class:`EngineOverloaded` at once); each request has a deadline; a cancelled
caller's sequence is dropped at the next iteration. A failure in one sequence's own work
(its grammar, its callback, its prefill) fails that request only; a failure of the
batched forward pass fails the sequences in that batch, and the engine goes on.

:meth:`Engine.stats` reports what tests and the demo assert on (decode batch sizes,
tokens, slots, KV held); the same numbers go to the ``brain_llm_*`` Prometheus metrics.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .._exceptions import PlannerError
from .._metrics import LLMMetrics
from .grammar import GrammarCompiler
from .kv import BatchKV, LayerKV
from .weights import LoadedModel

__all__ = [
    "Engine",
    "EngineClosed",
    "EngineOptions",
    "EngineOverloaded",
    "EngineStats",
    "GenerationError",
    "GenerationRequest",
    "GenerationResult",
]

log = logging.getLogger("brain.engine")


class EngineOverloaded(PlannerError):
    """The engine's queue is full; the request was not accepted."""


class EngineClosed(PlannerError):
    """The engine is stopped (or stopping); the request did not run."""


class GenerationError(PlannerError):
    """This request's generation failed (the others go on)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class EngineOptions:
    #: Sequences decoded together at most (slots).
    max_batch: int = 16
    #: Requests waiting for a slot at most; more are refused with EngineOverloaded.
    max_queue: int = 256
    #: Prompt tokens at most (a longer prompt fails its own request).
    max_prompt_tokens: int = 4096
    #: Prompt tokens prefilled per engine iteration before the next decode step (at
    #: least one prompt is always admitted when a slot is free).
    prefill_budget: int = 2048
    #: Shared prompt prefixes whose KV is kept (LRU).
    prefix_cache_entries: int = 8
    #: Shorter shared prefixes are not worth caching.
    min_prefix_tokens: int = 32
    #: torch's CPU threads (process-wide); None: torch's default (one per core). On a
    #: CPU shared with other busy processes, fewer threads than cores avoids OpenMP
    #: threads spinning against each other (measured 8x slower steps on 2 busy cores).
    cpu_threads: int | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class GenerationRequest:
    prompt_ids: Sequence[int]
    max_new_tokens: int = 128
    #: A llguidance grammar (Lark syntax, ``%json`` allowed); None: unconstrained.
    grammar: str | None = None
    #: The first ``prefix_len`` prompt tokens are shared with other requests (a system
    #: prompt): their KV comes from the prefix cache.
    prefix_len: int = 0
    #: ``time.monotonic()`` by which the result is needed; None: no deadline.
    deadline: float | None = None
    #: Keep generating past end-of-sequence until max_new_tokens (benchmarks).
    ignore_eos: bool = False
    #: Called on the engine's thread with each new token (progress, streaming). If it
    #: raises, this request fails (and only this one).
    on_token: Callable[[int], None] | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class GenerationResult:
    token_ids: tuple[int, ...]
    text: str
    #: ``stop`` (end of sequence, or the grammar complete) or ``length`` (max_new_tokens).
    finish_reason: str
    prompt_tokens: int
    cached_prompt_tokens: int
    queue_seconds: float
    seconds: float


@dataclass(frozen=True, kw_only=True, slots=True)
class EngineStats:
    running: int
    waiting: int
    decode_steps: int
    decode_tokens: int
    decode_seconds: float
    prefill_tokens: int
    cached_prompt_tokens: int
    #: Decode batch size -> number of decode steps with that many sequences.
    batch_sizes: dict[int, int]
    completed: int
    failed: int
    cancelled: int
    #: KV rows in use and token positions they hold; bytes allocated for the batch.
    kv_rows: int
    kv_tokens: int
    kv_bytes: int

    @property
    def max_batch_size(self) -> int:
        return max(self.batch_sizes, default=0)

    @property
    def mean_batch_size(self) -> float:
        steps = sum(self.batch_sizes.values())
        return sum(k * n for k, n in self.batch_sizes.items()) / steps if steps else 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        return self.decode_tokens / self.decode_seconds if self.decode_seconds else 0.0


@dataclass(eq=False, slots=True)
class _Sequence:
    request: GenerationRequest
    future: asyncio.Future[GenerationResult]
    loop: asyncio.AbstractEventLoop
    id: int
    enqueued: float
    matcher: Any = None
    tokens: list[int] = field(default_factory=list)
    row: int = -1
    admitted: float = 0.0
    cached: int = 0
    cancelled: bool = False


_ids = itertools.count(1)


class Engine:
    """A causal LM serving every agent's requests with continuous batching (see module doc)."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        options: EngineOptions | None = None,
        metrics: LLMMetrics | None = None,
    ) -> None:
        self.loaded = loaded
        self.options = options or EngineOptions()
        self.metrics = metrics
        self.grammars = GrammarCompiler(loaded.tokenizer, loaded.vocab_size, loaded.eos_token_ids)
        self._eos = frozenset(loaded.eos_token_ids)
        config = loaded.model.config
        #: The model's context: positions past it do not exist (an index error, batch-wide).
        self.context = int(
            getattr(config, "max_position_embeddings", None)
            or getattr(config, "n_positions", None)
            or 1 << 30
        )
        self._kv = BatchKV(self.options.max_batch)
        self._running: list[_Sequence] = []
        self._waiting: collections.deque[_Sequence] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._prefixes: collections.OrderedDict[tuple[int, ...], LayerKV] = (
            collections.OrderedDict()
        )
        self._shifts = torch.arange(32, dtype=torch.int32, device=loaded.device)
        # Counters (written by the engine thread; read as a snapshot by stats()).
        self._batch_sizes: collections.Counter[int] = collections.Counter()
        self._decode_steps = self._decode_tokens = 0
        self._decode_seconds = 0.0
        self._prefill_tokens = self._cached_tokens = 0
        self._completed = self._failed = self._cancelled = 0

    # ---------------------------------------------------------------- caller side

    def start(self) -> None:
        if self.options.cpu_threads and self.loaded.device == "cpu":
            torch.set_num_threads(self.options.cpu_threads)
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="brain-llm-engine", daemon=True)
            self._thread.start()

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Run ``request`` in the shared batch; raises on overload, close, deadline, failure.

        Cancelling the caller removes the sequence from the batch at the next iteration.
        """
        if len(request.prompt_ids) == 0:
            raise GenerationError("the prompt is empty")
        loop = asyncio.get_running_loop()
        seq = _Sequence(request, loop.create_future(), loop, next(_ids), time.monotonic())
        with self._cond:
            if self._closed or self._thread is None:
                raise EngineClosed("the language model engine is not running")
            if len(self._waiting) >= self.options.max_queue:
                self._count("rejected")
                raise EngineOverloaded(
                    f"the language model's queue is full ({self.options.max_queue} waiting)"
                )
            self._waiting.append(seq)
            self._gauge_queue()
            self._cond.notify()
        timeout = None
        if request.deadline is not None:
            # A little past the deadline: the engine fails the request itself at the
            # deadline; this only guards against a step that never returns.
            timeout = max(0.0, request.deadline - time.monotonic()) + 5.0
        try:
            return await asyncio.wait_for(asyncio.shield(seq.future), timeout)
        except BaseException:
            self._cancel(seq)
            raise

    def stats(self) -> EngineStats:
        with self._cond:
            return EngineStats(
                running=len(self._running),
                waiting=len(self._waiting),
                decode_steps=self._decode_steps,
                decode_tokens=self._decode_tokens,
                decode_seconds=self._decode_seconds,
                prefill_tokens=self._prefill_tokens,
                cached_prompt_tokens=self._cached_tokens,
                batch_sizes=dict(self._batch_sizes),
                completed=self._completed,
                failed=self._failed,
                cancelled=self._cancelled,
                kv_rows=self._kv.rows,
                kv_tokens=self._kv.held_tokens,
                kv_bytes=self._kv.allocated_bytes,
            )

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread; requests still waiting or running fail with EngineClosed.

        Waits up to ``timeout`` for a step in progress (it cannot be interrupted); the
        thread is a daemon, so a step that outlasts it does not keep the process alive.
        """
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def _cancel(self, seq: _Sequence) -> None:
        with self._cond:
            if seq.cancelled or seq.future.done():
                return
            seq.cancelled = True
            try:
                self._waiting.remove(seq)
            except ValueError:
                pass  # running: the engine thread drops it at its next iteration
            else:
                self._cancelled += 1
                self._count("cancelled")
                self._gauge_queue()
            self._cond.notify()

    # ---------------------------------------------------------------- engine thread

    def _loop(self) -> None:
        try:
            # Everything on this thread in inference mode, not only prefill and decode: the
            # KV buffers a decode step grows are inference tensors, and admitting (zeroing
            # a row) or a leaving sequence (moving a row) writes them in place, which torch
            # refuses outside inference mode (it stopped the engine mid-eval).
            with torch.inference_mode():
                self._serve()
        except BaseException as exc:  # a bug here must not leave callers hanging
            log.exception("the language model engine stopped")
            self._fail_all(EngineClosed(f"the language model engine stopped: {exc!r}"))
            raise
        self._fail_all(EngineClosed("the language model engine was closed"))

    def _serve(self) -> None:
        while True:
            with self._cond:
                while not (self._closed or self._waiting or self._running):
                    self._cond.wait(1.0)
                if self._closed:
                    return
            self._reap()
            self._admit()
            if self._running:
                self._decode_step()

    def _fail_all(self, error: Exception) -> None:
        with self._cond:
            self._closed = True
            pending = [*self._waiting, *self._running]
            self._waiting.clear()
        for seq in pending:
            self._finish_error(seq, error, count=False)
        with self._cond:
            self._running.clear()
            self._kv.release()
        self._gauges()

    def _reap(self) -> None:
        now = time.monotonic()
        with self._cond:
            expired = [
                s
                for s in self._waiting
                if s.request.deadline is not None and now > s.request.deadline
            ]
            for seq in expired:
                self._waiting.remove(seq)
        for seq in expired:
            self._finish_error(seq, TimeoutError("no slot before the deadline"), outcome="timeout")
        for seq in list(self._running):
            if seq.cancelled:
                self._leave(seq)
                with self._cond:
                    self._cancelled += 1
                self._count("cancelled")
            elif seq.request.deadline is not None and now > seq.request.deadline:
                self._leave(seq)
                self._finish_error(
                    seq, TimeoutError("generation ran past its deadline"), outcome="timeout"
                )

    def _admit(self) -> None:
        budget = self.options.prefill_budget
        first = True
        while len(self._running) < self.options.max_batch:
            with self._cond:
                if not self._waiting:
                    break
                seq = self._waiting[0]
                if not first and len(seq.request.prompt_ids) > budget:
                    break
                self._waiting.popleft()
                self._gauge_queue()
            first = False
            budget -= len(seq.request.prompt_ids)
            try:
                kv = self._prefill(seq)
            except Exception as exc:
                log.warning("prefill failed for request %d: %r", seq.id, exc)
                self._finish_error(seq, _as_generation_error(exc, "prefill"))
                continue
            if kv is None:
                continue  # finished on its first token
            with self._cond:
                seq.row = self._kv.add(kv)
                self._running.append(seq)
            self._gauges()

    @torch.inference_mode()
    def _prefill(self, seq: _Sequence) -> LayerKV | None:
        """The prompt through the model; samples the first token. Returns the KV to keep."""
        from transformers import DynamicCache

        request = seq.request
        ids = list(request.prompt_ids)
        limit = min(self.options.max_prompt_tokens, self.context - 1)
        if len(ids) > limit:
            raise GenerationError(f"the prompt has {len(ids)} tokens; at most {limit}")
        if request.max_new_tokens < 1:
            raise GenerationError("max_new_tokens must be at least 1")
        seq.admitted = time.monotonic()
        if request.grammar is not None:
            seq.matcher = self.grammars.matcher(request.grammar)
        started = time.perf_counter()
        prefix = min(request.prefix_len, len(ids) - 1)
        cache = DynamicCache()
        if prefix >= self.options.min_prefix_tokens:
            cache = DynamicCache(ddp_cache_data=self._prefix_kv(tuple(ids[:prefix])))
            seq.cached = prefix
        else:
            prefix = 0
        device = self.loaded.device
        out = self.loaded.model(
            input_ids=torch.tensor([ids[prefix:]], device=device),
            position_ids=torch.arange(prefix, len(ids), device=device)[None, :],
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        kv: LayerKV = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        computed = len(ids) - prefix
        with self._cond:
            self._prefill_tokens += computed
            self._cached_tokens += prefix
        if self.metrics is not None:
            self.metrics.tokens.labels("prefill").inc(computed)
            self.metrics.tokens.labels("cached").inc(prefix)
            self.metrics.step_seconds.labels("prefill").observe(time.perf_counter() - started)
        token = int(self._pick(out.logits[:, -1, :], [seq])[0])
        reason = self._accept(seq, token)
        if reason is not None:
            self._finish(seq, reason)
            return None
        return kv

    def _prefix_kv(self, prefix: tuple[int, ...]) -> LayerKV:
        from transformers import DynamicCache

        cached = self._prefixes.get(prefix)
        if cached is not None:
            self._prefixes.move_to_end(prefix)
            return cached
        device = self.loaded.device
        out = self.loaded.model(
            input_ids=torch.tensor([list(prefix)], device=device),
            past_key_values=DynamicCache(),
            use_cache=True,
            logits_to_keep=1,
        )
        kv: LayerKV = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        with self._cond:
            self._prefill_tokens += len(prefix)
        if self.metrics is not None:
            self.metrics.tokens.labels("prefill").inc(len(prefix))
        self._prefixes[prefix] = kv
        while len(self._prefixes) > self.options.prefix_cache_entries:
            self._prefixes.popitem(last=False)
        return kv

    @torch.inference_mode()
    def _decode_step(self) -> None:
        # In KV row order: the batch's row i is the forward pass's row i (a leaving
        # sequence's row is taken by the last one, so list order and row order differ).
        running = sorted(self._running, key=lambda s: s.row)
        assert [s.row for s in running] == list(range(self._kv.rows)), "KV rows out of step"
        started = time.perf_counter()
        try:
            cache, mask, positions = self._kv.step_inputs()
            last = torch.tensor([[s.tokens[-1]] for s in running], device=self.loaded.device)
            out = self.loaded.model(
                input_ids=last,
                position_ids=positions,
                attention_mask=mask,
                past_key_values=cache,
                use_cache=True,
            )
            self._kv.advance()
            tokens = self._pick(out.logits[:, -1, :], running).tolist()
        except Exception as exc:
            log.exception("a batched decode step failed; its %d sequences fail", len(running))
            error = _as_generation_error(exc, "decode")
            for seq in running:
                self._leave(seq)
                self._finish_error(seq, error)
            return
        seconds = time.perf_counter() - started
        with self._cond:
            self._decode_steps += 1
            self._decode_tokens += len(running)
            self._decode_seconds += seconds
            self._batch_sizes[len(running)] += 1
        if self.metrics is not None:
            self.metrics.decode_batch_size.observe(len(running))
            self.metrics.step_seconds.labels("decode").observe(seconds)
            self.metrics.tokens.labels("decode").inc(len(running))
        for seq, token in zip(running, tokens, strict=True):
            if seq.cancelled:
                continue  # reaped next iteration
            try:
                reason = self._accept(seq, int(token))
            except Exception as exc:
                self._leave(seq)
                self._finish_error(seq, _as_generation_error(exc, "sequence"))
                continue
            if reason is not None:
                # Out of the batch before the caller hears: its slot is free when it does.
                self._leave(seq)
                self._finish(seq, reason)
        self._gauges()

    def _pick(self, logits: torch.Tensor, seqs: Sequence[_Sequence]) -> torch.Tensor:
        """Greedy choice per row, among the tokens each row's grammar allows."""
        constrained = [(s.matcher, i) for i, s in enumerate(seqs) if s.matcher is not None]
        if constrained:
            allowed = self.grammars.allowed(constrained, len(seqs), logits.shape[-1])
            allowed = allowed.to(logits.device, non_blocking=True)
            bits = ((allowed.unsqueeze(-1) >> self._shifts) & 1).view(len(seqs), -1)
            logits = logits.masked_fill(bits[:, : logits.shape[-1]] == 0, float("-inf"))
        return logits.argmax(dim=-1).cpu()

    def _accept(self, seq: _Sequence, token: int) -> str | None:
        """Take ``token`` for ``seq``; the finish reason when that was its last token."""
        request = seq.request
        eos = token in self._eos and not request.ignore_eos
        finished = eos
        if seq.matcher is not None:
            if not seq.matcher.consume_token(token) or seq.matcher.is_error():
                raise GenerationError(f"the grammar refused a token: {seq.matcher.get_error()}")
            finished = finished or seq.matcher.is_stopped()
        if not eos:
            seq.tokens.append(token)
            if request.on_token is not None:
                request.on_token(token)
        if finished:
            return "stop"
        if len(seq.tokens) >= request.max_new_tokens:
            return "length"
        if len(request.prompt_ids) + len(seq.tokens) >= self.context:
            return "length"  # the model's context is full
        return None

    def _leave(self, seq: _Sequence) -> None:
        """Take ``seq`` out of the batch: its slot and KV row are free."""
        with self._cond:
            if seq not in self._running:
                return
            self._running.remove(seq)
            moved = self._kv.remove(seq.row)
            if moved is not None:
                for other in self._running:
                    if other.row == moved:
                        other.row = seq.row
                        break
            seq.row = -1

    def _finish(self, seq: _Sequence, reason: str) -> None:
        now = time.monotonic()
        text = self.loaded.tokenizer.decode(seq.tokens, skip_special_tokens=True)
        result = GenerationResult(
            token_ids=tuple(seq.tokens),
            text=text,
            finish_reason=reason,
            prompt_tokens=len(seq.request.prompt_ids),
            cached_prompt_tokens=seq.cached,
            queue_seconds=seq.admitted - seq.enqueued,
            seconds=now - seq.enqueued,
        )
        with self._cond:
            self._completed += 1
        self._count(reason)
        _deliver(seq, result, None)

    def _finish_error(
        self, seq: _Sequence, error: BaseException, *, outcome: str = "error", count: bool = True
    ) -> None:
        if count:
            with self._cond:
                self._failed += 1
            self._count(outcome)
        _deliver(seq, None, error)

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.requests.labels(outcome).inc()

    def _gauge_queue(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self._waiting))

    def _gauges(self) -> None:
        if self.metrics is not None:
            self.metrics.running.set(len(self._running))
            self.metrics.kv_tokens.set(self._kv.held_tokens)
            self.metrics.queue_depth.set(len(self._waiting))


def _deliver(seq: _Sequence, result: GenerationResult | None, error: BaseException | None) -> None:
    # RuntimeError: the caller's loop is closed, nobody is waiting.
    with contextlib.suppress(RuntimeError):
        seq.loop.call_soon_threadsafe(_resolve, seq.future, result, error)


def _resolve(
    future: asyncio.Future[GenerationResult],
    result: GenerationResult | None,
    error: BaseException | None,
) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        assert result is not None
        future.set_result(result)


def _as_generation_error(exc: Exception, where: str) -> PlannerError:
    if isinstance(exc, PlannerError):
        return exc
    return GenerationError(f"{where} failed: {exc!r}")
