"""What a training stage holds between steps and writes into its one checkpoint file: named networks,
the EMA twin of the trained one, named optimizers and the step. Both stages use it.

A checkpoint holds the groups `model`, `ema`, every other network by name (`disc`) and every
optimizer by name (`opt`, `opt_d`), with their meta; `step` and `ema_updates` come from the file,
never from its name. Resume is strict: another kind, another architecture or a missing group raises.
"""
from . import checkpoint
from .checkpoint import CheckpointError, state_arrays


class TrainState:
    """networks: {"model": trained network with the EMA twin, other name: network}; optimizers:
    {name: jmodels.optim.AdamW}; `context`: what the steps read that is not saved (the frozen VAE,
    the diffusion schedule, ...). Every network and optimizer is an attribute of its name too."""

    def __init__(self, kind, config, train_cfg, networks, ema, optimizers, fixed_meta=None, **context):
        assert "model" in networks and ema.model is networks["model"], "the EMA twin follows networks['model']"
        self.kind, self.config, self.cfg, self.step = kind, config, train_cfg, 0
        self.networks, self.ema, self.optimizers = networks, ema, optimizers
        self.fixed_meta = dict(fixed_meta or {})  # saved with every checkpoint (e.g. the latent scale)
        for name, value in {**networks, **optimizers, **context}.items():
            setattr(self, name, value)

    def meta(self, **extra):
        return dict(kind=self.kind, step=self.step, config=self.config.to_dict(), train=self.cfg,
                    ema_updates=self.ema.updates, **self.fixed_meta,
                    **{name: opt.state_meta() for name, opt in self.optimizers.items()}, **extra)

    def save(self, path, **extra):
        groups = {name: state_arrays(net) for name, net in self.networks.items()}
        groups["ema"] = state_arrays(self.ema.twin)
        groups.update({name: opt.state_arrays() for name, opt in self.optimizers.items()})
        return checkpoint.save(path, self.meta(**extra), **groups)

    def load(self, path, check=None):
        """Resume from `path`. `check(meta)` raises where the file belongs to other inputs (another
        autoencoder, another schedule); every network is loaded strictly. Returns the file's meta."""
        meta, groups = checkpoint.load(path)
        if meta.get("kind") != self.kind or type(self.config).from_dict(meta["config"]) != self.config:
            raise CheckpointError(f"{path}: written for {meta.get('kind')} config {meta.get('config')}, this run is "
                                  f"{self.kind} {self.config.to_dict()}; use another --out or the same flags")
        if check is not None:
            check(meta)
        missing = sorted(({*self.networks, "ema", *self.optimizers}) - groups.keys())
        if missing:
            raise CheckpointError(f"{path}: no {', '.join(missing)} in the file: not a resumable checkpoint")
        for name, net in self.networks.items():
            checkpoint.load_into(net, groups[name], f"{path} [{name}]")
        checkpoint.load_into(self.ema.twin, groups["ema"], f"{path} [ema]")
        for name, opt in self.optimizers.items():
            opt.load_state(groups[name], meta[name])
        self.step, self.ema.updates = int(meta["step"]), int(meta["ema_updates"])
        return meta
