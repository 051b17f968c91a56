"""r1zero.distributed on a local Ray cluster (ray.init(num_cpus=2)): data-parallel ranks give the one-process
gradient, runs give the same metrics whatever the number of rollout workers and ranks, a killed rollout worker is
replaced, a stale rollout is refused, and Ray scoring keeps the pool's limits."""

import os
import sys
import time

import pytest
import ray
import torch
from transformers import AutoModelForCausalLM

from conftest import kill_first_worker_at_step_2, read_metrics, tiny_run_config, without_timings
from r1zero.config import TrainConfig
from r1zero.example import Example
from r1zero.models import load_tokenizer
from r1zero.rewards import RewardScorer, ScoringPool
from r1zero.trainer import train
from r1zero.update import ONE_PROCESS, UpdateSettings, pack_rollout, update_plan, update_policy

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import this test module
pytestmark = pytest.mark.ray  # every test here runs on a local Ray cluster

SHARED = dict(ray_worker_cpus=0.5)  # two rollout workers and two ranks fit in the 2 CPUs of the local cluster


@pytest.fixture(scope="module", autouse=True)
def local_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


# ---- data-parallel ranks ---------------------------------------------------------------------------------

def aggregation_updates(model_dir, rollout, plan, aggregations, parallel=ONE_PROCESS):
    """{aggregation: (weights after one SGD step of lr 1, i.e. the weights minus the gradient; the loss)}. With a
    sharded `parallel`, the model is split with FSDP2 first and the full weights are gathered back."""
    from r1zero.distributed import shard

    results = {}
    for aggregation in aggregations:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64)
        if parallel.single_pass:  # FSDP
            shard(model)
        config = TrainConfig(prompts_per_step=2, group_size=3, microbatch_size=3, kl_coef=0.1, max_new_tokens=6,
                             loss_aggregation=aggregation, max_grad_norm=0.0)
        stats = update_policy(model, torch.optim.SGD(model.parameters(), lr=1.0), rollout, plan,
                              UpdateSettings.from_config(config), parallel)
        full = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in model.parameters()]
        results[aggregation] = (torch.cat([p.detach().flatten() for p in full]), stats.loss)
    return results


@ray.remote(num_cpus=0.5)
def rank_updates(rank, world, host, port, model_dir, rollout, plan, aggregations, sharded=False):
    import torch.distributed as dist

    from r1zero.distributed import DataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://{host}:{port}", rank=rank, world_size=world)
    if sharded:  # and log-probabilities in chunks through the head (the tiny vocabulary would not chunk)
        from r1zero import models
        models.CHUNK_MIN_VOCABULARY = 0
    try:
        parallel = DataParallel(rank, world, sharded)
        results = aggregation_updates(model_dir, rollout, plan, aggregations, parallel)
        if sharded:  # each rank held about half of every weight
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64)
            total = sum(p.numel() for p in model.parameters())
            from r1zero.distributed import shard
            shard(model)
            results["held"] = sum(p.to_local().numel() for p in model.parameters()) / total
        return results
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("sharded", [False, True], ids=["replicated", "fsdp"])
def test_two_ranks_give_the_one_process_gradient_in_every_aggregation_mode(llama_dir, sharded):
    # Six rows of 3, 5, 1, 4, 2 and 6 tokens in micro-batches of 3 rows: rank 0 gets 2 rows of each, rank 1 one,
    # so the ranks hold different token counts and "token" mode is right only if each divides by the minibatch's
    # global count (sum over ranks of its tokens / 21), not by its own.
    from r1zero.distributed import free_port

    torch.manual_seed(0)
    completions = [[int(t) for t in torch.randint(10, 90, (length,))] for length in (3, 5, 1, 4, 2, 6)]
    rollout = pack_rollout([[3, 4, 5], [6, 7]], completions, 3, 0, torch.tensor([1.0, -0.5, 0.2, -1.0, 0.7, 0.1]),
                           torch.device("cpu"), ref_logprobs=-torch.rand(6, 6, dtype=torch.float64))  # a KL term too
    config = TrainConfig(prompts_per_step=2, group_size=3, microbatch_size=3, max_new_tokens=6)
    plan = update_plan(rollout.lengths(), UpdateSettings.from_config(config), torch.Generator(), torch.device("cpu"))
    aggregations = ("sequence", "token", "constant")
    single = aggregation_updates(str(llama_dir), rollout, plan, aggregations)
    port = free_port()
    ranks = ray.get([rank_updates.remote(rank, 2, "127.0.0.1", port, str(llama_dir), rollout, plan, aggregations,
                                         sharded) for rank in range(2)])
    if sharded:  # FSDP2 split every parameter in two along its first dimension
        assert [rank["held"] for rank in ranks] == pytest.approx([0.5, 0.5], abs=0.02)
    initial = torch.cat([p.detach().flatten() for p in
                         AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float64).parameters()])
    for aggregation in aggregations:
        weights, loss = single[aggregation]
        assert (weights - initial).abs().max() > 1e-3  # a real step was taken
        for rank_weights, rank_loss in (ranks[0][aggregation], ranks[1][aggregation]):
            torch.testing.assert_close(rank_weights, weights, atol=1e-6, rtol=0)  # the same gradient, to 1e-6
            assert rank_loss == pytest.approx(loss, abs=1e-9)
    # the modes differ, so agreeing in each is not agreeing by accident
    assert (single["token"][0] - single["sequence"][0]).abs().max() > 1e-4


