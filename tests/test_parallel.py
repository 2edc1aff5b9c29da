"""Data-parallel steps (cnnlab/backend/parallel.py): the same gradient as one thread, reproducibly."""

import os

import numpy as np
import pytest

from cnnlab import nn
from cnnlab.models import build_model
from cnnlab.ops.loss import cross_entropy
from cnnlab.backend.parallel import DataParallel, default_threads, replicate, shard_bounds


def batch(size, seed=0, shape=(1, 28, 28)):
    rng = np.random.default_rng(seed)
    return rng.random((size,) + shape, dtype=np.float32), rng.integers(0, 10, size)


def single_thread_step(model, x, y):
    logits = model(x)
    loss, dlogits = cross_entropy(logits, y)
    model.backward(dlogits)
    return loss, logits


@pytest.mark.parametrize("name", ["cnn", "mlp"])
@pytest.mark.parametrize("threads, size", [(2, 128), (3, 65), (2, 5)])
def test_gradient_equals_the_single_thread_gradient(name, threads, size):
    x, y = batch(size)
    reference, model = build_model(name, np.random.default_rng(1)), build_model(name, np.random.default_rng(1))
    loss, logits = single_thread_step(reference, x, y)
    parallel = DataParallel(model, threads)
    parallel_loss, parallel_logits = parallel.forward_backward(x, y)
    parallel.close()
    assert parallel_loss == pytest.approx(loss, rel=1e-6)
    np.testing.assert_allclose(parallel_logits, logits, rtol=1e-5, atol=1e-6)
    for (key, expected), actual in zip(reference.named_parameters(), model.parameters()):
        scale = np.abs(expected.grad).max()
        np.testing.assert_allclose(actual.grad, expected.grad, rtol=0, atol=2e-6 * scale, err_msg=key)


def test_replicas_share_the_weights_and_follow_optimizer_steps():
    from cnnlab.optim import SGD

    x, y = batch(64)
    reference, model = build_model("cnn", np.random.default_rng(2)), build_model("cnn", np.random.default_rng(2))
    parallel = DataParallel(model, 2)
    optimizers = SGD(reference.parameters(), lr=0.1), SGD(model.parameters(), lr=0.1)
    for step in range(3):
        for optimizer in optimizers:
            optimizer.zero_grad()
        single_thread_step(reference, x, y)
        parallel.forward_backward(x, y)
        for optimizer in optimizers:
            optimizer.step()
    for expected, actual in zip(reference.parameters(), model.parameters()):
        np.testing.assert_allclose(actual.data, expected.data, rtol=1e-5, atol=1e-6)
    # The replica's gradients were handed over to the model and cleared.
    assert all(not p.grad.any() for p in parallel._replicas[1].parameters())


def test_same_seed_same_result_with_dropout_and_batchnorm():
    def run():
        model = build_model("cnn-bn", np.random.default_rng(3))
        parallel = DataParallel(model, 2, rng=np.random.default_rng(4))
        results = [parallel.forward_backward(*batch(64, seed)) for seed in range(2)]
        return results, {key: value.copy() for key, value in model.state_dict().items()}, \
            [p.grad.copy() for p in model.parameters()]
    (first, state_a, grads_a), (second, state_b, grads_b) = run(), run()
    assert [loss for loss, _ in first] == [loss for loss, _ in second]
    for key in state_a:
        np.testing.assert_array_equal(state_a[key], state_b[key], err_msg=key)
    for a, b in zip(grads_a, grads_b):
        np.testing.assert_array_equal(a, b)


def test_each_shard_draws_its_own_dropout_masks():
    dropout = nn.Dropout(0.5, rng=np.random.default_rng(5))
    model = nn.Sequential(nn.Flatten(), dropout, nn.Linear(4, 10, rng=np.random.default_rng(6)))
    model.requires_input_grad = True
    parallel = DataParallel(model, 2)
    x = np.ones((64, 1, 2, 2), dtype=np.float32)
    parallel.forward_backward(x, np.zeros(64, dtype=np.int64))
    first_shard_mask = dropout._cache
    other_shard_mask = parallel._replicas[1][1]._cache
    assert parallel._replicas[1][1].rng is not dropout.rng
    assert not np.array_equal(np.asarray(first_shard_mask), np.asarray(other_shard_mask))


