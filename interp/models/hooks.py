"""Hook points inside a recurrence (the SSM's state, the Belief Nets' beliefs).

TransformerLens calls a hook on a whole activation ([batch, pos, ...]), but a recurrence makes position t + 1
from position t. For its hooks to sit in the data flow, each is called once per position on the positions so far
([batch, t + 1, ...]), and the recurrence continues from the hook's output at the newest position; earlier
positions of the output are ignored. A caching hook therefore ends up holding the whole tensor (its last call),
a hook that edits position t changes t + 1.. and nothing before t. With no hook attached the positions so far are
not stacked at all (the training loop's cost), and the numbers are those of the plain loop.
"""

from __future__ import annotations

import torch
from transformer_lens.hook_points import HookPoint


def recurrent_hook(hook: HookPoint, values: list[torch.Tensor], new: torch.Tensor) -> torch.Tensor:
    """Append ``new`` (position t) to ``values``, pass the positions so far through ``hook``, and return the
    hook's output at t (also stored as ``values[t]``): what the recurrence continues from."""
    values.append(new)
    if hook._forward_hooks or hook._forward_pre_hooks:  # with nothing attached a HookPoint is the identity
        values[-1] = hook(torch.stack(values, 1))[:, -1].contiguous()  # contiguous: the plain loop's layout
    return values[-1]
