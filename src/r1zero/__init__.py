"""r1zero: DeepSeek-R1-Zero style reinforcement learning from a base model.

    r1zero train            # the embedded default: built-in base model, built-in task, CPU

Data flows one way: settings -> data and prompts -> rollout -> rewards -> advantages -> update -> logs.
"""

__version__ = "0.1.0"
