"""Jointly Gaussian (x, y) with closed-form optimal denoisers: ground truth for the MI estimators.

y ~ N(0, I_m), x = B y + n with n ~ N(0, S). Then x|y ~ N(B y, S), Sigma_x = B B^T + S and
I(x; y) = 0.5 * log(det Sigma_x / det S). The I-MMSE relation gives the MI carried by the SNR
range [lo, hi] in closed form: 0.5 * [log det(Sigma_x^-1 + g I) - log det(S^-1 + g I)]_lo^hi.
Each pair's point-wise MI, log p(x|y) - log p(x), is exact too (`log_ratio`), so an estimator's
ranking of a prompt's candidates can be checked against the truth (`pool`, `expected_terms`).

Example:
    >>> world = GaussianWorld()
    >>> x, y = world.pool(3, 4, torch.Generator().manual_seed(0))  # 3 prompts x 4 candidates
    >>> x.shape, y.shape, world.log_ratio(x, y).shape
    (torch.Size([12, 4]), torch.Size([12, 3]), torch.Size([12]))
"""

from __future__ import annotations

import torch

from mitune_ray.mi import draw_levels, eps_term, renoise_mi, velocity_term

DT = torch.float64


class GaussianWorld:
    def __init__(self, d: int = 4, m: int = 3, seed: int = 0, cond_var=(0.3, 0.4, 0.5, 0.6)):
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=DT))
        self.S = q @ torch.diag(torch.tensor(cond_var, dtype=DT)) @ q.T
        self.B = 0.6 * torch.randn(d, m, generator=g, dtype=DT)
        self.sigma_x = self.B @ self.B.T + self.S
        self.d, self.m = d, m

    def mi(self) -> float:
        return 0.5 * float(torch.logdet(self.sigma_x) - torch.logdet(self.S))

    def mi_between_snr(self, lo: float, hi: float) -> float:
        eye = torch.eye(self.d, dtype=DT)

        def f(g):
            return float(torch.logdet(torch.linalg.inv(self.sigma_x) + g * eye)
                         - torch.logdet(torch.linalg.inv(self.S) + g * eye))

        return 0.5 * (f(hi) - f(lo))

    def sample(self, n: int, g: torch.Generator):
        y = torch.randn(n, self.m, generator=g, dtype=DT)
        noise = torch.randn(n, self.d, generator=g, dtype=DT) @ torch.linalg.cholesky(self.S).T
        return y @ self.B.T + noise, y

    def _moments(self, y):
        """Mean (n, d) and covariance (d, d) of x given y (y None: unconditional)."""
        if y is None:
            return None, self.sigma_x
        return y @ self.B.T, self.S

    def pool(self, prompts: int, candidates: int, g: torch.Generator):
        """`candidates` draws x ~ p(x|y) for each of `prompts` draws of y, prompt-major: (x, y)
        with a row per candidate."""
        _, y = self.sample(prompts, g)
        y = y.repeat_interleave(candidates, 0)
        noise = torch.randn(len(y), self.d, generator=g, dtype=DT) @ torch.linalg.cholesky(self.S).T
        return y @ self.B.T + noise, y

    def log_ratio(self, x, y):
        """Exact point-wise MI of each pair, log p(x|y) - log p(x)."""

        def log_normal(mean, cov):
            d = x - mean
            return -0.5 * ((d @ torch.linalg.inv(cov)) * d).sum(1) - 0.5 * torch.logdet(cov)

        return log_normal(y @ self.B.T, self.S) - log_normal(torch.zeros_like(x), self.sigma_x)

    def predict(self, prediction: str, z, signal, noise, y=None):
        """The optimal prediction of a model of the given parameterisation (epsilon, v_prediction
        on the VP process; flow on x = (1 - sigma) x0 + sigma eps, where signal = 1 - sigma);
        `signal` and `noise` one level's, or tensors with a level per row of `z`."""
        if prediction == "flow":
            return self.v_hat(z, noise, y)
        eps = self.eps_hat(z, signal, noise, y)
        if prediction == "epsilon":
            return eps
        if isinstance(signal, torch.Tensor):
            signal, noise = signal.to(DT)[:, None], noise.to(DT)[:, None]
        return (eps - noise * z) / signal  # v = (eps - noise z) / signal on the VP process

    def eps_hat(self, z, signal, noise, y=None):
        """E[eps | z, y] for z = signal * x + noise * eps (VP diffusion); `signal` and `noise`
        one level's, or tensors with a level per row of `z`."""
        mean, cov = self._moments(y)
        eye = torch.eye(self.d, dtype=DT)
        if isinstance(signal, torch.Tensor):  # a level per row: one inverse per distinct level
            a, n = signal.to(DT), noise.to(DT)
            levels, where = torch.unique(torch.stack([a, n], 1), dim=0, return_inverse=True)
            la, ln = levels[:, 0, None, None], levels[:, 1, None, None]
            inv = torch.linalg.inv(la**2 * cov + ln**2 * eye)[where]
            centred = z if mean is None else z - a[:, None] * mean
            return n[:, None] * torch.einsum("rij,rj->ri", inv, centred)
        c = signal**2 * cov + noise**2 * eye
        centred = z if mean is None else z - signal * mean
        return noise * centred @ torch.linalg.inv(c).T

    def v_hat(self, x, sigma: float | torch.Tensor, y=None):
        """E[noise - x0 | x_sigma, y] for x_sigma = (1 - sigma) x0 + sigma * noise (SD3's flow);
        `sigma` one level, or a tensor with a level per row of `x`."""
        mean, cov = self._moments(y)
        eye = torch.eye(self.d, dtype=DT)
        if isinstance(sigma, torch.Tensor):  # a level per row: one gain per distinct level
            levels, where = torch.unique(sigma.to(DT), return_inverse=True)
            b, s = (1.0 - levels)[:, None, None], levels[:, None, None]
            gain = ((s * eye - b * cov) @ torch.linalg.inv(b**2 * cov + s**2 * eye))[where]
            if mean is None:
                return torch.einsum("rij,rj->ri", gain, x)
            return -mean + torch.einsum("rij,rj->ri", gain, x - (1.0 - sigma.to(DT))[:, None] * mean)
        b = 1.0 - sigma
        c = b**2 * cov + sigma**2 * eye
        gain = (sigma * eye - b * cov) @ torch.linalg.inv(c)
        if mean is None:
            return x @ gain.T
        return -mean + (x - b * mean) @ gain.T


