"""Multi-turn rollouts with tool calls (r1zero.rollout.tool_use): token in and token out, the turn loop's rules,
hostile calls contained, and the tools' output masked out of every loss."""

import pytest
import torch

from r1zero import algorithms
from r1zero.rollout import Generation, RowStream, model_text
from r1zero.rollout.tool_use import ToolSettings, ToolUse, is_void
from r1zero.rollout.transformers_engine import TransformersEngine, stream_uniforms
from r1zero.tools import STATUSES, ToolLimits, ToolRunner


# ---- a byte-level BPE tokenizer, trained here, as real models' are ------------------------------------------

@pytest.fixture(scope="module")
def bpe():
    """A byte-level BPE over text full of calls, outputs and numbers: it merges across what a tool loop sees as
    boundaries ("</python>\\n<output>" and the like), so re-tokenising a decoded completion changes its ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    text = [f"<think> {a} * {b} <python>print({a} * {b})</python>\n<output>\n{a * b}\n</output>\n"
            f"</think> <answer> {a * b} </answer>" for a in range(30) for b in range(30)]
    tokenizer.train_from_iterator(text, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


class ScriptedEngine:
    """An engine that returns given token ids, turn after turn, and records what it was asked (a real model
    would rarely write a call at random). Each script is one row's turns: lists of token ids."""

    pad_id, holds_weights, load_seconds = 0, False, 0.0

    def __init__(self, tokenizer, scripts: list[list[list[int]]]):
        self.tokenizer, self.scripts = tokenizer, scripts
        self.turn = [0] * len(scripts)
        self.calls = []  # (contexts, budgets, streams, stop) of each extend

    def _ended_by(self, tokens: list[int], stop) -> tuple[bool, str | None]:
        text = self.tokenizer.decode(tokens)
        found = [string for string in stop if text.endswith(string)]
        return (True, found[0]) if found else (bool(tokens) and tokens[-1] == self.tokenizer.eos_token_id, None)

    def _next(self, rows, budgets, stop):
        completions, stopped, ended = [], [], []
        for row, budget in zip(rows, budgets):
            tokens = self.scripts[row][self.turn[row]][:budget]
            self.turn[row] += 1
            done, string = self._ended_by(tokens, stop)
            completions.append(tokens)
            stopped.append(done)
            ended.append(string)
        return Generation(completions, stopped, None, ended)

    def generate(self, prompts, samples_per_prompt, max_new_tokens, temperature, generator=None, seeds=None,
                 stop=None):
        self.prompts = prompts
        rows = list(range(len(prompts) * samples_per_prompt))
        return self._next(rows, [max_new_tokens] * len(rows), stop)

    def extend(self, contexts, budgets, temperature, generator=None, streams=None, stop=None):
        self.calls.append((contexts, budgets, streams, stop))
        rows = []
        for context in contexts:  # the first row not yet taken whose turns so far the context holds, in order
            rows.append(next(row for row in range(len(self.scripts)) if row not in rows
                             and self.turn[row] < len(self.scripts[row])
                             and holds_in_order(context, self.scripts[row][:self.turn[row]])))
        return self._next(rows, budgets, stop)

    def close(self):
        pass


def holds_in_order(sequence: list[int], pieces: list[list[int]]) -> bool:
    """Whether each piece occurs in `sequence` contiguously, each after the one before."""
    start = 0
    for piece in pieces:
        found = next((i for i in range(start, len(sequence) - len(piece) + 1)
                      if sequence[i:i + len(piece)] == piece), None)
        if found is None:
            return False
        start = found + len(piece)
    return True


def byte_tokens(tokenizer, text: str) -> list[int]:
    """`text` as one token per character: a sequence a model can sample, though no BPE encoding gives it."""
    return [tokenizer.convert_tokens_to_ids(piece) for character in text
            for piece in tokenizer.tokenize(character)]


