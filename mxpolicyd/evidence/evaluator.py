"""
The evaluator: gathers all the evidence for one domain.

It runs the MTA-STS and DANE evaluations of a domain in parallel and
returns the domain's next L{DomainState}.  It never fails: a failure is
evidence too, recorded in the state by each standard's evaluator.  While an
evaluation runs, L{Evaluator.partial_dane} holds the DANE result if it came
first: it is final whatever MTA-STS finds, so the answer need not wait for a
slow policy fetch (L{mxpolicyd.policy.verdict.first_answer}).
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, gatherResults

from mxpolicyd.evidence.dane import DaneState
from mxpolicyd.evidence.dane_lookups import DaneEvaluator
from mxpolicyd.evidence.state import DomainState
from mxpolicyd.evidence.sts_discovery import StsEvaluator, Trace


class Evaluator:
    def __init__(self, sts: StsEvaluator, dane: DaneEvaluator | None = None) -> None:
        self._sts = sts
        self._dane = dane
        self._partial: dict[str, DaneState] = {}

    def evaluate(
        self, domain: str, prior: DomainState | None, trace: Trace | None = None
    ) -> Deferred[DomainState]:
        return Deferred.fromCoroutine(
            self._evaluate(domain, prior or DomainState(), trace)
        )

    async def _evaluate(
        self, domain: str, prior: DomainState, trace: Trace | None
    ) -> DomainState:
        sts_d = self._sts.evaluate(domain, prior.sts, trace)
        if self._dane is None:
            return DomainState(sts=await sts_d)
        dane_d = self._dane.evaluate(domain, prior.dane)
        dane_d.addCallback(self._found, domain)
        try:
            await gatherResults([sts_d, dane_d], consumeErrors=True)  # type: ignore[arg-type]
            return DomainState(sts=await sts_d, dane=await dane_d)
        finally:
            self._partial.pop(domain, None)

    def _found(self, dane: DaneState, domain: str) -> DaneState:
        self._partial[domain] = dane
        return dane

    @property
    def dane_enabled(self) -> bool:
        return self._dane is not None

    def partial_dane(self, domain: str) -> DaneState | None:
        """The DANE result of C{domain}'s running evaluation, once known."""
        return self._partial.get(domain)
