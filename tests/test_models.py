"""r1zero.models at real sizes' needs: log-probabilities without the whole logits, activation checkpointing and
mixed precision, each giving the numbers of the plain path."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from r1zero import models
from r1zero.config import TrainConfig
from r1zero.critic import ValueModel
from r1zero.models import (PRECISIONS, autocast, chunked_head_logprobs,
                           completion_logprobs, enable_checkpointing, full_sequence_forward, plain_output_head,
                           shared_prompt_forward)
from r1zero.update import UpdateSettings, pack_rollout, update_plan, update_policy

PROMPTS = [[3, 4, 5, 6], [7, 8], [9]]


@pytest.fixture(autouse=True)
def chunk_any_vocabulary(monkeypatch):
    """The tiny models' vocabularies are below models.CHUNK_MIN_VOCABULARY: chunk them anyway, to test it."""
    monkeypatch.setattr(models, "CHUNK_MIN_VOCABULARY", 0)
COMPLETIONS = [[10, 11, 12], [13], [14, 15], [16, 17, 18, 19], [20], [21, 22]]


def rollout():
    return pack_rollout(PROMPTS, COMPLETIONS, 2, 0, torch.tensor([1.0, -0.5, 0.2, -1.0, 0.7, 0.1]),
                        torch.device("cpu"))


