"""r1zero.pipeline: which weights sample which step, the staleness bound, drops, in-flight batches and errors (with
stand-in workers, no Ray), then asynchronous runs on a local Ray cluster: the same samples as a synchronous run
when the weights do not move, the version tags, the correction's weights and the metrics."""

import signal
import sys
import threading
import time

import pytest
import torch

from conftest import kill_first_worker_at_step_2, read_metrics, tiny_run_config, without_timings
from r1zero.batch import StepBatch
from r1zero.config import ConfigError, TrainConfig
from r1zero.example import Example
from r1zero.pipeline import Asynchronous, StaleBatchError, Synchronous
from r1zero.rewards import RewardBatch
from r1zero.update import UpdateSettings, engine_gap


class Workers:
    """Stand-in rollout workers: remember the versions put, and generate nothing (collect makes the batch)."""

    def __init__(self):
        self.put_versions, self.weights = [], None

    def put(self, version, policy=None, weights=None, keep=1):
        self.put_versions.append(version)


def made_batch(rows: int = 2) -> StepBatch:
    example = Example(id="e", prompt="What is 1 + 1", answer="2", metadata={"numbers": [1, 1]})
    return StepBatch([example], [[5, 6]], [[7, 8, 9]] * rows, [True] * rows, ["t"] * rows,
                     RewardBatch([1.0] * rows, {"accuracy": [1.0] * rows}, {"accuracy": [""] * rows}, {}))


class Recorder:
    """collect(index, engine) that records (index, version) and can be held back or made to fail."""

    def __init__(self, fail_at: int | None = None):
        self.made: list[tuple[int, int]] = []
        self.fail_at = fail_at
        self.gate = threading.Semaphore(1000)

    def __call__(self, index, engine):
        self.gate.acquire()
        if index == self.fail_at:
            raise RuntimeError(f"the scorer broke at batch {index}")
        self.made.append((index, engine.version))
        return made_batch()


