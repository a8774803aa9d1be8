"""NavDP: a navigation diffusion policy with a critic (Cai et al. 2025), on the shared encoder and diffusion helper.

Architecture (one network, two uses of its policy transformer, as in the paper):
- The `ObsEncoder` turns the RGB-D window and the low-dim keys into tokens; on pointnav the goal (robot frame) is
  the only low-dim key, so it lives in the low-dim token. A small "policy transformer" (the trunk) fuses tokens.
- Generation: the trunk fuses [low-dim (goal) token, camera tokens, ...]; a `TransformerDenoiser` conditioned on the
  fused tokens denoises K robot-frame waypoints (DDPM, 10 squared-cosine steps, epsilon prediction), trained on the
  expert's planned path ``nav_path`` at the current step. Waypoints are divided by the fixed ``waypoint_scale``
  (K x spacing: the farthest a waypoint can be), not by store statistics, so they lie in [-1, 1].
- Critic: the same trunk over [camera tokens, one trajectory token] (the path through an MLP), its output at the
  trajectory token through an MLP -> a scalar, trained by MSE on all M ``critic_paths`` against ``critic_scores``
  (privileged, map-based targets written by the pointnav expert). The critic is goal-blind by construction: its
  sequence holds the camera tokens only (the low-dim token, any goal token and instruction token are left out, not
  zeroed), the camera tokens depend on the images alone, and attention runs over that sequence alone.
- Inference: N trajectories sampled in one batch, scored by the critic, one chosen (``selection``: best score;
  ``single`` / ``random`` ablate the critic), turned into the env's [v, omega] chunk by `follow_path`, a
  deterministic pure-pursuit follower on the unicycle model. When every score is below ``stop_threshold`` the robot
  turns in place instead (no candidate looks safe: look for another way).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vmp.policies.base import BatchSpec, Capabilities, DiffusionHeadConfig, Prediction, SharedEncoderPolicy
from vmp.policies.nn import MLP, DiscreteTimeDiffusion, TransformerDenoiser

TRAIN_KEYS = ("nav_path", "critic_paths", "critic_scores")
SELECTIONS = ("critic", "single", "random")
TURN_IN_PLACE_ANGLE = 0.9  # rad: the follower turns in place while its look-ahead point is farther off the heading
ARRIVED_DISTANCE = 0.05  # m: the follower stops once its look-ahead point (the path's end) is this close


@dataclasses.dataclass
class NavDPConfig(DiffusionHeadConfig):
    n_obs_steps: int = 1
    horizon: int = 8  # action chunk [v, omega] steps (the follower's output)
    n_action_steps: int = 4  # replan every this many control steps
    n_waypoints: int = 24  # K: waypoints of a generated path (the expert's nav_path horizon)
    waypoint_scale: float = 2.4  # m: waypoints are divided by this (K x 0.1 m spacing)
    trunk_layers: int = 2  # the policy transformer shared by generation and critic
    num_train_timesteps: int = 10
    beta_schedule: str = "squaredcos_cap_v2"
    critic_weight: float = 0.5
    # inference-time settings
    sampler: str = "ddpm"
    n_steps: int = 10
    n_samples: int = 16
    selection: str = "critic"
    stop_threshold: float | None = -1.0  # selection critic: turn in place when every score is below this; None: never
    turn_rate: float = 1.0  # rad/s when turning in place (positive: counter-clockwise)
    control_hz: float = 10.0
    v_max: float = 0.6
    omega_max: float = 1.5
    lookahead: float = 0.45  # m: pure-pursuit look-ahead distance

    def __post_init__(self) -> None:
        if self.sampler not in ("ddpm", "ddim"):
            raise ValueError(f"policy.sampler must be ddpm or ddim, got {self.sampler!r}")
        if not 1 <= self.n_steps <= self.num_train_timesteps:
            raise ValueError(f"policy.n_steps must be in [1, policy.num_train_timesteps={self.num_train_timesteps}], "
                             f"got {self.n_steps}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"policy.selection must be one of {SELECTIONS}, got {self.selection!r}")
        if self.n_waypoints < 2:
            raise ValueError(f"policy.n_waypoints must be >= 2, got {self.n_waypoints}")
        for name in ("waypoint_scale", "trunk_layers", "n_samples", "control_hz", "v_max", "omega_max", "lookahead"):
            if not getattr(self, name) > 0:
                raise ValueError(f"policy.{name} must be positive, got {getattr(self, name)}")
        if self.critic_weight < 0:
            raise ValueError(f"policy.critic_weight must be >= 0, got {self.critic_weight}")
        if not 0 < abs(self.turn_rate) <= self.omega_max:
            raise ValueError(f"policy.turn_rate must be non-zero and within policy.omega_max={self.omega_max}, "
                             f"got {self.turn_rate}")
        if self.d_model % self.n_heads:
            raise ValueError(f"policy.d_model={self.d_model} must be divisible by policy.n_heads={self.n_heads}")


def follow_path(path: torch.Tensor, n_steps: int, dt: float, v_max: float, omega_max: float, lookahead: float,
                turn_angle: float = TURN_IN_PLACE_ANGLE) -> torch.Tensor:
    """Pure pursuit of robot-frame waypoints [..., K, 2] from a unicycle at the origin facing +x -> commands
    [..., n_steps, 2] of [v (m/s), omega (rad/s)] at ``dt`` s per step, within v in [0, v_max], |omega| <= omega_max.

    Each step (the pose integrated as the env does it, midpoint heading): progress is the nearest waypoint at or past
    the last one (never back along the path); the look-ahead point is the first waypoint from there at least
    ``lookahead`` away, else the path's end. Off the heading by more than ``turn_angle``: turn in place toward it;
    else v = v_max cos(alpha), no farther than the path left, and the pure-pursuit curvature 2 sin(alpha) / L
    (speed lowered to keep |omega| within its limit). Once the look-ahead point is the path's end and under
    `ARRIVED_DISTANCE` away, stop. It never reverses. Deterministic and batched.
    """
    k = path.shape[-2]
    p = path.reshape(-1, k, 2).float()
    n, device = p.shape[0], p.device
    rows, idx = torch.arange(n, device=device), torch.arange(k, device=device)
    seg = (p[:, 1:] - p[:, :-1]).norm(dim=-1)
    to_end = torch.cat([seg.flip(-1).cumsum(-1).flip(-1), seg.new_zeros(n, 1)], dim=-1)  # arc length to the end [n, K]
    x, y, yaw = (p.new_zeros(n) for _ in range(3))
    progress = torch.zeros(n, dtype=torch.long, device=device)
    out = []
    for _ in range(n_steps):
        rel = p - torch.stack([x, y], dim=-1)[:, None]
        dist = rel.norm(dim=-1)  # [n, K]
        ahead = idx[None] >= progress[:, None]
        progress = torch.where(ahead, dist, torch.inf).argmin(dim=-1)
        far = (idx[None] >= progress[:, None]) & (dist >= lookahead)
        target = torch.where(far.any(dim=-1), far.float().argmax(dim=-1), k - 1)  # first such waypoint, else the end
        tx, ty = rel[rows, target].unbind(-1)
        c, s = torch.cos(yaw), torch.sin(yaw)
        lx, ly = c * tx + s * ty, -s * tx + c * ty
        ld, alpha = torch.hypot(lx, ly), torch.atan2(ly, lx)
        left = dist[rows, progress] + to_end[rows, progress]
        v = torch.minimum(v_max * torch.cos(alpha).clamp(min=0.0), left / dt)
        omega = 2.0 * v * torch.sin(alpha) / ld.clamp(min=1e-6)
        too_fast = omega.abs() > omega_max
        v = torch.where(too_fast, v * omega_max / omega.abs().clamp(min=1e-9), v)
        omega = omega.clamp(-omega_max, omega_max)
        turn = alpha.abs() > turn_angle
        v = torch.where(turn, 0.0, v)
        omega = torch.where(turn, (2.0 * alpha).clamp(-omega_max, omega_max), omega)
        arrived = ld < ARRIVED_DISTANCE
        v, omega = torch.where(arrived, 0.0, v), torch.where(arrived, 0.0, omega)
        mid = yaw + omega * dt / 2
        x, y, yaw = x + v * dt * torch.cos(mid), y + v * dt * torch.sin(mid), yaw + omega * dt
        out.append(torch.stack([v, omega], dim=-1))
    return torch.stack(out, dim=1).reshape(*path.shape[:-2], n_steps, 2)


class NavDPPolicy(SharedEncoderPolicy):
    name = "navdp"
    config_class = NavDPConfig
    capabilities = Capabilities(prefix=True, extras=("candidates", "candidate_scores"))

    def __init__(self, config: NavDPConfig, encoder, normalizer, action_dim: int):
        super().__init__(config, encoder, normalizer, action_dim)
        if action_dim != 2:
            raise ValueError(f"the navdp head commands [v, omega]: the task's action must have shape [2], got [{action_dim}]")
        if not encoder.image_keys:
            raise ValueError("the navdp critic reads camera tokens (rgb / depth keys) and the task's shape_meta.obs "
                             "has none")
        d, k = config.d_model, config.n_waypoints
        layer = nn.TransformerEncoderLayer(d, config.n_heads, dim_feedforward=4 * d, dropout=config.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.trunk = nn.Sequential(nn.TransformerEncoder(layer, config.trunk_layers, enable_nested_tensor=False),
                                   nn.LayerNorm(d))
        self.denoiser = TransformerDenoiser(2, k, encoder.n_tokens, d, config.n_layers, config.n_heads, config.dropout)
        self.path_in = MLP(2 * k, 2 * d, d)
        self.critic_out = MLP(d, d, 1)
        self.diffusion = DiscreteTimeDiffusion(config.num_train_timesteps, config.beta_schedule, prediction_type="epsilon",
                                       clip_sample=True)
        # where the camera tokens sit in each observation step's tokens: after the one low-dim token
        self._n_lowdim_tokens = 1 if encoder.lowdim_keys else 0

    @classmethod
    def batch_spec(cls, config: NavDPConfig, task: Any) -> BatchSpec:
        """The expert's path and the critic's candidates and targets at every step of the window."""
        listed = list(task.get("train_keys") or [])
        missing = [key for key in TRAIN_KEYS if key not in listed]
        if missing:
            raise ValueError(f"the navdp head trains on {list(TRAIN_KEYS)}, task {task.get('name')} lists train_keys "
                             f"{listed}: use a task whose expert writes them (task=pointnav)")
        horizon = (task.get("expert_kwargs") or {}).get("horizon")
        if horizon is not None and int(horizon) != config.n_waypoints:
            raise ValueError(f"policy.n_waypoints={config.n_waypoints} but the task's expert writes paths of "
                             f"{horizon} waypoints (task.expert_kwargs.horizon)")
        return BatchSpec(train_keys=tuple(TRAIN_KEYS))

    # ---- the two uses of the trunk ----
    def camera_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Conditioning tokens [B, n_tokens, D] (as `condition` assembles them) -> the camera tokens of every
        observation step [B, T * n_camera_tokens, D]: what the goal-blind critic sees."""
        t, per_step = self.encoder.n_obs_steps, self.encoder.tokens_per_step
        steps = tokens[:, : t * per_step].unflatten(1, (t, per_step))
        return steps[:, :, self._n_lowdim_tokens :].flatten(1, 2)

    def score(self, camera: torch.Tensor, paths: torch.Tensor) -> torch.Tensor:
        """Critic: camera tokens [B, C, D] and normalized paths [B, M, K, 2] -> scores [B, M]."""
        b, m = paths.shape[:2]
        traj = self.path_in(paths.flatten(2)).reshape(b * m, 1, -1)
        seq = torch.cat([camera.repeat_interleave(m, dim=0), traj], dim=1)
        return self.critic_out(self.trunk(seq)[:, -1]).reshape(b, m)

    # ---- training ----
    def compute_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        first, k = self.n_obs_steps - 1, self.config.n_waypoints
        train = batch.get("train") or {}
        missing = [key for key in TRAIN_KEYS if key not in train]
        if missing:
            raise KeyError(f"the navdp head trains on batch['train'] keys {list(TRAIN_KEYS)}; missing {missing}")
        path = train["nav_path"][:, first].float() / self.config.waypoint_scale
        critic_paths = train["critic_paths"][:, first].float() / self.config.waypoint_scale
        critic_scores = train["critic_scores"][:, first].float()
        if path.shape[1:] != (k, 2) or critic_paths.shape[2:] != (k, 2):
            raise ValueError(f"policy.n_waypoints={k}, but the store's paths are nav_path {tuple(path.shape[1:])} and "
                             f"critic_paths {tuple(critic_paths.shape[2:])} per step")
        drop_goal = None
        if self.null_goal is not None:
            drop_goal = torch.rand(path.shape[0], device=path.device) < self.config.goal_dropout
        tokens = self.condition(batch["obs"], batch.get("goal"), drop_goal)
        fused = self.trunk(tokens)
        diffusion_loss = self.diffusion.loss(lambda x, t: self.denoiser(x, t, fused), path)
        critic_loss = F.mse_loss(self.score(self.camera_tokens(tokens), critic_paths), critic_scores)
        return {"loss": diffusion_loss + self.config.critic_weight * critic_loss,
                "diffusion_loss": diffusion_loss.detach(), "critic_loss": critic_loss.detach()}

    # ---- inference ----
    def follow(self, path: torch.Tensor) -> torch.Tensor:
        """Waypoints [B, K, 2] (m, robot frame) -> the action chunk [B, horizon, 2]: the follower's commands from the
        current step on (index n_obs_steps - 1), its first command standing in for the window's past steps."""
        c = self.config
        steps = follow_path(path, self.horizon - self.n_obs_steps + 1, 1.0 / c.control_hz, c.v_max, c.omega_max,
                            c.lookahead)
        return torch.cat([steps[:, :1].expand(-1, self.n_obs_steps - 1, -1), steps], dim=1)

    def prefix_waypoints(self, prefix: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Real-time chunking's prefix in waypoint space: the prefix's commands from the current step on, integrated as
        the env integrates them (midpoint heading), give the stretch of path they will drive; the waypoints it
        covers (every ``waypoint_scale / n_waypoints`` m of arc) become known values for the sampler, weighted by the
        command during which each is reached. -> (known [B, K, 2] in the sampler's units, weights [B, K, 1])."""
        c = self.config
        first, dt, k = self.n_obs_steps - 1, 1.0 / c.control_hz, c.n_waypoints
        cmds, w = prefix[:, first:].float(), weights[first:].float()
        b, m = cmds.shape[0], cmds.shape[1]
        known = cmds.new_zeros(b, k, 2)
        known_w = cmds.new_zeros(b, k, 1)
        if m == 0:
            return known, known_w
        x, y, yaw, points = cmds.new_zeros(b), cmds.new_zeros(b), cmds.new_zeros(b), [cmds.new_zeros(b, 2)]
        for i in range(m):
            v, omega = cmds[:, i].unbind(-1)
            mid = yaw + omega * dt / 2
            x, y, yaw = x + v * dt * torch.cos(mid), y + v * dt * torch.sin(mid), yaw + omega * dt
            points.append(torch.stack([x, y], dim=-1))
        pts = torch.stack(points, dim=1)  # [B, m + 1, 2], from the current pose
        arc = torch.cat([cmds.new_zeros(b, 1), (pts[:, 1:] - pts[:, :-1]).norm(dim=-1).cumsum(-1)], dim=1)
        spacing = c.waypoint_scale / k
        for j in range(k):
            s = spacing * (j + 1)
            reached = arc[:, 1:] >= s  # [B, m]: segments ending at or past this arc length
            row = reached.any(dim=-1)
            seg = reached.float().argmax(dim=-1)  # the command during which the path passes s
            lo, hi = arc.gather(1, seg[:, None])[:, 0], arc.gather(1, seg[:, None] + 1)[:, 0]
            frac = ((s - lo) / (hi - lo).clamp(min=1e-9)).clamp(0, 1)[:, None]
            at = pts[torch.arange(b), seg] * (1 - frac) + pts[torch.arange(b), seg + 1] * frac
            known[:, j] = torch.where(row[:, None], at / c.waypoint_scale, 0.0)
            known_w[:, j, 0] = torch.where(row, w[seg], 0.0)
        return known, known_w

    @torch.no_grad()
    def plan(self, obs: dict[str, torch.Tensor], goal: dict[str, torch.Tensor] | None = None,
             generator: torch.Generator | None = None, prefix: torch.Tensor | None = None,
             prefix_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (actions [B, horizon, 2], candidates [B, N, K, 2] in metres, robot frame, critic scores [B, N]).
        ``prefix`` [B, L, 2] / ``prefix_weights`` [L]: real-time chunking's prefix (chunk coordinates): every
        candidate starts along the path the prefix drives (`prefix_waypoints`), and the chunk keeps the prefix's
        commands where their weight is one (blended by weight elsewhere)."""
        c = self.config
        tokens = self.condition(obs, goal)
        fused = self.trunk(tokens)
        b, n, k = tokens.shape[0], 1 if c.selection == "single" else c.n_samples, c.n_waypoints
        fused_n = fused.repeat_interleave(n, dim=0)  # the N samples of a row in one batch
        known = known_w = None
        if prefix is not None:
            if prefix_weights is None or prefix_weights.shape[0] != prefix.shape[1]:
                raise ValueError("prefix_weights must be given with prefix, one weight per prefix step")
            known, known_w = self.prefix_waypoints(prefix.to(tokens.device), prefix_weights.to(tokens.device))
            known, known_w = known.repeat_interleave(n, dim=0), known_w.repeat_interleave(n, dim=0)
        x = self.diffusion.sample(lambda x, t: self.denoiser(x, t, fused_n), (b * n, k, 2), c.n_steps, c.sampler,
                                  generator=generator, device=tokens.device, known=known, known_weights=known_w)
        paths = x.clamp(-1.0, 1.0).reshape(b, n, k, 2)
        scores = self.score(self.camera_tokens(tokens), paths)
        if c.selection == "critic":
            chosen = scores.argmax(dim=1)
        elif c.selection == "random":
            device = generator.device if generator is not None else tokens.device
            chosen = torch.randint(n, (b,), generator=generator, device=device).to(tokens.device)
        else:
            chosen = torch.zeros(b, dtype=torch.long, device=tokens.device)
        candidates = paths * c.waypoint_scale
        actions = self.follow(candidates[torch.arange(b, device=tokens.device), chosen])
        if c.selection == "critic" and c.stop_threshold is not None:
            stuck = (scores < c.stop_threshold).all(dim=1)
            turn = torch.tensor([0.0, c.turn_rate], device=actions.device)
            actions = torch.where(stuck[:, None, None], turn, actions)
        if prefix is not None:
            length = prefix.shape[1]
            w = prefix_weights.to(actions.device).view(1, length, 1)
            actions = torch.cat([w * prefix.to(actions) + (1 - w) * actions[:, :length], actions[:, length:]], dim=1)
        return actions, candidates, scores

    def predict_action_chunk(self, obs, goal=None, generator: torch.Generator | None = None,
                             prefix: torch.Tensor | None = None, prefix_weights: torch.Tensor | None = None) -> torch.Tensor:
        """obs {key: [B, n_obs_steps, ...]} -> actions [B, horizon, 2] (v m/s, omega rad/s)."""
        return self.plan(obs, goal, generator, prefix, prefix_weights)[0]

    def predict(self, obs, goal=None, generator: torch.Generator | None = None, prefix: torch.Tensor | None = None,
                prefix_weights: torch.Tensor | None = None, **kwargs: Any) -> Prediction:
        """The chunk plus ``candidates`` [B, N, K, 2] (every sampled path, robot-frame metres; N = 1 with selection
        single) and their ``candidate_scores`` [B, N]."""
        actions, candidates, scores = self.plan(obs, goal, generator, prefix, prefix_weights)
        return Prediction(actions, {"candidates": candidates, "candidate_scores": scores})
