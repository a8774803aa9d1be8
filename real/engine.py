"""InferenceEngine: one checkpoint's policy behind ``infer(obs_window) -> chunk``, warmed up, timed.

On CUDA it runs under bf16 autocast and, where asked, ``torch.compile`` (``reduce-overhead`` mode captures CUDA
graphs); on CPU the same code path runs in float32 eager. A compile failure falls back to eager with a warning.
"""

from __future__ import annotations

import inspect
import logging
import time
from typing import Any

import numpy as np
import torch

from vmp.data.schema import LANGUAGE_KEY

log = logging.getLogger(__name__)


class InferenceEngine:
    """policy: a `vmp.policies.base.Policy`; obs_shapes: {key: shape per step} the policy consumes (from the
    checkpoint's task shape_meta); goal arrays, if any, are passed through. ``instruction``: the text a
    language-conditioned policy follows (ignored by the others).
    """

    def __init__(self, policy: Any, obs_shapes: dict[str, tuple[int, ...]], device: str = "cpu", bf16: str | bool = "auto",
                 compile: str | bool = "auto", cuda_graphs: str | bool = "auto", seed: int = 0):
        self.device = torch.device(device)
        self.policy = policy.to(self.device).eval()
        self.obs_shapes = {k: tuple(v) for k, v in obs_shapes.items()}
        self.n_obs_steps, self.horizon = policy.n_obs_steps, policy.horizon
        self.n_action_steps, self.action_dim = policy.n_action_steps, policy.action_dim
        cuda = self.device.type == "cuda"
        self.bf16 = cuda if bf16 == "auto" else bool(bf16)
        self.compiled = cuda if compile == "auto" else bool(compile)
        self.cuda_graphs = cuda if cuda_graphs == "auto" else bool(cuda_graphs)
        params = inspect.signature(policy.predict_action_chunk).parameters
        self.supports_prefix = "prefix" in params and "prefix_weights" in params
        self._fn = policy.predict_action_chunk
        if self.compiled:
            mode = "reduce-overhead" if (self.cuda_graphs and cuda) else "default"
            self._fn = torch.compile(policy.predict_action_chunk, mode=mode, dynamic=False)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.latencies_ms: list[float] = []
        self.instruction: str | None = None

    @classmethod
    def from_checkpoint(cls, path: str, device: str = "cpu", **kwargs: Any) -> tuple["InferenceEngine", Any]:
        """Load any head's checkpoint with `vmp.policies.checkpoint.load_policy` -> (engine, training cfg)."""
        from vmp.policies.checkpoint import load_policy

        policy, cfg = load_policy(path, device=device)
        shape_meta = cfg.task.shape_meta.obs
        obs_shapes = {k: tuple(v.shape) for k, v in shape_meta.items()}
        return cls(policy, obs_shapes, device=device, **kwargs), cfg

    def check_robot_keys(self, robot_obs: dict[str, tuple[tuple[int, ...], str]]) -> None:
        """Refuse a robot whose observation keys/shapes do not cover the policy's, naming them."""
        missing = sorted(set(self.obs_shapes) - set(robot_obs))
        wrong = sorted(k for k in self.obs_shapes if k in robot_obs and tuple(robot_obs[k][0]) != self.obs_shapes[k])
        if missing or wrong:
            parts = []
            if missing:
                parts.append(f"missing keys {missing}")
            if wrong:
                parts.append("shape mismatch " + ", ".join(f"{k}: checkpoint {self.obs_shapes[k]} vs robot {tuple(robot_obs[k][0])}" for k in wrong))
            raise KeyError(f"checkpoint observation keys do not match the robot: {'; '.join(parts)} "
                           f"(checkpoint keys {sorted(self.obs_shapes)}, robot keys {sorted(robot_obs)})")

    def _window(self, obs_window: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        out = {}
        for k, shape in self.obs_shapes.items():
            if k not in obs_window:
                raise KeyError(f"observation window lacks key {k!r} (has {sorted(obs_window)})")
            a = np.asarray(obs_window[k])
            if a.shape != (self.n_obs_steps, *shape):
                raise ValueError(f"observation {k!r}: expected shape {(self.n_obs_steps, *shape)} [n_obs_steps, ...], got {a.shape}")
            out[k] = torch.as_tensor(a, device=self.device).unsqueeze(0)
        return out

    @torch.inference_mode()
    def infer(self, obs_window: dict[str, np.ndarray], goal: dict[str, np.ndarray] | None = None,
              prefix: np.ndarray | None = None, prefix_weights: np.ndarray | None = None) -> np.ndarray:
        """obs_window {key: [n_obs_steps, *shape]} -> actions [horizon, action_dim] (float32, raw units).

        prefix [L, action_dim] / prefix_weights [L] (chunk coordinates) go to heads that accept them.
        """
        start = time.perf_counter()
        obs = self._window(obs_window)
        if self.instruction is not None:
            obs[LANGUAGE_KEY] = [self.instruction]
        kwargs: dict[str, Any] = {"generator": self.generator}
        if goal is not None:
            kwargs["goal"] = {k: torch.as_tensor(np.asarray(v), device=self.device).unsqueeze(0) for k, v in goal.items()}
        if prefix is not None and self.supports_prefix:
            kwargs["prefix"] = torch.as_tensor(prefix, device=self.device).unsqueeze(0)
            kwargs["prefix_weights"] = torch.as_tensor(prefix_weights, device=self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            chunk = self._fn(obs, **kwargs)
        chunk = chunk[0].float().cpu().numpy()
        if chunk.shape != (self.horizon, self.action_dim):
            raise ValueError(f"policy returned a chunk of shape {chunk.shape}, expected {(self.horizon, self.action_dim)}")
        if not np.isfinite(chunk).all():
            raise FloatingPointError("policy predicted a non-finite action chunk")
        self.latencies_ms.append((time.perf_counter() - start) * 1e3)
        return chunk

    def warmup(self, obs_window: dict[str, np.ndarray], n: int = 3) -> None:
        """Run ``n`` inferences so lazy init, compilation and graph capture happen before the loop starts."""
        def calls() -> None:
            for _ in range(n):
                self.infer(obs_window)
                if self.supports_prefix:  # the RTC path is a second graph: compile it now, not mid-episode
                    w = np.zeros(self.horizon, np.float32)
                    w[: self.n_obs_steps] = 1.0
                    self.infer(obs_window, prefix=np.zeros((self.horizon, self.action_dim), np.float32), prefix_weights=w)

        try:
            calls()
        except RuntimeError as exc:  # dynamo/inductor errors subclass RuntimeError
            if not self.compiled:
                raise
            log.warning("torch.compile failed (%s); falling back to eager", exc)
            self._fn, self.compiled = self.policy.predict_action_chunk, False
            calls()
        self.latencies_ms.clear()

    def latency_percentiles(self) -> dict[str, float]:
        a = np.asarray(self.latencies_ms)
        if not a.size:
            return {"p50_ms": float("nan"), "p99_ms": float("nan"), "n": 0}
        return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)), "n": int(a.size)}

    def example_window(self) -> dict[str, np.ndarray]:
        """A zero observation window of the right shapes (for warm-up). Images uint8, the rest float32."""
        return {k: np.zeros((self.n_obs_steps, *s), np.uint8 if k.endswith("_image") else np.float32)
                for k, s in self.obs_shapes.items()}
