"""A real model behind HTTP: scikit-learn's digits classifier, batched through
a two-step Flow (numpy preprocessing, then the model), served by aiohttp.

The digits data set ships with scikit-learn: nothing is downloaded. The model
is trained in ``on_start`` (a fraction of a second), in the worker process, so
the web process never holds it.

    python -m examples.digits.service --port 8080
    curl -d '{"pixels": [0, 0, 5, 13, 9, 1, ...64 values 0..16]}' localhost:8080/predict
"""

from __future__ import annotations

import argparse

import numpy as np
from aiohttp import web
from aqueduct import BaseTask, BaseTaskHandler, Flow, FlowStep
from aqueduct.integrations.aiohttp import AppIntegrator

#: Samples of the data set kept out of training, to measure accuracy on.
TEST_FRACTION = 0.25
SEED = 0


class DigitTask(BaseTask):
    def __init__(self, pixels: np.ndarray) -> None:
        super().__init__()
        self.pixels = pixels  # 8x8 grey levels, 0..16
        self.features: np.ndarray | None = None
        self.digit: int | None = None
        self.confidence: float | None = None


class Preprocess(BaseTaskHandler):
    """Scales a batch of images to [0, 1] and centres them on the training mean."""

    def on_start(self) -> None:
        train, _ = split_digits()
        self.mean = (train[0] / 16.0).mean(axis=0)

    def handle(self, *tasks: DigitTask) -> None:  # type: ignore[override]
        batch = np.stack([np.asarray(t.pixels, dtype=np.float32).reshape(64) for t in tasks])
        features = batch / 16.0 - self.mean
        for task, row in zip(tasks, features, strict=True):
            task.features = row


class Classifier(BaseTaskHandler):
    """A logistic regression over the preprocessed pixels, batched."""

    def on_start(self) -> None:
        from sklearn.linear_model import LogisticRegression

        (images, labels), _ = split_digits()
        mean = (images / 16.0).mean(axis=0)
        self.model = LogisticRegression(max_iter=2000).fit(images / 16.0 - mean, labels)

    def handle(self, *tasks: DigitTask) -> None:  # type: ignore[override]
        features = [t.features for t in tasks if t.features is not None]
        probabilities = self.model.predict_proba(np.stack(features))
        for task, row in zip(tasks, probabilities, strict=True):
            best = int(row.argmax())
            task.digit = int(self.model.classes_[best])
            task.confidence = float(row[best])


def split_digits() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(train images, labels), (test images, labels) of scikit-learn's digits."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(SEED).permutation(len(digits.target))
    cut = int(len(order) * (1 - TEST_FRACTION))
    train, test = order[:cut], order[cut:]
    return (digits.data[train], digits.target[train]), (digits.data[test], digits.target[test])


def build_flow() -> Flow:
    return Flow(
        FlowStep(Preprocess(), batch_size=32),
        FlowStep(Classifier(), batch_size=32, batch_timeout=0.002),
    )


async def predict(request: web.Request) -> web.Response:
    body = await request.json()
    pixels = np.asarray(body["pixels"], dtype=np.float32)
    if pixels.size != 64:
        raise web.HTTPBadRequest(text="pixels: 64 grey levels (0..16) expected")
    task = DigitTask(pixels)
    await request.app["flow"].process(task, timeout_sec=5)
    return web.json_response({"digit": task.digit, "confidence": task.confidence})


def prepare_app() -> web.Application:
    app = web.Application()
    AppIntegrator(app, map_errors=True).add_flow(build_flow())
    app.router.add_post("/predict", predict)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8080)
    web.run_app(prepare_app(), host="127.0.0.1", port=parser.parse_args().port)