def test_token_in_token_out_keeps_every_sampled_id_and_each_turn_extends_the_last(bpe):
    first = byte_tokens(bpe, "<think> 12 * 13 <python>print(12 * 13)</python>")
    second = byte_tokens(bpe, "</think> <answer> 156 </answer>")
    engine = ScriptedEngine(bpe, [[first, second]])
    tools = ToolUse(engine, bpe, ToolSettings())
    prompt = bpe.encode("Q: 12 * 13 =")
    result = tools.generate([prompt], 1, 200, 1.0, seeds=[5])
    output = tools.output_ids("156\n")
    assert output == bpe.encode("<output>\n") + bpe.encode("156\n") + bpe.encode("</output>\n")
    assert result.completions == [first + output + second]  # every sampled span id for id, the output between
    assert result.sampled_mask == [[1] * len(first) + [0] * len(output) + [1] * len(second)]
    assert result.stopped == [True] and [call.status for call in result.tool_calls[0]] == ["ok"]
    (contexts, budgets, streams, _), = engine.calls
    assert contexts == [prompt + first + output]  # the next turn's input: the last one's plus exactly these ids
    assert budgets == [200 - len(first)] and streams == [RowStream(5, 0, len(first))]
    text = bpe.decode(result.completions[0])
    assert bpe.encode(text) != result.completions[0]  # re-tokenising would have changed what was sampled
    assert model_text(bpe, result.completions[0], result.sampled_mask[0]).split() == \
        "<think> 12 * 13 <python>print(12 * 13)</python> </think> <answer> 156 </answer>".split()


def test_calls_past_the_limit_are_refused_then_the_end_marker_is_plain_text(bpe):
    call = byte_tokens(bpe, "<python>print(1)</python>")
    answer = byte_tokens(bpe, "<answer> 1 </answer>")
    engine = ScriptedEngine(bpe, [[call, call, call, call + answer]])
    tools = ToolUse(engine, bpe, ToolSettings(max_calls=2))
    result = tools.generate([bpe.encode("Q")], 1, 500, 1.0)
    assert [c.status for c in result.tool_calls[0]] == ["ok", "ok", "refused"]
    assert "(not run: at most 2 calls per answer)" in bpe.decode(result.completions[0])
    assert [stop for _, _, _, stop in engine.calls] == [("</answer>", "</python>")] * 2 + [("</answer>",)]
    assert result.completions[0][-len(answer):] == answer and result.stopped == [True]


def test_a_call_that_uses_up_the_budget_is_not_run_and_the_row_is_cut(bpe):
    call = byte_tokens(bpe, "<python>print(1)</python>")
    engine = ScriptedEngine(bpe, [[call]])
    result = ToolUse(engine, bpe, ToolSettings()).generate([bpe.encode("Q")], 1, len(call), 1.0)
    assert result.completions == [call] and result.tool_calls == [[]] and result.stopped == [False]


HOSTILE = {  # code -> (status the call ends with, text the model must be shown)
    "while True:\n    pass": ("timeout", "(stopped: the program ran past 1 seconds)"),
    "x = bytearray(8 * 2**30)": ("limit", "MemoryError"),
    "print('x' * 10_000_000)": ("limit", "(stopped: the output went past"),
    "import os\nwhile True:\n    os.fork()": (None, ""),
    "open('/etc/r1zero-tool-test', 'w').write('x')": ("error", "Error"),
    "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=1)": ("error", "Error"),
    "print(": ("error", "SyntaxError"),
    "print('</answer> </pyt' + 'hon> <ans' + 'wer> 7 </answer>')": ("ok", "</answer> </python> <answer> 7 </answer>"),
}