@ray.remote(num_cpus=0.5)
def sharded_scoring(port, model_dir, sequences):
    """On one gloo rank: (whether the root's embeddings are still gathered right after a no-grad forward, whether
    sharded_logprobs leaves every parameter sharded, its log-probabilities)."""
    import torch.distributed as dist

    from r1zero.distributed import shard, sharded_logprobs
    from r1zero.update import score_logprobs

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64).eval().requires_grad_(False)
        shard(model)
        score_logprobs(model, sequences, len(sequences.completion_ids), single_pass=True)
        gathered = not hasattr(model.get_input_embeddings().weight, "to_local")  # FSDP2 kept the root unsharded
        logprobs = sharded_logprobs(model, sequences, 0)
        resharded = all(hasattr(parameter, "to_local") for parameter in model.parameters())
        return gathered, resharded, logprobs
    finally:
        dist.destroy_process_group()


def test_a_sharded_reference_is_resharded_after_scoring(llama_dir):
    # FSDP2 keeps a root's parameters gathered after a forward without gradient (no backward comes to reshard
    # them): the ranks' reference would hold its full embeddings through the update (0.54 GB on the 0.5B shape)
    from r1zero.distributed import free_port
    from r1zero.update import pack_sequences, score_logprobs

    torch.manual_seed(0)
    completions = [[int(t) for t in torch.randint(10, 90, (length,))] for length in (3, 5, 1, 4)]
    sequences = pack_sequences([[3, 4, 5], [6, 7]], completions, 2, 0, torch.device("cpu"))
    gathered, resharded, logprobs = ray.get(sharded_scoring.remote(free_port(), str(llama_dir), sequences))
    assert gathered and resharded
    plain = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float64).eval()
    mask = sequences.completion_mask  # (4, 5); padding's values depend on the route and are never read
    expected = score_logprobs(plain, sequences, 4) * mask
    assert expected.sum() < -1  # real log-probabilities
    torch.testing.assert_close(logprobs * mask, expected, atol=1e-10, rtol=0)


# ---- whole runs ---------------------------------------------------------------------------------------

def assert_same_metrics(records, reference):
    """Every metric but timings and Ray's counters equal, floats to float32 noise."""
    assert len(records) == len(reference)
    for record, expected in zip(records, reference):
        assert record.keys() - {k for k in record if k.startswith(("time/", "throughput/", "ray/"))} == \
            expected.keys() - {k for k in expected if k.startswith(("time/", "throughput/", "ray/"))}
        for key, value in expected.items():
            if key.startswith(("time/", "throughput/", "ray/")):
                continue
            if isinstance(value, float):
                assert record[key] == pytest.approx(value, rel=1e-4, abs=1e-6), (record["step"], key)
            else:
                assert record[key] == value, (record["step"], key)


@pytest.fixture(scope="module")
def reference_run(llama_dir, tmp_path_factory):
    """A 3-step run in this process: no workers, one rank."""
    folder = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as monkeypatch:
        from r1zero.rewards import REWARD_FUNCTIONS
        monkeypatch.setitem(REWARD_FUNCTIONS, "length", lambda completion, example: len(completion) / 100)
        train(tiny_run_config(llama_dir, folder, eval_every=2, eval_samples=2))
    return read_metrics(folder / "run")


