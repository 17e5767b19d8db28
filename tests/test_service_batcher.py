"""Dynamic batching: concurrent requests share inference calls, each gets its own rows back."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from osr.serve.app import create_app
from osr.serve.batcher import BatcherClosed, DynamicBatcher
from osr.serve.predictor import Predictor
from osr.serve.settings import Settings


class FakeModel:
    """Counts calls; every output row is a function of its own image, so mix-ups show."""

    def __init__(self, fail_when_sum_is: int | None = None, delay_s: float = 0.0) -> None:
        self.calls: list[int] = []
        self.fail_when_sum_is = fail_when_sum_is
        self.delay_s = delay_s
        self.lock = threading.Lock()

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        with self.lock:
            self.calls.append(images.shape[0])
        time.sleep(self.delay_s)
        ids = images.reshape(images.shape[0], -1)[:, 0].astype(np.int64)
        if self.fail_when_sum_is is not None and self.fail_when_sum_is in ids:
            raise RuntimeError("model exploded")
        return {"label": ids, "score": ids.astype(np.float32) / 2, "p_value": np.full(len(ids), 0.5, np.float32),
                "logits": np.stack([ids, -ids], axis=1).astype(np.float32)}


def images_with_ids(*ids: int) -> np.ndarray:
    batch = np.zeros((len(ids), 2, 2, 3), np.uint8)
    batch[:, 0, 0, 0] = ids
    return batch


def test_queued_requests_share_one_call_and_get_their_own_rows() -> None:
    model = FakeModel()
    batcher = DynamicBatcher(model.run, max_batch=32, max_wait_ms=300)
    try:
        futures = [batcher.submit(images_with_ids(10 * i, 10 * i + 1)) for i in range(5)]
        results = [f.result(timeout=10) for f in futures]
    finally:
        batcher.close()
    assert model.calls == [10]
    for i, outputs in enumerate(results):
        np.testing.assert_array_equal(outputs["label"], [10 * i, 10 * i + 1])
        np.testing.assert_array_equal(outputs["logits"], [[10 * i, -10 * i], [10 * i + 1, -10 * i - 1]])


def test_max_batch_is_respected_and_large_requests_take_turns() -> None:
    """max_batch 16: a 40-image request goes in turns of 2 images, alternating with the others;
    requests of up to max_batch images enter whole when there is room."""
    model = FakeModel()
    started, held = threading.Event(), threading.Event()

    def run(images: np.ndarray) -> dict[str, np.ndarray]:
        started.set()
        held.wait(10)  # the first call holds the worker until every request is queued
        return model.run(images)

    batcher = DynamicBatcher(run, max_batch=16, max_wait_ms=0)
    try:
        first = batcher.submit(images_with_ids(99))
        assert started.wait(10)
        futures = [batcher.submit(images_with_ids(*range(100, 140)))]  # larger than max_batch: in turns
        futures += [batcher.submit(images_with_ids(i, i)) for i in range(3)]
        futures.append(batcher.submit(images_with_ids(*range(50, 58))))  # max_batch exactly: whole
        held.set()
        results = [f.result(timeout=10) for f in futures]
        first.result(timeout=10)
    finally:
        batcher.close()
    assert model.calls == [1, 16] + [2] * 19
    assert [list(r["label"]) for r in results] == [list(range(100, 140)), [0, 0], [1, 1], [2, 2],
                                                   list(range(50, 58))]


def test_a_small_request_waits_for_one_turn_of_a_large_one_not_all_of_it() -> None:
    """The head-of-line blocking of issue 20: a 1-image request behind a 160-image one."""
    model = FakeModel(delay_s=0.05)
    batcher = DynamicBatcher(model.run, max_batch=16, max_wait_ms=0)
    try:
        large = batcher.submit(images_with_ids(*range(60, 220)))
        time.sleep(0.02)  # the first turn is running
        small = batcher.submit(images_with_ids(7))
        assert list(small.result(timeout=10)["label"]) == [7]
        calls_before_small = len(model.calls)
        assert not large.done()  # most of it still to run
        assert list(large.result(timeout=10)["label"]) == list(range(60, 220))
    finally:
        batcher.close()
    # the turn running when it came, then its own batch with the large request's next turn;
    # one more call may start before the check reads the count
    assert calls_before_small <= 3, model.calls
    assert sum(model.calls) == 161 and max(model.calls) <= 3 and 3 in model.calls


def test_a_cancelled_request_drops_its_remaining_chunks() -> None:
    model = FakeModel(delay_s=0.05)
    batcher = DynamicBatcher(model.run, max_batch=4, max_wait_ms=0)
    try:
        large = batcher.submit(images_with_ids(*range(100, 140)))
        time.sleep(0.02)
        assert large.cancel()
        assert list(batcher.submit(images_with_ids(5)).result(timeout=10)["label"]) == [5]
    finally:
        batcher.close()
    assert sum(model.calls) <= 3  # at most the turn running at the cancel, one more, and the next request


def test_a_lone_request_waits_at_most_max_wait() -> None:
    model = FakeModel()
    batcher = DynamicBatcher(model.run, max_batch=32, max_wait_ms=50)
    try:
        start = time.perf_counter()
        batcher.submit(images_with_ids(1)).result(timeout=10)
        elapsed = time.perf_counter() - start
    finally:
        batcher.close()
    assert 0.04 < elapsed < 2.0
    assert model.calls == [1]


def test_an_error_reaches_every_request_of_the_batch_and_the_batcher_survives() -> None:
    model = FakeModel(fail_when_sum_is=7)
    batcher = DynamicBatcher(model.run, max_batch=8, max_wait_ms=200)
    try:
        futures = [batcher.submit(images_with_ids(i)) for i in (1, 7, 3)]
        for future in futures:
            with pytest.raises(RuntimeError, match="model exploded"):
                future.result(timeout=10)
        assert list(batcher.submit(images_with_ids(4)).result(timeout=10)["label"]) == [4]
    finally:
        batcher.close()


def test_close_finishes_queued_requests_then_refuses_new_ones() -> None:
    model = FakeModel(delay_s=0.05)
    batcher = DynamicBatcher(model.run, max_batch=2, max_wait_ms=0)
    futures = [batcher.submit(images_with_ids(i)) for i in range(6)]
    batcher.close()
    assert [int(f.result(timeout=0)["label"][0]) for f in futures] == list(range(6))
    with pytest.raises(BatcherClosed):
        batcher.submit(images_with_ids(1))


def test_observer_sees_every_batch() -> None:
    seen: list[int] = []
    batcher = DynamicBatcher(FakeModel().run, max_batch=8, max_wait_ms=200,
                             on_batch=lambda outputs, seconds: seen.append(len(outputs["label"])))
    try:
        futures = [batcher.submit(images_with_ids(i, i)) for i in range(3)]
        [f.result(timeout=10) for f in futures]
    finally:
        batcher.close()
    assert seen == [6]


def test_empty_request_is_refused() -> None:
    batcher = DynamicBatcher(FakeModel().run)
    try:
        with pytest.raises(ValueError, match="at least one image"):
            batcher.submit(np.zeros((0, 2, 2, 3), np.uint8))
    finally:
        batcher.close()


def test_concurrent_http_requests_are_gathered_into_one_predictor_call(tiny_model_repository: Path) -> None:
    """Eight concurrent OIP requests -> one predictor.run call (warm-up aside), same answers as alone."""
    calls: list[int] = []

    class CountingPredictor(Predictor):
        def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
            calls.append(batch.shape[0])
            return super().run(batch)

    settings = Settings(model_repository=tiny_model_repository, max_batch=32, max_wait_ms=500)
    app = create_app(settings, predictor_factory=lambda: CountingPredictor.from_repository(tiny_model_repository))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    expected = Predictor.from_repository(tiny_model_repository).run(images)

    def request(i: int) -> dict:
        return {"inputs": [{"name": "images", "shape": [1, 32, 32, 3], "datatype": "UINT8",
                            "data": images[i].reshape(-1).tolist()}],
                "outputs": [{"name": "label"}, {"name": "score"}]}

    async def scenario() -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                for _ in range(500):
                    if (await client.get("/readyz")).status_code == 200:
                        break
                    await asyncio.sleep(0.02)
                return await asyncio.gather(*(client.post("/v2/models/tiny/infer", json=request(i))
                                              for i in range(8)))

    responses = asyncio.run(scenario())
    assert calls == [1, 8]  # the warm-up batch, then every request in one call
    for i, response in enumerate(responses):
        assert response.status_code == 200, response.text
        outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
        assert outputs["label"] == [int(expected["label"][i])]
        assert outputs["score"] == [float(expected["score"][i])]


def test_with_arrival_tracking_a_lone_request_does_not_wait() -> None:
    model = FakeModel()
    batcher = DynamicBatcher(model.run, max_batch=32, max_wait_ms=1000, track_arrivals=True)
    try:
        start = time.perf_counter()
        with batcher.arrival() as arrival:
            batcher.submit(images_with_ids(1), arrival).result(timeout=10)
        elapsed = time.perf_counter() - start
    finally:
        batcher.close()
    assert elapsed < 0.5  # not the 1 s max_wait
    assert model.calls == [1]


def test_with_arrival_tracking_an_announced_request_is_waited_for() -> None:
    model = FakeModel()
    batcher = DynamicBatcher(model.run, max_batch=32, max_wait_ms=2000, track_arrivals=True)
    try:
        with batcher.arrival() as late, batcher.arrival() as early:
            first = batcher.submit(images_with_ids(1), early)
            time.sleep(0.2)  # the second request is still "decoding": the batcher must wait for it
            second = batcher.submit(images_with_ids(2), late)
            results = [first.result(timeout=10), second.result(timeout=10)]
    finally:
        batcher.close()
    assert model.calls == [2]
    assert [list(r["label"]) for r in results] == [[1], [2]]


def test_a_withdrawn_arrival_stops_the_wait() -> None:
    model = FakeModel()
    batcher = DynamicBatcher(model.run, max_batch=32, max_wait_ms=60_000, track_arrivals=True)
    try:
        with pytest.raises(RuntimeError), batcher.arrival():  # a request that fails while decoding
            raise RuntimeError("bad image")
        start = time.perf_counter()
        with batcher.arrival() as arrival:
            batcher.submit(images_with_ids(3), arrival).result(timeout=10)
        assert time.perf_counter() - start < 0.5
    finally:
        batcher.close()
