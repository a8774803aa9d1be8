"""Meta-World's own scripted policies as experts, with a generic phase annotation.

The scripted policies read Meta-World's full observation (goal included), taken from the env
(privileged), so the expert also drives image-only variants. They expose no phases, so the phase is
inferred from what the policy does: "reach" until the hand is within ``near`` of the object or an open
gripper starts closing; then "grasp" for ``grasp_steps`` if the gripper is closing, else straight on to
"move toward the goal" (tasks that push or press with a closed hand); the object starting to move
also ends "reach".
"""

from __future__ import annotations

import numpy as np

from vmp.sim.experts.base import Expert


class MetaWorldExpert(Expert):
    name = "metaworld"
    phase_names = ("reach the object", "grasp the object", "move toward the goal")
    grasp_steps = 8  # steps counted as "grasp" after the gripper starts closing
    near = 0.05  # m, hand-object distance that ends "reach"

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        self._policies: dict = getattr(self, "_policies", {})
        self._closing_steps = 0
        self._was_open = False
        self._obj0 = None

    def _policy(self, task_name: str):
        from metaworld.policies import ENV_POLICY_MAP

        if task_name not in self._policies:
            self._policies[task_name] = ENV_POLICY_MAP[task_name]()
        return self._policies[task_name]

    def _act(self, obs):
        s = self.env.privileged()
        state = s["state"]
        action = np.asarray(self._policy(s["task_name"]).get_action(state), dtype=np.float32)
        hand, obj = state[:3], state[4:7]
        closing = action[3] > 0.0
        if self._obj0 is None:
            self._obj0 = obj.copy()
        if self.phase == 0 and np.linalg.norm(obj - self._obj0) > 0.01:
            self.phase = 2
        if self.phase == 0:
            starts_closing = closing and self._was_open
            if starts_closing or np.linalg.norm(hand - obj) < self.near:
                self.phase = 1 if closing else 2
            self._was_open = self._was_open or not closing
        if self.phase == 1:
            self._closing_steps += 1
            if self._closing_steps > self.grasp_steps:
                self.phase = 2
        return np.clip(action, -1.0, 1.0)