def sd_alphas_cumprod(n: int = 1000) -> torch.Tensor:
    """Stable Diffusion's scaled-linear schedule."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, n, dtype=DT) ** 2
    return torch.cumprod(1.0 - betas, 0)


def snr(abar: torch.Tensor) -> torch.Tensor:
    return abar / (1.0 - abar)


def _affine(fn, d: int):
    """(M, c) with fn(z) = z @ M.T + c, for an affine fn of z (c may have a row per y)."""
    eye = torch.eye(d, dtype=DT)
    c = fn(torch.zeros(1, d, dtype=DT))
    return (fn(eye) - c).T, c


def expected_terms(world: GaussianWorld, prediction: str, table, x, y):
    """Per level j of `table` and per pair (x, y): the exact expectation over the draw's noise of
    the standard term and of the paper's (orthogonal) term, shapes (J, n) each.

    The optimal predictions are affine in the noised input z = a x + n eps, so each expectation is
    a Frobenius norm plus a squared norm; flow's orthogonal term is RFMI's u . (u - u_uncond).
    """
    d = world.d
    standard, orthogonal = [], []
    for a, n in zip(table.signal.tolist(), table.noise.tolist()):
        mc, _ = _affine(lambda z: world.predict(prediction, z, a, n, y[:1]), d)
        mu, cu = _affine(lambda z: world.predict(prediction, z, a, n), d)
        cc = world.predict(prediction, torch.zeros_like(x), a, n, y)  # (n, d): a row per y
        eye = torch.eye(d, dtype=DT)
        if prediction == "epsilon":
            p_mat, q = eye, torch.zeros_like(x)
        elif prediction == "v_prediction":
            p_mat, q = a * eye, -n * x
        else:
            p_mat, q = eye, -x
        pred_c, pred_u = a * x @ mc.T + cc, a * x @ mu.T + cu
        err_c = (p_mat - n * mc).square().sum() + (q - pred_c).square().sum(1)
        err_u = (p_mat - n * mu).square().sum() + (q - pred_u).square().sum(1)
        standard.append(err_u - err_c)
        diff_m = mc - mu
        if prediction == "flow":
            orthogonal.append((pred_c * (pred_c - pred_u)).sum(1) + n**2 * (mc * diff_m).sum())
        else:
            orthogonal.append(n**2 * diff_m.square().sum() + (pred_c - pred_u).square().sum(1))
    return torch.stack(standard), torch.stack(orthogonal)


def ddpm_sample(world: GaussianWorld, y, timesteps, abar, g: torch.Generator, on_step=None, *,
                guidance: float = 1.0):
    """DDPM's ancestral sampler with the exact denoisers, classifier-free guided, on the grid
    `timesteps` (descending): at guidance 1 the finished x ~ p(x|y). `on_step(i, eps_cond,
    eps_uncond)` sees the CFG pair of every step, as MI-TUNE's trajectory estimator does."""
    z = torch.randn(len(y), world.d, generator=g, dtype=DT)
    ts = list(timesteps)
    for i, t in enumerate(ts):
        a, n = abar[t].sqrt().item(), (1 - abar[t]).sqrt().item()
        eps_c, eps_u = world.eps_hat(z, a, n, y), world.eps_hat(z, a, n)
        if on_step is not None:
            on_step(i, eps_c, eps_u)
        eps = eps_u + guidance * (eps_c - eps_u)
        prev = abar[ts[i + 1]].item() if i + 1 < len(ts) else 1.0
        alpha_t = abar[t].item() / prev
        x0 = (z - n * eps) / a
        mean = (prev**0.5 * (1 - alpha_t) * x0 + alpha_t**0.5 * (1 - prev) * z) / (1 - abar[t].item())
        var = (1 - prev) / (1 - abar[t].item()) * (1 - alpha_t)
        z = mean + var**0.5 * torch.randn(z.shape, generator=g, dtype=DT)
    return z


