"""The README's Getting Started service: a CPU-bound model behind aiohttp.

python examples/aiohttp_sum.py      # then: curl -d 1000 localhost:8080/sum
"""

from aiohttp import web
from aqueduct import BaseTask, BaseTaskHandler, Flow, FlowStep


class MyModel:
    """This is an example of a CPU-bound model"""

    def process(self, number: int) -> int:
        return sum(i * i for i in range(number))


class Task(BaseTask):
    """Container for sending arguments to the model."""

    def __init__(self, number: int) -> None:
        super().__init__()
        self.number = number
        self.sum: int | None = None  # result will be here


class SumHandler(BaseTaskHandler):
    """When using Aqueduct, we need to wrap your model."""

    def __init__(self) -> None:
        self._model: MyModel | None = None

    def on_start(self) -> None:
        """Executed in a child process, so the parent process does not consume additional memory."""
        self._model = MyModel()

    def handle(self, *tasks: Task) -> None:  # type: ignore[override]
        """List of tasks because it can be batching."""
        assert self._model is not None
        for task in tasks:
            task.sum = self._model.process(task.number)


FLOW = web.AppKey("flow", Flow)


class SumView(web.View):
    """Simple aiohttp-view handler"""

    async def post(self) -> web.Response:
        number = await self.request.read()
        task = Task(int(number))
        await self.request.app[FLOW].process(task)
        return web.json_response(data={"result": task.sum})


async def _stop_flow(app: web.Application) -> None:
    await app[FLOW].stop()


def prepare_app() -> web.Application:
    app = web.Application()
    app[FLOW] = Flow(FlowStep(SumHandler()))
    app.router.add_post("/sum", SumView)
    app[FLOW].start()
    app.on_cleanup.append(_stop_flow)
    return app


if __name__ == "__main__":
    web.run_app(prepare_app())
