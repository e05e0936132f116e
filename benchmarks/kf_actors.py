"""The virtual actor of the keelflow benchmarks.

It lives in an importable module (not ``__main__``) because keelflow stores the class by
reference in the actor's metadata: a second process rebuilds it from there, as an
application's would.
"""

from __future__ import annotations

import keelflow as workflow


@workflow.virtual_actor
class Counter:
    def __init__(self) -> None:
        self.n = 0

    def incr(self, k: int) -> int:
        self.n += k
        return self.n

    @workflow.virtual_actor.readonly
    def value(self) -> int:
        return self.n
