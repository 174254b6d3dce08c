"""LRP records the output relevance it starts from: the target's logit."""

from __future__ import annotations

import torch

from cnnlens.attribution import create
from cnnlens.models import load_model


def test_lrp_target_logit_is_the_targets_logit() -> None:
    torch.manual_seed(0)
    model = load_model("tinycnn", pretrained=False)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    exp = create("lrp", model).explain(x, target=[0, 1, 2])
    with torch.no_grad():
        logits = model.module.eval()(x)
    torch.testing.assert_close(exp.extras["target_logit"], logits[torch.arange(3), torch.tensor([0, 1, 2])])
