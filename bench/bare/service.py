"""A bare BentoML service (one trivial API): the soak's baseline for what BentoML itself keeps per request."""

from __future__ import annotations

import bentoml


@bentoml.service
class Bare:
    @bentoml.api
    def echo(self, text: str = "") -> str:
        return text
