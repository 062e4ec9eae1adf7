"""poa-gym package."""

from gymnasium.envs.registration import register, registry

# Registered on import, so `gymnasium.make("PoAGym/DisaggRouting-v0", ...)` works after
# `import envs` (RL Zoo: `--gym-packages envs`).
if "PoAGym/DisaggRouting-v0" not in registry:
    register(id="PoAGym/DisaggRouting-v0", entry_point="envs.disagg_env:DisaggRoutingEnv")
