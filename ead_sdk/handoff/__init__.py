"""The lane hand-off router: route lanes across serving engines (vLLM, OpenAI-compatible servers, llama.cpp).

Each lane runs as an ordinary streaming request on the engine of its current model; the policy
sees each streamed token's signal, batched over the lanes that produced one; on a route change the
lane's request is cancelled at that token and a new request on the other engine continues from
the lane's token ids so far. See `HandoffRouter`.

```python
router = HandoffRouter([small, large], policy)
lane = router.open_lane(prompt_ids, max_new_tokens=64)
async for event in lane:          # final tokens only
    ...
result = await lane.result()      # tokens, models, cost report, hand-offs, the policy's view
```
"""

from __future__ import annotations

from ead_sdk.handoff.lane import LaneStream
from ead_sdk.handoff.results import DecisionLog, Handoff, HandoffLaneResult, HandoffResult
from ead_sdk.handoff.router import HandoffRouter

__all__ = ["DecisionLog", "Handoff", "HandoffLaneResult", "HandoffResult", "HandoffRouter", "LaneStream"]
