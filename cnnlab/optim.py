"""Optimizers and learning-rate schedules with torch.optim's exact semantics, in NumPy.

    optimizer = SGD(model.parameters(), lr=0.01, momentum=0.9)
    scheduler = CosineAnnealingLR(optimizer, T_max=epochs)
    for x, y in batches:
        optimizer.zero_grad()
        loss, dlogits = cross_entropy(model(x), y)
        model.backward(dlogits)
        optimizer.step()
    scheduler.step()            # once per epoch

Updates are in place (parameters, moments), through one or two scratch arrays per parameter
allocated on the first step, so a step allocates nothing and float32 stays float32.
``state_dict()`` holds arrays, ints, floats and bools only, so a checkpoint can store it in
an ``.npz`` file.
"""

from __future__ import annotations

import math

import numpy as np

from cnnlab import backend
from cnnlab.errors import CheckpointError, ConfigError
from cnnlab.nn.module import Parameter
from cnnlab.utils.validation import positive_int

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "LRScheduler", "StepLR", "CosineAnnealingLR", "LinearLR"]

_STATE_ARRAYS = ("momentum_buffer", "exp_avg", "exp_avg_sq")


def _check_non_negative(name: str, value: float) -> float:
    value = float(value)
    if not (value >= 0 and math.isfinite(value)):
        raise ConfigError(f"invalid {name}: {value} (it must be a finite number >= 0)")
    return value


def _check_betas(betas) -> tuple[float, float]:
    betas = tuple(float(beta) for beta in np.asarray(betas, dtype=np.float64).reshape(-1))
    if len(betas) != 2 or not all(0 <= beta < 1 for beta in betas):
        raise ConfigError(f"invalid betas: {betas} (two numbers in [0, 1), e.g. 0.9 0.999)")
    return betas


def _subtract_scaled(target: np.ndarray, scale: float, array: np.ndarray, scratch: np.ndarray) -> None:
    """target -= scale * array, through scratch (which may be array itself)."""
    np.multiply(array, scale, out=scratch)
    target -= scratch