def euler_sample(world: GaussianWorld, y, sigmas, g: torch.Generator, on_step=None, *,
                 guidance: float = 1.0):
    """Diffusers' flow Euler sampler with the exact velocities, classifier-free guided, on
    `sigmas` (with the final 0): at guidance 1 the finished x ~ p(x|y). `on_step(i, v_cond,
    v_uncond)` sees every step's pair."""
    x = torch.randn(len(y), world.d, generator=g, dtype=DT)
    for i, s in enumerate(sigmas[:-1]):
        v_c, v_u = world.v_hat(x, s, y), world.v_hat(x, s)
        if on_step is not None:
            on_step(i, v_c, v_u)
        x = x + (sigmas[i + 1] - s) * (v_u + guidance * (v_c - v_u))
    return x


def shared_draw_estimates(world: GaussianWorld, prediction: str, table, x, y, g: torch.Generator,
                          *, candidates: int, draws: int, form: str) -> torch.Tensor:
    """The re-noising estimator as the sampler runs it on a pool (prompt-major rows of
    `candidates` each): `draws` (level, noise) draws per prompt, shared by its candidates."""
    term = velocity_term if prediction == "flow" else eps_term
    out = []
    for start in range(0, len(x), candidates):
        rows = slice(start, start + candidates)
        shared = draw_levels(table, draws, (world.d,), generator=g)

        def predict(z, levels, ys=y[rows]):  # every draw in one call: a level per row
            j = (table.levels[None, :] - levels.to(table.levels.dtype)[:, None]).abs().argmin(1)
            a, n = table.signal[j], table.noise[j]
            ys = ys.repeat(len(z) // len(ys), 1)
            return world.predict(prediction, z, a, n, ys), world.predict(prediction, z, a, n)

        out.append(renoise_mi(predict, x[rows], table, shared, term, form=form,
                              rows_per_call=candidates * draws)[0])
    return torch.cat(out)