def test_replicas_take_each_modules_mode_and_input_gradient_flag_at_every_step():
    dropout = nn.Dropout(0.5, rng=np.random.default_rng(5))
    model = nn.Sequential(nn.Flatten(), dropout, nn.Linear(4, 10, rng=np.random.default_rng(6)))
    parallel = DataParallel(model, 2)
    x, y = np.ones((64, 1, 2, 2), dtype=np.float32), np.zeros(64, dtype=np.int64)

    def flags(module):
        return [(layer.training, layer.requires_input_grad) for layer in module.modules()]

    parallel.forward_backward(x, y)
    dropout.eval()                    # one layer only, as for a frozen Dropout
    model.requires_input_grad = True
    parallel.forward_backward(x, y)
    assert flags(parallel._replicas[1]) == flags(model)
    assert not parallel._replicas[1][1].training
    model.train()
    model.requires_input_grad = False
    parallel.forward_backward(x, y)
    assert flags(parallel._replicas[1]) == flags(model)


def test_batchnorm_running_statistics_come_from_the_first_shard():
    x, y = batch(64, shape=(3, 4, 4))
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(48, 10, rng=np.random.default_rng(0)))
    first_shard = nn.Sequential(nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(48, 10, rng=np.random.default_rng(0)))
    DataParallel(model, 2).forward_backward(x, y)
    first_shard(x[:32])
    np.testing.assert_allclose(model[0].running_mean, first_shard[0].running_mean, rtol=1e-6)
    np.testing.assert_allclose(model[0].running_var, first_shard[0].running_var, rtol=1e-6)


def test_replicas_follow_loaded_weights_and_new_parameter_arrays():
    x, y = batch(32)
    model = build_model("mlp", np.random.default_rng(7))
    parallel = DataParallel(model, 2)
    parallel.forward_backward(x, y)
    other = build_model("mlp", np.random.default_rng(8))
    model.load_state_dict(other.state_dict())  # in place: the replicas see it
    for parameter in model.parameters():
        parameter.grad.fill(0)
        parameter.data = parameter.data.copy()  # new arrays: the replicas are rebuilt
    loss, _ = parallel.forward_backward(x, y)
    expected_loss, _ = single_thread_step(other, x, y)
    assert loss == pytest.approx(expected_loss, rel=1e-6)
    for expected, actual in zip(other.parameters(), model.parameters()):
        np.testing.assert_allclose(actual.grad, expected.grad, rtol=1e-4, atol=1e-7)


def test_an_error_in_a_shard_reaches_the_caller_after_every_shard_stopped():
    from cnnlab.errors import ShapeError

    model = build_model("mlp", np.random.default_rng(0))
    parallel = DataParallel(model, 2)
    with pytest.raises(ShapeError):
        parallel.forward_backward(np.zeros((64, 1, 28, 27), dtype=np.float32), np.zeros(64, dtype=np.int64))
    loss, _ = parallel.forward_backward(*batch(64))  # still usable afterwards
    assert np.isfinite(loss)


def test_shards_run_with_single_threaded_blas_and_restore_it():
    import threadpoolctl  # a dependency of cnnlab

    blas = threadpoolctl.ThreadpoolController().select(user_api="blas")
    assert blas.lib_controllers, "threadpoolctl finds no BLAS under NumPy"
    before = [library.num_threads for library in blas.lib_controllers]
    seen = []

    class Spy(nn.Flatten):
        def forward(self, x):
            seen.append([library.num_threads for library in
                         threadpoolctl.ThreadpoolController().select(user_api="blas").lib_controllers])
            return super().forward(x)

    model = nn.Sequential(Spy(), nn.Linear(784, 10, rng=np.random.default_rng(0)))
    DataParallel(model, 2).forward_backward(*batch(64))
    assert seen and all(threads == [1] * len(before) for threads in seen)
    assert [library.num_threads for library in
            threadpoolctl.ThreadpoolController().select(user_api="blas").lib_controllers] == before


