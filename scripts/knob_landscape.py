"""The reward landscape of fixed knob settings, per load: is there one best setting, or does it move?

    python scripts/knob_landscape.py SCENARIO --loads 40,100,250,500 \
        --grid overlap_score_credit=1/2/3,prefill_load_scale=1/2,router_temperature=0 \
        [--seeds 2] [--intervals 16] [--settle 4] [--jobs N] [--json OUT.json]

Each (load, setting, seed) is one constant-load episode of the environment with that fixed
setting; the mean reward over the intervals after the first `--settle` is reported, with the
PoA-hat and TTFT P99 medians. Knob ranges are widened to the grid, so settings outside the
environment's default action ranges can be measured. Search seeds only (below 1000000).
`--schedule ramp --low L --high H` measures whole ramp episodes instead of constant loads.

`--rules 3/6@150,...` measures load rules on ramp episodes instead: credit 3 while the schedule
has fewer than 150 clients, 6 from there on (temperature 0, the other knobs the scenario's), next
to the fixed credits 3 and 6. A rule reads the client count from the schedule, which a policy
cannot see, so this bounds what a load-adaptive policy can gain over fixed settings.
`--rule-knob num_prefill_workers` makes the rules move that knob or lever instead (`--rules
3/4@150`: 3 prefill workers below 150 clients, 4 from there on); a lever in `--grid` or
`--rule-knob` joins the action space with its widest range on the scenario (`envs.levers`).
`--seed-base 1000000` puts the episodes on the eval seeds, to pair them with `poa-gym eval`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from agents.episodes import search_grid
from envs.disagg_env import DisaggRoutingEnv
from envs.levers import lever_ranges
from envs.scenarios import load_scenario
from envs.schedules import ScheduleConfig, concurrency_levels
from envs.sim.knobs import DEFAULT_RANGES, override_to_action


def _grid(text: str) -> list[dict[str, float]]:
    values: dict[str, list[float]] = {}
    for token in text.split(","):
        name, _, raw = token.partition("=")
        values[name.strip()] = [float(v) for v in raw.split("/")]
    return search_grid(values)


def _rules(text: str) -> list[tuple[float, float, int]]:
    """`LOW/HIGH@C` tokens: the rule knob at LOW below C clients, HIGH from C on."""
    rules = []
    for token in text.split(","):
        credits, _, clients = token.partition("@")
        low, _, high = credits.partition("/")
        rules.append((float(low), float(high), int(clients)))
    return rules


def _episode(job: tuple) -> dict:
    scenario, schedule, setting, seed, intervals, settle, overrides, rule_knob = job
    setting = dict(setting)
    rule = setting.pop("rule", None)
    top = max([setting.get(rule_knob, 0.0), *(rule[:2] if rule else ())])
    env = DisaggRoutingEnv(
        {
            "scenario": scenario,
            "schedule": schedule,
            "num_intervals": intervals,
            "knobs": _wide_knobs({**setting, rule_knob: top}, scenario, overrides),
            "overrides": overrides,
        }
    )
    env.reset(seed=seed)
    levels = concurrency_levels(ScheduleConfig(**schedule), intervals)
    rewards, poa, ttft = [], [], []
    for interval in range(intervals):
        values = {**env.default_values, **setting}
        if rule is not None:
            low, high, clients = rule
            values[rule_knob] = low if levels[interval] < clients else high
        action = override_to_action({k.name: values[k.name] for k in env.knobs}, env.knobs)
        _, reward, _, _, info = env.step(action)
        if interval >= settle:
            rewards.append(float(reward))
            poa.append(info["poa_hat"])
            ttft.append(info["ttft_p99_s"])
    if rule is not None:
        setting["rule"] = "{:g}/{:g}@{}".format(*rule)
    finite = [p for p in poa if np.isfinite(p)]
    return {
        "load": schedule["high"]
        if schedule["kind"] == "constant"
        else f"ramp {schedule['low']}-{schedule['high']}",
        "setting": setting,
        "seed": seed,
        "mean_reward": float(np.mean(rewards)),
        "poa_hat": float(np.median(finite)) if finite else float("nan"),
        "ttft_p99_s": float(np.median(ttft)),
    }


def _wide_knobs(setting: dict[str, float], scenario: str, overrides: tuple[str, ...]) -> list[list]:
    """The three 1.6.1 knobs, each range widened to hold the setting's value, and every lever the
    setting names, with its widest range on the scenario."""
    knobs: list[list] = [
        [name, 0.0, max(DEFAULT_RANGES[name][1], setting.get(name, 0.0))]
        for name in ("overlap_score_credit", "prefill_load_scale", "router_temperature")
    ]
    ranges = lever_ranges(load_scenario(scenario, overrides)[0])
    return knobs + [[name, *ranges[name]] for name in ranges if name in setting]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenario")
    parser.add_argument("--loads", default="40,100,250,500")
    parser.add_argument("--grid")
    parser.add_argument("--rules", help="load rules LOW/HIGH@C,... on ramp episodes (see above)")
    parser.add_argument("--rule-knob", default="overlap_score_credit", help="the knob the rules move")
    parser.add_argument("--seed-base", type=int, default=0)
    parser.add_argument("--schedule", default="constant", choices=("constant", "ramp"))
    parser.add_argument("--low", type=int, default=32)
    parser.add_argument("--high", type=int, default=512)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--intervals", type=int, default=16)
    parser.add_argument("--settle", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.rules:
        rules = _rules(args.rules)
        credits = sorted({c for low, high, _ in rules for c in (low, high)})
        settings: list[dict] = [{"router_temperature": 0.0, "rule": rule} for rule in rules]
        settings += [{args.rule_knob: c, "router_temperature": 0.0} for c in credits]
        args.schedule = "ramp"
    elif args.grid:
        settings = _grid(args.grid)
    else:
        parser.error("give --grid or --rules")
    if args.schedule == "ramp":
        schedules = [{"kind": "ramp", "low": args.low, "high": args.high}]
    else:
        schedules = [{"kind": "constant", "low": int(c), "high": int(c)} for c in args.loads.split(",")]
    jobs = [
        (
            args.scenario,
            schedule,
            setting,
            seed,
            args.intervals,
            args.settle,
            tuple(args.overrides),
            args.rule_knob,
        )
        for schedule in schedules
        for setting in settings
        for seed in range(args.seed_base, args.seed_base + args.seeds)
    ]
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(_episode, jobs))
    _print_table(results)
    if args.json:
        args.json.write_text(json.dumps({"scenario": args.scenario, "results": results}, indent=1))
    return 0


def _print_table(results: list[dict]) -> None:
    by_key: dict[tuple, list[dict]] = {}
    for result in results:
        key = (result["load"], tuple(sorted(result["setting"].items())))
        by_key.setdefault(key, []).append(result)
    for load in dict.fromkeys(key[0] for key in by_key):  # in the order the loads were given
        rows = sorted(
            (
                (statistics.mean(r["mean_reward"] for r in v), k[1], v)
                for k, v in by_key.items()
                if k[0] == load
            ),
            reverse=True,
        )
        print(
            f"{load if isinstance(load, str) else f'C = {load}'}: setting, mean reward, PoA-hat, TTFT P99 s"
        )
        for reward, setting, runs in rows:
            poa = statistics.mean(r["poa_hat"] for r in runs)
            ttft = statistics.mean(r["ttft_p99_s"] for r in runs)
            text = " ".join(
                f"{name[:6]}={value:g}" if isinstance(value, float) else value for name, value in setting
            )
            print(f"  {text:48s} {reward:8.3f} {poa:8.2f} {ttft:8.3f}")


if __name__ == "__main__":
    sys.exit(main())
