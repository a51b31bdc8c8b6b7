"""PartitionNewton: one learning rate per group of parameters, ``eta = H_bar^-1 g_bar``.

The step is ``theta <- theta - lr * sum_s eta_s U^s`` for a direction u (gradient, heavy-ball
momentum buffer or Adam step), with ``g_bar[s] = <U^s, grad>``, ``H_bar = D^(2)(u)`` and the
order-3 diagonal ``d3[s] = D^(3)(u)[s, s, s]``. Choices of rates (all rescaling-invariant):

* ``"none"``: ``eta = H_bar^-1 g_bar`` (S = 1: Cauchy's steepest descent; S = P: Newton).
* ``"diag"`` (paper v1): ``eta = (H_bar + eps Diag(|d3|^(2/3)))^-1 g_bar``.
* ``"cubic"`` (final version, default): the anisotropic cubic (Nesterov-Polyak) step
  ``eta = (H_bar + (lambda_int / 2) ||D eta|| D^2)^-1 g_bar`` with ``D = Diag(|d3|^(1/3))``,
  solved in float64 by a root search on ``r = ||D eta||`` bracketed from the smallest r
  that makes the matrix positive definite (the largest root).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from hessian_lens.engine import Options, differentiate, pseudo_hessian, summaries_from_gradient
from hessian_lens.linalg import damped, scales
from hessian_lens.partition import Group, Partition, parameter_kind

REGULARIZATIONS = ("none", "diag", "cubic")
DIRECTIONS = ("momentum", "gradient", "adam")
HARD_CASES = ("solve", "keep_previous")


class StepError(ValueError):
    """No well-defined step for these summaries; the message says why and what to change."""


class HardCaseError(StepError):
    """The cubic equation has no interior root (``hard_case="keep_previous"`` asked to skip)."""


@dataclass
class Solution:
    """Learning rates and how they were obtained."""

    eta: Tensor
    regularization: str
    acted: bool
    how: str
    iterations: int = 0
    r: float = 0.0
    diagnostics: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- solvers
def solve_rates(
    H: Tensor,
    g: Tensor,
    d3: Tensor | None = None,
    regularization: str = "cubic",
    lambda_int: float = 1.0,
    eps: float = 1e-3,
    hard_case: str = "solve",
    damping: float = 0.0,
    norms_sq: Tensor | None = None,
) -> Solution:
    """Per-group learning rates from ``H_bar``, ``g_bar`` (and ``d3`` unless "none").

    ``damping`` = lambda solves with ``H_bar + lambda diag(||U^s||^2)`` (the pseudo-Hessian
    of ``H + lambda I``: :func:`hessian_lens.linalg.damped`) instead of ``H_bar``.

    ``hard_case``: when the cubic equation has no root inside the positive-definite region
    (the root sits on its boundary), ``"solve"`` takes the boundary solution along the
    lowest eigenvector; ``"keep_previous"`` (the author's code) raises
    :class:`HardCaseError` so that an optimizer keeps its previous rates.

    Raises:
        StepError: singular / indefinite cases that the chosen regularisation cannot fix.

    Example:
        >>> H = torch.tensor([[2.0, 0.0], [0.0, 4.0]]); g = torch.tensor([2.0, 2.0])
        >>> solve_rates(H, g, regularization="none").eta.tolist()
        [1.0, 0.5]
    """
    if regularization not in REGULARIZATIONS:
        raise ValueError(f"regularization must be one of {REGULARIZATIONS}, got {regularization!r}")
    H, g = damped(_f64(H), damping, None if norms_sq is None else _f64(norms_sq)), _f64(g)
    if regularization == "none":
        return Solution(_solve(H, g, "H̄"), "none", False, "exact H̄⁻¹ḡ")
    if d3 is None:
        raise ValueError(f"regularization '{regularization}' needs the diagonal of D^(3)")
    d3 = _f64(d3).abs()
    if regularization == "diag":
        reg = eps * d3 ** (2.0 / 3.0)
        return Solution(
            _solve(H + torch.diag(reg), g, "H̄ + eps Diag(|d3|^(2/3))"),
            "diag",
            bool((reg > 0).any()),
            f"eps = {eps:g}",
        )
    if hard_case not in HARD_CASES:
        raise ValueError(f"hard_case must be one of {HARD_CASES}, got {hard_case!r}")
    return _cubic(H, g, d3 ** (1.0 / 3.0), lambda_int, hard_case)


def _solve(M: Tensor, g: Tensor, what: str) -> Tensor:
    """``M^-1 g``, judged and solved in the rescaling-invariant coordinates ``C = s M s``."""
    s = scales(M)
    C = s[:, None] * M * s[None, :]
    lam = torch.linalg.eigvalsh(C)
    top = float(lam.abs().max()) if lam.numel() else 0.0
    if top == 0.0 or float(lam.abs().min()) <= 1e-12 * top:
        raise StepError(
            f"{what} is singular (normalised eigenvalues {lam.tolist()[:4]}...): "
            "no unique step. Use regularization='cubic' (or 'diag') with a D^(3) "
            "that is non-zero on every group."
        )
    return s * torch.linalg.solve(C, s * g)


def _cubic(H: Tensor, g: Tensor, d: Tensor, lambda_int: float, hard_case: str) -> Solution:
    """``eta = (H + c D^2)^-1 g`` with ``c = lambda_int ||D eta|| / 2`` (largest root)."""
    if lambda_int < 0:
        raise ValueError(f"lambda_int must be >= 0, got {lambda_int}")
    D2 = torch.diag(d * d)
    if lambda_int == 0 or float(d.max()) == 0.0:
        why = "lambda_int = 0" if lambda_int == 0 else "the diagonal of D^(3) is zero"
        if float(torch.linalg.eigvalsh(H).min()) <= 0:
            raise StepError(
                f"H̄ is not positive definite and the cubic term vanishes ({why}): "
                "no regularised step exists. Use lambda_int > 0, a direction "
                "with non-zero third derivatives, or regularization='diag'."
            )
        return Solution(torch.linalg.solve(H, g), "cubic", False, f"inactive ({why})")
    c_min = _smallest_pd_shift(H, D2, d)
    r_min = 2.0 * c_min / lambda_int

    def phi(r: float) -> float:
        return float((d * torch.linalg.solve(H + 0.5 * lambda_int * r * D2, g)).norm()) - r

    lo = r_min * (1 + 1e-12) + 1e-300
    if phi(lo) <= 0:  # hard case: the root sits on the boundary r_min
        if hard_case == "keep_previous":
            raise HardCaseError("no interior root of the cubic equation (hard case)")
        return _hard_case(H, g, d, D2, lambda_int, r_min)
    hi = max(2.0 * lo, 1e-12)
    iterations = 0
    while phi(hi) > 0:
        hi *= 4.0
        iterations += 1
        if iterations > 400:
            raise StepError("the cubic root search did not bracket a root (overflow)")
    lo, hi, more = _bisect_secant(phi, lo, hi)
    r = hi if abs(phi(hi)) < abs(phi(lo)) else lo
    eta = torch.linalg.solve(H + 0.5 * lambda_int * r * D2, g)
    return Solution(
        eta,
        "cubic",
        True,
        "root of ||D eta|| = r",
        iterations + more,
        r,
        {"r_min": r_min, "c": 0.5 * lambda_int * r},
    )


def _smallest_pd_shift(H: Tensor, D2: Tensor, d: Tensor) -> float:
    """Smallest c >= 0 with ``H + c D^2`` positive semi-definite."""
    if float(torch.linalg.eigvalsh(H).min()) > 0:
        return 0.0
    if float(d.min()) > 0:
        inv = torch.diag(1.0 / d)
        return max(0.0, -float(torch.linalg.eigvalsh(inv @ H @ inv).min()))
    zero = (d == 0).nonzero().reshape(-1)
    if float(torch.linalg.eigvalsh(H[zero][:, zero]).min()) <= 0:
        raise StepError(
            f"groups {zero.tolist()} have D^(3)[s,s,s] = 0 and H̄ restricted to "
            "them is not positive definite: no cubic term can make the step "
            "well defined. Use another direction or a coarser partition."
        )
    lo, hi = 0.0, 1.0
    while float(torch.linalg.eigvalsh(H + hi * D2).min()) <= 0:
        lo, hi = hi, hi * 4.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if float(torch.linalg.eigvalsh(H + mid * D2).min()) <= 0 else (lo, mid)
    return hi


def _bisect_secant(
    phi: Callable[[float], float], lo: float, hi: float, tol: float = 1e-13
) -> tuple[float, float, int]:
    """Shrink ``[lo, hi]`` (phi(lo) > 0 > phi(hi), phi decreasing) around the root."""
    f_lo, f_hi = phi(lo), phi(hi)
    for i in range(1, 200):
        secant = hi - f_hi * (hi - lo) / (f_hi - f_lo) if f_hi != f_lo else 0.5 * (lo + hi)
        mid = secant if lo < secant < hi and i % 3 else 0.5 * (lo + hi)
        f_mid = phi(mid)
        if f_mid > 0:
            lo, f_lo = mid, f_mid
        else:
            hi, f_hi = mid, f_mid
        if hi - lo <= tol * max(1.0, hi) or f_mid == 0:
            return lo, hi, i
    return lo, hi, 200


def _hard_case(H, g, d, D2, lambda_int, r_min) -> Solution:
    M = H + 0.5 * lambda_int * r_min * D2
    _lam, vecs = torch.linalg.eigh(M)
    eta = torch.linalg.pinv(M, hermitian=True) @ g
    v = vecs[:, 0]
    a, b, c = (
        float((d * v) @ (d * v)),
        2 * float((d * v) @ (d * eta)),
        float((d * eta) @ (d * eta)) - r_min**2,
    )
    tau = (-b + math.sqrt(max(b * b - 4 * a * c, 0.0))) / (2 * a) if a > 0 else 0.0
    return Solution(
        eta + tau * v, "cubic", True, "hard case (root on the boundary)", 0, r_min, {"r_min": r_min}
    )


# ---------------------------------------------------------------------------- functional step
def partition_newton_step(
    model: nn.Module,
    loss_fn,
    data,
    partition: Partition | None = None,
    direction=None,
    regularization: str = "cubic",
    lambda_int: float = 1.0,
    eps: float = 1e-3,
    damping: float = 0.0,
    **engine,
) -> tuple[Tensor, dict[str, Any]]:
    """The S learning rates of one PartitionNewton step (the model is not changed).

    Apply them as ``theta_p -= eta[s] * u_p`` for p in group s (u: ``direction``, by
    default the gradient). Keyword ``engine`` arguments go to :func:`pseudo_hessian`
    (``options=``, ``device``, ``dtype``, ``method``, ``distributed``, ``curvature``, ...):
    inside a process group each rank passes its shard and every rank gets the same rates,
    those of the union. ``curvature="ggn"`` has no ``D^(3)``: use ``regularization="none"``,
    with ``damping`` (the rates of ``G_bar + lambda diag(||U^s||^2)``) where ``G_bar`` is
    singular.

    Returns:
        ``(eta, diagnostics)`` with ``H``, ``g``, ``d3``, ``regularization``, ``acted``,
        ``how``, ``iterations``, ``r``, ``labels``, ``direction``.

    Example:
        >>> import torch, torch.nn.functional as F
        >>> net = torch.nn.Linear(3, 1)
        >>> x, y = torch.randn(16, 3), torch.randn(16, 1)
        >>> eta, info = partition_newton_step(net, F.mse_loss, (x, y), regularization="none")
        >>> eta.shape, info["labels"]
        (torch.Size([2]), ['weight', 'bias'])
    """
    ggn = Options.of(engine.get("options"), **{k: v for k, v in engine.items() if k != "options"})
    if ggn.curvature == "ggn" and regularization != "none":
        raise ValueError(
            f"curvature='ggn' has no D^(3) for regularization='{regularization}': use "
            "regularization='none' (with damping= where the Gauss-Newton is singular)"
        )
    res = pseudo_hessian(
        model,
        loss_fn,
        data,
        partition=partition,
        direction=direction,
        d3_diagonal=regularization != "none",
        **engine,
    )
    norms_sq = res.partition.reduce([u * u for u in res.direction], range(len(res.direction)))
    sol = solve_rates(
        res.H, res.g, res.d3, regularization, lambda_int, eps, damping=damping, norms_sq=norms_sq
    )
    info = {
        "H": res.H,
        "g": res.g,
        "d3": res.d3,
        "labels": res.labels,
        "direction": res.direction,
        **{k: v for k, v in asdict(sol).items() if k != "eta"},
    }
    return sol.eta.to(res.H.dtype), info


# ---------------------------------------------------------------------------- optimizer
class PartitionNewton(torch.optim.Optimizer):
    """One learning rate per parameter group, from the pseudo-Hessian of the loss.

    Args:
        params: tensors (each its own group: the canonical partition) or param-group
            dicts (each dict one group; an optional ``"name"`` labels it).
        lr: damping multiplying the rates (the paper's 0.3 for LeNet-5); works with
            ``torch.optim.lr_scheduler`` (e.g. ``ReduceLROnPlateau``).
        direction: ``"momentum"`` (heavy ball ``buf = momentum buf + grad``),
            ``"gradient"`` or ``"adam"`` (the Adam step ``m_hat / (sqrt(v_hat) + 1e-8)``).
        momentum: heavy-ball coefficient.
        regularization: ``"cubic"``, ``"diag"`` or ``"none"`` (module docstring).
        lambda_int, eps: strengths of the cubic / diag regularisations.
        period: recompute the summaries every ``period`` steps.
        average: average H_bar, g_bar, d3 uniformly over the last ``average``
            recomputations; no update until that many are collected (warm-up).
        clip_negative: set negative rates to 0.
        betas: Adam's coefficients (``direction="adam"``).
        hard_case: ``"solve"`` or ``"keep_previous"`` (keep the previous rates when the
            cubic equation has no interior root, as the author's code does).
        damping: lambda: the rates of ``H_bar + lambda diag(||U^s||^2)``, the
            pseudo-Hessian of ``H + lambda I`` (:func:`hessian_lens.linalg.damped`).

    ``step(closure, curvature_closure=None)``: ``closure()`` re-evaluates the model and
    returns the loss **without calling backward()** (the optimizer differentiates it, twice
    on curvature steps); ``curvature_closure`` optionally gives the loss on a separate
    curvature batch. ``log`` holds per-step losses and the rates of every recomputation.

    Example:
        >>> import torch, torch.nn.functional as F
        >>> torch.manual_seed(0) and None
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(),
        ...                           torch.nn.Linear(8, 1))
        >>> x, y = torch.randn(64, 4), torch.randn(64, 1)
        >>> opt = PartitionNewton(net.parameters(), lr=0.3, period=1, average=1)
        >>> losses = [float(opt.step(lambda: F.mse_loss(net(x), y))) for _ in range(20)]
        >>> losses[-1] < losses[0]
        True
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.3,
        direction: str = "momentum",
        momentum: float = 0.9,
        regularization: str = "cubic",
        lambda_int: float = 1.0,
        eps: float = 1e-3,
        period: int = 10,
        average: int = 3,
        clip_negative: bool = True,
        betas: tuple[float, float] = (0.9, 0.999),
        hard_case: str = "solve",
        damping: float = 0.0,
    ) -> None:
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        if regularization not in REGULARIZATIONS:
            raise ValueError(
                f"regularization must be one of {REGULARIZATIONS}, got {regularization!r}"
            )
        if hard_case not in HARD_CASES:
            raise ValueError(f"hard_case must be one of {HARD_CASES}, got {hard_case!r}")
        if period < 1 or average < 1 or lr < 0:
            raise ValueError("period and average must be >= 1 and lr >= 0")
        params = list(params)
        groups = (
            params if params and isinstance(params[0], dict) else [{"params": [p]} for p in params]
        )
        defaults = {"lr": lr}
        super().__init__(groups, defaults)
        self.config = {
            "direction": direction,
            "momentum": momentum,
            "regularization": regularization,
            "lambda_int": lambda_int,
            "eps": eps,
            "period": period,
            "average": average,
            "clip_negative": clip_negative,
            "betas": tuple(betas),
            "hard_case": hard_case,
            "damping": damping,
        }
        self.steps = 0
        self.history: deque[tuple[Tensor, Tensor, Tensor | None]] = deque(maxlen=average)
        self.eta: Tensor | None = None
        self.log: list[dict[str, Any]] = []
        self.curvature_seconds = 0.0  # time spent recomputing the summaries
        self.partition = self._partition()

    # -- groups as a Partition ----------------------------------------------------------
    def _partition(self) -> Partition:
        names, shapes, assignment, groups = [], [], [], []
        for s, group in enumerate(self.param_groups):
            label = str(group.get("name", f"group{s}"))
            members = [f"{label}/{i}" for i in range(len(group["params"]))]
            names += members
            shapes += [p.shape for p in group["params"]]
            assignment += [s] * len(group["params"])
            kinds = {parameter_kind(label)}
            groups.append(
                Group(
                    label,
                    kinds.pop() if len(kinds) == 1 else "mixed",
                    label,
                    s,
                    sum(p.numel() for p in group["params"]),
                    tuple(members),
                )
            )
        return Partition(names, shapes, assignment, groups, "param_groups")

    def _params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    # -- the step ------------------------------------------------------------------------
    @torch.no_grad()
    def step(
        self, closure: Callable[[], Tensor], curvature_closure: Callable[[], Tensor] | None = None
    ) -> Tensor:
        """One step; returns the loss of ``closure``."""
        if closure is None:
            raise ValueError("PartitionNewton needs a closure returning the loss")
        params = self._params()
        curvature = self.steps % self.config["period"] == 0
        with torch.enable_grad():
            loss = closure()
            own_curvature = curvature and curvature_closure is None
            grads = _loss_gradient(loss, params, create_graph=own_curvature)
        u = self._direction(params, grads)
        if curvature:
            start = time.perf_counter()
            with torch.enable_grad():
                if curvature_closure is not None:
                    closs = curvature_closure()
                    cgrads = _loss_gradient(closs, params, create_graph=True)
                else:
                    cgrads = grads
                self._recompute(params, cgrads, u)
            self.curvature_seconds += time.perf_counter() - start
        if self.eta is not None:
            for s, group in enumerate(self.param_groups):
                for p in group["params"]:
                    p.add_(u[id(p)], alpha=-group["lr"] * float(self.eta[s]))
        self.log.append(
            {
                "step": self.steps,
                "loss": float(loss.detach()),
                "lr": [g["lr"] for g in self.param_groups],
            }
        )
        self.steps += 1
        return loss.detach()

    def _direction(self, params: list[Tensor], grads: list[Tensor]) -> dict[int, Tensor]:
        cfg = self.config
        out = {}
        for p, g in zip(params, grads, strict=True):
            g = g.detach()
            state = self.state[p]
            if cfg["direction"] == "gradient":
                out[id(p)] = g
            elif cfg["direction"] == "momentum":
                buf = state.get("momentum_buffer")
                buf = g.clone() if buf is None else buf.mul_(cfg["momentum"]).add_(g)
                state["momentum_buffer"] = buf
                out[id(p)] = buf
            else:
                out[id(p)] = self._adam(state, g)
        return out

    def _adam(self, state: dict, g: Tensor) -> Tensor:
        b1, b2 = self.config["betas"]
        t = state.get("adam_step", 0) + 1
        m = state.get("exp_avg", torch.zeros_like(g)).mul_(b1).add_(g, alpha=1 - b1)
        v = state.get("exp_avg_sq", torch.zeros_like(g)).mul_(b2).addcmul_(g, g, value=1 - b2)
        state.update(adam_step=t, exp_avg=m, exp_avg_sq=v)
        return (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + 1e-8)

    def _recompute(self, params: list[Tensor], grads: list[Tensor], u: dict[int, Tensor]) -> None:
        cfg = self.config
        ref = params[0]
        needs_d3 = cfg["regularization"] != "none"
        g, H, d3 = summaries_from_gradient(
            grads, params, [u[id(p)] for p in params], self.partition, needs_d3
        )
        u_sq = self.partition.reduce([u[id(p)] ** 2 for p in params], range(len(params)))
        self.history.append((damped(H, cfg["damping"], u_sq), g, d3))
        entry = {"step": self.steps, "recomputed": True}
        if len(self.history) < cfg["average"]:
            entry["warmup"] = True
        else:
            H_avg = torch.stack([h for h, _, _ in self.history]).mean(0)
            g_avg = torch.stack([g for _, g, _ in self.history]).mean(0)
            d3_avg = torch.stack([d for _, _, d in self.history]).mean(0) if needs_d3 else None
            try:
                sol = solve_rates(
                    H_avg,
                    g_avg,
                    d3_avg,
                    cfg["regularization"],
                    cfg["lambda_int"],
                    cfg["eps"],
                    cfg["hard_case"],
                )
                eta = sol.eta.clamp_min(0) if cfg["clip_negative"] else sol.eta
                self.eta = eta.to(ref.dtype)
                entry.update(
                    eta=self.eta.tolist(),
                    raw_eta=sol.eta.tolist(),
                    how=sol.how,
                    acted=sol.acted,
                    iterations=sol.iterations,
                    r=sol.r,
                )
            except StepError as err:
                entry.update(error=str(err))  # keep the previous rates
            entry.update(
                H_diag=H_avg.diagonal().tolist(),
                g=g_avg.tolist(),
                d3=d3_avg.tolist() if d3_avg is not None else None,
            )
        self.log.append(entry)

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """torch.optim state plus the step count, averaged history, rates and log."""
        out = super().state_dict()
        out["partition_newton"] = {
            "steps": self.steps,
            "eta": self.eta,
            "history": [list(h) for h in self.history],
            "log": list(self.log),
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in self.config.items()},
        }
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (resumes the same trajectory)."""
        state_dict = dict(state_dict)
        extra = state_dict.pop("partition_newton", None)
        super().load_state_dict(state_dict)
        if extra is not None:
            self.steps = int(extra["steps"])
            self.eta = extra["eta"]
            self.history = deque(
                (tuple(h) for h in extra["history"]), maxlen=self.config["average"]
            )
            self.log = list(extra["log"])


def _loss_gradient(loss: Tensor, params: list[Tensor], *, create_graph: bool) -> list[Tensor]:
    """The closure's gradient (its graph kept only for the curvature passes)."""
    return differentiate(
        loss, params, create_graph=create_graph, retain_graph=create_graph, allow_constant=False
    )


def _f64(t: Tensor) -> Tensor:
    return torch.as_tensor(t).detach().to("cpu", torch.float64)
