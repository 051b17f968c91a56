"""Loading the policy, the frozen reference model and the tokenizer; log-probabilities of completions.

Shapes: N sequences, P prompt width (left-padded), T completion width (right-padded), V vocabulary.
"""

from __future__ import annotations

from pathlib import Path

import torch

from r1zero.algorithms import entropy_from_logits, token_logprobs
from r1zero.pretrain import SHIPPED_MODEL

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model_path(model: str) -> Path:
    """"builtin" is the base model shipped inside the package; anything else is a local folder."""
    path = SHIPPED_MODEL if model == "builtin" else Path(model)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model folder {path} has no config.json: give a folder saved with save_pretrained")
    return path


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        raise FileNotFoundError(f"model folder {path} has no tokenizer (tokenizer.json or tokenizer_config.json); "
                                f"save one beside the weights with tokenizer.save_pretrained({str(path)!r})")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: Path, dtype: str, device: torch.device, trainable: bool = True):
    """A causal LM from a local folder; `trainable=False` gives a frozen copy in eval mode (the reference)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype]).to(device)
    model.train(trainable)
    if not trainable:
        model.eval()
        model.requires_grad_(False)
    return model


def completion_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int,
                        with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probabilities of the completion tokens under `model` (and their entropy, without gradient).

    input_ids and attention_mask are (N, P+T): left-padded prompts followed by right-padded completions.
    """
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (N, P+T)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    logits = logits[:, prompt_width - 1:-1]  # (N, T, V): position i predicts token i+1
    logprobs = token_logprobs(logits, input_ids[:, prompt_width:])  # (N, T)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = entropy_from_logits(logits.detach())  # (N, T)
    return logprobs, entropy
