"""A KV-cached sampling loop over any transformers causal LM, in the training process.

Shapes: N = B*G rows, P = longest prompt (left-padded), t = tokens generated so far.
"""

from __future__ import annotations

import torch

from r1zero.models import autocast, cache_keyword, last_logits_only, left_padded
from r1zero.rollout import Generation, RowStream, fast_decode


COMPACT_BELOW = 0.85  # fast path: finished rows leave the batch once the live ones are below this share of it
# (on the 4M Qwen2's rollout, 0.85 was the fastest of 0.6, 0.75, 0.85 and 0.95, by a little)


def sample_uniforms(seeds: list[int], samples_per_prompt: int, max_new_tokens: int) -> torch.Tensor:
    """(B*G, T) uniform draws in [0, 1): prompt b's G rows from a generator seeded with seeds[b] alone, so a
    prompt's samples are the same whichever batch, process or machine generates it."""
    return torch.cat([torch.rand(samples_per_prompt, max_new_tokens, generator=torch.Generator().manual_seed(seed))
                      for seed in seeds])


def stream_uniforms(streams: list[RowStream], budgets: list[int]) -> torch.Tensor:
    """(n, max budget) the next draws of each row's stream: row `sample` of sample_uniforms([seed], ., T), from
    column `offset` on, T = offset + budget (the whole generation's width: a row's sampled tokens never pass
    max_new_tokens). The generator fills a tensor in order, so row g of a (G, T) draw is the stream's elements
    g*T .. g*T+T-1, whatever G is. Columns past a row's budget are 0 and never read."""
    width = max(budgets)
    uniforms = torch.zeros(len(streams), width)
    for row, ((seed, sample, offset), budget) in enumerate(zip(streams, budgets)):
        total = offset + budget  # T
        draws = torch.rand(sample * total + total, generator=torch.Generator().manual_seed(seed))
        uniforms[row, :budget] = draws[sample * total + offset:]
    return uniforms