class Optimizer:
    """Base class: one group of parameters, per-parameter state, state_dict.

    Attributes:
        params (list[Parameter]): the parameters updated by ``step``.
        param_groups (list[dict]): one dict of hyperparameters (torch.optim's layout).
        state (list[dict]): per parameter, the arrays and step counts ``step`` keeps.
    """

    def __init__(self, params, hyperparameters: dict) -> None:
        self.params = list(params)
        if not self.params:
            raise ConfigError(f"{type(self).__name__} got an empty parameter list")
        for parameter in self.params:
            if not isinstance(parameter, Parameter):
                raise ConfigError(f"{type(self).__name__} needs cnnlab Parameters "
                                  f"(model.parameters()), got {type(parameter).__name__}")
        self.param_groups = [dict(self._validate(hyperparameters), params=self.params)]
        self.state: list[dict] = [{} for _ in self.params]
        self._scratch: list[list[np.ndarray]] = [[] for _ in self.params]

    def _validate(self, hyperparameters: dict) -> dict:
        raise NotImplementedError

    @property
    def hyperparameters(self) -> dict:
        return {key: value for key, value in self.param_groups[0].items() if key != "params"}

    @property
    def lr(self) -> float:
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        self.param_groups[0]["lr"] = _check_non_negative("learning rate", value)

    def _scratch_arrays(self, index: int, count: int) -> list[np.ndarray]:
        arrays = self._scratch[index]
        while len(arrays) < count:
            arrays.append(np.empty_like(self.params[index].data))
        return arrays

    def zero_grad(self) -> None:
        for parameter in self.params:
            parameter.grad.fill(0)

    def step(self) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict:
        """``{"state": {index: {name: array or int}}, "param_groups": [dict]}`` (copies)."""
        state = {
            index: {name: value.copy() if isinstance(value, np.ndarray) else value
                    for name, value in entry.items()}
            for index, entry in enumerate(self.state) if entry
        }
        group = dict(self.hyperparameters, params=list(range(len(self.params))))
        return {"state": state, "param_groups": [group]}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore hyperparameters and per-parameter state saved by :meth:`state_dict`.

        Keys of ``state`` may be ints or their strings (as after an .npz round trip).

        Raises:
            CheckpointError: the state is for another optimizer or another model.
        """
        name = type(self).__name__
        try:
            groups = state_dict["param_groups"]
            saved_state = state_dict["state"]
        except (KeyError, TypeError):
            raise CheckpointError(f"{name} state must have 'state' and 'param_groups'") from None
        if len(groups) != 1 or len(groups[0].get("params", ())) != len(self.params):
            raise CheckpointError(
                f"{name} state is for {sum(len(g.get('params', ())) for g in groups)} parameters "
                f"in {len(groups)} groups; this optimizer has {len(self.params)} in 1 group"
            )
        hyperparameters = {key: value for key, value in groups[0].items() if key != "params"}
        try:
            hyperparameters = self._validate(hyperparameters)
        except (KeyError, ConfigError) as error:
            raise CheckpointError(f"{name} state has bad hyperparameters: {error}") from None
        new_state: list[dict] = [{} for _ in self.params]
        for key, entry in saved_state.items():
            index = int(key)
            if not 0 <= index < len(self.params):
                raise CheckpointError(f"{name} state has parameter index {index}; "
                                      f"the model has {len(self.params)} parameters")
            new_state[index] = self._load_entry(index, entry)
        self.param_groups[0].update(hyperparameters)
        self.state = new_state

    def _load_entry(self, index: int, entry: dict) -> dict:
        data = self.params[index].data
        loaded = {}
        for key, value in entry.items():
            if key in _STATE_ARRAYS:
                value = np.asarray(value)
                if value.shape != data.shape:
                    raise CheckpointError(f"{type(self).__name__} state {index}.{key} has shape "
                                          f"{value.shape}, the parameter has {data.shape}")
                loaded[key] = value.astype(data.dtype, copy=True)
            elif key == "step":
                loaded[key] = int(value)
            else:
                raise CheckpointError(f"{type(self).__name__} state has unknown entry {key!r}")
        return loaded

    def __repr__(self) -> str:
        settings = ", ".join(f"{key}={value}" for key, value in self.hyperparameters.items())
        return f"{type(self).__name__}({settings})"


class SGD(Optimizer):
    r"""Stochastic gradient descent, optionally with momentum (torch.optim.SGD).

    Plain SGD is lecture 003's hand-written step, w <- w - h * dL/dw. In full, with
    g the gradient, lambda the weight decay, mu the momentum and tau the dampening:

    .. math::
        g_t = \nabla L(w_{t-1}) + \lambda w_{t-1}, \quad
        b_1 = g_1, \quad b_t = \mu b_{t-1} + (1 - \tau) g_t, \quad
        w_t = w_{t-1} - \eta\,(g_t + \mu b_t \text{ if nesterov else } b_t)

    Args:
        params: ``model.parameters()``.
        lr (float): learning rate eta (the lecture's h).
        momentum (float): mu. Default: 0
        dampening (float): tau. Default: 0
        weight_decay (float): lambda, L2 penalty. Default: 0
        nesterov (bool): Nesterov momentum (needs momentum > 0 and dampening 0). Default: False
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def _validate(self, hyperparameters: dict) -> dict:
        checked = {key: _check_non_negative(key.replace("lr", "learning rate"), hyperparameters[key])
                   for key in ("lr", "momentum", "dampening", "weight_decay")}
        checked["nesterov"] = bool(hyperparameters["nesterov"])
        if checked["nesterov"] and (checked["momentum"] <= 0 or checked["dampening"] != 0):
            raise ConfigError("nesterov momentum needs momentum > 0 and dampening 0")
        return checked

    def step(self) -> None:
        group = self.param_groups[0]
        lr, momentum, dampening = group["lr"], group["momentum"], group["dampening"]
        weight_decay, nesterov = group["weight_decay"], group["nesterov"]
        for index, parameter in enumerate(self.params):
            weights, grad = parameter.data, parameter.grad
            (scratch,) = self._scratch_arrays(index, 1)
            if weight_decay != 0:
                grad = np.multiply(weights, weight_decay, out=scratch)
                grad += parameter.grad                        # g_t = dL/dw + lambda w
            if momentum == 0:
                _subtract_scaled(weights, lr, grad, scratch)  # w -= eta g_t
                continue
            state = self.state[index]
            buffer = state.get("momentum_buffer")
            if buffer is None:
                buffer = state["momentum_buffer"] = grad.copy()  # b_1 = g_1
            else:
                buffer *= momentum                               # b_t = mu b_{t-1} ...
                if dampening != 0:
                    buffer += np.multiply(grad, 1 - dampening, out=scratch)  # ... + (1 - tau) g_t
                else:
                    buffer += grad                                           # ... + g_t
            if nesterov:
                _subtract_scaled(weights, lr, grad, scratch)              # w -= eta g_t ...
                _subtract_scaled(weights, lr * momentum, buffer, scratch)  # ... + eta mu b_t
            else:
                _subtract_scaled(weights, lr, buffer, scratch)            # w -= eta b_t


class Adam(Optimizer):
    r"""Adam (torch.optim.Adam): per-weight step sizes from running gradient moments.

    .. math::
        g_t = \nabla L(w_{t-1}) + \lambda w_{t-1}, \quad
        m_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t, \quad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2, \\
        w_t = w_{t-1} - \frac{\eta}{1 - \beta_1^t} \frac{m_t}{\sqrt{v_t} / \sqrt{1 - \beta_2^t} + \epsilon}

    Args:
        params: ``model.parameters()``.
        lr (float): eta. Default: 1e-3
        betas (tuple): (beta_1, beta_2), decay of the moment estimates. Default: (0.9, 0.999)
        eps (float): added to the denominator. Default: 1e-8
        weight_decay (float): lambda, L2 penalty added to the gradient. Default: 0
    """

    _decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    def _validate(self, hyperparameters: dict) -> dict:
        return dict(lr=_check_non_negative("learning rate", hyperparameters["lr"]),
                    betas=_check_betas(hyperparameters["betas"]),
                    eps=_check_non_negative("eps", hyperparameters["eps"]),
                    weight_decay=_check_non_negative("weight_decay", hyperparameters["weight_decay"]))

    def step(self) -> None:
        group = self.param_groups[0]
        lr, (beta1, beta2), eps, weight_decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        coupled_decay = weight_decay != 0 and not self._decoupled
        for index, parameter in enumerate(self.params):
            weights, grad = parameter.data, parameter.grad
            state = self.state[index]
            if not state:
                state.update(step=0, exp_avg=np.zeros_like(weights), exp_avg_sq=np.zeros_like(weights))
            exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
            state["step"] += 1
            t = state["step"]
            # The lines below in one compiled pass where the backend has one (the same bits).
            if backend.adam_step(weights, grad, exp_avg, exp_avg_sq, step=t, lr=lr, beta1=beta1,
                                 beta2=beta2, eps=eps,
                                 coupled_decay=weight_decay if coupled_decay else 0.0,
                                 decoupled_factor=1 - lr * weight_decay if self._decoupled else 1.0):
                continue
            scratch, *decayed = self._scratch_arrays(index, 2 if coupled_decay else 1)
            if weight_decay != 0 and self._decoupled:
                weights *= 1 - lr * weight_decay               # w <- w (1 - eta lambda)   (AdamW)
            elif coupled_decay:
                grad = np.multiply(weights, weight_decay, out=decayed[0])
                grad += parameter.grad                         # g_t = dL/dw + lambda w   (Adam)
            exp_avg *= beta1
            exp_avg += np.multiply(grad, 1 - beta1, out=scratch)     # m_t = b1 m + (1 - b1) g_t
            exp_avg_sq *= beta2
            squared = np.multiply(grad, grad, out=scratch)
            squared *= 1 - beta2
            exp_avg_sq += squared                                    # v_t = b2 v + (1 - b2) g_t^2
            step_size = lr / (1 - beta1**t)                          # eta / (1 - b1^t)
            denominator = np.sqrt(exp_avg_sq, out=scratch)
            denominator /= math.sqrt(1 - beta2**t)
            denominator += eps                                       # sqrt(v_t / (1 - b2^t)) + eps
            ratio = np.divide(exp_avg, denominator, out=scratch)
            _subtract_scaled(weights, step_size, ratio, scratch)     # w -= step_size m_t / denominator


class AdamW(Adam):
    r"""Adam with decoupled weight decay (torch.optim.AdamW, Loshchilov & Hutter).

    The weights shrink directly, w <- w (1 - eta lambda), before the Adam step; the decay
    does not pass through the moment estimates as Adam's L2 penalty does.

    Args:
        params: ``model.parameters()``.
        lr (float): eta. Default: 1e-3
        betas (tuple): (beta_1, beta_2). Default: (0.9, 0.999)
        eps (float): added to the denominator. Default: 1e-8
        weight_decay (float): lambda. Default: 1e-2
    """

    _decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


# learning-rate schedules (torch.optim.lr_scheduler, same numbers)


class LRScheduler:
    """Base class: sets ``optimizer.lr`` on construction and on every ``step()``.

    Call ``step()`` after ``optimizer.step()`` (usually once per epoch). ``last_epoch`` counts
    the calls; ``get_last_lr()`` returns ``[lr]`` as PyTorch does.
    """

    _settings: tuple[str, ...] = ()

    def __init__(self, optimizer: Optimizer) -> None:
        if not isinstance(optimizer, Optimizer):
            raise ConfigError(f"{type(self).__name__} needs a cnnlab optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.last_epoch = -1
        self._initial = True
        self.step()
        self._initial = False

    def _next_lr(self, lr: float) -> float:
        raise NotImplementedError

    def step(self) -> None:
        self.last_epoch += 1
        self.optimizer.lr = self._next_lr(self.optimizer.lr)
        self._last_lr = self.optimizer.lr

    def get_last_lr(self) -> list[float]:
        return [self._last_lr]

    def state_dict(self) -> dict:
        state = {name: getattr(self, name) for name in self._settings}
        state.update(base_lr=self.base_lr, last_epoch=self.last_epoch, last_lr=self._last_lr)
        return state

    def load_state_dict(self, state: dict) -> None:
        try:
            for name in self._settings:
                setattr(self, name, type(getattr(self, name))(state[name]))
            self.base_lr = float(state["base_lr"])
            self.last_epoch = int(state["last_epoch"])
            self._last_lr = float(state["last_lr"])
        except KeyError as error:
            raise CheckpointError(f"{type(self).__name__} state lacks {error}") from None


class StepLR(LRScheduler):
    r"""Multiply the learning rate by ``gamma`` every ``step_size`` epochs.

    .. math:: \eta_t = \eta_0 \gamma^{\lfloor t / \text{step\_size} \rfloor}

    Args:
        optimizer: the optimizer whose ``lr`` is scheduled.
        step_size (int): period of the decay, in ``step()`` calls.
        gamma (float): factor of the decay. Default: 0.1
    """

    _settings = ("step_size", "gamma")

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1) -> None:
        self.step_size = positive_int(step_size, "step_size", owner="StepLR")
        self.gamma = _check_non_negative("gamma", gamma)
        super().__init__(optimizer)

    def _next_lr(self, lr: float) -> float:
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return lr
        return lr * self.gamma


class CosineAnnealingLR(LRScheduler):
    r"""Cosine decay from the initial learning rate to ``eta_min`` over ``T_max`` epochs.

    .. math::
        \eta_t = \eta_{min} + \tfrac12 (\eta_0 - \eta_{min}) (1 + \cos(\pi t / T_{max}))

    computed recursively as PyTorch does (so the numbers match to the last bit), and rising
    again after T_max.

    Args:
        optimizer: the optimizer whose ``lr`` is scheduled.
        T_max (int): epochs of a half period.
        eta_min (float): smallest learning rate. Default: 0
    """

    _settings = ("T_max", "eta_min")

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0) -> None:
        self.T_max = positive_int(T_max, "T_max", owner="CosineAnnealingLR")
        self.eta_min = _check_non_negative("eta_min", eta_min)
        super().__init__(optimizer)

    def _next_lr(self, lr: float) -> float:
        t, period = self.last_epoch, self.T_max
        if self._initial:
            return lr
        if (t - 1 - period) % (2 * period) == 0:
            # the trough: the recursion's denominator would be 0
            return lr + (self.base_lr - self.eta_min) * (1 - math.cos(math.pi / period)) / 2
        # eta_t - eta_min = (eta_{t-1} - eta_min) (1 + cos(pi t / T)) / (1 + cos(pi (t-1) / T))
        return ((1 + math.cos(math.pi * t / period)) / (1 + math.cos(math.pi * (t - 1) / period))
                * (lr - self.eta_min) + self.eta_min)