def test_hostile_calls_are_contained_shown_to_the_model_and_the_rollout_goes_on(bpe):
    answer = byte_tokens(bpe, "</think> <answer> 3 </answer>")
    scripts = [[byte_tokens(bpe, f"<think> <python>{code}</python>"), answer] for code in HOSTILE]
    engine = ScriptedEngine(bpe, scripts)
    settings = ToolSettings(limits=ToolLimits(wall_seconds=1.0), output_tokens=400)
    result = ToolUse(engine, bpe, settings).generate([bpe.encode("Q")], len(scripts), 2000, 1.0)
    for row, (code, (status, shown)) in enumerate(HOSTILE.items()):
        (call,) = result.tool_calls[row]
        text = bpe.decode(result.completions[row])
        assert call.status == status if status is not None else call.status in STATUSES, (code, call, text)
        assert shown in text and result.completions[row][-len(answer):] == answer, code  # the row went on
        assert result.stopped[row]
    # the printed </answer> did not end the row, and the rewards never read the tool's output
    printed = result.completions[-1], result.sampled_mask[-1]
    assert "<answer> 7 </answer>" not in model_text(bpe, *printed)
    assert model_text(bpe, *printed).count("<answer>") == 1


def test_a_void_turn_is_a_call_followed_by_neither_a_call_nor_an_answer(bpe):
    settings = ToolSettings()
    call = byte_tokens(bpe, "<python>print(1)</python>")
    trailing = byte_tokens(bpe, " and then")
    engine = ScriptedEngine(bpe, [[call, trailing], [call, byte_tokens(bpe, "<answer> 1 </answer>")],
                                  [byte_tokens(bpe, " no call")]])
    result = ToolUse(engine, bpe, settings).generate([bpe.encode("Q")], 3, 300, 1.0)
    voids = [is_void(c, m, len(calls), bpe, settings)
             for c, m, calls in zip(result.completions, result.sampled_mask, result.tool_calls)]
    assert voids == [True, False, False]


# ---- r1zero's engine continues a row exactly where it stopped -----------------------------------------------

def test_a_row_continued_with_its_stream_draws_what_one_long_turn_would_have(llama_dir):
    from transformers import AutoModelForCausalLM

    from r1zero.models import load_tokenizer
    from r1zero.templates import build_prompt

    tokenizer = load_tokenizer(llama_dir)
    model = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    engine = TransformersEngine(model, tokenizer)
    prompt = tokenizer(build_prompt("What is 3 + 4 + 5"), add_special_tokens=False)["input_ids"]
    whole = engine.generate([prompt], 3, 16, 1.0, seeds=[11], stop=("</never>",))
    assert all(len(c) == 16 for c in whole.completions)  # nothing stopped early: every token comparable
    for sample in range(3):
        cut = 6
        head = whole.completions[sample][:cut]
        rest = engine.extend([prompt + head], [16 - cut], 1.0, streams=[RowStream(11, sample, cut)],
                             stop=("</never>",))
        assert head + rest.completions[0] == whole.completions[sample]
    uniforms = stream_uniforms([RowStream(3, 1, 2)], [5])  # row 1 of a (2, 7) draw, columns 2..6
    assert torch.equal(uniforms[0], torch.rand(2, 7, generator=torch.Generator().manual_seed(3))[1, 2:])


# ---- the mask everywhere --------------------------------------------------------------------------------------

def rollout_with_tool_tokens(advantages):
    """Two completions of 6 tokens; row 0's positions 2-3 are a tool's output, row 1 has none but padding."""
    from r1zero.update import Rollout

    sampled = torch.tensor([[1, 1, 0, 0, 1, 1], [1, 1, 1, 1, 0, 0]], dtype=torch.float32)
    completion = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], dtype=torch.float32)
    return Rollout(prompt_ids=torch.zeros(1, 1, dtype=torch.long), prompt_mask=torch.ones(1, 1),
                   group_index=torch.zeros(2, dtype=torch.long), completion_ids=torch.zeros(2, 6, dtype=torch.long),
                   completion_mask=completion, sampled_mask=sampled, advantages=advantages,
                   old_logprobs=torch.full((2, 6), -1.0), ref_logprobs=torch.full((2, 6), -0.5))


