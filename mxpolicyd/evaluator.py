"""
The evaluator: gathers all the evidence for one domain.

It runs each standard's evaluation (MTA-STS now; DANE joins it here, in
parallel) and returns the domain's next L{DomainState}.  It never fails: a
failure is evidence too, recorded in the state by the standard's evaluator.
"""

from __future__ import annotations

from dataclasses import replace

from twisted.internet.defer import Deferred

from mxpolicyd.mtasts import StsEvaluator, Trace
from mxpolicyd.state import DomainState


class Evaluator:
    def __init__(self, sts: StsEvaluator) -> None:
        self._sts = sts

    def evaluate(
        self, domain: str, prior: DomainState | None, trace: Trace | None = None
    ) -> Deferred[DomainState]:
        return Deferred.fromCoroutine(
            self._evaluate(domain, prior or DomainState(), trace)
        )

    async def _evaluate(
        self, domain: str, prior: DomainState, trace: Trace | None
    ) -> DomainState:
        sts = await self._sts.evaluate(domain, prior.sts, trace)
        return replace(prior, sts=sts)