def gradients(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
@pytest.mark.parametrize("chunk_tokens", [1, 3, 1000])
def test_chunked_logprobs_equal_the_whole_logits_with_their_gradients(request, architecture, chunk_tokens):
    # 13 real tokens: chunks of 1 (13 pieces), 3 (5 pieces, the last of 1) and 1000 (one piece)
    model = AutoModelForCausalLM.from_pretrained(request.getfixturevalue(f"{architecture}_dir"))
    batch = rollout()
    mask = batch.completion_mask
    plain, plain_entropy = batch.logprobs(model, with_entropy=True)
    (plain * mask).sum().backward()
    plain_gradient = gradients(model)
    model.zero_grad()
    chunked, chunked_entropy = batch.logprobs(model, with_entropy=True, chunk_tokens=chunk_tokens)
    (chunked * mask).sum().backward()
    torch.testing.assert_close(chunked * mask, plain * mask, atol=1e-6, rtol=0)
    torch.testing.assert_close(chunked_entropy * mask, plain_entropy * mask, atol=1e-6, rtol=0)
    torch.testing.assert_close(gradients(model), plain_gradient, atol=1e-6, rtol=1e-5)
    assert chunked[mask == 0].abs().max() == 0  # padding is skipped, not computed
    assert plain_output_head(model) is model.lm_head


def test_chunked_logprobs_never_hold_more_than_a_chunk_of_logits(llama_dir, monkeypatch):
    model = AutoModelForCausalLM.from_pretrained(llama_dir)
    widths = []  # the rows of every chunk of logits computed, forward and recomputed in the backward
    compute = models.chunk_logits
    monkeypatch.setattr(models, "chunk_logits", lambda states, *head: widths.append(len(states)) or compute(states, *head))
    model.lm_head.register_forward_hook(lambda module, inputs, output: widths.append(inputs[0].shape[:-1]))
    batch = rollout()
    logprobs, _ = batch.logprobs(model, chunk_tokens=4)
    logprobs.sum().backward()
    # 13 tokens in chunks of 4, 4, 4, 1, each run once forward and once again in the backward; the head module
    # itself never runs (its weight goes straight to LinearHeadLogprobs)
    assert sorted(widths) == sorted([4, 4, 4, 1] * 2)
    hidden = torch.randn(2, 3, 8)
    head = torch.nn.Linear(8, 5)
    by_hand = torch.log_softmax(head(hidden), -1).gather(-1, torch.tensor([[1, 2, 0], [4, 4, 3]])[..., None])[..., 0]
    chunked, _ = chunked_head_logprobs(hidden, head, torch.tensor([[1, 2, 0], [4, 4, 3]]),
                                       torch.tensor([[1.0, 1, 0], [1, 1, 1]]), 2)
    torch.testing.assert_close(chunked, by_hand * torch.tensor([[1.0, 1, 0], [1, 1, 1]]))


def test_linear_head_logprobs_by_hand():
    # a zero weight makes every logit 0 + bias = 0: p = 1/3 over V = 3 words, log pi(y) = -log 3, entropy log 3;
    # with g = dL/dlogpi = 1, dL/dz = onehot(y) - 1/3, so for s = (1, 2), y = 0:
    #   dL/dweight = (dL/dz)^T s: row 0 (2/3)(1, 2) = (2/3, 4/3), rows 1 and 2 -(1/3)(1, 2) = (-1/3, -2/3)
    #   dL/dbias = (2/3, -1/3, -1/3); dL/ds = dL/dz @ weight = 0
    states = torch.tensor([[1.0, 2.0]], requires_grad=True)
    weight = torch.zeros(3, 2, requires_grad=True)
    bias = torch.zeros(3, requires_grad=True)
    logprobs, entropy = models.LinearHeadLogprobs.apply(states, weight, bias, torch.tensor([0]), 4, True)
    logprobs.sum().backward()
    torch.testing.assert_close(logprobs, torch.tensor([-1.0986123]))
    torch.testing.assert_close(entropy, torch.tensor([1.0986123]))
    torch.testing.assert_close(weight.grad, torch.tensor([[2 / 3, 4 / 3], [-1 / 3, -2 / 3], [-1 / 3, -2 / 3]]))
    torch.testing.assert_close(bias.grad, torch.tensor([2 / 3, -1 / 3, -1 / 3]))
    torch.testing.assert_close(states.grad, torch.zeros(1, 2))


@pytest.mark.parametrize("chunk_tokens", [1, 2, 5])
def test_linear_head_logprobs_pass_gradcheck(chunk_tokens):
    # float64 finite differences against the hand-written backward, for the states, the weight and the bias, with
    # chunks of 1, 2 (an uneven last chunk of 1) and 5 (one chunk)
    generator = torch.Generator().manual_seed(0)
    states = torch.randn(5, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = torch.randn(7, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    bias = torch.randn(7, dtype=torch.float64, generator=generator, requires_grad=True)
    targets = torch.tensor([0, 6, 3, 3, 1])
    assert torch.autograd.gradcheck(
        lambda s, w, b: models.LinearHeadLogprobs.apply(s, w, b, targets, chunk_tokens, False)[0], (states, weight, bias))


def test_linear_head_logprobs_under_bfloat16_autocast_match_autograd():
    # mixed precision: the products in bfloat16 as torch.autocast would run head(states), the softmax in float32
    generator = torch.Generator().manual_seed(0)
    states = torch.randn(6, 16, generator=generator, requires_grad=True)
    head = torch.nn.Linear(16, 40)
    targets = torch.randint(0, 40, (6,), generator=generator)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference = torch.log_softmax(head(states).float(), -1).gather(-1, targets[:, None]).squeeze(-1)
    reference.sum().backward()
    expected = (reference.detach(), states.grad.clone(), head.weight.grad.clone())
    states.grad, head.weight.grad = None, None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logprobs, _ = models.LinearHeadLogprobs.apply(states, head.weight, head.bias, targets, 4, False)
    logprobs.sum().backward()
    assert logprobs.dtype == torch.float32 and head.weight.grad.dtype == torch.float32
    torch.testing.assert_close(logprobs, expected[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(states.grad, expected[1], atol=1e-2, rtol=1e-2)  # bfloat16 products, either way
    torch.testing.assert_close(head.weight.grad, expected[2], atol=1e-2, rtol=1e-2)


def test_a_head_that_is_not_a_plain_linear_layer_is_chunked_through_autograd(llama_dir):
    # a LoRA-wrapped (or any other) output layer runs as a module, each chunk checkpointed: the same numbers
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float64),
                           LoraConfig(r=2, target_modules=["lm_head"], init_lora_weights=False))
    head = plain_output_head(model)
    assert type(head) is not torch.nn.Linear
    batch = rollout()
    plain, _ = batch.logprobs(model)
    (plain * batch.completion_mask).sum().backward()
    plain_gradient = gradients(model)
    model.zero_grad()
    chunked, _ = batch.logprobs(model, chunk_tokens=3)
    (chunked * batch.completion_mask).sum().backward()
    torch.testing.assert_close(chunked, plain * batch.completion_mask, atol=1e-12, rtol=0)
    torch.testing.assert_close(gradients(model), plain_gradient, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_whole_sequences_give_the_shared_prompt_numbers_and_gradients(request, architecture):
    model = AutoModelForCausalLM.from_pretrained(request.getfixturevalue(f"{architecture}_dir"))
    batch, mask = rollout(), rollout().completion_mask[..., None]
    arguments = (batch.prompt_ids, batch.prompt_mask, batch.group_index, batch.completion_ids, batch.completion_mask)
    shared = shared_prompt_forward(model, *arguments, bucket_cost=3)  # in length buckets
    (shared * mask).sum().backward()
    shared_gradient = gradients(model)
    model.zero_grad()
    whole = full_sequence_forward(model, *arguments)  # all rows in one forward (FSDP's single pass)
    (whole * mask).sum().backward()
    torch.testing.assert_close(whole * mask, shared * mask, atol=1e-5, rtol=0)
    torch.testing.assert_close(gradients(model), shared_gradient, atol=1e-5, rtol=1e-4)


def one_sgd_step(model, batch, **settings):
    config = TrainConfig(prompts_per_step=3, group_size=2, max_new_tokens=4, max_grad_norm=0.0, **settings)
    update = UpdateSettings.from_config(config)
    plan = update_plan(batch.lengths(), update, torch.Generator().manual_seed(0), torch.device("cpu"))
    stats = update_policy(model, torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0),
                          batch, plan, update)
    return torch.cat([p.detach().flatten() for p in model.parameters()]), stats


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_gradient_checkpointing_takes_the_same_step(llama_dir, lora):
    from peft import LoraConfig, get_peft_model

    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = enable_checkpointing(AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float64),
                                     checkpointing)
        if lora:  # adapters that start non-zero, so that their gradients depend on the layers around them
            model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                     task_type="CAUSAL_LM", init_lora_weights=False))
        model.train()
        saved, embedded = [], []  # every number autograd keeps for the backward; the tokens each forward embeds
        model.get_input_embeddings().register_forward_hook(lambda module, inputs, output:
                                                           embedded.append(inputs[0].numel()))
        with torch.autograd.graph.saved_tensors_hooks(lambda tensor: saved.append(tensor.numel()) or tensor,
                                                      lambda tensor: tensor):
            logprobs, _ = rollout().logprobs(model, chunk_tokens=5)
        # both paths run each of the 3 prompts (4 wide) once, then the 6 completions (4 wide) after their shared
        # keys and values: 12 + 24 tokens, where whole sequences would be 6 x 8 = 48
        assert embedded == [12, 24]
        before = torch.cat([p.detach().flatten() for p in model.parameters()])
        after, stats = one_sgd_step(model, rollout(), logprob_chunk_tokens=5)
        assert (after - before).abs().max() > 1e-4  # a real step
        results.append((after, stats, sum(saved)))
    (plain, plain_stats, plain_saved), (checkpointed, checkpointed_stats, checkpointed_saved) = results
    assert checkpointed_saved < plain_saved / 2  # the checkpointed layers keep their inputs only
    # the same operations, the backward's recomputation reading the same shared keys and values
    torch.testing.assert_close(checkpointed, plain, atol=1e-12, rtol=0)
    assert checkpointed_stats.loss == pytest.approx(plain_stats.loss, abs=1e-12)