@pytest.mark.parametrize("loss", sorted(algorithms.POLICY_LOSSES))
@pytest.mark.parametrize("aggregation", sorted(algorithms.LOSS_AGGREGATIONS))
def test_no_gradient_flows_through_a_tool_token_in_any_loss_aggregation_or_kl(loss, aggregation):
    from r1zero.update import KLPenalty, UpdateSettings, policy_loss_terms

    rollout = rollout_with_tool_tokens(torch.tensor([1.0, -0.5]))
    settings = UpdateSettings(policy_loss=algorithms.POLICY_LOSSES[loss], clip_low=0.2, clip_high=0.2,
                              kl=KLPenalty(0.1, algorithms.KL_ESTIMATORS["k3"], "loss"),
                              aggregation=algorithms.LOSS_AGGREGATIONS[aggregation], max_new_tokens=6,
                              max_grad_norm=1.0, updates_per_batch=1, minibatch_size=0, microbatch_size=0,
                              microbatch_tokens=0)
    logprobs = torch.full((2, 6), -0.9, requires_grad=True)
    terms = policy_loss_terms(logprobs, rollout, settings)
    loss_value = (terms.per_token_loss * settings.aggregation(rollout.token_mask, 6)).sum()
    loss_value.backward()
    assert torch.equal(rollout.token_mask, rollout.sampled_mask)
    assert (logprobs.grad[0, 2:4] == 0).all() and (logprobs.grad[1, 4:] == 0).all()
    assert (logprobs.grad[rollout.sampled_mask > 0] != 0).all()  # every sampled token does get a gradient


def test_gae_steps_over_a_tool_output_as_if_it_were_not_there():
    # row: sampled a, b, tool x, x, sampled c; reward 1 on c; gamma 1, lam 1, values 0.1 .. 0.5
    values = torch.tensor([[0.1, 0.2, 9.0, 9.0, 0.5]])
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0, 1.0]])
    rewards = algorithms.outcome_token_rewards(torch.tensor([1.0]), mask)
    assert rewards.tolist() == [[0.0, 0.0, 0.0, 0.0, 1.0]]  # on the last sampled token
    result = algorithms.gae(rewards, values, mask, gamma=1.0, lam=1.0)
    # A_c = 1 - 0.5 = 0.5; A_b = 0 + V_c - V_b + A_c - (V_c - V_b)... Monte Carlo: A_t = return 1 - V_t
    assert torch.allclose(result.advantages, torch.tensor([[0.9, 0.8, 0.0, 0.0, 0.5]]))
    half = algorithms.gae(rewards, values, mask, gamma=1.0, lam=0.0)  # one-step TD: delta_b = V_c - V_b = 0.3
    assert torch.allclose(half.advantages, torch.tensor([[0.1, 0.3, 0.0, 0.0, 0.5]]))
    plain = algorithms.gae(rewards[:, [0, 1, 4]], values[:, [0, 1, 4]], mask[:, [0, 1, 4]], 0.9, 0.8)
    holed = algorithms.gae(rewards, values, mask, 0.9, 0.8)
    assert torch.allclose(holed.advantages[:, [0, 1, 4]], plain.advantages)  # the same as without the output


# ---- in training --------------------------------------------------------------------------------------------

def test_with_no_call_the_multi_turn_path_gives_the_single_turn_runs_metrics_and_weights(llama_dir, tmp_path,
                                                                                         length_reward):
    from safetensors.torch import load_file

    from conftest import read_metrics, tiny_run_config, without_timings
    from r1zero.trainer import train

    runs = {}
    for tools in ("none", "python"):  # the tiny model's vocabulary cannot even spell </python>: no row ever calls
        config = tiny_run_config(llama_dir, tmp_path / tools, tools=tools, tool_prompt=False, eval_every=2,
                                 max_tool_calls=1, tool_output_tokens=8)
        folder = train(config)
        records = [{k: v for k, v in r.items() if not k.startswith("tools/")} for r in read_metrics(folder)]
        runs[tools] = (without_timings(records), load_file(folder / "final" / "model.safetensors"),
                       [r for r in read_metrics(folder) if "tools/calls_mean" in r])
    assert runs["python"][0] == runs["none"][0]
    assert all(torch.equal(runs["python"][1][name], weight) for name, weight in runs["none"][1].items())
    with_tools = runs["python"][2]
    assert len(with_tools) == 3 and all(r["tools/calls_mean"] == 0 and r["tools/void_turn_rate"] == 0
                                        for r in with_tools)
    assert runs["none"][2] == []  # no tools/ keys without tools


