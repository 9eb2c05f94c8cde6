"""A lane's cost counts in plain Python integers, turned into the SDK's `CostReport` at the end.

The router counts one token at a time for one lane, where `ead_sdk.cost.CostLedger`'s array
updates would cost more than the rest of the router's work per token. The counting convention is
the ledger's (see `ead_sdk.cost`): the counts are copied into a one-lane `CostLedger`, whose
`report` prices them, so a routed lane's report equals the decode loop's on the same routes.
"""

from __future__ import annotations

import numpy as np

from ead_sdk.cost import CostLedger, CostModel, CostReport
from ead_sdk.errors import CostModelError


class LaneLedger:
    """Forward, catch-up, waste, prefill and emission counts of one lane over ``num_models`` models."""

    def __init__(self, num_models: int, prompt_length: int):
        self.num_models, self.prompt_length = num_models, prompt_length
        zeros = [0] * num_models
        self.consumed, self.steps, self.catchup = list(zeros), list(zeros), list(zeros)
        self.wasted, self.emitted, self.prefill = list(zeros), list(zeros), list(zeros)
        self.used = [False] * num_models
        self.switches, self.last = 0, -1

    def compute(self, model: int, position: int) -> int:
        """``model`` computed generated position ``position``; returns the catch-up tokens it needed."""
        behind = position - self.consumed[model]
        if behind < 0:
            raise CostModelError("a model was asked to compute a position it has already passed")
        if not self.used[model]:
            self.used[model] = True
            self.prefill[model] += max(self.prompt_length - 1, 0)
        self.catchup[model] += behind
        self.steps[model] += 1
        self.consumed[model] = position + 1
        return behind

    def waste(self, model: int) -> None:
        """``model``'s last step forward was thrown away (a retried token)."""
        self.wasted[model] += 1

    def emit(self, model: int) -> None:
        """``model`` emitted the lane's next token."""
        self.switches += self.last >= 0 and self.last != model
        self.last = model
        self.emitted[model] += 1

    def report(self, cost_model: CostModel) -> CostReport:
        """The lane's `CostReport`, priced by `CostLedger.report`."""
        ledger = CostLedger(1, self.num_models, [self.prompt_length])
        for name in ("consumed", "steps", "catchup", "wasted", "emitted", "prefill", "used"):
            getattr(ledger, name)[0] = getattr(self, name)
        ledger.switches[0], ledger.last[0] = self.switches, self.last
        return ledger.report(cost_model, np.array([0]))
