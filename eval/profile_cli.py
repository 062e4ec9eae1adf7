"""`poa-gym profile`: list the built-in timing profiles, export one as a mocker-format NPZ, and
report the roofline fit against the H200 profiler data shipped in ai-dynamo."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from envs.errors import UserError

out = Console(width=None if sys.stdout.isatty() else 180)


def add_parser(commands: Any) -> None:
    """Register `profile` on the CLI's subcommands (an argparse `_SubParsersAction`)."""
    profile = commands.add_parser("profile", help="calibrated timing profiles: list, export, fit-report")
    actions = profile.add_subparsers(dest="profile_command", required=True)

    listing = actions.add_parser("list", help="the built-in profiles and their deployment figures")
    listing.set_defaults(handler=_cmd_list)

    export = actions.add_parser("export", help="write a profile as a mocker-format NPZ")
    export.add_argument("profile", help="a built-in profile name (see `poa-gym profile list`)")
    export.add_argument("--out", required=True, help="directory to write PROFILE.npz into")
    export.set_defaults(handler=_cmd_export)

    report = actions.add_parser("fit-report", help="the roofline fit against the H200 profiler data")
    report.add_argument("--data", help="profiler results dir (default: the one in ai-dynamo)")
    report.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    report.set_defaults(handler=_cmd_fit_report)


def _named(name: str) -> Any:
    from envs.sim.profile_catalog import get_profile

    try:
        return get_profile(name)
    except KeyError as error:
        raise UserError(error.args[0]) from None


def _cmd_list(args: argparse.Namespace) -> int:
    from envs.sim.profile_catalog import PROFILES

    table = Table("profile", "description", "KV B/token", "KV blocks (64)", "P->D link GB/s")
    for p in PROFILES.values():
        table.add_row(
            p.name,
            p.description,
            f"{p.kv_bytes_per_token:,.0f}",
            f"{p.num_gpu_blocks():,}",
            f"{p.kv_link_bandwidth_gbps:,.0f} ({p.kv_link.name})",
        )
    out.print(table)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from envs.profiles import save_profile

    named = _named(args.profile)
    directory = Path(args.out)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        path = save_profile(named.arrays(), directory / f"{named.name}.npz")
    except OSError as error:
        raise UserError(f"{args.out}: cannot write ({error.strerror})") from None
    out.print(f"wrote {path}")
    out.print(
        f"mocker: --planner-profile-data {path} --num-gpu-blocks-override {named.num_gpu_blocks()} "
        f"--block-size 64 --kv-bytes-per-token {named.kv_bytes_per_token:.0f} "
        f"--kv-transfer-bandwidth {named.kv_link_bandwidth_gbps:.0f}",
        highlight=False,
        soft_wrap=True,
    )
    return 0


def _cmd_fit_report(args: argparse.Namespace) -> int:
    from envs import calibration
    from envs.sim.profile_catalog import H200_FITTED

    data = calibration.load_measurements(calibration.find_profiler_data(args.data))
    result = calibration.fit(data)
    stored_prefill, stored_decode = calibration.predict(calibration.H200_8B_MEASURED, H200_FITTED, data)
    report = fit_report(data, result)
    report["stored_factors"] = dataclasses.asdict(H200_FITTED)
    report["stored_prefill_median_ape"] = float(np.median(np.abs(stored_prefill / data.prefill_ttft_ms - 1)))
    report["stored_decode_median_ape"] = float(np.median(np.abs(stored_decode / data.decode_itl_ms - 1)))
    if args.json:
        out.print_json(json.dumps(report))
    else:
        _print_report(report)
    return 0


def fit_report(data: Any, result: Any) -> dict[str, Any]:
    """Every point (measured, fitted, relative error), the medians and the fitted factors."""
    prefill = [
        {"isl_tokens": int(t), "measured_ms": float(m), "fitted_ms": float(f), "error": float(f / m - 1)}
        for t, m, f in zip(
            data.prefill_isl_tokens, data.prefill_ttft_ms, result.prefill_fitted_ms, strict=True
        )
    ]
    decode = [
        {
            "batch_size": int(b),
            "context_tokens": int(c),
            "measured_ms": float(m),
            "fitted_ms": float(f),
            "error": float(f / m - 1),
        }
        for b, c, m, f in zip(
            data.decode_batch_size,
            data.decode_context_tokens,
            data.decode_itl_ms,
            result.decode_fitted_ms,
            strict=True,
        )
    ]
    return {
        "prefill_median_ape": float(np.median(result.prefill_ape(data))),
        "decode_median_ape": float(np.median(result.decode_ape(data))),
        "factors": dataclasses.asdict(result.efficiency),
        "max_kv_tokens": data.max_kv_tokens,
        "prefill": prefill,
        "decode": decode,
    }


def _print_report(report: dict[str, Any]) -> None:
    prefill = Table("ISL", "measured ms", "fitted ms", "error %", title="prefill TTFT (H200, Llama-3.1-8B)")
    for row in report["prefill"]:
        prefill.add_row(str(row["isl_tokens"]), *_numbers(row))
    decode = Table("batch", "context", "measured ms", "fitted ms", "error %", title="decode ITL")
    for row in report["decode"]:
        decode.add_row(str(row["batch_size"]), str(row["context_tokens"]), *_numbers(row))
    out.print(prefill)
    out.print(decode)
    out.print(
        f"median |error|: prefill {report['prefill_median_ape']:.2%}, "
        f"decode {report['decode_median_ape']:.2%}"
    )
    out.print(
        f"stored factors (envs.sim.profile_catalog.H200_FITTED): prefill "
        f"{report['stored_prefill_median_ape']:.2%}, decode {report['stored_decode_median_ape']:.2%}"
    )
    factors = ", ".join(f"{k}={v:.4g}" for k, v in report["factors"].items())
    out.print(f"fitted: {factors}", highlight=False, soft_wrap=True)


def _numbers(row: dict[str, Any]) -> tuple[str, str, str]:
    return f"{row['measured_ms']:.2f}", f"{row['fitted_ms']:.2f}", f"{row['error'] * 100:+.1f}"
