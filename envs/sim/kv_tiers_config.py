"""KV-cache tiers below G1 (HBM): their config (the tiers themselves are `envs.sim.kv_tiers`)."""

from __future__ import annotations

import warnings

from pydantic import ConfigDict, Field, model_validator
from pydantic.dataclasses import dataclass

_STRICT = ConfigDict(extra="forbid", frozen=True, validate_default=True)


@dataclass(config=_STRICT)
class KvTiersConfig:
    """KV-cache tiers below G1 (HBM): G2 host DRAM and G3 local disk, fed write-through.

    Off by default (0 blocks). Bandwidths are GB/s (1e9 bytes/s) per worker and direction; 0 means
    no delay. Defaults are the mocker's (`lib/mocker/src/kvbm_offload/config.rs`): 14 GB/s for
    G1<->G2 (a PCIe Gen4 x16 link in practice; Gen5 x16 is 64 GB/s nominal) and 7 GB/s for G2<->G3
    (one local NVMe SSD).
    """

    host_blocks: int = Field(0, ge=0)
    host_offload_gbps: float = Field(14.0, ge=0, allow_inf_nan=False)
    host_onboard_gbps: float = Field(14.0, ge=0, allow_inf_nan=False)
    disk_blocks: int = Field(0, ge=0)
    disk_offload_gbps: float = Field(7.0, ge=0, allow_inf_nan=False)
    disk_onboard_gbps: float = Field(7.0, ge=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _chain(self) -> KvTiersConfig:
        # Write-through runs G1 -> G2 -> G3: without G2 nothing ever reaches G3.
        if self.disk_blocks > 0 and self.host_blocks == 0:
            raise ValueError("kv_tiers.disk_blocks > 0 needs kv_tiers.host_blocks > 0 (G3 is fed from G2)")
        if 0 < self.disk_blocks < self.host_blocks:
            warnings.warn(
                f"kv_tiers.disk_blocks ({self.disk_blocks}) < kv_tiers.host_blocks ({self.host_blocks}):"
                " each lower tier should be larger than the one above it, or it churns (KVBM guide)",
                stacklevel=2,
            )
        return self

    @property
    def enabled(self) -> bool:
        return self.host_blocks > 0
