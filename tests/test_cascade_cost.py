"""tools/bench/cascade_cost.py counts multiply-accumulates from layer shapes: closed forms for a convolution
(grouped too), a linear layer and self-attention, and hooks that are gone afterwards."""
from helpers import jt
from jmodels.layers import SelfAttention
from tools.bench.cascade_cost import macs


class Net(jt.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = jt.nn.Conv2d(4, 8, 3, padding=1)
        self.grouped = jt.nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2)
        self.attn = SelfAttention(8, 4, head_dim=4)
        self.fc = jt.nn.Linear(5, 7)

    def execute(self, x, y):
        return self.attn(self.grouped(self.conv(x))), self.fc(y)


def test_macs_in_closed_form_and_the_hooks_are_removed():
    net = Net()
    x, y = jt.zeros((1, 4, 6, 10)), jt.zeros((2, 3, 5))
    counts = macs(jt, net, lambda m: m(x, y))
    conv = 8 * 6 * 10 * 4 * 9 + 8 * 3 * 5 * (8 // 2) * 9  # output elements x inputs per output; stride 2: 3x5
    tokens = 3 * 5
    assert counts == {"conv": conv, "linear": 4 * tokens * 8 * 8 + 2 * 3 * 7 * 5, "attention": 2 * tokens ** 2 * 8}
    again = macs(jt, net, lambda m: m.fc(y))  # only what this run calls; the first run's hooks are gone
    assert again == {"conv": 0, "linear": 2 * 3 * 7 * 5, "attention": 0}