def wait_until(condition, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the producer never got there"
        time.sleep(0.01)


@pytest.mark.parametrize("lag", [1, 2])
def test_step_s_is_sampled_by_version_s_minus_1_minus_k_and_the_producer_stops_k_ahead(lag):
    collect = Recorder()
    pipeline = Asynchronous(collect, Workers(), lag, first_step=1, last_step=6)
    try:
        # nothing published beyond version 0: batches 1 .. k+1 (versions max(0, s-1-k) = 0) and no more
        wait_until(lambda: len(collect.made) == lag + 1)
        time.sleep(0.2)
        assert collect.made == [(s, 0) for s in range(1, lag + 2)]
        for step in range(1, 7):
            taken = pipeline.take(step)
            assert taken.batch.versions == [max(0, step - 1 - lag)] * 2
            assert max(taken.batch.staleness(step - 1)) <= lag
            pipeline.publish(step)
        # step s from version max(0, s-1-k): k=1 gives 0,0,1,2,3,4; k=2 gives 0,0,0,1,2,3
        assert collect.made == [(s, max(0, s - 1 - lag)) for s in range(1, 7)]
    finally:
        pipeline.close()
    assert not pipeline.thread.is_alive()


def test_a_run_resumed_past_its_old_end_samples_the_unprepared_steps_with_the_checkpoints_weights():
    # a finished k = 2 run (no batch in flight at its last step, 20) resumed to 30: batches 21 and 22 would be
    # version 18 and 19, which no checkpoint holds; they are sampled by version 20, the resumed weights
    collect = Recorder()
    workers = Workers()
    pipeline = Asynchronous(collect, workers, 2, first_step=21, last_step=30)
    try:
        wait_until(lambda: len(collect.made) == 3)
        assert collect.made == [(21, 20), (22, 20), (23, 20)] and workers.put_versions == [20]
    finally:
        pipeline.close()


def test_a_batch_older_than_the_bound_is_refused_or_dropped_and_counted():
    old = made_batch()
    old.versions = [0, 0]
    # resumed in-flight batches at the learner's step 4 (version 3): a version-0 batch is 3 behind, max 1
    pipeline = Asynchronous(Recorder(), Workers(), 1, first_step=4, last_step=4, in_flight=[old])
    try:
        with pytest.raises(StaleBatchError, match="step 4: a batch sampled by version 0 is 3 versions behind the "
                                                  "learner, more than max_staleness 1"):
            pipeline.take(4)
    finally:
        pipeline.close()
    fresh = made_batch()
    fresh.versions = [3, 3]
    pipeline = Asynchronous(Recorder(), Workers(), 1, first_step=4, last_step=9, drop_stale=True,
                            in_flight=[old, old, fresh])
    try:
        taken = pipeline.take(4)
        assert taken.dropped == 2 and taken.batch is fresh
    finally:
        pipeline.close()


def test_with_drop_stale_the_producer_samples_with_the_newest_version_and_never_waits_for_one():
    collect = Recorder()
    pipeline = Asynchronous(collect, Workers(), 1, first_step=1, last_step=3, drop_stale=True)
    try:
        wait_until(lambda: len(collect.made) == 2)  # k + 1 batches queued, all from version 0, then it waits
        pipeline.publish(5)  # the queue, not the version, holds it back: a new version only changes the next
        pipeline.take(1)
        wait_until(lambda: len(collect.made) == 3)
        assert collect.made == [(1, 0), (2, 0), (3, 5)]
        time.sleep(0.2)
        assert len(collect.made) == 3  # last_step 3 and nothing dropped: no batch past it
    finally:
        pipeline.close()


def test_in_flight_waits_for_the_batch_being_made_and_returns_the_same_ones_whenever_asked():
    collect = Recorder()
    for _ in range(1000):
        collect.gate.acquire()  # hold the producer inside batch 1
    pipeline = Asynchronous(collect, Workers(), 2, first_step=1, last_step=8)
    try:
        answer = []
        asking = threading.Thread(target=lambda: answer.append(pipeline.in_flight()))
        asking.start()
        time.sleep(0.2)
        assert not answer  # batch 1 is still being made
        collect.gate.release(1000)
        asking.join(timeout=30)
        # versions up to 0 published: batches 1..3 can be made, and the answer waits for all of them
        assert [batch.versions[0] for batch in answer[0]] == [0, 0, 0]
        assert [index for index, _ in collect.made] == [1, 2, 3]
        restored = StepBatch.from_state_dict(answer[0][0].state_dict())
        assert restored == answer[0][0]
    finally:
        pipeline.close()


def test_an_error_in_the_producer_reaches_the_learner_and_close_never_hangs():
    pipeline = Asynchronous(Recorder(fail_at=2), Workers(), 1, first_step=1, last_step=5)
    try:
        pipeline.take(1)
        pipeline.publish(1)
        with pytest.raises(RuntimeError, match="the scorer broke at batch 2"):
            pipeline.take(2)
    finally:
        started = time.monotonic()
        pipeline.close()
    assert time.monotonic() - started < 10


def test_the_synchronous_pipeline_generates_at_the_step_with_its_engine():
    made = []
    pipeline = Synchronous(lambda step, engine: made.append((step, engine)) or made_batch(), "engine")
    taken = pipeline.take(3)
    assert made == [(3, "engine")] and taken.batch.versions is None and taken.batch.staleness(2) == [0, 0]
    assert (taken.waited, taken.dropped, pipeline.in_flight()) == (0.0, 0, [])


# ---- the correction from the sampling policy's numbers ---------------------------------------------------

def test_decoupled_ppo_weights_come_from_the_sampling_policy_and_are_exactly_1_on_policy():
    settings = UpdateSettings.from_config(TrainConfig(rollout_correction="tis", rollout_correction_cap=1.5))
    half, quarter = torch.log(torch.tensor(0.5)).item(), torch.log(torch.tensor(0.25)).item()
    old = torch.tensor([[half, half], [half, half]])  # (N=2, T=2) the learner's policy before the update
    sampled = [[quarter, half], [half + 1e-6, half]]  # row 0 stale (older weights), row 1 the engine's own sums
    mask = torch.ones(2, 2)
    gap = engine_gap(old, sampled, mask, mask, settings)
    # row 0 token 0: rho = 0.5 / 0.25 = 2, truncated at 1.5; the others rho = 1 (row 1: 1 - 1e-6, not exactly 1)
    assert gap.correction_weights[0].tolist() == pytest.approx([1.5, 1.0])
    assert gap.correction_weights[1, 0].item() != 1.0
    assert gap.corrected_fraction == 0.25
    # Kish's ESS of the ratios (2, 1, 1, 1): (2 + 1 + 1 + 1)^2 / (4 * (4 + 1 + 1 + 1)) = 25 / 28
    assert gap.ess == pytest.approx(25 / 28, abs=1e-6)
    own = engine_gap(old, sampled, mask, mask, settings, own_rows=torch.tensor([False, True]))
    assert own.correction_weights[1].tolist() == [1.0, 1.0]  # the trainer's own policy: exactly 1
    on_policy = engine_gap(old, [[half, half], [half, half]], mask, mask, settings, own_rows=torch.tensor([True, True]))
    assert on_policy.correction_weights is None and on_policy.ess == 1.0 and on_policy.mismatch.max == 0.0


def test_coupled_ppo_takes_the_ratio_to_the_sampling_policy_without_weights():
    settings = UpdateSettings.from_config(TrainConfig(rollout_correction="clip", rollout_correction_cap=1.5))
    half, quarter = torch.log(torch.tensor(0.5)).item(), torch.log(torch.tensor(0.25)).item()
    old = torch.tensor([[half, half]])  # (N=1, T=2)
    gap = engine_gap(old, [[quarter, half]], torch.ones(1, 2), torch.ones(1, 2), settings)
    assert gap.correction_weights is None  # no weight: the ratio itself changes
    assert gap.ratio_to[0].tolist() == pytest.approx([quarter, half])  # pi_old of the loss is the sampler's
    assert gap.corrected_fraction == 0.5  # token 0 starts at pi_old / pi_engine = 2, outside [1/1.5, 1.5]
    # the loss's ratio at the update's start is pi_theta / pi_engine = 0.5 / 0.25 = 2 on token 0: clipped at 1.2
    from r1zero.algorithms import ppo_clip_loss
    loss = ppo_clip_loss(old, gap.ratio_to, torch.tensor([1.0]), torch.ones(1, 2), 0.2, 0.2)
    assert loss.per_token_loss[0].tolist() == pytest.approx([-1.2, -1.0]) and loss.is_clipped.tolist() == [[True, False]]


def test_asynchronous_settings_are_checked():
    with pytest.raises(ConfigError, match="max_staleness: 1 generates ahead on rollout workers .* needs "
                                          "rollout_workers >= 1"):
        TrainConfig(max_staleness=1).validate()
    with pytest.raises(ConfigError, match="max_staleness: versions a sample may lag the learner, so >= 0"):
        TrainConfig(max_staleness=-1, rollout_workers=1).validate()
    assert any("drop_stale: has no effect" in w for w in TrainConfig(drop_stale=True).warnings())
    assert any("'none' with max_staleness 1" in w for w in TrainConfig(max_staleness=1, rollout_workers=1).warnings())
    assert not any("rollout_correction" in w for w in TrainConfig(max_staleness=1, rollout_workers=1,
                                                                  rollout_correction="tis").warnings())


# ---- asynchronous runs on Ray ------------------------------------------------------------------------------

ASYNC_KEYS = ("async/", "rollout/")  # only asynchronous runs (with their engine log-probabilities) write these


@pytest.fixture(scope="module")
def local_cluster():
    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def run_records(model_dir, folder, **settings):
    from r1zero.trainer import train

    config = tiny_run_config(model_dir, folder, rollout_workers=1, ray_worker_cpus=0.5, max_steps=5, **settings)
    return without_timings(read_metrics(train(config)))


@pytest.mark.ray
def test_without_weight_changes_an_asynchronous_run_samples_what_the_synchronous_one_does(
        llama_dir, tmp_path, length_reward, local_cluster):
    # learning rate 1e-30: far below a float32 weight's last bit, so every version holds the same weights, so a lag changes nothing but the tags: the same
    # prompts, seeds and completions in the same order (the pipeline neither reorders nor redraws)
    synchronous = run_records(llama_dir, tmp_path / "sync", learning_rate=1e-30)
    lagged = run_records(llama_dir, tmp_path / "k2", learning_rate=1e-30, max_staleness=2, rollout_correction="tis")
    staleness = [(r["async/staleness_mean"], r["async/staleness_max"]) for r in lagged if "async/staleness_max" in r]
    assert staleness == [(0, 0), (1, 1), (2, 2), (2, 2), (2, 2)]  # step s from version max(0, s-3)
    steps = [r for r in lagged if "async/ess" in r]
    assert all(r["async/ess"] == pytest.approx(1.0, abs=1e-9) and r["async/dropped_batches"] == 0 for r in steps)
    assert steps[0]["rollout/logprob_diff_max"] == 0.0  # staleness 0 on r1zero's engine: the trainer's own policy
    assert all(r["rollout/logprob_diff_max"] < 1e-4 for r in steps)  # same weights, the worker's own sums
    assert all(0.0 <= r["async/learner_idle_fraction"] <= 1.0 and 0.0 <= r["async/generator_idle_fraction"] <= 1.0
               for r in steps)
    stripped = [{k: v for k, v in r.items() if not k.startswith(ASYNC_KEYS)} for r in lagged]
    for mine, theirs in zip(stripped, synchronous):
        assert mine.keys() == theirs.keys()
        for key in mine:  # the policy's loss is over the same samples; its value only differs in the last bits
            if isinstance(mine[key], float):
                assert mine[key] == pytest.approx(theirs[key], abs=1e-6), key
            else:
                assert mine[key] == theirs[key], key


@pytest.mark.ray
def test_an_asynchronous_run_learns_from_stale_samples_within_its_bound(llama_dir, tmp_path, length_reward,
                                                                        local_cluster):
    records = run_records(llama_dir, tmp_path / "k1", max_staleness=1, rollout_correction="tis",
                          rollout_correction_cap=1.01)
    steps = [r for r in records if "async/staleness_max" in r]
    assert [r["async/staleness_max"] for r in steps] == [0, 1, 1, 1, 1]
    # from step 3 the sampling weights (version s-2) differ from the learner's (s-1): a real gap, corrected
    assert all(r["rollout/logprob_diff_max"] > 1e-3 for r in steps[2:])
    assert all(r["async/ess"] < 1.0 for r in steps[2:])
    assert any(r["rollout/corrected_fraction"] > 0 for r in steps[2:])  # some ratios above the cap of 1.01
    assert steps[-1]["loss"] != 0.0


@pytest.mark.ray
def test_a_worker_killed_while_generating_ahead_is_replaced_and_the_run_is_unchanged(
        llama_dir, tmp_path, length_reward, local_cluster, monkeypatch):
    # the worker dies inside batch 2, which the producer generates while the learner trains step 1: a new worker
    # is started, handed version 0 with the batch, and generates the same prompts from the same seeds
    settings = dict(max_staleness=1, rollout_correction="tis")
    timing = ("async/learner_idle_fraction", "async/generator_idle_fraction", "ray/rollout_worker_restarts")
    reference = run_records(llama_dir, tmp_path / "reference", **settings)
    kill_first_worker_at_step_2(monkeypatch)
    killed = run_records(llama_dir, tmp_path / "killed", **settings)
    assert sum(r.get("ray/rollout_worker_restarts", 0) for r in killed) == 1  # counted at a step timing decides
    assert [{k: v for k, v in r.items() if k not in timing} for r in killed] == \
        [{k: v for k, v in r.items() if k not in timing} for r in reference]


class CtrlCAfter:
    """A checkpoint.StopSignals stand-in that has caught SIGINT from the end of step `step` on."""

    def __init__(self, step: int):
        self.step, self.asked = step, 0

    @property
    def requested(self):
        self.asked += 1  # the trainer asks once after each step, and once more to name the signal
        return signal.SIGINT if self.asked >= self.step else None


@pytest.mark.ray
def test_ctrl_c_in_an_asynchronous_run_saves_the_batches_in_flight_and_the_resume_trains_on_them(
        llama_dir, tmp_path, length_reward, local_cluster):
    from r1zero.checkpoint import TrainingInterrupted, latest_checkpoint
    from r1zero.trainer import train

    settings = dict(max_staleness=2, rollout_correction="clip", checkpoint_every=0)
    timing = ("async/learner_idle_fraction", "async/generator_idle_fraction")
    uninterrupted = run_records(llama_dir, tmp_path / "whole", **settings)
    config = tiny_run_config(llama_dir, tmp_path / "stopped", rollout_workers=1, ray_worker_cpus=0.5, max_steps=5,
                             **settings)
    with pytest.raises(TrainingInterrupted, match="stopped after step 2 of 5 by SIGINT"):
        train(config, stop=CtrlCAfter(2))
    state = torch.load(latest_checkpoint(tmp_path / "stopped" / "run") / "trainer_state.pt", weights_only=True)
    # after step 2 (version 2 published): steps 3, 4, 5 sampled by versions 0, 1, 2 (step s by s - 3)
    assert [batch["versions"][0] for batch in state["in_flight"]] == [0, 1, 2]
    train(config, resume=True)
    resumed = without_timings(read_metrics(tmp_path / "stopped" / "run"))
    assert [{k: v for k, v in r.items() if k not in timing} for r in resumed] == \
        [{k: v for k, v in r.items() if k not in timing} for r in uninterrupted]
