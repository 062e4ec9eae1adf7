"""The router sidecar (`poa-gym sidecar`): a policy steering a live Dynamo router's knobs.

Every control interval it reads the deployment's metrics (the frontend's `/metrics` and the knob
router's), builds the observation with the project's one builder, runs the policy (an exported
PPO policy, the knee controller or fixed settings) and sets the knobs on the knob router, which
applies them to every request it routes. It fails safe: unreachable or stale metrics, a policy
error or a non-finite value switch to a safe setting until things recover.

    policies.py   what the sidecar runs: a policy, its knobs and observation layout, its files
    decider.py    one interval's decision and the fail-safe state machine (pure)
    service.py    the loop on the wall clock, the HTTP calls, and the sidecar's own endpoints
    cli.py        `poa-gym sidecar`
"""
