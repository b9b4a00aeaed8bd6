"""Our scheduler on transformers' continuous batching: priorities, LRU eviction of cached blocks, and
a record of how many prompt tokens each request found in the prefix cache.

transformers ships FIFO and prefill-first schedulers and, under memory pressure, evicts *every*
cached block at once (`PagedAttentionCache.evict_cached_blocks`). For an editor that is the worst
case: one long chat prompt would throw away the cached prefix of the file being typed in. So this
module plugs into the library's extension point (`SCHEDULER_MAPPING`) with a scheduler that
  - orders work by priority (single-line < multi-line < prefetch < chat), then by arrival;
  - under memory pressure evicts the least recently used cached blocks, only as many as needed.
"""

from __future__ import annotations

from transformers.generation.continuous_batching.requests import RequestState, RequestStatus
from transformers.generation.continuous_batching.scheduler import SCHEDULER_MAPPING, Scheduler

from fimble.models.generation import GenerationRequest
from fimble.models.spec import Role

SCHEDULER_NAME = "fimble_priority"
# Free-capacity fraction under which new prefills wait and cached blocks are evicted.
DEFAULT_SAFETY_MARGIN = 0.1


# Scheduling priorities, lower first: what a user waits for, then prefetches, then chat.
BACKGROUND_PRIORITY = int(Role.CHAT)
CHAT_PRIORITY = int(Role.CHAT) + 1


def priority_for(request: GenerationRequest) -> int:
    if request.role == Role.CHAT:
        return CHAT_PRIORITY
    return BACKGROUND_PRIORITY if request.background else int(request.role)


def request_id_for(priority: int, serial: int) -> str:
    """Request ids carry their priority, so the scheduler needs no side table to order them."""
    return f"p{priority}-{serial}"


def priority_of(request_id: str) -> int:
    return int(request_id[1 : request_id.index("-")])


class PriorityScheduler(Scheduler):
    def __init__(self, cache, safety_margin: float | None, max_requests_per_batch: int):
        super().__init__(cache, DEFAULT_SAFETY_MARGIN if safety_margin is None else safety_margin, max_requests_per_batch)

    def reset(self) -> None:
        super().reset()
        # request id -> prompt tokens served from the prefix cache; read by the engine for stats
        self.cached_tokens: dict[str, int] = {}
        self.evicted_blocks = 0

    # --- ordering ------------------------------------------------------------------------------

    def schedule_batch(self, token_budget: int, cache_budget: int):
        while True:
            scheduled, allocation_failed, decode_fast_path, num_q_tokens, max_kv_read = self._schedule_candidates(
                token_budget, cache_budget
            )
            if scheduled or not allocation_failed:
                return scheduled, decode_fast_path, num_q_tokens, max_kv_read
            # Nothing fits. Answering None makes the library evict every cached block at once
            # (OffloadingManager.offload_requests), the shared prefix of the file being typed in with
            # the rest; give back the least recently used few and try again instead.
            if not self._evict_least_recently_used(blocks_per_allocator=4):
                return None, decode_fast_path, 0, 0

    def _schedule_candidates(self, token_budget: int, cache_budget: int):
        active = [s for s in self.active_requests.values() if s.status in (RequestStatus.DECODING, RequestStatus.PREFILLING)]
        waiting = [] if self.block_new_requests else [self.waiting_requests[r] for r in self.waiting_requests_order]
        # Within a priority, decoding requests go before prefills (they hold blocks and are nearly done),
        # and both go by arrival. Python's sort is stable, so arrival order survives.
        candidates = sorted(active + waiting, key=lambda s: (priority_of(s.request_id), s.status != RequestStatus.DECODING))
        removed: set[str] = set()
        outcome = self._process_candidates(candidates, token_budget, cache_budget, removed)
        self._cleanup_waiting_queue(removed)
        return outcome

    def _infer_request_tokens(self, state: RequestState, removed: set[str]) -> list[int]:
        was_pending = state.status == RequestStatus.PENDING
        offset_before = state.position_offset
        tokens = super()._infer_request_tokens(state, removed)
        if was_pending:
            self.cached_tokens[state.request_id] = state.position_offset - offset_before
        return tokens

    # --- freeing and eviction ------------------------------------------------------------------

    def finish_request(self, request_id: str) -> None:
        self._register_blocks_of_the_last_forward(request_id)
        self._release_deepest_blocks_first(request_id)
        super().finish_request(request_id)

    def _register_blocks_of_the_last_forward(self, request_id: str) -> None:
        """The generation loop registers the pages a forward pass completed only for requests still
        running after it. A request that finishes in its prefill's pass (its first token is a stop
        token, or max_new_tokens is 1) would leave its prompt out of the prefix cache, and the next
        keystroke would prefill it all again. Only a request that finished normally: after a failed
        forward pass its last pages may hold garbage."""
        state = self.active_requests.get(request_id)
        if state is None or state.status != RequestStatus.FINISHED or not self.cache.use_prefix_sharing:
            return
        # The last sampled token was never run through the model, so its KV is not in the cache.
        written = (state.initial_tokens + state.generated_tokens)[: state.position_offset]
        for allocator in self.cache.cache_allocators.values():
            if allocator.block_table.get(request_id):
                allocator.mark_complete_blocks(request_id, written, len(written) // allocator.tokens_per_page)

    def clear_cancelled_requests(self) -> list[RequestState]:
        with self._cancellation_lock:
            for request_id in self._requests_to_cancel:
                self._release_deepest_blocks_first(request_id)
                # The engine takes a request's count when it finishes the request, but a cancel can
                # land after this loop took the request in and before it scheduled it: the count is
                # then written after the engine looked, and only this removes it.
                self.cached_tokens.pop(request_id, None)
        return super().clear_cancelled_requests()

    def _release_deepest_blocks_first(self, request_id: str) -> None:
        """Blocks of a finished request enter the LRU list in the order they are released. Reversing the
        block table releases a prompt's tail before its head, so eviction drops the tail first and the
        shared prefix (file header, repo context) stays cached longest."""
        for allocator in self.cache.cache_allocators.values():
            table = allocator.block_table.get(request_id)
            if table:
                table.reverse()

    def _try_to_meet_safety_margin(self) -> bool:
        self.cache.pool.try_to_free_sectors()
        while self.cache.compute_free_capacity() < self.safety_margin:
            if not self._evict_least_recently_used(blocks_per_allocator=4):
                return False
            self.cache.pool.try_to_free_sectors()
        return True

    def _evict_least_recently_used(self, blocks_per_allocator: int) -> bool:
        """Give back the oldest cached blocks. The ledger's `cached_blocks` is insertion ordered and a
        block leaves it when reused and re-enters on release, so its head is the least recently used."""
        evicted_any = False
        for allocator in self.cache.cache_allocators.values():
            ledger = allocator.ledger
            victims = list(ledger.cached_blocks)[:blocks_per_allocator]
            for block_id in victims:
                del ledger.cached_blocks[block_id]
                ledger.hash_to_block.pop(ledger.block_to_hash.pop(block_id))
            if victims:
                self.cache.pool.free_blocks(allocator.index, victims)
                self.evicted_blocks += len(victims)
                evicted_any = True
        return evicted_any


SCHEDULER_MAPPING[SCHEDULER_NAME] = PriorityScheduler
