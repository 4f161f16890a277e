"""Schemathesis over the server's own OpenAPI document: one driver for the bounded test
(tests/serve/test_fuzz_api.py) and longer runs by hand.

Every operation the served app lists is fuzzed in both generation modes (schema-valid and
schema-violating requests), each response checked with every built-in check except
``positive_data_acceptance``: a schema-valid body can still be refused with a documented
400 for reasons a JSON schema cannot say (prompt tokens + max_tokens over the context, a
list of several prompts). A 5xx, an undocumented status, content type or header, or a body
off its schema is a failure.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

__all__ = ["FuzzReport", "fuzz_app"]


@dataclass
class FuzzReport:
    """What a campaign sent and what came back, per operation label ('POST /v1/completions')."""

    requests: collections.Counter[str] = field(default_factory=collections.Counter)
    statuses: dict[str, collections.Counter[int]] = field(default_factory=lambda: collections.defaultdict(collections.Counter))
    server_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    failures: dict[str, list[str]] = field(default_factory=lambda: collections.defaultdict(list))


def _excluded_checks() -> list[Any]:
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    return [positive_data_acceptance]


def fuzz_app(app: Any, max_examples: int, token: str | None = None, seed: int | None = None) -> FuzzReport:
    """Fuzz every operation of ``app`` (``max_examples`` per operation and mode); never raises on a failure.

    ``token`` is sent as the bearer key when the app is configured with one.
    """
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers=headers)
    report = FuzzReport()
    checks = _excluded_checks()
    for result in schema.get_all_operations():
        op = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz_operation(op, mode, max_examples, headers, checks, report, seed)
    return report


def _fuzz_operation(
    op: Any, mode: Any, max_examples: int, headers: dict[str, str], checks: list[Any], report: FuzzReport, seed: int | None
) -> None:
    label = op.label

    @settings(max_examples=max_examples, deadline=None, database=None, derandomize=seed is None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(op.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        response = case.call(headers=headers)
        report.requests[label] += 1
        report.statuses[label][response.status_code] += 1
        if response.status_code >= 500:
            report.server_errors[label] += 1
        try:
            case.validate_response(response, excluded_checks=checks, headers=headers)
        except BaseException as err:
            text = str(err).replace("\n", " ")
            if len(report.failures[label]) < 20:
                report.failures[label].append(f"[{mode.value}] {text[:2500]}")

    if seed is not None:
        from hypothesis import seed as hypothesis_seed

        run = hypothesis_seed(seed)(run)
    try:
        run()
    except BaseException as err:
        if "Unsatisfiable" not in type(err).__name__:
            report.failures[label].append(f"[{mode.value}] {type(err).__name__}: {str(err)[:600]}")