def tool_model_engine():
    from transformers import AutoModelForCausalLM

    from r1zero.models import SHIPPED_TOOLS_MODEL, load_tokenizer

    tokenizer = load_tokenizer(SHIPPED_TOOLS_MODEL)
    model = AutoModelForCausalLM.from_pretrained(SHIPPED_TOOLS_MODEL).eval()
    return tokenizer, ToolUse(TransformersEngine(model, tokenizer), tokenizer, ToolSettings(output_tokens=8))


def test_a_prompts_samples_with_tool_calls_do_not_depend_on_the_batch():
    # the tool base model in the template calls now and then at temperature 1; each row's continuation after a call
    # draws from its own stream, so a prompt gives the same turns in any batch, in any position
    from r1zero.tasks import pair_sums
    from r1zero.templates import encode_prompts, tool_sentence

    tokenizer, engine = tool_model_engine()
    prompts = encode_prompts([e.prompt for e in pair_sums.held_out(6)], "r1_zero", tokenizer, tool_sentence())
    seeds = [21, 22, 23, 24, 25, 26]
    whole = engine.generate(prompts, 8, 32, 1.0, seeds=seeds)
    order = [5, 2, 0, 3]
    part = engine.generate([prompts[i] for i in order], 8, 32, 1.0, seeds=[seeds[i] for i in order])
    for position, index in enumerate(order):
        for name in ("completions", "sampled_mask", "stopped"):
            assert getattr(part, name)[8 * position:8 * position + 8] == getattr(whole, name)[8 * index:8 * index + 8]
    called = [row for row, calls in enumerate(whole.tool_calls) if calls]
    assert len(called) >= 2 and any(row // 8 in order for row in called)  # turns after calls were compared
    assert len({tuple(c) for c in whole.completions[:8]}) > 1  # and a prompt's samples differ


def tool_run_config(folder, **settings):
    from r1zero.config import TrainConfig

    base = dict(model="builtin-tools", task="pair_sums", tools="python", max_tool_calls=2, tool_output_tokens=8,
                output_dir=str(folder / "run"), max_steps=4, prompts_per_step=4, group_size=4, max_new_tokens=32,
                eval_problems=4, eval_samples=2, eval_every=2, checkpoint_every=2, report_to=["none"],
                eval_out_of_distribution=False)
    return TrainConfig(**(base | settings))


def comparable(records):
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "throughput/", "ray/")) and k != "tools/seconds"}
            for r in records]


def test_a_tool_run_resumes_exactly_and_ray_workers_killed_mid_rollout_give_the_same_run(tmp_path, monkeypatch):
    from conftest import kill_first_worker_at_step_2, read_metrics
    from r1zero.trainer import train

    reference = read_metrics(train(tool_run_config(tmp_path / "whole")))
    steps = [r for r in reference if "tools/calls_mean" in r]
    assert len(steps) == 4 and sum(r["tools/calls_mean"] for r in steps) > 0  # calls were made and trained on
    train(tool_run_config(tmp_path / "resumed", max_steps=2))
    resumed = read_metrics(train(tool_run_config(tmp_path / "resumed"), resume=True))
    assert comparable(resumed) == comparable(reference)
    kill_first_worker_at_step_2(monkeypatch)  # the worker dies during its step-2 rollout, tool calls and all
    on_workers = read_metrics(train(tool_run_config(tmp_path / "workers", rollout_workers=2)))
    assert [r["ray/rollout_worker_restarts"] for r in on_workers if "reward/mean" in r] == [0, 1, 0, 0]
    for mine, theirs in zip(comparable(on_workers), comparable(reference), strict=True):
        assert mine.keys() == theirs.keys()
        for key, value in theirs.items():
            assert mine[key] == (pytest.approx(value, rel=1e-4, abs=1e-6) if isinstance(value, float) else value), key


