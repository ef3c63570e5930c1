"""Exponential moving average of a model's weights, held in a twin module that is never trained.

The decay warms up as min(decay, (1 + n) / (10 + n)) so early averages are not dominated by the
random init. Buffers (e.g. BatchNorm statistics) are copied, not averaged.
Ref: Polyak & Juditsky 1992; the warm-up of TensorFlow's ExponentialMovingAverage(num_updates).
"""
import jittor as jt


class EMA:
    def __init__(self, model, twin, decay=0.999):
        self.model, self.twin, self.decay, self.updates = model, twin, decay, 0
        for p in twin.parameters():
            p.stop_grad()
        self.copy_from(model)
        self._pairs = self._match()

    def _match(self):
        own, twin = self.model.state_dict(), self.twin.state_dict()
        trained = {id(p) for p in self.model.parameters() if not p.is_stop_grad()}
        return [(twin[k], v, id(v) in trained) for k, v in own.items()]

    def copy_from(self, model):
        """A copy in new memory: on the CPU the optimizer updates the model's weights in place."""
        src = model.state_dict()
        for k, v in self.twin.state_dict().items():
            v.update(jt.array(src[k].numpy()))

    def update(self):
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for e, p, trained in self._pairs:
            e.update(e * d + p.detach() * (1 - d) if trained else p.detach())
        jt.sync([e for e, _, _ in self._pairs])