@pytest.mark.parametrize("workers,ranks", [(1, 1), (2, 2)])
def test_metrics_do_not_depend_on_rollout_workers_or_ranks(llama_dir, tmp_path, length_reward, reference_run,
                                                           workers, ranks):
    train(tiny_run_config(llama_dir, tmp_path, eval_every=2, eval_samples=2, rollout_workers=workers,
                          train_processes=ranks, **SHARED))
    records = read_metrics(tmp_path / "run")
    assert_same_metrics(records, reference_run)
    steps = [r for r in records if "reward/mean" in r]
    assert len(steps) == 3 and all(r["ray/rollout_worker_restarts"] == 0 for r in steps)
    assert all(r["time/weight_sync_seconds"] > 0 for r in steps)
    assert steps[-1]["grad_norm"] > 0  # the update really ran (on the ranks when ranks > 1)


def test_fsdp_ranks_give_the_metrics_of_one_process(llama_dir, tmp_path, length_reward, reference_run):
    train(tiny_run_config(llama_dir, tmp_path, eval_every=2, eval_samples=2, rollout_workers=1, train_processes=2,
                          fsdp=True, **SHARED))
    assert_same_metrics(read_metrics(tmp_path / "run"), reference_run)


def test_fsdp_with_a_sharded_reference_and_lora_on_several_ranks(llama_dir, tmp_path, length_reward):
    # the KL to the reference computed by the ranks' sharded reference model equals the one-process KL; LoRA
    # adapters trained on two ranks equal those trained in one process (the reference then is the policy with
    # its adapters off, on the driver)
    for name, settings in (("kl", dict(kl_coef=0.05)), ("lora", dict(lora_rank=4, lora_alpha=8, learning_rate=5e-2))):
        local = read_metrics(train(tiny_run_config(llama_dir, tmp_path / f"{name}-local", eval_every=2, **settings)))
        for fsdp in (False, True):
            records = read_metrics(train(tiny_run_config(llama_dir, tmp_path / f"{name}-{fsdp}", eval_every=2,
                                                         train_processes=2, fsdp=fsdp, **settings, **SHARED)))
            assert_same_metrics(records, local)
        steps = [r for r in local if "reward/mean" in r]
        assert steps[-1]["grad_norm"] > 0 and (name != "kl" or steps[-1]["kl"] > 0)


def test_a_killed_rollout_worker_is_replaced_and_the_run_is_unchanged(llama_dir, tmp_path, length_reward,
                                                                      reference_run, monkeypatch):
    kill_first_worker_at_step_2(monkeypatch)
    train(tiny_run_config(llama_dir, tmp_path, eval_every=2, eval_samples=2, rollout_workers=2, **SHARED))
    records = read_metrics(tmp_path / "run")
    steps = [r for r in records if "reward/mean" in r]
    assert [r["ray/rollout_worker_restarts"] for r in steps] == [0, 1, 0]  # recorded at the step it happened
    assert_same_metrics(records, reference_run)  # its prompts were generated again, with the same seeds


def test_lora_runs_with_rollout_workers_that_receive_the_merged_weights(llama_dir, tmp_path, length_reward):
    # A large LoRA learning rate moves the adapters enough that workers holding the bare base weights would sample
    # other completions from step 2 on; with the merged weights every step's metrics match the in-process run.
    settings = dict(lora_rank=4, lora_alpha=8, learning_rate=5e-2, eval_every=2, eval_samples=2)
    reference = read_metrics(train(tiny_run_config(llama_dir, tmp_path / "local", **settings)))
    records = read_metrics(train(tiny_run_config(llama_dir, tmp_path / "ray", rollout_workers=1, **settings,
                                                 **SHARED)))
    assert_same_metrics(records, reference)
    steps = [r for r in reference if "reward/mean" in r]
    assert steps[0]["response/length_mean"] != steps[-1]["response/length_mean"]  # the policy did move


def test_merged_lora_weights_give_the_lora_models_logits(llama_dir):
    from peft import LoraConfig, get_peft_model

    from r1zero.distributed import load_arrays, weights_to_arrays

    torch.manual_seed(0)
    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(llama_dir),
                            LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)  # fresh adapters are zero: make them count
    plain = AutoModelForCausalLM.from_pretrained(llama_dir)
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    with torch.no_grad():
        before = plain(ids).logits
        load_arrays(plain, weights_to_arrays(policy))
        assert (plain(ids).logits - before).abs().max() > 1e-2
        torch.testing.assert_close(plain(ids).logits, policy(ids).logits, atol=1e-5, rtol=1e-5)