def test_shard_bounds_and_default_threads():
    assert shard_bounds(128, 2) == [(0, 64), (64, 128)]
    assert shard_bounds(5, 3) == [(0, 2), (2, 3), (3, 5)]
    assert shard_bounds(1, 4) == [(0, 1)]
    assert default_threads(16) == 1  # fewer than 32 images per thread never split
    assert 1 <= default_threads(128) <= 4
    assert default_threads(128, flops_per_image=0.8e6) == 1  # the mlp: too little work per thread
    assert default_threads(128, flops_per_image=7.7e6) == default_threads(128)  # the cnn
    with pytest.raises(ValueError, match="threads"):
        DataParallel(build_model("mlp", np.random.default_rng(0)), 0)


def test_replicate_shares_parameters_but_not_gradients_or_buffers():
    model = build_model("cnn-bn", np.random.default_rng(0))
    model(batch(4)[0])
    replica = replicate(model)
    for ours, theirs in zip(model.parameters(), replica.parameters()):
        assert theirs.data is ours.data and theirs.grad is not ours.grad
    assert replica[1].running_mean is not model[1].running_mean
    assert all("_cache" not in module.__dict__ for module in replica.modules())


def test_inference_forward_equals_one_call_with_batchnorm_statistics_of_the_model():
    model = build_model("cnn-bn", np.random.default_rng(8))
    parallel = DataParallel(model, 2, rng=np.random.default_rng(9))
    for seed in range(3):  # moves the model's running statistics away from their start
        parallel.forward_backward(*batch(64, seed))
    model.eval()
    x, _ = batch(67, seed=10)
    logits = parallel.forward(x)  # the replica has stale statistics of its own until synced
    np.testing.assert_allclose(logits, model(x), rtol=1e-5, atol=1e-5)
    replica_stats = dict(parallel._replicas[1].named_buffers())
    for key, value in model.named_buffers():
        np.testing.assert_array_equal(replica_stats[key], value, err_msg=key)
    # Training again keeps the statistics private: only the model's move.
    model.train()
    before = {key: value.copy() for key, value in parallel._replicas[1].named_buffers()}
    model_before = {key: value.copy() for key, value in model.named_buffers()}
    parallel.forward_backward(*batch(64, 11))
    parallel.close()
    key = "1.running_mean"
    assert not np.array_equal(model_before[key], dict(model.named_buffers())[key])
    assert not np.array_equal(before[key], dict(parallel._replicas[1].named_buffers())[key])
    assert dict(parallel._replicas[1].named_buffers())[key] is not dict(model.named_buffers())[key]


def test_evaluate_and_predict_over_threads_equal_one_thread():
    from cnnlab.evaluation import evaluate, predict_logits

    model = build_model("cnn", np.random.default_rng(12))
    rng = np.random.default_rng(13)
    images, labels = rng.integers(0, 256, (300, 28, 28), dtype=np.uint8), rng.integers(0, 10, 300)
    one, two = (evaluate(model, images, labels, batch_size=128, threads=threads) for threads in (1, 2))
    assert two.loss == pytest.approx(one.loss, rel=1e-6)
    np.testing.assert_array_equal(two.confusion, one.confusion)
    x = images[:, None].astype(np.float32) / 255
    np.testing.assert_allclose(predict_logits(model, x, 100, threads=2), predict_logits(model, x, 100),
                               rtol=1e-5, atol=1e-6)
    assert model.training  # put back into the mode it was in


