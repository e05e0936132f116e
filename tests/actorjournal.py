"""An actor class importable by the subprocesses of test_actor_journal."""

import keelflow as workflow


@workflow.virtual_actor
class Counter:
    def __init__(self):
        self.value_ = 0

    def incr(self, n):
        self.value_ += n
        return self.value_

    @workflow.virtual_actor.readonly
    def value(self):
        return self.value_
