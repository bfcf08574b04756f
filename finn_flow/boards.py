"""Target boards and their FPGA resource capacities.

Part names come from finn-plus (``finn.util.basic.pynq_part_map``); capacities are the
device totals from AMD's product tables (Zynq-7000 DS190, Zynq UltraScale+ DS891, Kria K26
DS987): LUTs, flip-flops, 18 Kb block RAMs (= 2 x the 36 Kb count), UltraRAMs, DSP slices.
Any other FPGA part can be given by name; its capacities are then unknown (``None``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from finn_flow.errors import FinnFlowError

RESOURCE_KEYS = ("LUT", "FF", "BRAM_18K", "URAM", "DSP")


@dataclass(frozen=True)
class Board:
    """A build target: a named board (``board`` set) or a bare FPGA part (``board`` None)."""

    name: str
    part: str
    board: str | None
    LUT: int | None = None
    FF: int | None = None
    BRAM_18K: int | None = None
    URAM: int | None = None
    DSP: int | None = None

    def capacities(self) -> dict[str, int | None]:
        """Resource capacities keyed like FINN's estimate reports."""
        return {k: getattr(self, k) for k in RESOURCE_KEYS}

    def as_dict(self) -> dict:
        return asdict(self)


_XC7Z020 = {"LUT": 53_200, "FF": 106_400, "BRAM_18K": 280, "URAM": 0, "DSP": 220}
_XCZU7EV = {"LUT": 230_400, "FF": 460_800, "BRAM_18K": 624, "URAM": 96, "DSP": 1_728}
_XCK26 = {"LUT": 117_120, "FF": 234_240, "BRAM_18K": 288, "URAM": 64, "DSP": 1_248}
_XCZU3EG = {"LUT": 70_560, "FF": 141_120, "BRAM_18K": 432, "URAM": 0, "DSP": 360}

#: Board presets: name -> (FPGA part as in finn-plus's pynq_part_map, capacities)
BOARDS: dict[str, Board] = {
    "Pynq-Z1": Board("Pynq-Z1", "xc7z020clg400-1", "Pynq-Z1", **_XC7Z020),
    "Pynq-Z2": Board("Pynq-Z2", "xc7z020clg400-1", "Pynq-Z2", **_XC7Z020),
    "ZCU104": Board("ZCU104", "xczu7ev-ffvc1156-2-e", "ZCU104", **_XCZU7EV),
    "KV260_SOM": Board("KV260_SOM", "xck26-sfvc784-2LV-c", "KV260_SOM", **_XCK26),
    "Ultra96-V2": Board("Ultra96-V2", "xczu3eg-sbva484-1-i", "Ultra96-V2", **_XCZU3EG),
}

#: FPGA family prefixes accepted as bare part names (7-series, UltraScale(+), Versal, Kria).
_PART_PREFIXES = ("xc7", "xcku", "xcvu", "xczu", "xck", "xcu", "xcv", "xcau", "xqzu", "xa7")


def board_names() -> list[str]:
    return list(BOARDS)


def resolve_target(board: str) -> Board:
    """Board preset by name (case-insensitive), or a bare FPGA part name.

    Raises FinnFlowError (a ValueError) for anything else, listing the valid boards.
    """
    if not isinstance(board, str) or not board.strip():
        raise FinnFlowError(f"Board must be a non-empty string, got {board!r}.")
    key = board.strip()
    for name, preset in BOARDS.items():
        if name.lower() == key.lower():
            return preset
    if key.lower().startswith(_PART_PREFIXES) and "-" in key:
        for preset in BOARDS.values():  # a known part: reuse its capacities
            if preset.part.lower() == key.lower():
                return Board(
                    key, preset.part, None, **{k: getattr(preset, k) for k in RESOURCE_KEYS}
                )
        return Board(key, key, None)
    raise FinnFlowError(
        f"Unknown board {board!r}. Valid boards: {', '.join(BOARDS)}. "
        "Alternatively give a full AMD/Xilinx FPGA part name (e.g. 'xc7z020clg400-1'); "
        "its resource capacities are then reported as unknown."
    )
