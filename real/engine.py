"""InferenceEngine: one checkpoint's policy behind ``infer(obs_window) -> Prediction``, warmed up, timed.

It runs the policy's own window-to-chunk path (`Policy.predict_window`: the layout conversion the training data
uses, shape checks, a finite check), so the daemon feeds a policy exactly what `vmp-eval` does. On CUDA it adds
bf16 autocast and captures the head's fast path in a CUDA graph per input signature (`CapturedChunk`): at batch 1
a chunk is dozens of small kernels, and replaying them as one graph removes their launch cost. A head that cannot
be captured (a host synchronisation inside its sampler, say) runs eager, with a warning that names why. On CPU the
same path runs in float32 eager. ``compile`` adds ``torch.compile`` (default mode) in front.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from vmp.policies.base import Prediction
from vmp.policies.checkpoint import resolve_device
from vmp.results import latency_summary

log = logging.getLogger(__name__)


class CapturedChunk:
    """``fn(obs, goal, None, **kwargs)`` captured in one CUDA graph for fixed input shapes.

    Inputs are copied into static buffers, the graph replays, the static output is copied out. Sampling noise
    (``noise_shape``: what the head's ``sampling_noise_shape`` says it consumes) is drawn outside the graph into a
    static buffer from the caller's generator, so every replay samples afresh without a generator inside the graph.
    """

    def __init__(self, fn: Any, obs: dict[str, Any], goal: dict[str, torch.Tensor] | None, kwargs: dict[str, Any],
                 noise_shape: tuple[int, ...] | None, warmup: int = 2):
        if any(not isinstance(v, torch.Tensor) for v in obs.values()):
            raise TypeError("non-tensor observation entries (an instruction) change between calls: not capturable")
        device = next(iter(obs.values())).device
        self.obs = {k: v.clone() for k, v in obs.items()}
        self.goal = None if goal is None else {k: v.clone() for k, v in goal.items()}
        self.kwargs = {k: v.clone() for k, v in kwargs.items()}
        if noise_shape is not None:
            self.kwargs["noise"] = torch.randn(noise_shape, device=device)
        self.fn = fn
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # lazy init (cuBLAS workspaces, autotuning) happens outside the capture
            for _ in range(warmup):
                self._run()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = self._run()

    def _run(self) -> torch.Tensor:
        return self.fn(self.obs, self.goal, None, **self.kwargs)

    def __call__(self, obs: dict[str, torch.Tensor], goal: dict[str, torch.Tensor] | None, generator: Any,
                 **kwargs: Any) -> torch.Tensor:
        for k, v in obs.items():
            self.obs[k].copy_(v)
        for k, v in (goal or {}).items():
            self.goal[k].copy_(v)
        for k, v in kwargs.items():
            self.kwargs[k].copy_(v)
        if "noise" in self.kwargs:
            self.kwargs["noise"].normal_(generator=generator)
        self.graph.replay()
        return self.out.clone()


def _signature(obs: dict[str, Any], goal: dict[str, Any] | None, kwargs: dict[str, Any]) -> tuple:
    def sig(d: dict[str, Any] | None) -> tuple:
        return tuple(sorted((k, tuple(v.shape), str(v.dtype)) if isinstance(v, torch.Tensor) else (k, "text")
                            for k, v in (d or {}).items()))

    return sig(obs), sig(goal), sig(kwargs)


def check_robot_keys(obs_shapes: dict[str, tuple[int, ...]], robot_obs: dict[str, tuple[tuple[int, ...], str]]) -> None:
    """Refuse a robot whose observation keys/shapes do not cover the policy's, naming them."""
    missing = sorted(set(obs_shapes) - set(robot_obs))
    wrong = sorted(k for k in obs_shapes if k in robot_obs and tuple(robot_obs[k][0]) != tuple(obs_shapes[k]))
    if missing or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if wrong:
            parts.append("shape mismatch " + ", ".join(f"{k}: checkpoint {tuple(obs_shapes[k])} vs robot "
                                                      f"{tuple(robot_obs[k][0])}" for k in wrong))
        raise KeyError(f"checkpoint observation keys do not match the robot: {'; '.join(parts)} "
                       f"(checkpoint keys {sorted(obs_shapes)}, robot keys {sorted(robot_obs)})")


class Worker(Protocol):
    """Runs an engine's chunks off the control loop's thread: one request at a time, the newest window."""

    error: BaseException | None  # what the last request raised (the loop stops the robot and reports it)

    @property
    def idle(self) -> bool: ...

    def submit(self, req: Any, window: dict[str, np.ndarray], goal: Any = None) -> None: ...

    def wait_idle(self, timeout: float) -> bool: ...

    def close(self) -> None: ...


@runtime_checkable
class Engine(Protocol):
    """What the control loop needs of an inference engine: `InferenceEngine` (in the loop's process) and
    `vmp.real.inference_process.ProcessEngine` (in a process of its own) both are one."""

    horizon: int
    n_obs_steps: int
    obs_shapes: dict[str, tuple[int, ...]]

    def reset(self) -> None: ...

    def infer(self, obs_window: dict[str, np.ndarray], goal: dict[str, np.ndarray] | None = None,
              prefix: np.ndarray | None = None, prefix_weights: np.ndarray | None = None, step: int = 0) -> Prediction: ...

    def start_worker(self, on_chunk: Any, clock: Any) -> Worker: ...


class InferenceEngine:
    """policy: a `vmp.policies.base.Policy` (its ``obs_shapes`` say which keys and per-step shapes it consumes);
    ``instruction``: the text a language-conditioned policy follows (ignored by the others)."""

    def __init__(self, policy: Any, device: str = "auto", bf16: str | bool = "auto", compile: str | bool = "auto",
                 cuda_graphs: str | bool = "auto", seed: int = 0):
        self.device = resolve_device(device)
        self.policy = policy.to(self.device).eval()
        self.obs_shapes = dict(policy.obs_shapes)
        self.n_obs_steps, self.horizon = policy.n_obs_steps, policy.horizon
        self.n_action_steps, self.action_dim = policy.n_action_steps, policy.action_dim
        cuda = self.device.type == "cuda"
        self.bf16 = cuda if bf16 == "auto" else bool(bf16)
        self.compiled = False if compile == "auto" else bool(compile)  # graphs give the win; compiling takes minutes
        self.cuda_graphs = cuda and (cuda_graphs == "auto" or bool(cuda_graphs))
        if not self.cuda_graphs and not self.compiled:
            policy.enable_frame_cache()  # (a graph replays the whole encoder instead)
        self.supports_prefix = policy.capabilities.prefix
        self._chunk_fn = policy.predict_action_chunk
        if self.compiled:
            self._chunk_fn = torch.compile(policy.predict_action_chunk, mode="default", dynamic=False)
        self._graphs: dict[tuple, CapturedChunk | None] = {}  # input signature -> graph (None: runs eager)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.latencies_ms: list[float] = []
        self.instruction: str | None = None

    @classmethod
    def from_checkpoint(cls, path: str, device: str = "cpu", **kwargs: Any) -> tuple["InferenceEngine", Any]:
        """Load any head's checkpoint with `vmp.policies.checkpoint.load_policy` -> (engine, training cfg)."""
        from vmp.policies.checkpoint import load_policy

        policy, cfg = load_policy(path, device=device)
        return cls(policy, device=device, **kwargs), cfg

    def check_robot_keys(self, robot_obs: dict[str, tuple[tuple[int, ...], str]]) -> None:
        check_robot_keys(self.obs_shapes, robot_obs)

    def start_worker(self, on_chunk: Any, clock: Any):
        """The control loop's asynchronous inference: a thread of this process running `infer`."""
        from vmp.real.loop import InferenceWorker

        return InferenceWorker(self, on_chunk, clock)

    def close(self) -> None:
        """Nothing to release (`ProcessEngine.close` stops its process)."""

    def reset(self) -> None:
        """Every episode start: the policy forgets its per-episode state (history, context)."""
        self.policy.reset()

    def _forward(self, obs: dict[str, Any], goal: Any, generator: Any, **kwargs: Any) -> Prediction:
        """The head under autocast; heads without extras take the fast path, replayed from a CUDA graph if captured."""
        # No autocast weight cache: cast copies made during a capture would be freed when the context exits.
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16, cache_enabled=False):
            if self.policy.capabilities.extras:
                return self.policy.predict(obs, goal, generator, **kwargs)
            graph = None
            if self.cuda_graphs:
                key = _signature(obs, goal, kwargs)
                if key not in self._graphs:
                    self._graphs[key] = self._capture(obs, goal, kwargs)
                graph = self._graphs[key]
            return Prediction((graph or self._chunk_fn)(obs, goal, generator, **kwargs))

    def _capture(self, obs: dict[str, Any], goal: Any, kwargs: dict[str, Any]) -> CapturedChunk | None:
        batch = next(iter(v for v in obs.values() if isinstance(v, torch.Tensor))).shape[0]
        try:
            return CapturedChunk(self._chunk_fn, obs, goal, kwargs, self.policy.sampling_noise_shape(batch))
        except Exception as exc:  # capture can fail in many ways (host syncs, CPU tensors): eager still works
            log.warning("%s: CUDA graph capture failed (%s: %s); this input signature runs eager", self.policy.name,
                        type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            torch.cuda.synchronize(self.device)
            return None

    @property
    def captured(self) -> int:
        """How many input signatures replay from a CUDA graph."""
        return sum(g is not None for g in self._graphs.values())

    def infer(self, obs_window: dict[str, np.ndarray], goal: dict[str, np.ndarray] | None = None,
              prefix: np.ndarray | None = None, prefix_weights: np.ndarray | None = None, step: int = 0) -> Prediction:
        """obs_window {key: [n_obs_steps, *shape]} as the robot gives it -> Prediction(actions [horizon, action_dim]
        float32 in raw units, extras). prefix [L, action_dim] / prefix_weights [L] (chunk coordinates) reach heads
        that accept them; step is the control tick of the newest observation."""
        start = time.perf_counter()
        pred = self.policy.predict_window(obs_window, goal, self.instruction, step=step, prefix=prefix,
                                          prefix_weights=prefix_weights, generator=self.generator, forward=self._forward)
        self.latencies_ms.append((time.perf_counter() - start) * 1e3)
        return pred

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
            self._chunk_fn, self.compiled = self.policy.predict_action_chunk, False
            calls()
        self.policy.reset()
        self.latencies_ms.clear()

    def latency_summary(self) -> dict[str, Any]:
        return latency_summary(self.latencies_ms)

    def example_window(self) -> dict[str, np.ndarray]:
        """A zero observation window of the right shapes (for warm-up). Images uint8, the rest float32."""
        return {k: np.zeros((self.n_obs_steps, *s), np.uint8 if self.policy.obs_kinds[k] == "rgb" else np.float32)
                for k, s in self.obs_shapes.items()}
