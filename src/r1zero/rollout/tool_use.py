"""Multi-turn rollouts: the model runs Python mid-thought, token in and token out (`--tools python`).

    engine = ToolUse(TransformersEngine(policy, tokenizer), tokenizer, ToolSettings())
    generation = engine.generate(prompts, 8, 256, 1.0, seeds=seeds)
    generation.sampled_mask          # per token: 1 sampled by the policy, 0 the tool's output

A row samples until `</answer>`, EOS, its budget, or the end of a call (`</python>`); then the code between the
last `<python>` and that `</python>` runs in r1zero's sandbox (r1zero.tools.run_tool: a fresh process per call,
the code reward's containment and limits, nothing carried between calls), and its output goes into the row as
token ids between `<output>` and `</output>`; the row then samples on. The rows of a batch whose calls are due
run them concurrently, then continue together through the engine's `extend` (r1zero's engine prefills them
again; vLLM, from token ids, reuses their prefix cache), while rows that finished wait.

Token in, token out. A completion is an append-only list of token ids: what the engine sampled is kept id for id
and never decoded and encoded again (decoding only reads the code and finds the markers). The tool's output is
tokenised once, on its own: the output-start marker, the output text and the output-end marker each encoded
separately and concatenated, so no BPE merge joins them to the tokens around them (tested with a byte-level
BPE). The next turn's input is the previous turn's input plus exactly those ids.

Budgets. A row samples at most max_new_tokens tokens over all its turns; the tool tokens do not count against
that: each call adds at most tool_output_tokens tokens of output plus the two markers' tokens. At most
max_tool_calls calls run; the first call past that is answered "(not run: ...)" and after it the end marker no
longer ends a turn. So a completion is at most max_new_tokens + (max_tool_calls + 1) x (tool_output_tokens +
marker tokens) long. A call whose end marker uses up the row's last sampled token is not run (nothing could
read its output).

Rewards read what the model wrote: r1zero.rollout.model_text drops the tool's output spans, so a program that prints
`<answer> 42 </answer>` earns nothing by it. The samples files show the whole completion, outputs included.
"""

from __future__ import annotations

import textwrap
import time
from dataclasses import dataclass, field

import torch

from r1zero.rollout import Generation, RowStream
from r1zero.templates import STOP_STRING
from r1zero.tools import ToolCall, ToolLimits, ToolRunner

MARKERS = ("<python>", "</python>", "<output>", "</output>")  # call start, call end, output start, output end


@dataclass(frozen=True)
class ToolSettings:
    """How rows call the tool (see the module docstring); TrainConfig's tool settings, resolved."""

    tool: str = "python"
    call_start: str = MARKERS[0]
    call_end: str = MARKERS[1]
    output_start: str = MARKERS[2]
    output_end: str = MARKERS[3]
    max_calls: int = 4
    output_tokens: int = 32
    limits: ToolLimits = field(default_factory=ToolLimits)
    answer_stop: str = STOP_STRING  # the completion's own end
    answer_start: str = "<answer>"  # a turn holding this has an answer (void-turn test)
    concurrency: int = 4  # calls run at once

    @classmethod
    def from_config(cls, config) -> "ToolSettings":
        return cls(tool=config.tools, call_start=config.tool_call_start, call_end=config.tool_call_end,
                   output_start=config.tool_output_start, output_end=config.tool_output_end,
                   max_calls=config.max_tool_calls, output_tokens=config.tool_output_tokens,
                   limits=ToolLimits(wall_seconds=config.tool_timeout_seconds))


def tool_settings(config) -> ToolSettings | None:
    """The run's ToolSettings, or None with tools "none" (single-turn rollouts)."""
    return None if config.tools == "none" else ToolSettings.from_config(config)


def with_tools(engine, tokenizer, settings: ToolSettings | None):
    """`engine`, calling tools between turns when `settings` is given."""
    return engine if settings is None else ToolUse(engine, tokenizer, settings)


