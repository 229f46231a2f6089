"""Jointly Gaussian (x, y) with closed-form optimal denoisers: ground truth for the MI estimators.

y ~ N(0, I_m), x = B y + n with n ~ N(0, S). Then x|y ~ N(B y, S), Sigma_x = B B^T + S and
I(x; y) = 0.5 * log(det Sigma_x / det S). The I-MMSE relation gives the MI carried by the SNR
range [lo, hi] in closed form: 0.5 * [log det(Sigma_x^-1 + g I) - log det(S^-1 + g I)]_lo^hi.
"""

from __future__ import annotations

import torch

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

    def eps_hat(self, z, signal: float, noise: float, y=None):
        """E[eps | z, y] for z = signal * x + noise * eps (VP diffusion)."""
        mean, cov = self._moments(y)
        c = signal**2 * cov + noise**2 * torch.eye(self.d, dtype=DT)
        centred = z if mean is None else z - signal * mean
        return noise * centred @ torch.linalg.inv(c).T

    def v_hat(self, x, sigma: float, y=None):
        """E[noise - x0 | x_sigma, y] for x_sigma = (1 - sigma) x0 + sigma * noise (SD3's flow)."""
        mean, cov = self._moments(y)
        b = 1.0 - sigma
        eye = torch.eye(self.d, dtype=DT)
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
