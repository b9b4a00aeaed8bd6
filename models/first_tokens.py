"""The next-best first tokens of a generation, for candidates (GenerationRequest.candidates).

transformers' continuous batching reports only the sampled token and its logprob. This processor
sits in its logits-processor list and, at the step that samples a request's first token, records
the top-k of that step's scores for the requests that asked. It leaves the scores as they are, so
greedy tokens are unchanged; on every other step it does nothing but look at a list.

It builds on transformers' `ContinuousBatchingLogitsProcessor` (pinned with transformers): the rows
of `scores` are the batch's requests that sample a token, in the order `prepare_tensor_args` gets.
"""

from __future__ import annotations

import threading

import torch
from transformers.generation.continuous_batching.cb_logits_processors import ContinuousBatchingLogitsProcessor

from fimble.models.generation import TokenChoice


class FirstTokenChoices(ContinuousBatchingLogitsProcessor):
    supported_kwargs: dict[str, type] = {}
    ignored_kwargs: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wanted: dict[str, int] = {}  # request id -> how many first tokens to record
        self._found: dict[str, tuple[TokenChoice, ...]] = {}
        self._rows: list[tuple[int, str, int]] = []  # (row of scores, request id, k) for this step

    def want(self, request_id: str, k: int) -> None:
        with self._lock:
            self._wanted[request_id] = k

    def take(self, request_id: str) -> tuple[TokenChoice, ...]:
        """The request's recorded first tokens, best first (the greedy one first); () when there are
        none. Forgets the request either way."""
        with self._lock:
            self._wanted.pop(request_id, None)
            return self._found.pop(request_id, ())

    def __len__(self) -> int:
        """Requests with an entry: 0 when none runs, so a leak shows (Engine.request_maps)."""
        with self._lock:
            return len(self._wanted.keys() | self._found.keys())

    def install(self, processors) -> None:
        """Add to a manager's ContinuousBatchingLogitsProcessorList, before the manager starts (its
        argument storage is sized then)."""
        processors.logits_processor.append(self)
        processors.tensors_required += 1
        processors.do_processing = True

    # --- called by the generation loop -------------------------------------------------------------

    def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
        int32_tensor.fill_(0)

    def prepare_tensor_args(self, requests_with_new_token) -> torch.Tensor:
        with self._lock:
            wanted = self._wanted
            self._rows = [
                (row, state.request_id, wanted[state.request_id])
                for row, future in enumerate(requests_with_new_token)
                if (state := future.state).request_id in wanted and not state.generated_tokens
            ]
        return torch.zeros(len(requests_with_new_token), dtype=torch.int32)

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        for row, request_id, k in self._rows:
            top = torch.topk(torch.log_softmax(scores[row], dim=-1), k)
            choices = tuple(TokenChoice(int(i), float(v)) for v, i in zip(top.values.tolist(), top.indices.tolist()))
            with self._lock:
                if self._wanted.pop(request_id, None) is not None:  # not cancelled meanwhile
                    self._found[request_id] = choices
        self._rows = []
        return scores