class ToolUse:
    """Any RolloutEngine with tool calls between turns; the same interface (its own `generate`, the rest passed
    through to the engine)."""

    def __init__(self, engine, tokenizer, settings: ToolSettings):
        self.engine = engine
        self.tokenizer = tokenizer
        self.settings = settings
        encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
        self.output_open, self.output_close = encode(settings.output_start + "\n"), encode(settings.output_end + "\n")
        self.runner = ToolRunner(settings.concurrency)  # calls forked from a small helper process, not this one

    # the rest of the interface is the engine's
    pad_id = property(lambda self: self.engine.pad_id)
    holds_weights = property(lambda self: self.engine.holds_weights)
    load_seconds = property(lambda self: self.engine.load_seconds)

    def load_weights(self, state, version: int) -> None:
        self.engine.load_weights(state, version)

    def require_version(self, version: int) -> None:
        self.engine.require_version(version)

    def close(self) -> None:
        self.runner.close()
        self.engine.close()

    def extend(self, *arguments, **keywords) -> Generation:
        return self.engine.extend(*arguments, **keywords)

    def output_ids(self, text: str, note: bool = False) -> list[int]:
        """The ids a call's output goes in as: the markers and the text, each tokenised on its own, the text cut
        to output_tokens tokens. note: the text's last line says why the program stopped (run_tool's timeout,
        killed and limit texts); it is kept whole, tokenised on its own, and the text before it is cut instead."""
        def encode(part: str) -> list[int]:  # printed text stays text: a special token's spelling is not the token
            return self.tokenizer.encode(part, add_special_tokens=False, split_special_tokens=True)

        budget = self.settings.output_tokens
        if note:
            body, _, last = text.rstrip("\n").rpartition("\n")
            last_ids = encode(last + "\n")[:budget]
            text_ids = (encode(body + "\n")[:budget - len(last_ids)] if body else []) + last_ids
        else:
            text_ids = encode(text)[:budget]
        return self.output_open + text_ids + self.output_close

    def parse(self, turn: list[int], refused: bool) -> tuple[str | None, str, ToolCall | None]:
        """The call that ends `turn` (the row's tokens since its last output): (its code, or None when it is not
        run; the text the model is shown when not run; the call record when not run). A call past max_tool_calls
        is refused, and an end marker with no start marker before it in the turn is an error; neither runs."""
        if refused:
            return None, f"(not run: at most {self.settings.max_calls} calls per answer)\n", ToolCall("refused", 0.0, 0)
        text = self.tokenizer.decode(turn)
        end = text.rfind(self.settings.call_end)
        start = text.rfind(self.settings.call_start, 0, end)
        if start < 0:
            return (None, f"(not run: no {self.settings.call_start} before {self.settings.call_end})\n",
                    ToolCall("error", 0.0, 0))
        # a decoded call often starts with a space ("<python> print ( 1 )"): dedent it, or it would not parse
        return textwrap.dedent(text[start + len(self.settings.call_start):end].lstrip("\n")), "", None

    def calls(self, turns: list[list[int]], refused: list[bool]) -> list[tuple[str, ToolCall]]:
        """(the text the model is shown, the call) for the call ending each turn; the runnable ones run together."""
        parsed = [self.parse(turn, no) for turn, no in zip(turns, refused)]
        runnable = [index for index, (code, _, _) in enumerate(parsed) if code is not None]
        results = self.runner.run(self.settings.tool, [parsed[index][0] for index in runnable], self.settings.limits)
        outcomes = [(text, record) for _, text, record in parsed]
        for index, result in zip(runnable, results):
            outcomes[index] = (result.text, ToolCall(result.status, result.seconds, 0))
        return outcomes

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], samples_per_prompt: int, max_new_tokens: int, temperature: float,
                 generator: torch.Generator | None = None, seeds: list[int] | None = None,
                 stop: tuple[str, ...] | None = None) -> Generation:
        """G completions of each prompt, with tool calls: the engine's first turn (shared prompt prefill), then
        rounds of calls and continuations until no row has a call due."""
        settings = self.settings
        answer = (stop or (settings.answer_stop,))
        with_calls = (*answer, settings.call_end)
        first = self.engine.generate(prompts, samples_per_prompt, max_new_tokens, temperature, generator, seeds,
                                     stop=with_calls)
        rows = len(first.completions)
        completions = [list(c) for c in first.completions]
        masks = [[1] * len(c) for c in completions]
        logprobs = None if first.logprobs is None else [list(values) for values in first.logprobs]
        calls: list[list[ToolCall]] = [[] for _ in range(rows)]
        stopped, ended_by = list(first.stopped), list(first.stop_strings or [None] * rows)
        turn_start = [0] * rows  # where each row's current turn begins in its completion
        waited = 0.0
        while True:
            due = [row for row in range(rows) if ended_by[row] == settings.call_end
                   and sum(masks[row]) < max_new_tokens]  # a call with no sampled token left is not run
            if not due:
                break
            started = time.perf_counter()
            results = self.calls([completions[row][turn_start[row]:] for row in due],
                                 [len(calls[row]) >= settings.max_calls for row in due])
            waited += time.perf_counter() - started
            for row, (text, record) in zip(due, results):
                inserted = self.output_ids(text, note=record.status in ("timeout", "killed", "limit"))
                calls[row].append(record._replace(output_tokens=len(inserted)))
                completions[row] += inserted
                masks[row] += [0] * len(inserted)
                if logprobs is not None:
                    logprobs[row] += [0.0] * len(inserted)
                turn_start[row] = len(completions[row])
            # rows that may still call stop at the end marker; past max_tool_calls it is plain text
            for may_call in (True, False):
                group = [row for row in due if (len(calls[row]) <= settings.max_calls) == may_call]
                if not group:
                    continue
                offsets = [sum(masks[row]) for row in group]  # sampled so far
                streams = None if seeds is None else [
                    RowStream(seeds[row // samples_per_prompt], row % samples_per_prompt, offset)
                    for row, offset in zip(group, offsets)]
                more = self.engine.extend([prompts[row // samples_per_prompt] + completions[row] for row in group],
                                          [max_new_tokens - offset for offset in offsets], temperature, generator,
                                          streams, stop=with_calls if may_call else answer)
                for index, row in enumerate(group):
                    completions[row] += more.completions[index]
                    masks[row] += [1] * len(more.completions[index])
                    if logprobs is not None:
                        logprobs[row] += more.logprobs[index]
                    stopped[row] = more.stopped[index]
                    ended_by[row] = (more.stop_strings or [None] * len(group))[index]
        for row in range(rows):
            if ended_by[row] == settings.call_end:  # out of budget at a call: cut, not finished
                stopped[row] = False
        return Generation(completions, stopped, logprobs, ended_by, masks, calls, waited)


def last_turn(completion: list[int], sampled_mask: list[int]) -> list[int]:
    """The tokens after the completion's last tool output (the whole completion when it has none)."""
    inserted = [position for position, sampled in enumerate(sampled_mask) if not sampled]
    return completion[inserted[-1] + 1:] if inserted else completion


def is_void(completion: list[int], sampled_mask: list[int], calls: int, tokenizer, settings: ToolSettings) -> bool:
    """SimpleTIR's void turn (Xue et al. 2025, arXiv 2509.02479): a completion that called the tool and whose last
    turn holds neither a call nor an answer (it trailed off, or hit EOS or its budget)."""
    if calls == 0:
        return False
    text = tokenizer.decode(last_turn(completion, sampled_mask))
    return settings.answer_start not in text and settings.call_end not in text


def void_flags(completions: list[list[int]], sampled_masks: list[list[int]], calls: list[list[ToolCall]], tokenizer,
               settings: ToolSettings) -> list[bool]:
    """is_void for each completion."""
    return [is_void(completion, mask, len(row), tokenizer, settings)
            for completion, mask, row in zip(completions, sampled_masks, calls)]


def tool_metrics(calls: list[list[ToolCall]], seconds: float, voids: list[bool]) -> dict[str, float]:
    """A step's tools/ metrics (r1zero.metric_names.METRICS) from each completion's calls, the wall time generation
    waited for them and each completion's void flag."""
    flat = [call for row in calls for call in row]
    share = lambda status: sum(call.status == status for call in flat) / max(1, len(flat))  # noqa: E731
    return {"tools/calls_mean": len(flat) / len(calls),
            "tools/completions_with_call": sum(bool(row) for row in calls) / len(calls),
            "tools/error_rate": share("error"), "tools/timeout_rate": share("timeout"), "tools/seconds": seconds,
            "tools/void_turn_rate": sum(voids) / len(calls)}