class TransformersEngine:
    """Samples with the policy's own forward pass and a DynamicCache; stops rows at `stop_string` or EOS. With
    `compute` (the --dtype's models.PRECISIONS compute dtype), the forward passes run under autocast to it, as the
    training's own forward passes do: with --dtype bfloat16, sampling multiplies in bfloat16 too."""

    holds_weights = False  # it samples from the policy itself: always the newest weights
    load_seconds = 0.0

    def __init__(self, model, tokenizer, stop_string: str = "</answer>", fast_decode: bool = True,
                 compute: torch.dtype | None = None, logprobs: bool = False):
        self.model = model
        self.compute = compute
        self.logprobs = logprobs  # return each sampled token's log-probability at temperature 1 (Generation.logprobs):
        # the behaviour policy's own numbers, for runs that train on samples of older weights; off, nothing extra
        self.fast_decode = fast_decode  # Llama and Qwen2: decode steps by r1zero.rollout.fast_decode
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_ids = {tokenizer.eos_token_id}
        configured = getattr(model.generation_config, "eos_token_id", None)
        self.eos_ids.update(configured if isinstance(configured, list) else [configured])
        self.eos_ids.discard(None)
        self.stop_string = stop_string
        self.cache_argument = cache_keyword(model)
        self.last_logits_only = last_logits_only(model)  # the prefill needs the last position's logits only

    def load_weights(self, state: dict[str, torch.Tensor], version: int) -> None:
        """Nothing to load: the policy's own weights are the ones sampled with."""

    def require_version(self, version: int) -> None:
        """Always the newest: the policy itself."""

    def close(self) -> None:
        """Nothing of its own to free."""

    def _sample(self, logits: torch.Tensor, temperature: float, generator: torch.Generator | None,
                uniforms: torch.Tensor | None) -> torch.Tensor:
        """(n,) next tokens. With `uniforms` (n,), each row's own draw picks its token by inverse CDF, so a row's
        token never depends on which other rows share the batch; otherwise one multinomial draw from `generator`."""
        if temperature == 0:
            return logits.argmax(-1)  # (n,)
        probabilities = torch.softmax(logits.float() / temperature, dim=-1)  # (n, V)
        if uniforms is None:
            return torch.multinomial(probabilities, 1, generator=generator).squeeze(-1)  # (n,)
        cdf = probabilities.cumsum(dim=-1)  # (n, V)
        token = torch.searchsorted(cdf, uniforms[:, None].to(cdf) * cdf[:, -1:], right=True).squeeze(-1)  # (n,)
        return token.clamp(max=logits.shape[-1] - 1)

    def _stops(self, stop: tuple[str, ...]) -> tuple[dict[int, str], list[str], int]:
        """(stop strings of one token by id, the other stop strings, how many trailing tokens to decode to find
        those). One token: compare ids. Several: decode the tail of each row (token boundaries vary with context)."""
        by_token, longer, tail = {}, [], 0
        for string in stop:
            ids = self.tokenizer.encode(string, add_special_tokens=False)
            if len(ids) == 1:
                by_token[ids[0]] = string
            else:
                longer.append(string)
                tail = max(tail, len(ids) + 2)
        return by_token, longer, tail

    @torch.no_grad()
    def generate(
        self,
        prompts: list[list[int]],
        samples_per_prompt: int,
        max_new_tokens: int,
        temperature: float,
        generator: torch.Generator | None = None,
        seeds: list[int] | None = None,
        stop: tuple[str, ...] | None = None,
    ) -> Generation:
        """Prefill each prompt once and share its KV cache among its G samples; drop rows as they finish."""
        uniforms = None if seeds is None else sample_uniforms(seeds, samples_per_prompt, max_new_tokens)  # (N, T)
        budgets = [max_new_tokens] * (len(prompts) * samples_per_prompt)
        with autocast(self.model, self.compute):
            return self._generate(prompts, samples_per_prompt, budgets, temperature, generator, uniforms,
                                  stop or (self.stop_string,))

    @torch.no_grad()
    def extend(
        self,
        contexts: list[list[int]],
        budgets: list[int],
        temperature: float,
        generator: torch.Generator | None = None,
        streams: list[RowStream] | None = None,
        stop: tuple[str, ...] | None = None,
    ) -> Generation:
        """Each context (prompt + completion so far) prefilled again as a prompt of its own, then sampled on, at
        most budgets[i] tokens; with `streams`, each row's draws continue its own stream (stream_uniforms)."""
        uniforms = None if streams is None else stream_uniforms(streams, budgets)  # (n, max budget)
        with autocast(self.model, self.compute):
            return self._generate(contexts, 1, budgets, temperature, generator, uniforms, stop or (self.stop_string,))

    def _generate(self, prompts: list[list[int]], samples_per_prompt: int, budgets: list[int], temperature: float,
                  generator: torch.Generator | None, uniforms: torch.Tensor | None,
                  stop: tuple[str, ...]) -> Generation:
        from transformers import DynamicCache

        device = self.model.device
        input_ids, attention_mask = left_padded(prompts, self.pad_id)  # (B, P)
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, P)

        cache = DynamicCache()
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            use_cache=True, **{self.cache_argument: cache}, **self.last_logits_only
                            ).logits[:, -1]  # (B, V)
        logits = logits.repeat_interleave(samples_per_prompt, dim=0)  # (N, V)
        decoder = None
        max_new_tokens = max(budgets)
        if self.fast_decode and fast_decode.supports(self.model):
            decoder = fast_decode.FastDecoder(self.model, cache, attention_mask, samples_per_prompt, max_new_tokens)
        else:
            cache.batch_repeat_interleave(samples_per_prompt)
        attention_mask = attention_mask.repeat_interleave(samples_per_prompt, dim=0)  # (N, P)
        next_position = position_ids[:, -1:].repeat_interleave(samples_per_prompt, dim=0) + 1  # (N, 1)

        rows = len(prompts) * samples_per_prompt
        stop_by_token, stop_strings, tail = self._stops(stop)
        generated: list[list[int]] = [[] for _ in range(rows)]
        token_logprobs: list[list[float]] | None = [[] for _ in range(rows)] if self.logprobs else None
        stopped = [False] * rows
        ended_by: list[str | None] = [None] * rows  # the stop string that ended each row
        # Finished rows leave the batch (and the cache) once the live ones are at most `compact_below` of it;
        # until then they ride along, fed padding, their logits unread. The plain path compacts at every finish
        # (its cache is only as long as the tokens so far); the fast path's cache spans the whole generation, so
        # copying it at every finish would cost more than the few extra rows.
        compact_below = COMPACT_BELOW if decoder is not None else 1.0
        batch_rows = list(range(rows))  # the original row at each batch position
        live = list(range(rows))  # batch positions still generating
        for t in range(max_new_tokens):
            live_index = None if len(live) == len(batch_rows) else torch.tensor(live, device=device)
            live_rows = [batch_rows[position] for position in live]
            draws = None if uniforms is None else uniforms[live_rows, t]  # (l,)
            live_logits = logits if live_index is None else logits[live_index]  # (l, V) l = live rows
            sampled = self._sample(live_logits, temperature, generator, draws)  # (l,)
            if token_logprobs is not None:  # log pi(token) at temperature 1, as vLLM reports it
                chosen = torch.log_softmax(live_logits.float(), dim=-1).gather(-1, sampled[:, None]).squeeze(-1)
                for row, value in zip(live_rows, chosen.tolist()):
                    token_logprobs[row].append(value)
            still = []
            for position, row, value in zip(live, live_rows, sampled.tolist()):
                generated[row].append(value)
                if value in self.eos_ids:
                    stopped[row] = True
                elif value in stop_by_token:
                    stopped[row], ended_by[row] = True, stop_by_token[value]
                elif stop_strings and (found := [string for string in stop_strings
                                                 if string in self.tokenizer.decode(generated[row][-tail:])]):
                    stopped[row], ended_by[row] = True, found[0]
                elif len(generated[row]) < budgets[row]:
                    still.append(position)
            if not still:  # done: the next token's logits would go unread
                break
            if live_index is None:
                token = sampled  # (n,)
            else:
                token = torch.full((len(batch_rows),), self.pad_id, dtype=sampled.dtype, device=device)  # (n,)
                token[live_index] = sampled
            live = still
            if len(live) < compact_below * len(batch_rows):  # drop finished rows from the batch and the cache
                index = torch.tensor(live, device=device)
                decoder.select_rows(index) if decoder else cache.batch_select_indices(index)
                token, attention_mask, next_position = token[index], attention_mask[index], next_position[index]
                batch_rows = [batch_rows[position] for position in live]
                live = list(range(len(live)))
            if decoder is not None:
                logits = decoder.step(token, next_position)  # (n, V)
            else:
                attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)  # (n, P+t)
                logits = self.model(input_ids=token[:, None], attention_mask=attention_mask,
                                    position_ids=next_position, use_cache=True,
                                    **{self.cache_argument: cache}).logits[:, -1]  # (n, V)
            next_position = next_position + 1
        return Generation(completions=generated, stopped=stopped, logprobs=token_logprobs, stop_strings=ended_by)