def test_a_rollout_from_an_older_policy_version_is_an_error(llama_dir):
    from r1zero.distributed import RolloutWorkers, StaleRolloutError

    policy = AutoModelForCausalLM.from_pretrained(llama_dir)
    workers = RolloutWorkers(2, policy, load_tokenizer(llama_dir), TrainConfig(**SHARED), torch.device("cpu"))
    try:
        workers.publish(4, policy)
        assert len(workers.generate([[3, 4], [5, 6]], 2, 3, 1.0, seeds=[1, 2]).completions) == 4
        ray.get(workers.workers[1].load_weights.remote(3, workers.weights))  # worker 1 falls behind
        with pytest.raises(StaleRolloutError, match="version 3, but version 4"):
            workers.generate([[3, 4], [5, 6]], 2, 3, 1.0, seeds=[1, 2])
        with pytest.raises(ValueError, match="per-prompt seeds"):
            workers.generate([[3, 4]], 2, 3, 1.0)
    finally:
        workers.close()


# ---- scoring ------------------------------------------------------------------------------------------

def test_ray_scoring_agrees_with_the_pool_and_keeps_its_time_limit(hostile):
    from r1zero.distributed import RayScoringPool

    half = Example(id="m", prompt="?", answer="\\frac{1}{2}")
    completions = ["<answer> 0.5 </answer>", "<answer> 1/2 </answer>", "<answer> 2 </answer>", "no answer"]
    with RewardScorer({"accuracy": 1.0}, "math", workers=2, time_limit_seconds=2.0) as local, \
            RewardScorer({"accuracy": 1.0}, "math", workers=2, time_limit_seconds=2.0,
                         pool_factory=RayScoringPool) as distributed:
        expected = local(completions, [half] * 4)
        assert distributed(completions, [half] * 4) == expected
        assert expected.components["accuracy"] == [1.0, 1.0, 0.0, 0.0]
    pool = RayScoringPool(2, 2.0)
    try:
        started = time.monotonic()
        scores = pool.run([(hostile["hang"], "", half), (hostile["pid"], "0", half)])
        assert (float(scores[0]), scores[0].failure) == (0.0, "timeout")  # killed at the limit inside its actor
        assert float(scores[1]) == 1.0 and scores[1].reason != str(os.getpid())
        assert time.monotonic() - started < 30
    finally:
        pool.close()


# ---- settings ------------------------------------------------------------------------------------------

def test_ray_settings_are_checked_before_anything_starts():
    from r1zero.config import ConfigError
    from r1zero.distributed import reachable_or_raise, start_ray

    for settings, message in (
            (dict(ray_address="head-node"), "neither 'auto' nor HOST:PORT"),
            (dict(train_processes=0), "train_processes: must be >= 1"),
            (dict(train_processes=2, advantage="gae"), "critic-free algorithms only"),
            (dict(fsdp=True), "fsdp: shards the training state over learner ranks, so it needs train_processes >= 2"),
            (dict(rollout_workers=-1), "rollout_workers: must be >= 0"),
            (dict(ray_worker_cpus=0), "ray_worker_cpus: must be > 0")):
        with pytest.raises(ConfigError, match=message):
            TrainConfig(**settings).validate()
    with pytest.raises(ConfigError, match="nothing answers at 127.0.0.1:1"):
        reachable_or_raise("127.0.0.1:1")  # at once, where ray.init would retry for minutes
    with pytest.raises(ConfigError, match="ask Ray for 3 CPUs .* the cluster has 2"):
        start_ray(TrainConfig(rollout_workers=3))  # the module's cluster has 2 CPUs; Ray would wait forever


class StuckWorker:
    """A rollout worker whose weight load never returns."""

    def __init__(self, *args):
        pass

    def load_weights(self, version, arrays):
        time.sleep(300)

    def pid(self):
        return os.getpid()


def test_a_worker_that_does_not_load_its_weights_in_time_stops_the_run_naming_it(llama_dir, tmp_path, length_reward,
                                                                                 monkeypatch):
    import r1zero.distributed as distributed

    monkeypatch.setattr(distributed, "RolloutWorker", StuckWorker)
    started = time.time()
    with pytest.raises(RuntimeError, match=r"rollout worker 0 did not load the weights of version 0 within "
                                           r"weight_sync_timeout_seconds \(3 s\)"):
        train(tiny_run_config(llama_dir, tmp_path, rollout_workers=1, weight_sync_timeout_seconds=3, **SHARED))
    assert time.time() - started < 60  # not the 300 s the worker would take