class LinearLR(LRScheduler):
    r"""Linear warmup: the factor on the initial learning rate goes from ``start_factor`` to
    ``end_factor`` over ``total_iters`` steps, then stays.

    .. math::
        \eta_t = \eta_0 \left(s + (e - s) \frac{\min(t, T)}{T}\right)

    Args:
        optimizer: the optimizer whose ``lr`` is scheduled.
        start_factor (float): in (0, 1]. Default: 1/3
        end_factor (float): in [0, 1]. Default: 1.0
        total_iters (int): steps to reach ``end_factor``. Default: 5
    """

    _settings = ("start_factor", "end_factor", "total_iters")

    def __init__(self, optimizer: Optimizer, start_factor: float = 1.0 / 3, end_factor: float = 1.0,
                 total_iters: int = 5) -> None:
        if not 0 < start_factor <= 1 or not 0 <= end_factor <= 1:
            raise ConfigError(f"LinearLR: need 0 < start_factor <= 1 and 0 <= end_factor <= 1, "
                              f"got {start_factor} and {end_factor}")
        self.total_iters = positive_int(total_iters, "total_iters", owner="LinearLR")
        self.start_factor = float(start_factor)
        self.end_factor = float(end_factor)
        super().__init__(optimizer)

    def _next_lr(self, lr: float) -> float:
        start, end, total, t = self.start_factor, self.end_factor, self.total_iters, self.last_epoch
        if t == 0:
            return lr * start
        if self._initial or t > total:
            return lr
        # ratio of consecutive factors (s + (e - s) t / T) / (s + (e - s) (t - 1) / T)
        return lr * (1.0 + (end - start) / (total * start + (t - 1) * (end - start)))