def test_malloc_is_told_to_keep_freed_memory_unless_the_user_tuned_it():
    """``cnnlab train`` asks glibc to keep freed pages (no page faults per step), once, and
    leaves malloc alone when a MALLOC_* variable says the user tuned it."""
    import subprocess
    import sys

    code = ("import os, platform; from cnnlab.backend import workspace; "
            "print(workspace.keep_freed_memory(), platform.libc_ver()[0])")
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("MALLOC_") and key != "GLIBC_TUNABLES"}
    applied, libc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                   text=True, check=True).stdout.split()
    assert applied == ("True" if libc == "glibc" else "False")
    tuned = subprocess.run([sys.executable, "-c", code], env={**env, "MALLOC_ARENA_MAX": "2"},
                           capture_output=True, text=True, check=True).stdout.split()[0]
    assert tuned == "False"


def test_data_parallel_leaves_the_process_as_it_found_it(monkeypatch):
    """No malloc tuning from the library, and the pool's raised per-shape limit comes back down."""
    from cnnlab.backend import workspace

    monkeypatch.setattr(workspace, "keep_freed_memory", lambda: pytest.fail("malloc was retuned"))
    before = workspace._MAX_FREE_PER_KEY
    parallel = DataParallel(build_model("mlp", np.random.default_rng(0)), 3)
    assert workspace._MAX_FREE_PER_KEY == 6
    parallel.close()
    assert workspace._MAX_FREE_PER_KEY == before


def test_shards_on_one_free_core_give_the_same_bits_as_on_two(monkeypatch):
    """The thread policy decides how many shards run at once, never how a batch is split."""
    from cnnlab.backend import threads as thread_policy

    model = build_model("cnn", np.random.default_rng(2))
    x, y = batch(64, 3)
    results = []
    for free in (2, 1):
        monkeypatch.setattr(thread_policy, "workers", lambda limit=None, free=free: min(free, limit or free))
        model.zero_grad()
        parallel = DataParallel(model, 2)
        loss, logits = parallel.forward_backward(x, y)
        parallel.close()
        results.append((loss, logits, [p.grad.copy() for p in model.parameters()]))
    (loss_two, logits_two, grads_two), (loss_one, logits_one, grads_one) = results
    assert loss_one == loss_two
    np.testing.assert_array_equal(logits_one, logits_two)
    for one, two in zip(grads_one, grads_two):
        np.testing.assert_array_equal(one, two)


def test_the_python_api_runs_the_same_shards_as_cnnlab_train():
    """model(x) + model.backward on a batch big enough for several cores gives the data-parallel
    step's result bit for bit (issue 13: the README's snippet gets train's speed)."""
    from cnnlab.ops.loss import cross_entropy

    x, y = batch(128, 7)
    api, trained = build_model("cnn", np.random.default_rng(3)), build_model("cnn", np.random.default_rng(3))
    loss, dlogits = cross_entropy(api(x), y)
    api.backward(dlogits)
    parallel = DataParallel(trained, default_threads(128, 7.7e6))
    train_loss, logits = parallel.forward_backward(x, y)
    parallel.close()
    assert loss == pytest.approx(train_loss, rel=1e-6)  # one mean against a weighted sum of two
    for ours, theirs in zip(api.parameters(), trained.parameters()):
        np.testing.assert_array_equal(ours.grad, theirs.grad)
    api.requires_input_grad = True  # the input gradient comes back through the shards too
    api.zero_grad()
    dx = api.backward(cross_entropy(api(x), y)[1])
    assert dx.shape == x.shape


def test_models_with_batch_statistics_or_dropout_are_never_split_by_the_api():
    from cnnlab.backend.parallel import shards_for_call

    x = np.zeros((128, 1, 28, 28), dtype=np.float32)
    assert shards_for_call(build_model("mlp", np.random.default_rng(0)), x) == 1  # too little work
    with_batch_norm = build_model("cnn-bn", np.random.default_rng(0))
    assert shards_for_call(with_batch_norm, x) == 1  # BatchNorm's statistics, Dropout's masks
    plain = build_model("cnn", np.random.default_rng(0))
    assert shards_for_call(plain, x) == default_threads(128, 7.7e6)
