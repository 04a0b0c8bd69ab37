"""Adam and the paper's learning-rate schedule: linear warm-up, then step decay (Sec. 4.2).

The schedule is per epoch. With warm-up W, step S and factor g, the rate in epoch e (0-based) is
    lr * (e + 1) / W                 for e < W   (reaching lr in epoch W - 1)
    lr * g ** ((e - W) // S)         for e >= W  (the steps count from the end of the warm-up)
so the paper's recipe (5e-4, W=30, S=80, g=0.1) gives 5e-4 for epochs 29..109, 5e-5 from 110,
5e-6 from 190 and 5e-7 from 270.
"""

import torch


def lr_factor(epoch, warmup_epochs, step_size, step_gamma):
    """Multiplier of the base rate in (0-based) epoch `epoch`."""
    if epoch < warmup_epochs:
        return (epoch + 1) / warmup_epochs
    return step_gamma ** ((epoch - warmup_epochs) // step_size)


def build_optimizer(model, optim_config):
    """Adam over the trainable parameters. BN and bias parameters get no weight decay: decaying
    BN's scale pulls the normalised features towards zero, which the classifiers then fight."""
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": float(optim_config["weight_decay"])},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    betas = tuple(float(b) for b in optim_config.get("betas", (0.9, 0.999)))
    return torch.optim.Adam(groups, lr=float(optim_config["lr"]), betas=betas)


def build_scheduler(optimizer, optim_config):
    """A LambdaLR stepped once per epoch (its state_dict goes into the checkpoint)."""
    warmup = int(optim_config["warmup_epochs"])
    step = int(optim_config["step_size"])
    gamma = float(optim_config["step_gamma"])
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(epoch, warmup, step, gamma))
