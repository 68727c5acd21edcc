"""A route's ``request_model``: its body validated in the first step's
worker, before ``task_from_request`` sees it (pydantic, an optional extra:
``pip install aqueduct[validation]``)."""

from __future__ import annotations

from typing import Any

from ..exceptions import RequestValidationError
from .http_messages import Request, TaskFromRequest

__all__ = ["Validated", "check_model"]


def check_model(model: Any) -> None:
    """Raises TypeError unless ``model`` is a pydantic model class."""
    if not (isinstance(model, type) and callable(getattr(model, "model_validate_json", None))):
        raise TypeError(f"request_model must be a pydantic model class, got {model!r}")


class Validated:
    """``task_from_request`` behind a model: the body is parsed into
    ``request.model`` first; a body that does not fit raises
    ``RequestValidationError`` (a 422 with the field errors)."""

    def __init__(self, make: TaskFromRequest, model: Any) -> None:
        check_model(model)
        self.make = make
        self.model = model

    def __call__(self, request: Request) -> Any:
        from pydantic import ValidationError

        try:
            request.model = self.model.model_validate_json(request.body)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_input=False, include_context=False)
            detail: list[dict[str, object]] = [
                {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in errors
            ]
            name = self.model.__name__
            raise RequestValidationError(
                f"the body is not a valid {name}: {len(detail)} error(s)", detail
            ) from None
        return self.make(request)