def test_the_critic_checkpointed_gives_the_same_values_and_gradients(llama_dir):
    results = []
    for checkpointing in (False, True):
        model = ValueModel.from_base(llama_dir, torch.float64, torch.device("cpu"), checkpointing).train()
        torch.nn.init.normal_(model.head.weight, std=0.5, generator=torch.Generator().manual_seed(1))
        values = model.completion_values(rollout()) * rollout().completion_mask  # padding holds no value
        values.sum().backward()
        results.append((values.detach(), gradients(model)))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-6, rtol=0)  # 1e-6: see the test above
    torch.testing.assert_close(results[1][1], results[0][1], atol=1e-5, rtol=1e-4)
    assert results[0][0].abs().max() > 0.1


def test_bfloat16_is_float32_master_weights_with_bfloat16_products(llama_dir):
    precision = PRECISIONS["bfloat16"]
    assert (precision.parameters, precision.compute, precision.reference) == (torch.float32, torch.bfloat16,
                                                                              torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=precision.parameters)
    products = []
    model.model.layers[0].mlp.down_proj.register_forward_hook(lambda module, inputs, output: products.append(output.dtype))
    batch = rollout()
    weights, stats = one_sgd_step(model, batch, dtype="bfloat16")
    assert products == [torch.bfloat16, torch.bfloat16]  # the shared prompt pass and the completions, in bfloat16
    assert weights.dtype == torch.float32 and stats.grad_norm > 0
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())
    # the same step in float32 differs only by bfloat16's rounding of the products (about 3 significant digits)
    full, _ = one_sgd_step(AutoModelForCausalLM.from_pretrained(llama_dir), batch)
    assert (weights - full).abs().max() < 0.05 and (weights - full).abs().max() > 0
    with autocast(model, None):
        assert model(input_ids=torch.tensor([[3, 4]])).logits.dtype == torch.float32


def test_small_vocabularies_keep_the_whole_logits(llama_dir, monkeypatch):
    monkeypatch.setattr(models, "CHUNK_MIN_VOCABULARY", 32768)
    model = AutoModelForCausalLM.from_pretrained(llama_dir)
    widths = []
    model.lm_head.register_forward_hook(lambda module, inputs, output: widths.append(tuple(inputs[0].shape)))
    rollout().logprobs(model, chunk_tokens=4)
    assert all(len(width) == 3 for width in widths)  # (rows, positions, hidden): the plain path, not chunks