@ray.remote(num_cpus=0)
class Once:
    """Says yes to the first question only, whichever worker asks."""

    def __init__(self):
        self.left = 1

    def take(self) -> bool:
        self.left -= 1
        return self.left == 0


def test_a_rollout_worker_stuck_in_generate_is_replaced_and_the_run_is_unchanged(llama_dir, tmp_path,
                                                                                length_reward, reference_run,
                                                                                monkeypatch):
    # one worker's generate at step 2 never returns (its second call: the first worker to ask hangs); after
    # rollout_timeout_seconds the worker is killed and replaced, and its prompts are generated again from the
    # same seeds: the reference run's metrics, one restart recorded at step 2
    import r1zero.distributed as distributed

    class HangsOnceAtStep2(distributed.RolloutWorker):
        calls = 0

        def generate(self, *args, **kwargs):
            self.calls += 1
            if self.calls == 2 and ray.get(ray.get_actor("hang-once").take.remote()):
                time.sleep(300)
            return super().generate(*args, **kwargs)

    once = Once.options(name="hang-once").remote()
    monkeypatch.setattr(distributed, "RolloutWorker", HangsOnceAtStep2)
    started = time.time()
    train(tiny_run_config(llama_dir, tmp_path, eval_every=2, eval_samples=2, rollout_workers=2,
                          rollout_timeout_seconds=15, **SHARED))
    assert time.time() - started < 120  # not the 300 s the stuck worker would take
    records = read_metrics(tmp_path / "run")
    assert [r["ray/rollout_worker_restarts"] for r in records if "reward/mean" in r] == [0, 1, 0]
    assert_same_metrics(records, reference_run)
    assert ray.get(once.take.remote()) is False  # the hang happened, once
    ray.kill(once)


@pytest.mark.parametrize("first, then", [(dict(train_processes=2, fsdp=True), dict(train_processes=1, fsdp=False)),
                                         (dict(train_processes=1, fsdp=False), dict(train_processes=2, fsdp=True)),
                                         (dict(train_processes=2, fsdp=True), dict(train_processes=2, fsdp=False)),
                                         (dict(train_processes=2, fsdp=True), dict(train_processes=3, fsdp=True))],
                         ids=["fsdp-to-one-process", "one-process-to-fsdp", "fsdp-to-replicas", "fsdp-2-to-3-ranks"])
def test_a_checkpoint_moves_between_fsdp_ranks_and_one_process(llama_dir, tmp_path, length_reward, reference_run,
                                                              first, then):
    # 2 steps (a checkpoint at the last) in one layout, resumed to step 3 in another: the reference run's metrics.
    # FSDP ranks write their shards of AdamW's moments (torch.distributed.checkpoint); one process, or replicated
    # ranks, put them together; FSDP ranks resumed from a one-process checkpoint split its whole state
    import dataclasses

    from r1zero.checkpoint import SHARDS_FOLDER, latest_checkpoint, load_checkpoint

    config = tiny_run_config(llama_dir, tmp_path, eval_every=2, eval_samples=2, max_steps=2, **SHARED, **first)
    train(config)
    folder = latest_checkpoint(tmp_path / "run")
    state = load_checkpoint(folder)
    if first["fsdp"]:
        assert state.optimizer_shards == 2 and state.optimizer["state"] == {}  # no moments in trainer_state.pt
        assert (folder / SHARDS_FOLDER / ".metadata").is_file()
        assert len(list((folder / SHARDS_FOLDER).glob("*.distcp"))) == 2  # one file a rank
    else:
        assert state.optimizer_shards == 0 and len(state.optimizer["state"]) > 0
        assert not (folder / SHARDS_FOLDER).exists()
    train(dataclasses.replace(config, max_steps=3, **then), resume=True)
    assert_same_metrics(read_metrics(tmp_path / "run"), reference_run)
    if then["fsdp"]:  # the driver kept no moments of the one-process state it passed on: none in its checkpoint
        assert load_checkpoint(latest_checkpoint(tmp_path / "run")).optimizer["state"] == {}
    # step 3's AdamW update used the moments the checkpoint carried: its weights are the one-process run's
    train(tiny_run_config(llama_dir, tmp_path / "straight", eval_every=2, eval_samples=2))
    resumed = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final").state_dict()
    straight = AutoModelForCausalLM.from_pretrained(tmp_path / "straight" / "run" / "final").state_dict()
    assert max((resumed[name] - straight[name]).abs().max().item() for name in straight) < 1e-5