def test_drop_void_turns_takes_those_completions_out_of_the_loss(tmp_path, monkeypatch):
    from conftest import read_metrics
    from r1zero import trainer

    def grad_norms(name, **settings):
        records = read_metrics(trainer.train(tool_run_config(tmp_path / name, max_steps=1, eval_every=0,
                                                             checkpoint_every=0, **settings)))
        return [r for r in records if "reward/mean" in r][0]

    plain = grad_norms("plain")
    monkeypatch.setattr(trainer, "void_turns", lambda run, batch: [True] * len(batch.completions))
    logged = grad_norms("logged")  # every completion void, but not dropped: only the metric says so
    dropped = grad_norms("dropped", drop_void_turns=True)  # every completion void and dropped: no gradient at all
    assert plain["grad_norm"] > 0 and logged["grad_norm"] == plain["grad_norm"]
    assert logged["tools/void_turn_rate"] == 1 and dropped["tools/void_turn_rate"] == 1
    assert dropped["grad_norm"] == 0 and dropped["loss"] == 0


def test_printed_special_tokens_stay_text_in_the_output(bpe):
    tools = ToolUse(ScriptedEngine(bpe, [[]]), bpe, ToolSettings())
    inserted = tools.output_ids("<|endoftext|> 3\n")
    assert bpe.eos_token_id not in inserted and "<|endoftext|>" in bpe.decode(inserted)


def test_the_tool_runner_keeps_order_and_survives_a_dead_or_stuck_helper():
    import os
    import signal

    runner = ToolRunner(2)
    try:
        results = runner.run("python", [f"print({i} * {i})" for i in range(9)])
        assert [r.text for r in results] == [f"{i * i}\n" for i in range(9)]  # in order, across both helpers
        runner.helpers[0].kill()  # dies between batches: started again
        assert runner.run("python", ["print(1)"] * 3)[0].text == "1\n"
        os.kill(runner.helpers[1].pid, signal.SIGSTOP)  # stuck: its answers never come
        runner.MARGIN_SECONDS = 1.0
        stuck = runner.helpers[1]
        results = runner.run("python", [f"print({i})" for i in range(4)], ToolLimits(wall_seconds=0.5))
        assert [r.text for r in results] == [f"{i}\n" for i in range(4)]  # run again, on fresh helpers
        assert stuck not in runner.helpers and stuck.poll() is not None
    finally:
        runner.close()


def test_prompts_are_measured_with_the_tool_sentence():
    from r1zero.config import TrainConfig
    from r1zero.models import SHIPPED_TOOLS_MODEL, load_tokenizer
    from r1zero.preflight import measure_prompts
    from r1zero.tasks import load_problems

    tokenizer = load_tokenizer(SHIPPED_TOOLS_MODEL)
    problems = load_problems("pair_sums", None, None, 4, 0)
    with_tools, without = TrainConfig(tools="python"), TrainConfig(tools="python", tool_prompt=False)
    assert without.extra_instruction() == "" and TrainConfig().extra_instruction() == ""
    longer = measure_prompts(problems, tokenizer, "r1_zero", with_tools.extra_instruction())
    plain = measure_prompts(problems, tokenizer, "r1_zero", without.extra_instruction())
    sentence = len(tokenizer(" " + with_tools.extra_instruction(), add_special_tokens=False)["input_ids"])
    assert [a - b for (_, a), (_, b) in zip(longer, plain)] == [sentence] * len(plain)
